//! `netlet`: the node host daemon.

use std::path::PathBuf;

/// mimalloc rather than the system allocator: it returns freed pages to the kernel soon, where
/// glibc's arenas keep what a large initial list or full sync once needed (measured at 10k
/// Services: about a third of the resident memory). The feature `system-allocator` keeps the
/// system's, for a heap profiler that hooks malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use netlet_host::config::{self, Overrides};

#[derive(Parser)]
#[command(
    name = "netlet",
    version,
    about = "The netlet node host: the kubelet of networking"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the netlet.v1alpha1 API and run the configured drivers.
    Serve {
        /// NodeConfig YAML; without it the embedded default configuration runs.
        #[arg(long)]
        config: Option<PathBuf>,
        /// gRPC unix socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Directory watched for external driver sockets.
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
        /// Directory of the embedded state database.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Admin HTTP unix socket (default: netlet-admin.sock beside --socket).
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// Directory of Service/EndpointSlice YAML manifests, watched for changes.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// A kubeconfig: Services and EndpointSlices also come from the Kubernetes API.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate a NodeConfig and print the effective settings.
    CheckConfig {
        /// NodeConfig YAML; without it the embedded default is checked.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print netlet's CustomResourceDefinitions (DnsPolicy, HostnameGrant), or write one file
    /// each into a directory (`deploy/crds` holds them).
    Crds {
        /// Directory to write them to.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    match Cli::parse().cmd {
        Cmd::Serve {
            config,
            socket,
            plugin_dir,
            state_dir,
            admin_socket,
            manifests,
            kubeconfig,
        } => {
            let (file, cfg) = config::load(config.as_deref())?;
            let settings = cfg.settings(
                &file,
                Overrides {
                    socket,
                    plugin_dir,
                    state_dir,
                    admin_socket,
                    manifests_dir: manifests,
                    kubeconfig,
                },
            )?;
            netlet_host::run(settings, netlet_sdk::server::shutdown_signal())
                .await
                .context("netlet serve")?;
        }
        Cmd::CheckConfig { config } => {
            let (file, cfg) = config::load(config.as_deref())?;
            let s = cfg.settings(&file, Overrides::default())?;
            println!("{file}: valid");
            println!("{s:#?}");
        }
        Cmd::Crds { out } => {
            for (file, yaml) in netlet_host::crd::all() {
                match &out {
                    Some(dir) => std::fs::write(dir.join(file), yaml)
                        .with_context(|| format!("{}", dir.join(file).display()))?,
                    None => print!("---\n{yaml}"),
                }
            }
        }
        Cmd::DefaultConfig => print!("{}", config::EMBEDDED_DEFAULT),
    }
    Ok(())
}
