//! netlet-conformance: tells a driver (or the host) whether it honours the netlet contract.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use netlet_sdk::{
    client::{Clients, parse_target},
    proto::GetInfoRequest,
};
use netlet_testbed::{checks, conformance};

#[derive(Parser)]
#[command(
    name = "netlet-conformance",
    about = "Conformance checks for netlet drivers and hosts"
)]
struct Args {
    /// Endpoint, e.g. unix:///run/netlet/netlet.sock.
    #[arg(long)]
    target: String,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Only run checks whose name matches this regex.
    #[arg(long)]
    focus: Option<String>,
    /// Leave out checks whose name matches this regex (e.g. `^dataplane/` for a driver
    /// without a data plane).
    #[arg(long)]
    skip: Option<String>,
    /// A second network the target serves, for the multi-network data-plane check.
    #[arg(long)]
    secondary_network: Option<String>,
    /// How many times idempotency checks replay a call.
    #[arg(long, default_value_t = 5)]
    replays: usize,
    /// What the target is: `host`, `driver`, or `auto` (its GetInfo `role`). Checks meant
    /// for the other kind are skipped with the reason.
    #[arg(long, default_value = "auto", value_parser = ["auto", "host", "driver"])]
    mode: String,
    /// List the checks and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for c in checks::all() {
            println!("{}", c.name);
        }
        return Ok(());
    }
    let regex = |r: &Option<String>, flag: &str| {
        r.as_deref()
            .map(regex::Regex::new)
            .transpose()
            .with_context(|| flag.to_string())
    };
    let opts = conformance::RunOptions {
        focus: regex(&args.focus, "--focus")?,
        skip: regex(&args.skip, "--skip")?,
        replays: args.replays,
        secondary_network: args.secondary_network.clone(),
        mode: match args.mode.as_str() {
            "host" => Some(conformance::Mode::Host),
            "driver" => Some(conformance::Mode::Driver),
            _ => None,
        },
    };
    let path = parse_target(&args.target);
    let mut clients = Clients::connect(&path, Some(std::time::Duration::from_secs(30)))
        .await
        .with_context(|| format!("connect {}", args.target))?;
    let info = clients
        .identity
        .get_info(GetInfoRequest::default())
        .await
        .context("Identity/GetInfo")?
        .into_inner();
    let mode = opts.mode.unwrap_or_else(|| conformance::Mode::of(&info));
    println!(
        "target {} ({} {}, {mode:?}), capabilities {:?}, networks {:?}",
        args.target,
        info.name,
        info.vendor_version,
        info.capabilities()
            .map(|c| c.as_str_name())
            .collect::<Vec<_>>(),
        info.networks
    );
    let records = conformance::run(clients, info, checks::all(), &opts).await;
    print!("{}", conformance::summary(&records));
    if let Some(j) = &args.junit {
        std::fs::write(j, conformance::junit(&args.target, &records))
            .with_context(|| format!("write {}", j.display()))?;
    }
    if records
        .iter()
        .any(|r| matches!(r.outcome, conformance::Outcome::Failed(_)))
    {
        std::process::exit(1);
    }
    Ok(())
}
