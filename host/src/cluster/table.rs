//! The node table: what every source wants, one entry per node name, with a generation and a
//! log of which names each generation changed (so a driver behind by a few changes is sent just
//! those). Knows nothing of RPC.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use netlet_sdk::proto::{ClusterNode, ProgramNodesRequest};
use tokio::sync::watch;

use crate::services::sources::Source;

/// Changes remembered for deltas; a driver further behind gets the whole table.
pub const LOG_LEN: usize = 4096;

struct Entry {
    source: Source,
    node: ClusterNode,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    entries: BTreeMap<String, Entry>,
    /// (generation, name) of every change, oldest first, at most [`LOG_LEN`].
    log: VecDeque<(u64, String)>,
    /// Names a source said it holds while it lists again (between `Init` and `InitDone`).
    relisting: BTreeMap<Source, BTreeSet<String>>,
    /// The sources of Node objects the node's config names, not listed whole yet.
    unread: BTreeSet<Source>,
}

impl Inner {
    fn changed(&mut self, name: &str) {
        self.generation += 1;
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back((self.generation, name.to_string()));
    }

    /// Writes `node` for `source`; false when another source holds the name (its entry stays)
    /// or nothing changed.
    fn upsert(&mut self, source: Source, node: ClusterNode) -> bool {
        if let Some(set) = self.relisting.get_mut(&source) {
            set.insert(node.name.clone());
        }
        match self.entries.get(&node.name) {
            Some(e) if e.source != source => {
                tracing::warn!(node = %node.name, owner = e.source.as_str(), from = source.as_str(), "node named by two sources; the first keeps it");
                return false;
            }
            Some(e) if e.node == node => return false,
            _ => {}
        }
        let name = node.name.clone();
        self.entries.insert(name.clone(), Entry { source, node });
        self.changed(&name);
        true
    }

    fn delete(&mut self, source: Source, name: &str) -> bool {
        if self.entries.get(name).is_none_or(|e| e.source != source) {
            return false;
        }
        self.entries.remove(name);
        self.changed(name);
        true
    }
}

/// The node table.
pub struct Nodes {
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
    epoch: u64,
}

