//! The node's policies as the host holds them: what callers of the host socket applied, in their
//! own (epoch, generation), and the table drivers are told, in the host's epoch. Keeping the two
//! numberings apart is what lets a caller and the host restart independently: a caller's new
//! epoch is a full sync of the caller's policies; the host's new epoch is a full sync to every
//! driver.

use netlet_sdk::{
    generation::{Applied, Batch},
    parts::Parts,
    proto::{ApplyPolicyRequest, ListPoliciesResponse},
    state::PolicyTable,
};
use tonic::Status;

/// Policies of the host socket's callers and the driver-facing table.
#[derive(Debug)]
pub struct PolicyView {
    /// What drivers are told, in the host's epoch; starts at generation 1, empty.
    pub table: PolicyTable,
    socket: Applied,
    socket_parts: Parts<ApplyPolicyRequest>,
}

impl PolicyView {
    /// An empty view whose batches to drivers carry `epoch`.
    pub fn new(epoch: u64) -> Self {
        let mut table = PolicyTable::default();
        // An empty full sync onto an empty table always applies: every driver that registers
        // gets a full sync, even an empty one.
        let _ = table.apply(&ApplyPolicyRequest {
            epoch,
            generation: 1,
            full_sync: true,
            ..Default::default()
        });
        Self {
            table,
            socket: Applied::default(),
            socket_parts: Parts::default(),
        }
    }

    /// Applies a validated batch from a caller of the host socket. Returns what that caller has
    /// now applied and, unless the batch was a replay, the batch for drivers (already applied to
    /// the table).
    pub fn apply_socket(
        &mut self,
        req: &ApplyPolicyRequest,
    ) -> Result<(Applied, Option<ApplyPolicyRequest>), Status> {
        // A full sync in parts is kept until its last part, then taken as one batch.
        let Some(whole) = self.socket_parts.take(req)? else {
            return Ok((self.socket, None));
        };
        let req = whole.as_ref();
        let batch = Batch::from(req);
        if !self.socket.check(batch)? {
            return Ok((self.socket, None));
        }
        let at = self.table.applied();
        let out = ApplyPolicyRequest {
            epoch: at.epoch,
            generation: at.generation + 1,
            full_sync_continues: false,
            full_sync_part: 0,
            ..req.clone()
        };
        self.table.apply(&out)?;
        self.socket = Applied::after(batch);
        Ok((self.socket, Some(out)))
    }

    /// The policies, with the socket callers' epoch and generation.
    pub fn list(&self) -> ListPoliciesResponse {
        ListPoliciesResponse {
            applied_generation: self.socket.generation,
            applied_epoch: self.socket.epoch,
            ..self.table.list()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::{HostnameGrant, PolicyKey, PolicyKind};

    fn grant(name: &str) -> HostnameGrant {
        HostnameGrant {
            key: Some(PolicyKey {
                kind: PolicyKind::HostnameGrant as i32,
                namespace: String::new(),
                name: name.into(),
            }),
            namespaces: vec!["*".into()],
            hostnames: vec!["a.example.com".into()],
            module: String::new(),
        }
    }

    #[test]
    fn callers_and_drivers_are_numbered_apart() {
        let mut v = PolicyView::new(42);
        let first = ApplyPolicyRequest {
            epoch: 5,
            generation: 9,
            full_sync: true,
            hostname_grants: vec![grant("a")],
            ..Default::default()
        };
        let (applied, out) = v.apply_socket(&first).unwrap();
        assert_eq!((applied.epoch, applied.generation), (5, 9));
        let out = out.unwrap();
        assert_eq!((out.epoch, out.generation, out.full_sync), (42, 2, true));
        // A replay changes nothing and sends nothing.
        assert!(v.apply_socket(&first).unwrap().1.is_none());
        // The caller restarted: its full sync at generation 1 applies and replaces.
        let again = ApplyPolicyRequest {
            epoch: 6,
            generation: 1,
            full_sync: true,
            hostname_grants: vec![grant("b")],
            ..Default::default()
        };
        let (_, out) = v.apply_socket(&again).unwrap();
        assert_eq!(out.unwrap().generation, 3);
        let l = v.list();
        assert_eq!((l.applied_epoch, l.applied_generation), (6, 1));
        assert_eq!(l.hostname_grants, vec![grant("b")]);
    }
}
