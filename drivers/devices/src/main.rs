//! `netlet-devices`: netlet's devices driver. The node's network devices (netlink for what
//! they are now, sysfs for bus and topology) grouped into pools by configuration; DRA-style
//! claims allocated with NUMA / PCIe-root alignment and kept in redb; attachments that move an
//! allocated device into the pod's namespace, configured, and back on detach (DRANET's model).

#![forbid(unsafe_code)]

mod api;
mod config;
mod dra;
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
    /// This node's name: turns the DRA path on (a ResourceSlice for the node, the kubelet's
    /// DRA plugin and registration sockets).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The DRA driver name.
    #[arg(long, default_value = "dra.netlet.io")]
    dra_driver: String,
    /// Kubeconfig for the DRA path, or `in-cluster`.
    #[arg(long, default_value = "in-cluster")]
    kubeconfig: PathBuf,
    /// The kubelet's plugin registry.
    #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
    kubelet_registry_dir: PathBuf,
    /// Where the kubelet's plugins keep their sockets.
    #[arg(long, default_value = "/var/lib/kubelet/plugins")]
    kubelet_plugins_dir: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    let args = Args::parse();
    let cfg = config::Config::load(&args.config)?;
    let devices = driver::Devices::new(&args.name, cfg, &args.state_dir)?;
    devices.recover().await;
    tokio::spawn(devices.clone().follow_links());
    if let Some(node) = &args.node_name {
        let dra = dra::Dra::new(
            devices.clone(),
            dra::Options {
                node: node.clone(),
                driver: args.dra_driver.clone(),
                kubeconfig: args.kubeconfig.clone(),
                registry_dir: args.kubelet_registry_dir.clone(),
                plugins_dir: args.kubelet_plugins_dir.clone(),
            },
        )
        .await?;
        tokio::spawn(dra.clone().publish());
        tokio::spawn(async move {
            if let Err(e) = dra.serve().await {
                tracing::error!(error = %e, "the kubelet's DRA sockets");
            }
        });
    }
    let api = api::Api(devices.clone());
    let pods = netlet_sdk::pods::PodsService(devices.clone());
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
        .pods(pods)
        .node(api)
        .serve()
        .await?;
    Ok(())
}