impl Nodes {
    /// An empty table whose batches carry `epoch` (the host's incarnation).
    /// The empty table is generation 1 (a driver's 0 means "applied nothing").
    pub fn new(epoch: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 1,
                ..Default::default()
            }),
            generation: watch::channel(1).0,
            epoch,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, generation: u64) {
        self.generation.send_if_modified(|g| {
            let newer = *g != generation;
            *g = generation;
            newer
        });
    }

    /// The sources whose Node objects the table waits for: until each has been listed whole,
    /// [`Nodes::since`] answers nothing, so a driver that outlived a host restart keeps its
    /// routes instead of taking an empty table for the cluster.
    pub fn expect(&self, sources: impl IntoIterator<Item = Source>) {
        self.lock().unread = sources.into_iter().collect();
    }

    /// Whether every expected source has been listed whole.
    pub fn ready(&self) -> bool {
        self.lock().unread.is_empty()
    }

    /// Adds or replaces one node for `source`.
    pub fn upsert(&self, source: Source, node: ClusterNode) {
        let g = {
            let mut i = self.lock();
            i.upsert(source, node);
            i.generation
        };
        self.publish(g);
    }

    /// Removes one node of `source`.
    pub fn delete(&self, source: Source, name: &str) {
        let g = {
            let mut i = self.lock();
            i.delete(source, name);
            i.generation
        };
        self.publish(g);
    }

    /// `source` lists its nodes again: what it does not name before [`Nodes::relisted`] goes.
    pub fn relisting(&self, source: Source) {
        self.lock().relisting.insert(source, BTreeSet::new());
    }

    /// `source`'s listing is complete: its entries not named since [`Nodes::relisting`] go.
    pub fn relisted(&self, source: Source) {
        let g = {
            let mut i = self.lock();
            let seen = i.relisting.remove(&source).unwrap_or_default();
            let gone: Vec<String> = i
                .entries
                .iter()
                .filter(|(n, e)| e.source == source && !seen.contains(*n))
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                i.delete(source, &n);
            }
            if i.unread.remove(&source) && i.unread.is_empty() {
                // Complete now: wake the fan-out even if nothing changed.
                i.changed("");
            }
            i.generation
        };
        self.publish(g);
    }

    /// Replaces every node of `source` with `nodes` (a manifests directory read again).
    pub fn replace(&self, source: Source, nodes: Vec<ClusterNode>) {
        self.relisting(source);
        {
            let mut i = self.lock();
            for n in nodes {
                i.upsert(source, n);
            }
        }
        self.relisted(source);
    }

    /// The generation now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Wakes on every new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The nodes, by name.
    pub fn list(&self) -> Vec<ClusterNode> {
        self.lock()
            .entries
            .values()
            .map(|e| e.node.clone())
            .collect()
    }

    /// The whole table as a full sync.
    pub fn full_sync(&self) -> ProgramNodesRequest {
        let i = self.lock();
        ProgramNodesRequest {
            epoch: self.epoch,
            generation: i.generation,
            full_sync: true,
            upserts: i.entries.values().map(|e| e.node.clone()).collect(),
            ..Default::default()
        }
    }

    /// What a driver that applied generation `have` needs: nothing (`None`: it is current), the
    /// names changed since (a delta), or the whole table (it applied nothing, or the log no
    /// longer reaches back to `have`). Costs the number of changes since `have`, not the size
    /// of the table.
    pub fn since(&self, have: u64) -> Option<ProgramNodesRequest> {
        let i = self.lock();
        let now = i.generation;
        if have == now || !i.unread.is_empty() {
            return None;
        }
        let reaches = i.log.front().is_some_and(|(g, _)| *g <= have + 1);
        if have == 0 || have > now || !reaches {
            drop(i);
            return Some(self.full_sync());
        }
        let mut names = BTreeSet::new();
        for (_, n) in i.log.iter().rev().take_while(|(g, _)| *g > have) {
            names.insert(n.as_str());
        }
        let mut r = ProgramNodesRequest {
            epoch: self.epoch,
            generation: now,
            ..Default::default()
        };
        // "" marks the table's completion, no node.
        for n in names.into_iter().filter(|n| !n.is_empty()) {
            match i.entries.get(n) {
                Some(e) => r.upserts.push(e.node.clone()),
                None => r.deletes.push(n.to_string()),
            }
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addr: &str) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            addresses: vec![addr.into()],
            pod_cidrs: vec![],
            local: false,
        }
    }

    #[test]
    fn deltas_carry_only_what_changed_since() {
        let t = Nodes::new(7);
        assert_eq!(
            t.since(0).unwrap().upserts.len(),
            0,
            "an empty table is a full sync too"
        );
        for i in 0..100 {
            t.upsert(Source::Kubernetes, node(&format!("n{i}"), "192.0.2.1"));
        }
        let g = t.generation();
        assert_eq!(g, 101);
        assert!(t.since(g).is_none());
        t.upsert(Source::Kubernetes, node("n5", "192.0.2.9"));
        t.delete(Source::Kubernetes, "n6");
        t.upsert(Source::Kubernetes, node("n5", "192.0.2.9")); // no change, no generation
        let d = t.since(g).unwrap();
        assert!(!d.full_sync);
        assert_eq!((d.epoch, d.generation), (7, g + 2));
        assert_eq!(d.upserts, vec![node("n5", "192.0.2.9")]);
        assert_eq!(d.deletes, vec!["n6".to_string()]);
        let f = t.since(0).unwrap();
        assert!(f.full_sync);
        assert_eq!(f.upserts.len(), 99);
    }

    #[test]
    fn a_driver_behind_the_log_gets_the_whole_table() {
        let t = Nodes::new(1);
        t.upsert(Source::Kubernetes, node("a", "192.0.2.1"));
        for i in 0..LOG_LEN {
            t.upsert(
                Source::Kubernetes,
                node("b", &format!("10.0.{}.{}", i / 250, i % 250)),
            );
        }
        assert!(t.since(1).unwrap().full_sync);
        assert!(!t.since(t.generation() - 1).unwrap().full_sync);
    }

    #[test]
    fn nothing_is_sent_before_every_source_was_listed() {
        let t = Nodes::new(1);
        t.expect([Source::Kubernetes, Source::Manifests]);
        t.relisting(Source::Kubernetes);
        t.upsert(Source::Kubernetes, node("a", "192.0.2.1"));
        assert!(t.since(0).is_none() && !t.ready());
        t.relisted(Source::Kubernetes);
        assert!(t.since(0).is_none(), "the manifests are not read yet");
        t.replace(Source::Manifests, vec![node("b", "192.0.2.2")]);
        assert!(t.ready());
        let f = t.since(0).unwrap();
        assert_eq!(f.upserts.len(), 2);
        // A driver that had the table before completion gets no phantom entry.
        let d = t.since(f.generation - 1).unwrap();
        assert!(d.upserts.iter().all(|n| !n.name.is_empty()) && d.deletes.is_empty());
    }

    #[test]
    fn sources_own_their_names_and_relists_remove_the_unnamed() {
        let t = Nodes::new(1);
        t.upsert(Source::Manifests, node("a", "192.0.2.1"));
        t.upsert(Source::Kubernetes, node("a", "192.0.2.2"));
        assert_eq!(
            t.list(),
            vec![node("a", "192.0.2.1")],
            "the first source keeps it"
        );
        t.delete(Source::Kubernetes, "a");
        assert_eq!(t.list().len(), 1);
        t.upsert(Source::Kubernetes, node("b", "192.0.2.2"));
        t.upsert(Source::Kubernetes, node("c", "192.0.2.3"));
        t.relisting(Source::Kubernetes);
        t.upsert(Source::Kubernetes, node("c", "192.0.2.3"));
        t.relisted(Source::Kubernetes);
        let names: Vec<String> = t.list().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["a", "c"]);
        t.replace(Source::Manifests, vec![]);
        let names: Vec<String> = t.list().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["c"]);
    }
}
