//! `netlet-nft`: netlet's Service and network-policy driver. Kubernetes Services (ClusterIP, NodePort,
//! LoadBalancer and external IPs, session affinity, traffic policies, TCP/UDP/SCTP, IPv4 and
//! IPv6) in nftables tables of its own, `ip netlet-nft` and `ip6 netlet-nft`, changed by
//! deltas sent as one netlink transaction each (no `nft` CLI). NetworkPolicies and
//! ClusterNetworkPolicies in `inet netlet-policy` (see `policy.rs`).

#![forbid(unsafe_code)]

/// mimalloc rather than the system allocator: it returns freed pages to the kernel soon, where
/// glibc's arenas keep what a large initial list or full sync once needed (measured at 10k
/// Services: about a third of the resident memory).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod conntrack;
mod driver;
mod policy;
mod ruleset;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use ipnet::IpNet;
use netlet_sdk::Driver;

#[derive(Parser, Debug)]
#[command(version, about = "netlet nft driver: Services in nftables")]
struct Args {
    /// Driver name, as registered with the host.
    #[arg(long, default_value = "nft")]
    name: String,
    /// Pod CIDR, at most one per family (repeat for dual-stack): ClusterIP traffic from
    /// elsewhere (the node, outside clients) is masqueraded, and externalTrafficPolicy Local
    /// Services let pods use every endpoint.
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<IpNet>,
    /// Where NodePorts answer (repeat); default: every local address but loopback.
    #[arg(long = "nodeport-address")]
    nodeport_cidrs: Vec<IpNet>,
    /// Socket to serve on; defaults to `$NETLET_DRIVER_SOCKET` (set by the host).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    netlet_sdk::init_tracing();
    let args = Args::parse();
    let settings = ruleset::Settings {
        cluster_cidrs: args.cluster_cidrs.clone(),
        nodeport_cidrs: args.nodeport_cidrs.clone(),
    };
    let nft = Arc::new(driver::Nft::start(settings)?);
    let policies = Arc::new(policy::NftPolicy::start()?);
    let mut d = Driver::new(&args.name, env!("CARGO_PKG_VERSION"));
    if let Some(s) = &args.socket {
        d = d.socket(s);
    }
    use netlet_sdk::proto::Feature;
    d.feature(Feature::Sctp)
        .feature(Feature::SessionAffinity)
        .feature(Feature::HostPorts)
        .feature(Feature::NetworkPolicy)
        .feature(Feature::ClusterNetworkPolicy)
        .services(driver::Api(nft))
        .policy(policy::Api(policies))
        .serve()
        .await?;
    Ok(())
}
