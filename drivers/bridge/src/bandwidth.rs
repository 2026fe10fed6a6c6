//! Pod bandwidth, as the CNI `bandwidth` plugin shapes it: traffic *to* the pod (ingress) is
//! limited by a token bucket (tbf) on the host side of its veth; traffic *from* the pod
//! (egress) arrives on the host veth's ingress, is redirected (u32 match-all, mirred) to an
//! ifb device, and limited by a tbf there. Limits come from the selection's `bandwidth` or the
//! standard pod annotations `kubernetes.io/ingress-bandwidth` / `kubernetes.io/egress-bandwidth`
//! (Kubernetes quantities in bits per second, e.g. `10M`).

use futures::StreamExt;
use netlet_sdk::proto::{NetworkSelection, PodSandbox};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::LinkIfb;
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};

use crate::netlink::{self, Netlink, NlError, NlResult, Within, errno};

/// Pod annotation limiting traffic to the pod.
pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// Pod annotation limiting traffic from the pod.
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// Lowest rate accepted (the CNI plugin and kubelet refuse less than 1 kbit/s).
const MIN_BPS: u64 = 1000;
/// Highest rate accepted (1 Pbit/s, kubelet's bound).
const MAX_BPS: u64 = 1_000_000_000_000_000;
/// Queue a packet may wait at most, like the CNI plugin's fixed latency.
const LATENCY_MS: u64 = 25;

/// Rates in bits per second and bursts in bits; zero means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// To the pod.
    pub ingress_bps: u64,
    /// Burst to the pod.
    pub ingress_burst_bits: u64,
    /// From the pod.
    pub egress_bps: u64,
    /// Burst from the pod.
    pub egress_burst_bits: u64,
}

/// Parses a Kubernetes quantity (`100k`, `10M`, `1Gi`, `1.5M`, `500000`) into a whole number.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n * mult).round() as u64)
}

fn rate(field: &str, text: &str) -> Result<u64, (String, String)> {
    let v = parse_quantity(text)
        .ok_or_else(|| (field.to_string(), format!("{text:?} is not a quantity")))?;
    if !(MIN_BPS..=MAX_BPS).contains(&v) {
        return Err((
            field.to_string(),
            format!("{text} is outside 1k..1P bits/s"),
        ));
    }
    Ok(v)
}

/// The limits for one interface: the selection's, else the pod's annotations. Errors name the
/// field (or annotation) at fault.
pub fn limits(
    sandbox: &PodSandbox,
    sel: &NetworkSelection,
    field: &str,
) -> Result<Option<Limits>, (String, String)> {
    let mut l = Limits::default();
    if let Some(b) = &sel.bandwidth {
        l = Limits {
            ingress_bps: b.ingress_bps,
            ingress_burst_bits: b.ingress_burst_bits,
            egress_bps: b.egress_bps,
            egress_burst_bits: b.egress_burst_bits,
        };
        for (v, f) in [(b.ingress_bps, "ingress_bps"), (b.egress_bps, "egress_bps")] {
            if v != 0 && !(MIN_BPS..=MAX_BPS).contains(&v) {
                return Err((
                    format!("{field}.bandwidth.{f}"),
                    format!("{v} is outside 1000..1e15 bits/s"),
                ));
            }
        }
    }
    if l.ingress_bps == 0
        && let Some(v) = sandbox.annotations.get(INGRESS_ANNOTATION)
    {
        l.ingress_bps = rate(&format!("sandbox.annotations[{INGRESS_ANNOTATION}]"), v)?;
    }
    if l.egress_bps == 0
        && let Some(v) = sandbox.annotations.get(EGRESS_ANNOTATION)
    {
        l.egress_bps = rate(&format!("sandbox.annotations[{EGRESS_ANNOTATION}]"), v)?;
    }
    Ok((l.ingress_bps != 0 || l.egress_bps != 0).then_some(l))
}

/// Name prefix of the ifb devices carrying pods' egress.
pub const IFB_PREFIX: &str = "bwp";

/// The ifb device carrying a pod's egress: [`IFB_PREFIX`] + the veth's hash.
pub fn ifb_name(host_veth: &str) -> String {
    format!("{IFB_PREFIX}{}", host_veth.trim_start_matches("veth"))
}

/// A tbf qdisc's options: rate in bytes/s, burst in bytes, queue limit for [`LATENCY_MS`].
fn tbf_options(bps: u64, burst_bits: u64) -> Vec<TcOption> {
    const TCA_TBF_PARMS: u16 = 1;
    const TCA_TBF_RATE64: u16 = 4;
    const TCA_TBF_BURST: u16 = 6;
    const TC_LINKLAYER_ETHERNET: u8 = 1;
    let bytes_per_s = bps / 8;
    // At least one full-size frame per burst, else nothing passes.
    let burst = (burst_bits / 8)
        .max(bytes_per_s / 100)
        .max(64 * 1024)
        .min(u32::MAX as u64) as u32;
    let limit = (bytes_per_s * LATENCY_MS / 1000 + burst as u64).min(u32::MAX as u64) as u32;
    // struct tc_tbf_qopt { tc_ratespec rate, peakrate; u32 limit, buffer, mtu; }, where
    // tc_ratespec { u8 cell_log, linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate }.
    let mut parms = Vec::with_capacity(36);
    parms.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET]);
    parms.extend_from_slice(&[0u8; 6]);
    parms.extend_from_slice(&(bytes_per_s.min(u32::MAX as u64) as u32).to_ne_bytes());
    parms.extend_from_slice(&[0u8; 12]);
    parms.extend_from_slice(&limit.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    let mut opts = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms)),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if bytes_per_s > u32::MAX as u64 {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            bytes_per_s.to_ne_bytes().to_vec(),
        )));
    }
    opts
}

