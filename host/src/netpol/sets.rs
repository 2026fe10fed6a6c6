//! Shared address sets: what a selector, an ipBlock or a list of networks stands for, named by
//! what it is (the same selector in two policies is one set), with its elements kept up to date
//! as pods, namespaces and nodes come and go. A pod that starts matching a selector changes the
//! elements of the sets whose definition it matches, never the policies that name them, so the
//! bytes sent for it do not grow with the number of policies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use netlet_sdk::proto::{AddressSet, AddressSetChange, LabelSelector};

use super::{Cluster, PodInfo};

/// Which namespaces a pod set takes pods from.
#[derive(Debug, Clone, PartialEq)]
pub enum Namespaces {
    /// The one namespace of that name (a NetworkPolicy's own).
    Named(String),
    /// Those whose labels the selector matches.
    Selected(LabelSelector),
}

/// What a set stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum SetDef {
    /// Pods: of this node only (`local`: the pods a policy applies to) or of the cluster (peers),
    /// in `namespaces`, matching `pods` (none: every pod there).
    Pods {
        /// This node's pods only.
        local: bool,
        /// Where from.
        namespaces: Namespaces,
        /// Which pods.
        pods: Option<LabelSelector>,
    },
    /// Fixed prefixes (an ipBlock minus its exceptions, a list of networks), non-overlapping.
    Prefixes(BTreeSet<IpNet>),
    /// The addresses of the nodes whose labels the selector matches.
    Nodes(LabelSelector),
    /// One pod of this node, by namespace and name.
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// What the node-local DNS server answered a pod of this node (egress by name): elements
    /// come and go with the answers ([`Sets::learn`]), not with the cluster.
    Answers {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
}

fn canonical_selector(s: &LabelSelector) -> String {
    let mut labels: Vec<_> = s.match_labels.iter().collect();
    labels.sort();
    let mut exprs: Vec<String> = s
        .match_expressions
        .iter()
        .map(|e| {
            let mut v = e.values.clone();
            v.sort();
            v.dedup();
            format!("{}|{}|{}", e.key, e.operator, v.join(","))
        })
        .collect();
    exprs.sort();
    exprs.dedup();
    format!("{labels:?}{exprs:?}")
}

impl SetDef {
    /// The set's name: a kind letter and a digest of the canonical definition (label order
    /// and repeated requirements do not change it).
    pub fn name(&self) -> String {
        let (kind, text) = match self {
            SetDef::Pods {
                local,
                namespaces,
                pods,
            } => (
                if *local { "l" } else { "p" },
                format!(
                    "{}#{}",
                    match namespaces {
                        Namespaces::Named(n) => format!("ns={n}"),
                        Namespaces::Selected(s) => format!("sel={}", canonical_selector(s)),
                    },
                    pods.as_ref()
                        .map(canonical_selector)
                        .unwrap_or_else(|| "*".into())
                ),
            ),
            SetDef::Prefixes(p) => ("c", format!("{p:?}")),
            SetDef::Nodes(s) => ("n", canonical_selector(s)),
            SetDef::Pod { namespace, name } => ("o", format!("{namespace}/{name}")),
            SetDef::Answers { namespace, name } => ("a", format!("{namespace}/{name}")),
        };
        format!("{kind}-{:016x}", netlet_sdk::hash::fnv1a(text.as_bytes()))
    }

    /// Whether `pod` belongs to the set (pod sets only).
    fn admits(&self, pod: &PodInfo, cluster: &Cluster) -> bool {
        if let SetDef::Pod { namespace, name } = self {
            return pod.local && pod.namespace == *namespace && pod.name == *name;
        }
        let SetDef::Pods {
            local,
            namespaces,
            pods,
        } = self
        else {
            return false;
        };
        if *local && !pod.local {
            return false;
        }
        let in_ns = match namespaces {
            Namespaces::Named(n) => pod.namespace == *n,
            Namespaces::Selected(s) => {
                netlet_sdk::labels::matches(s, &cluster.namespace_labels(&pod.namespace))
            }
        };
        in_ns
            && pods
                .as_ref()
                .is_none_or(|s| netlet_sdk::labels::matches(s, &pod.labels))
    }

