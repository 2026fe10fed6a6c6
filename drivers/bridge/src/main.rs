//! `netlet-bridge`: netlet's reference pod network driver. One Linux bridge per network, veth
//! pairs into pod namespaces, dual-stack IPAM persisted in redb, tc bandwidth shaping; all
//! through netlink.

#![forbid(unsafe_code)]

mod api;
mod bandwidth;
mod config;
mod driver;
mod guard;
mod ipam;
mod masquerade;
mod netlink;
mod reaper;
mod routes;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use netlet_sdk::Driver;

use crate::config::Config;

/// How often bridges and the store are checked (and repaired) in the background.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(version, about = "netlet bridge driver: pod networks on Linux bridges")]
struct Args {
    /// Driver name, as registered with the host.
    #[arg(long, default_value = "bridge")]
    name: String,
    /// YAML file with several networks (`networks: [{name, bridge, subnets, mtu}]`); replaces
    /// the single-network flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Network served (single-network mode).
    #[arg(long, default_value = config::DEFAULT_NETWORK)]
    network: String,
    /// Bridge interface (single-network mode).
    #[arg(long, default_value = config::DEFAULT_BRIDGE)]
    bridge: String,
    /// Pod CIDR, at most one per family (single-network mode); repeat for dual-stack.
    #[arg(long = "subnet")]
    subnets: Vec<IpNet>,
    /// MTU (single-network mode).
    #[arg(long, default_value_t = config::DEFAULT_MTU)]
    mtu: u32,
    /// Masquerade traffic from the pod CIDRs to destinations outside them and outside the
    /// cluster CIDRs (single-network mode).
    #[arg(long)]
    masquerade: bool,
    /// Take the pod CIDRs from this node's Node object (through the host's node table) instead
    /// of `--subnet` (single-network mode).
    #[arg(long, conflicts_with = "subnets")]
    pod_cidrs_from_node: bool,
    /// The cluster's pod and Service CIDRs, never masqueraded to (repeat per CIDR).
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<IpNet>,
    /// How other nodes' pods are reached: directly when on a subnet of this node, else over
    /// VXLAN (auto), or always one way.
    #[arg(long, value_enum, default_value = "auto")]
    routing: routes::Mode,
    /// Where attachments and addresses are kept; defaults to `$NETLET_DRIVER_STATE_DIR`
    /// (set by the host), else /var/lib/netlet/bridge.
    #[arg(long, env = netlet_sdk::STATE_DIR_ENV, default_value = "/var/lib/netlet/bridge")]
    state_dir: PathBuf,
    /// Socket to serve on; defaults to `$NETLET_DRIVER_SOCKET` (set by the host).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    let args = Args::parse();
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => {
            let subnets = if args.pod_cidrs_from_node {
                Vec::new()
            } else if args.subnets.is_empty() {
                config::DEFAULT_SUBNETS
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            } else {
                args.subnets.clone()
            };
            let mut c = Config::single(
                args.network.clone(),
                args.bridge.clone(),
                subnets,
                args.mtu,
                args.masquerade,
            );
            c.networks[0].pod_cidrs_from_node = args.pod_cidrs_from_node;
            c.cluster_cidrs = args.cluster_cidrs.clone();
            c.routing = args.routing;
            c.check()?;
            c
        }
    };
    let bridge = driver::Bridge::new(
        &args.name,
        cfg.networks.clone(),
        cfg.cluster_cidrs.clone(),
        cfg.routing,
        &args.state_dir,
    )?;
    bridge.reconcile().await;
    bridge.sweep_leftovers().await;
    let bg = bridge.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            bg.reconcile().await;
        }
    });
    let api = api::Api(bridge.clone());
    let pods = netlet_sdk::pods::PodsService(bridge.clone());
    let mut d = Driver::new(&args.name, env!("CARGO_PKG_VERSION"));
    for n in &cfg.networks {
        d = d.network(&n.name);
    }
    if let Some(s) = &args.socket {
        d = d.socket(s);
    }
    use netlet_sdk::proto::Feature;
    d.feature(Feature::StaticIps)
        .feature(Feature::StaticMac)
        .feature(Feature::Bandwidth)
        .pods(pods)
        .node(api.clone())
        .cluster(api)
        .serve()
        .await?;
    Ok(())
}