async fn add_tbf(nl: &Netlink, index: u32, what: &str, bps: u64, burst_bits: u64) -> NlResult<()> {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::ROOT;
    msg.header.handle = TcHandle { major: 1, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes
        .push(TcAttribute::Options(tbf_options(bps, burst_bits)));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut h = nl.handle().clone();
    let fail = |message: String, errno: Option<i32>| NlError {
        what: format!("tbf on {what}"),
        errno,
        message,
    };
    let mut resp = h.request(req).map_err(|e| fail(e.to_string(), None))?;
    let deadline = tokio::time::Instant::now() + netlink::KERNEL_TIMEOUT;
    while let Some(m) = tokio::time::timeout_at(deadline, resp.next())
        .await
        .map_err(|_| {
            fail(
                format!(
                    "no answer from the kernel within {:?}",
                    netlink::KERNEL_TIMEOUT
                ),
                Some(errno::ETIMEDOUT),
            )
        })?
    {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(fail(e.to_io().to_string(), Some(-e.raw_code())));
        }
    }
    Ok(())
}

/// Shapes the pod behind `host_veth`.
pub async fn apply(nl: &Netlink, host_veth: &str, l: &Limits) -> NlResult<()> {
    let veth = nl.link_index(host_veth).await?.ok_or_else(|| NlError {
        what: format!("bandwidth on {host_veth}"),
        errno: Some(errno::ENODEV),
        message: "veth not found".into(),
    })?;
    if l.ingress_bps != 0 {
        add_tbf(nl, veth, host_veth, l.ingress_bps, l.ingress_burst_bits).await?;
    }
    if l.egress_bps != 0 {
        let ifb = ifb_name(host_veth);
        nl.delete_link(&ifb).await?;
        let h = nl.handle();
        h.link()
            .add(LinkIfb::new(&ifb).up().build())
            .execute()
            .within(format!("create ifb {ifb}"))
            .await?;
        let ifb_index = nl.link_index(&ifb).await?.unwrap_or_default();
        add_tbf(nl, ifb_index, &ifb, l.egress_bps, l.egress_burst_bits).await?;
        h.qdisc()
            .add(veth as i32)
            .ingress()
            .execute()
            .within(format!("ingress qdisc on {host_veth}"))
            .await?;
        h.traffic_filter(veth as i32)
            .add()
            .parent(0xffff_0000)
            .protocol(0x0003u16.to_be())
            .redirect(ifb_index)
            .map_err(netlink::nl(format!("redirect filter on {host_veth}")))?
            .execute()
            .within(format!("redirect {host_veth} to {ifb}"))
            .await?;
    }
    Ok(())
}

/// Removes the ifb of `host_veth` (its tbf goes with it; the veth's own qdiscs go with the
/// veth). Nothing there is fine.
pub async fn remove(nl: &Netlink, host_veth: &str) -> NlResult<()> {
    nl.delete_link(&ifb_name(host_veth)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn quantities_like_kubernetes() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("500000"), Some(500_000));
        assert_eq!(parse_quantity("10Q"), None);
        assert_eq!(parse_quantity("-1M"), None);
    }

    #[test]
    fn annotations_fill_in_and_bad_ones_name_the_annotation() {
        let mut s = PodSandbox {
            annotations: HashMap::from([(INGRESS_ANNOTATION.to_string(), "10M".to_string())]),
            ..Default::default()
        };
        let l = limits(&s, &NetworkSelection::default(), "networks[0]")
            .unwrap()
            .unwrap();
        assert_eq!((l.ingress_bps, l.egress_bps), (10_000_000, 0));
        assert_eq!(
            limits(
                &PodSandbox::default(),
                &NetworkSelection::default(),
                "networks[0]"
            )
            .unwrap(),
            None
        );
        s.annotations
            .insert(EGRESS_ANNOTATION.into(), "lots".into());
        let (field, why) = limits(&s, &NetworkSelection::default(), "networks[0]").unwrap_err();
        assert_eq!(field, format!("sandbox.annotations[{EGRESS_ANNOTATION}]"));
        assert!(why.contains("lots"));
        s.annotations.insert(EGRESS_ANNOTATION.into(), "10".into());
        assert!(
            limits(&s, &NetworkSelection::default(), "networks[0]")
                .unwrap_err()
                .1
                .contains("outside")
        );
    }

    #[test]
    fn tbf_parameters_are_laid_out_as_the_kernel_reads_them() {
        let opts = tbf_options(8_000_000, 0);
        let TcOption::Other(p) = &opts[0] else {
            panic!()
        };
        let mut buf = vec![0u8; 36];
        use rtnetlink::packet_core::Nla;
        p.emit_value(&mut buf);
        assert_eq!(buf[1], 1, "linklayer ethernet");
        assert_eq!(
            u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            1_000_000,
            "bytes/s"
        );
        assert_eq!(opts.len(), 2, "no 64-bit rate below 4 GB/s");
    }
}