    /// Every element the set has in `cluster`.
    fn members(&self, cluster: &Cluster) -> BTreeSet<IpNet> {
        match self {
            SetDef::Pods { .. } | SetDef::Pod { .. } => cluster
                .all_pods()
                .filter(|p| self.admits(p, cluster))
                .flat_map(|p| p.addresses.iter().map(|a| IpNet::from(*a)))
                .collect(),
            SetDef::Prefixes(p) => p.clone(),
            SetDef::Nodes(s) => cluster
                .nodes
                .iter()
                .filter(|n| netlet_sdk::labels::matches(s, &n.labels))
                .flat_map(|n| n.addresses.iter().map(|a| IpNet::from(*a)))
                .collect(),
            SetDef::Answers { .. } => BTreeSet::new(),
        }
    }
}

/// `block` minus `except`, as non-overlapping prefixes.
pub fn subtract(block: IpNet, except: &[IpNet]) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    let mut todo = vec![block];
    while let Some(n) = todo.pop() {
        if except.iter().any(|e| e.contains(&n)) {
            continue;
        }
        if !except
            .iter()
            .any(|e| n.contains(e) || n.contains(&e.network()))
        {
            out.insert(n);
            continue;
        }
        // An exception lies strictly inside: split in halves.
        if let Ok(halves) = n.subnets(n.prefix_len() + 1) {
            todo.extend(halves);
        }
    }
    out
}

/// Prefixes made non-overlapping (a prefix inside another is dropped).
pub fn disjoint(nets: impl IntoIterator<Item = IpNet>) -> BTreeSet<IpNet> {
    IpNet::aggregate(&nets.into_iter().map(|n| n.trunc()).collect())
        .into_iter()
        .collect()
}

/// The sets the policies name, with their elements.
#[derive(Debug, Default)]
pub struct Sets {
    defs: BTreeMap<String, SetDef>,
    members: BTreeMap<String, BTreeSet<IpNet>>,
}

fn element(n: &IpNet) -> String {
    netlet_sdk::state::element_string(*n)
}

impl Sets {
    /// Registers `def` (computing its elements on first sight) and returns its name.
    pub fn define(&mut self, def: SetDef, cluster: &Cluster) -> String {
        let name = def.name();
        if !self.defs.contains_key(&name) {
            self.members.insert(name.clone(), def.members(cluster));
            self.defs.insert(name.clone(), def);
        }
        name
    }

    /// Elements of a set.
    pub fn members(&self, name: &str) -> Option<&BTreeSet<IpNet>> {
        self.members.get(name)
    }

    /// Forgets the sets `names` (no policy names them any more); returns those it had.
    pub fn forget(&mut self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .filter(|n| {
                self.members.remove(*n);
                self.defs.remove(*n).is_some()
            })
            .cloned()
            .collect()
    }

    /// The set as a whole, for a batch.
    pub fn full(&self, name: &str) -> AddressSet {
        AddressSet {
            name: name.to_string(),
            elements: self
                .members
                .get(name)
                .into_iter()
                .flatten()
                .map(element)
                .collect(),
        }
    }

    /// Adds `add` to and removes `remove` from an answers set ([`SetDef::Answers`]); returns the
    /// change, `None` when the set is not defined or nothing changed.
    pub fn learn(
        &mut self,
        name: &str,
        add: &[IpNet],
        remove: &[IpNet],
    ) -> Option<AddressSetChange> {
        if !matches!(self.defs.get(name), Some(SetDef::Answers { .. })) {
            return None;
        }
        let m = self.members.entry(name.to_string()).or_default();
        let removed: Vec<String> = remove
            .iter()
            .filter(|n| !add.contains(n) && m.remove(n))
            .map(element)
            .collect();
        let added: Vec<String> = add.iter().filter(|n| m.insert(**n)).map(element).collect();
        (!added.is_empty() || !removed.is_empty()).then(|| AddressSetChange {
            name: name.to_string(),
            add: added,
            remove: removed,
        })
    }

