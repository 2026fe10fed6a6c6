//! The host's durable state under `--state-dir` (`netlet.redb`): attachments and device claims,
//! so a restarted host still knows what it attached. Typed records over the SDK's group-commit
//! store ([`netlet_sdk::store`]).

use std::path::Path;

use netlet_sdk::proto::{AllocateDeviceResponse, PodAttachments};
use netlet_sdk::store::{Store as Kv, StoreError};
use prost::Message;

const ATTACHMENTS: &str = "attachments";
const CLAIMS: &str = "device_claims";

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record did not decode.
    #[error("corrupt record {key}: {source}")]
    Decode {
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
}

/// Result with the store [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: Kv,
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| Error::Decode {
        key: key.to_string(),
        source,
    })
}

impl Store {
    /// Opens (or creates) `<dir>/netlet.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            kv: Kv::open(dir, "netlet.redb", &[ATTACHMENTS, CLAIMS])?,
        })
    }

    fn get<M: Message + Default>(&self, table: &'static str, key: &str) -> Result<Option<M>> {
        self.kv
            .get(table, key)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn all<M: Message + Default>(&self, table: &'static str) -> Result<Vec<M>> {
        self.kv
            .scan(table)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The attachments of a sandbox.
    pub fn attachment(&self, sandbox_id: &str) -> Result<Option<PodAttachments>> {
        self.get(ATTACHMENTS, sandbox_id)
    }

    /// Every attached sandbox, ordered by id.
    pub fn attachments(&self) -> Result<Vec<PodAttachments>> {
        self.all(ATTACHMENTS)
    }

    /// Stores (replaces) a sandbox's attachments durably.
    pub async fn put_attachment(&self, pod: &PodAttachments) -> Result<()> {
        let id = pod
            .sandbox
            .as_ref()
            .map(|s| s.id.as_str())
            .unwrap_or_default();
        Ok(self.kv.put(ATTACHMENTS, id, pod.encode_to_vec()).await?)
    }

    /// Removes a sandbox's record durably.
    pub async fn delete_attachment(&self, sandbox_id: &str) -> Result<()> {
        Ok(self.kv.delete(ATTACHMENTS, sandbox_id).await?)
    }

    /// Removes a detached sandbox's record without waiting for the disk (on it within
    /// [`netlet_sdk::store::FLUSH_AFTER`]). Losing it in a crash brings back only the record of
    /// a pod the runtime has let go: the next DetachPod or the runtime's GarbageCollect (which
    /// lists the sandboxes that exist) removes it again; no address is handed out twice, since
    /// the drivers hold addresses by their own records.
    pub async fn forget_attachment(&self, sandbox_id: &str) -> Result<()> {
        Ok(self.kv.delete_lazy(ATTACHMENTS, sandbox_id).await?)
    }

    /// A device claim's allocation.
    pub fn claim(&self, claim_uid: &str) -> Result<Option<AllocateDeviceResponse>> {
        self.get(CLAIMS, claim_uid)
    }

    /// Every device claim.
    pub fn claims(&self) -> Result<Vec<AllocateDeviceResponse>> {
        self.all(CLAIMS)
    }

    /// Stores a claim's allocation durably.
    pub async fn put_claim(&self, alloc: &AllocateDeviceResponse) -> Result<()> {
        Ok(self
            .kv
            .put(CLAIMS, &alloc.claim_uid, alloc.encode_to_vec())
            .await?)
    }

    /// Removes a claim durably.
    pub async fn delete_claim(&self, claim_uid: &str) -> Result<()> {
        Ok(self.kv.delete(CLAIMS, claim_uid).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::PodSandbox;

    #[tokio::test]
    async fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let pod = PodAttachments {
            sandbox: Some(PodSandbox {
                id: "p1".into(),
                ..Default::default()
            }),
            attachments: vec![],
        };
        s.put_attachment(&pod).await.unwrap();
        assert_eq!(s.attachment("p1").unwrap(), Some(pod));
        assert_eq!(s.attachments().unwrap().len(), 1);
        s.delete_attachment("p1").await.unwrap();
        assert!(s.attachment("p1").unwrap().is_none());
    }
}
