//! `netlet-devices`: netlet's devices driver. The node's network devices (netlink for what
//! they are now, sysfs for bus and topology) grouped into pools by configuration; DRA-style
//! claims allocated with NUMA / PCIe-root alignment and kept in redb; attachments that move an
//! allocated device into the pod's namespace, configured, and back on detach (DRANET's model).

#![forbid(unsafe_code)]

mod alloc;
mod api;
mod config;
mod driver;
mod inventory;
mod links;
mod netconf;
mod sysfs;

use std::path::PathBuf;

use clap::Parser;
use netlet_sdk::Driver;
use netlet_sdk::proto::Feature;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "netlet devices driver: network devices allocated and moved into pods"
)]
struct Args {
    /// Driver name, as registered with the host.
    #[arg(long, default_value = "devices")]
    name: String,
    /// YAML file: `pools` (name and selector), `networks`, `topology`, `sysfsRoot`.
    #[arg(long)]
    config: PathBuf,
    /// Where claims and moves are kept; defaults to `$NETLET_DRIVER_STATE_DIR` (set by the
    /// host), else /var/lib/netlet/devices.
    #[arg(long, env = netlet_sdk::STATE_DIR_ENV, default_value = "/var/lib/netlet/devices")]
    state_dir: PathBuf,
    /// Socket to serve on; defaults to `$NETLET_DRIVER_SOCKET` (set by the host).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    let args = Args::parse();
    let cfg = config::Config::load(&args.config)?;
    let devices = driver::Devices::new(&args.name, cfg, &args.state_dir)?;
    devices.recover().await;
    tokio::spawn(devices.clone().follow_links());
    let api = api::Api(devices.clone());
    let mut d = Driver::new(&args.name, env!("CARGO_PKG_VERSION"));
    for n in devices.networks() {
        d = d.network(n);
    }
    if let Some(s) = &args.socket {
        d = d.socket(s);
    }
    d.feature(Feature::StaticIps)
        .feature(Feature::StaticMac)
        .feature(Feature::Devices)
        .feature(Feature::Routes)
        .devices(api.clone())
        .pods(api.clone())
        .node(api)
        .serve()
        .await?;
    Ok(())
}