    /// Brings every set's elements from `old` to `new` and returns the changes. When only
    /// pods changed, only they are looked at, against every set (cost: changed pods × sets);
    /// a change of namespace labels or nodes recomputes the sets.
    pub fn update(&mut self, old: &Cluster, new: &Cluster) -> Vec<AddressSetChange> {
        let mut next: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
        if old.namespaces != new.namespaces || old.nodes != new.nodes {
            for (name, def) in &self.defs {
                if !matches!(def, SetDef::Answers { .. }) {
                    next.insert(name.clone(), def.members(new));
                }
            }
        } else {
            let key = |p: &PodInfo| (p.namespace.clone(), p.name.clone(), p.local);
            // Other nodes' pods unchanged (the same shared list): only this node's are compared.
            let same_remote = std::sync::Arc::ptr_eq(&old.remote, &new.remote);
            fn pods(c: &Cluster, same_remote: bool) -> Vec<&PodInfo> {
                if same_remote {
                    c.pods.iter().collect()
                } else {
                    c.all_pods().collect()
                }
            }
            let before: HashMap<_, &PodInfo> = pods(old, same_remote)
                .into_iter()
                .map(|p| (key(p), p))
                .collect();
            let after: HashMap<_, &PodInfo> = pods(new, same_remote)
                .into_iter()
                .map(|p| (key(p), p))
                .collect();
            // The addresses whose owner or owner's labels changed.
            let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
            for (k, p) in &before {
                if after.get(k) != Some(p) {
                    touched.extend(p.addresses.iter().copied());
                }
            }
            for (k, p) in &after {
                if before.get(k) != Some(p) {
                    touched.extend(p.addresses.iter().copied());
                }
            }
            if touched.is_empty() {
                return Vec::new();
            }
            // Every pod now holding a touched address (a remote one a local pod no longer
            // shadows, too).
            let owners: Vec<&PodInfo> = new
                .all_pods()
                .filter(|p| p.addresses.iter().any(|a| touched.contains(a)))
                .collect();
            for (name, def) in &self.defs {
                if !matches!(def, SetDef::Pods { .. } | SetDef::Pod { .. }) {
                    continue;
                }
                let mut m = self.members.get(name).cloned().unwrap_or_default();
                for a in &touched {
                    m.remove(&IpNet::from(*a));
                }
                for p in owners.iter().filter(|p| def.admits(p, new)) {
                    m.extend(
                        p.addresses
                            .iter()
                            .filter(|a| touched.contains(a))
                            .map(|a| IpNet::from(*a)),
                    );
                }
                next.insert(name.clone(), m);
            }
        }
        let mut out = Vec::new();
        for (name, m) in next {
            let was = self.members.get(&name).cloned().unwrap_or_default();
            if was == m {
                continue;
            }
            out.push(AddressSetChange {
                name: name.clone(),
                add: m.difference(&was).map(element).collect(),
                remove: was.difference(&m).map(element).collect(),
            });
            self.members.insert(name, m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_block_minus_its_exceptions() {
        // Checked address by address against the definition over a /24.
        let block = net("10.0.0.0/24");
        let except = [net("10.0.0.64/26"), net("10.0.0.5/32")];
        let parts = subtract(block, &except);
        for last in 0..=255u8 {
            let a: IpAddr = [10, 0, 0, last].into();
            let want = block.contains(&a) && !except.iter().any(|e| e.contains(&a));
            let got = parts.iter().any(|p| p.contains(&a));
            assert_eq!(got, want, "{a}");
        }
        let total: u32 = parts.iter().map(|p| 1u32 << (32 - p.prefix_len())).sum();
        assert_eq!(total, 256 - 64 - 1, "disjoint");
        assert_eq!(subtract(block, &[]), BTreeSet::from([block]));
        assert!(subtract(block, &[net("10.0.0.0/16")]).is_empty());
    }

    fn pod(ns: &str, name: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            addresses: vec![ip.parse().unwrap()],
            local: true,
            ..Default::default()
        }
    }

    /// Two namespaces as in the upstream netpol e2e: x and y, pods a, b, c in each.
    fn cluster() -> Cluster {
        let mut pods = Vec::new();
        for (n, ns) in ["x", "y"].iter().enumerate() {
            for (m, p) in ["a", "b", "c"].iter().enumerate() {
                pods.push(pod(ns, p, &format!("10.0.{n}.{}", m + 1)));
            }
        }
        Cluster {
            pods,
            namespaces: ["x", "y"]
                .iter()
                .map(|n| (n.to_string(), [("ns".to_string(), n.to_string())].into()))
                .collect(),
            ..Default::default()
        }
    }

    fn sel(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// The pods (namespace/name) a set holds in `c`.
    fn names(c: &Cluster, def: SetDef) -> Vec<String> {
        let mut sets = Sets::default();
        let name = sets.define(def, c);
        let members = sets.members(&name).cloned().unwrap_or_default();
        let mut out: Vec<String> = c
            .all_pods()
            .filter(|p| {
                p.addresses
                    .iter()
                    .any(|a| members.contains(&IpNet::from(*a)))
            })
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        out.sort();
        out
    }

    // The NetworkPolicy peer kinds as the host maps them onto sets (a pod selector alone: the
    // policy's namespace; a namespace selector: the namespaces it matches; both: AND).
    #[test]
    fn pod_sets_resolve_as_the_api_defines() {
        let c = cluster();
        let pods = |namespaces, pods| SetDef::Pods {
            local: false,
            namespaces,
            pods,
        };
        // The pods a policy of x selecting pod=a applies to; an empty selector: the namespace.
        let selected = |s: LabelSelector| SetDef::Pods {
            local: true,
            namespaces: Namespaces::Named("x".into()),
            pods: Some(s),
        };
        assert_eq!(names(&c, selected(sel(&[("pod", "a")]))), ["x/a"]);
        assert_eq!(
            names(&c, selected(LabelSelector::default())),
            ["x/a", "x/b", "x/c"],
            "no selector: the namespace"
        );
        assert_eq!(
            names(
                &c,
                pods(Namespaces::Named("x".into()), Some(sel(&[("pod", "b")])))
            ),
            ["x/b"],
            "a pod selector alone: the policy's namespace only"
        );
        assert_eq!(
            names(&c, pods(Namespaces::Selected(sel(&[("ns", "y")])), None)),
            ["y/a", "y/b", "y/c"],
            "a namespace selector alone: every pod there"
        );
        assert_eq!(
            names(
                &c,
                pods(
                    Namespaces::Selected(sel(&[("ns", "y")])),
                    Some(sel(&[("pod", "b")]))
                )
            ),
            ["y/b"],
            "both in one peer: AND"
        );
        assert_eq!(
            names(
                &c,
                pods(Namespaces::Selected(sel(&[])), Some(sel(&[("pod", "c")])))
            ),
            ["x/c", "y/c"],
            "an empty namespace selector: every namespace"
        );
        assert_eq!(
            names(
                &c,
                pods(
                    Namespaces::Selected(sel(&[("kubernetes.io/metadata.name", "y")])),
                    None
                )
            ),
            ["y/a", "y/b", "y/c"],
            "the name label is always there"
        );
    }

    #[test]
    fn names_follow_meaning_not_spelling() {
        let sel = |pairs: &[(&str, &str)]| LabelSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let a = SetDef::Pods {
            local: false,
            namespaces: Namespaces::Named("x".into()),
            pods: Some(sel(&[("a", "1"), ("b", "2")])),
        };
        let b = SetDef::Pods {
            local: false,
            namespaces: Namespaces::Named("x".into()),
            pods: Some(sel(&[("b", "2"), ("a", "1")])),
        };
        assert_eq!(a.name(), b.name());
        let local = SetDef::Pods {
            local: true,
            namespaces: Namespaces::Named("x".into()),
            pods: Some(sel(&[("a", "1"), ("b", "2")])),
        };
        assert_ne!(a.name(), local.name());
        assert!(a.name().len() <= 64 && a.name().starts_with("p-"));
    }
}
