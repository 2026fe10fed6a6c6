//! Egress by name (what Cilium's toFQDNs does): the addresses the server answered a pod under a
//! DnsPolicy with `egress_by_name`, each until its TTL (at least the policy's minimum) runs
//! out. A new address is handed to the Policy drivers (through the host's policy view, as an
//! element of the pod's answers set) before the answer goes back to the pod, so the pod's first
//! packet to it is allowed; an expired one is taken out again. The NetworkPolicy that names the
//! set is the host's own, one per pod ([`crate::policy::Item::DnsEgress`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, Record};

/// A pod: (namespace, name).
pub type PodKey = (String, String);

/// Hands a pod's new addresses to the drivers; resolves once they hold them (or failed to).
pub type Publish =
    Box<dyn Fn(PodKey, Vec<IpAddr>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The answers of the pods under egress by name.
#[derive(Default)]
pub struct Egress {
    pods: Mutex<HashMap<PodKey, HashMap<IpAddr, Known>>>,
    publish: OnceLock<Publish>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("pods", &self.pods.lock().map(|p| p.len()).unwrap_or(0))
            .finish()
    }
}

/// An answered address: until when it is allowed, and whether the drivers were seen to hold
/// it (until then, a pod answered it again waits for them too).
#[derive(Debug, Clone, Copy)]
struct Known {
    until: Instant,
    published: bool,
}

/// The A and AAAA addresses of `answers`, each with its TTL.
pub fn addresses(answers: &[Record]) -> Vec<(IpAddr, u32)> {
    answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

impl Egress {
    /// Sets how new addresses reach the drivers (once, by the host).
    pub fn set_publish(&self, p: Publish) {
        let _ = self.publish.set(p);
    }

    /// The pods under egress by name are now `pods`: the others are forgotten, new ones start
    /// with no address. Returns the addresses each kept pod holds (to seed a set defined anew).
    pub fn cover(&self, pods: &BTreeSet<PodKey>) -> Vec<(PodKey, Vec<IpAddr>)> {
        let mut m = self.pods.lock().unwrap();
        m.retain(|k, _| pods.contains(k));
        for p in pods {
            m.entry(p.clone()).or_default();
        }
        m.iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(k, a)| (k.clone(), a.keys().copied().collect()))
            .collect()
    }

    /// The pod was answered `found` (address, TTL): known addresses live on until their new
    /// expiry, new ones are published before this returns. Nothing for a pod not covered.
    pub async fn learn(&self, pod: &PodKey, found: &[(IpAddr, u32)], min_ttl: Duration) {
        let now = Instant::now();
        let new: Vec<IpAddr> = {
            let mut m = self.pods.lock().unwrap();
            let Some(known) = m.get_mut(pod) else { return };
            let mut new = Vec::new();
            for (ip, ttl) in found {
                let until = now + Duration::from_secs(u64::from(*ttl)).max(min_ttl);
                let k = known.entry(*ip).or_insert(Known {
                    until,
                    published: false,
                });
                k.until = k.until.max(until);
                if !k.published {
                    new.push(*ip);
                }
            }
            new
        };
        if new.is_empty() {
            return;
        }
        if let Some(p) = self.publish.get() {
            p(pod.clone(), new.clone()).await;
        }
        let mut m = self.pods.lock().unwrap();
        if let Some(known) = m.get_mut(pod) {
            for ip in &new {
                if let Some(k) = known.get_mut(ip) {
                    k.published = true;
                }
            }
        }
    }

    /// Takes out the addresses whose time ran out by `now`, by pod.
    pub fn expire(&self, now: Instant) -> Vec<(PodKey, Vec<IpAddr>)> {
        let mut m = self.pods.lock().unwrap();
        let mut out = Vec::new();
        for (k, known) in m.iter_mut() {
            let gone: Vec<IpAddr> = known
                .iter()
                .filter(|(_, k)| k.until <= now)
                .map(|(ip, _)| *ip)
                .collect();
            if !gone.is_empty() {
                for ip in &gone {
                    known.remove(ip);
                }
                out.push((k.clone(), gone));
            }
        }
        out
    }

    /// Addresses a pod may reach now, with the time left (for `netletctl` and tests).
    pub fn allowed(&self, pod: &PodKey) -> Vec<(IpAddr, Duration)> {
        let now = Instant::now();
        let m = self.pods.lock().unwrap();
        let mut v: Vec<_> = m
            .get(pod)
            .into_iter()
            .flatten()
            .map(|(ip, k)| (*ip, k.until.saturating_duration_since(now)))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodKey {
        ("shop".into(), "web-0".into())
    }

    #[tokio::test]
    async fn answers_live_for_their_ttl_or_the_minimum() {
        let e = Egress::default();
        let published = std::sync::Arc::new(Mutex::new(Vec::new()));
        let p = published.clone();
        e.set_publish(Box::new(move |k, ips| {
            p.lock().unwrap().push((k, ips));
            Box::pin(async {})
        }));
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "2001:db8::10".parse().unwrap();
        // Not covered: nothing learned.
        e.learn(&pod(), &[(a, 60)], Duration::from_secs(30)).await;
        assert!(published.lock().unwrap().is_empty());
        e.cover(&[pod()].into());
        e.learn(&pod(), &[(a, 5), (b, 100)], Duration::from_secs(30))
            .await;
        // Known again: published once only.
        e.learn(&pod(), &[(a, 5)], Duration::from_secs(30)).await;
        assert_eq!(*published.lock().unwrap(), vec![(pod(), vec![a, b])]);
        let left = e.allowed(&pod());
        assert_eq!(left.len(), 2);
        // a: TTL 5 s raised to the 30 s minimum; b: its own 100 s.
        assert!(left[0].1 > Duration::from_secs(25) && left[0].1 <= Duration::from_secs(30));
        assert!(left[1].1 > Duration::from_secs(95));
        let now = Instant::now();
        assert!(e.expire(now).is_empty());
        assert_eq!(
            e.expire(now + Duration::from_secs(31)),
            vec![(pod(), vec![a])]
        );
        // A pod no longer covered is forgotten.
        e.cover(&BTreeSet::new());
        assert!(e.allowed(&pod()).is_empty());
    }
}
