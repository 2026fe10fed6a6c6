//! The embedded database (redb) under `--state-dir`: attachments and device claims, so a
//! restarted host still knows what it attached.
//!
//! Writes go through one writer thread that batches whatever is queued into a single durable
//! transaction (group commit): concurrent attaches share one fsync instead of queueing behind
//! one another. Reads use redb's MVCC read transactions directly.

use std::{path::Path, sync::Arc};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use netlet_sdk::proto::{AllocateDeviceResponse, PodAttachments};

const ATTACHMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attachments");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("device_claims");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the state directory failed.
    #[error("state dir {path}: {source}")]
    Dir {
        /// Directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record did not decode.
    #[error("corrupt record {key}: {source}")]
    Decode {
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
    /// The writer thread is gone.
    #[error("store writer stopped")]
    WriterGone,
}

/// Result with the store [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug)]
enum Table {
    Attachments,
    Claims,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Attachments => ATTACHMENTS,
            Table::Claims => CLAIMS,
        }
    }
}

struct Write {
    table: Table,
    key: String,
    value: Option<Vec<u8>>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writes: std::sync::mpsc::Sender<Write>,
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Db(e.into())
}

impl Store {
    /// Opens (or creates) `<dir>/netlet.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Arc::new(Database::create(dir.join("netlet.redb")).map_err(db_err)?);
        {
            // Create the tables so that read transactions find them.
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(ATTACHMENTS).map_err(db_err)?;
            tx.open_table(CLAIMS).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Write>();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("netlet-store".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(|source| Error::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Self { db, writes: tx })
    }

    async fn write(&self, table: Table, key: &str, value: Option<Vec<u8>>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write {
                table,
                key: key.to_string(),
                value,
                done,
            })
            .map_err(|_| Error::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(Error::Db(redb::Error::Io(std::io::Error::other(msg)))),
            Err(_) => Err(Error::WriterGone),
        }
    }

    fn get<M: Message + Default>(&self, table: Table, key: &str) -> Result<Option<M>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table.def()).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            None => Ok(None),
            Some(v) => M::decode(v.value())
                .map(Some)
                .map_err(|source| Error::Decode {
                    key: key.to_string(),
                    source,
                }),
        }
    }

    fn all<M: Message + Default>(&self, table: Table) -> Result<Vec<M>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table.def()).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(M::decode(v.value()).map_err(|source| Error::Decode {
                key: k.value().to_string(),
                source,
            })?);
        }
        Ok(out)
    }

    /// The attachments of a sandbox.
    pub fn attachment(&self, sandbox_id: &str) -> Result<Option<PodAttachments>> {
        self.get(Table::Attachments, sandbox_id)
    }

    /// Every attached sandbox, ordered by id.
    pub fn attachments(&self) -> Result<Vec<PodAttachments>> {
        self.all(Table::Attachments)
    }

    /// Stores (replaces) a sandbox's attachments durably.
    pub async fn put_attachment(&self, pod: &PodAttachments) -> Result<()> {
        let id = pod
            .sandbox
            .as_ref()
            .map(|s| s.id.as_str())
            .unwrap_or_default();
        self.write(Table::Attachments, id, Some(pod.encode_to_vec()))
            .await
    }

    /// Removes a sandbox's record durably.
    pub async fn delete_attachment(&self, sandbox_id: &str) -> Result<()> {
        self.write(Table::Attachments, sandbox_id, None).await
    }

    /// A device claim's allocation.
    pub fn claim(&self, claim_uid: &str) -> Result<Option<AllocateDeviceResponse>> {
        self.get(Table::Claims, claim_uid)
    }

    /// Every device claim.
    pub fn claims(&self) -> Result<Vec<AllocateDeviceResponse>> {
        self.all(Table::Claims)
    }

    /// Stores a claim's allocation durably.
    pub async fn put_claim(&self, alloc: &AllocateDeviceResponse) -> Result<()> {
        self.write(Table::Claims, &alloc.claim_uid, Some(alloc.encode_to_vec()))
            .await
    }

    /// Removes a claim durably.
    pub async fn delete_claim(&self, claim_uid: &str) -> Result<()> {
        self.write(Table::Claims, claim_uid, None).await
    }
}

fn writer(db: Arc<Database>, rx: std::sync::mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let res = commit(&db, &batch).map_err(|e| e.to_string());
        if let Err(e) = &res {
            tracing::error!(error = %e, writes = batch.len(), "store commit failed");
        }
        for w in batch {
            let _ = w.done.send(res.clone());
        }
    }
}

fn commit(db: &Database, batch: &[Write]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    for w in batch {
        let mut t = tx.open_table(w.table.def())?;
        match &w.value {
            Some(v) => {
                t.insert(w.key.as_str(), v.as_slice())?;
            }
            None => {
                t.remove(w.key.as_str())?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_sdk::proto::PodSandbox;

    fn pod(id: &str) -> PodAttachments {
        PodAttachments {
            sandbox: Some(PodSandbox {
                id: id.into(),
                ..Default::default()
            }),
            attachments: vec![],
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_batches_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let writes = (0..50).map(|i| {
                let s = s.clone();
                async move { s.put_attachment(&pod(&format!("p{i:02}"))).await }
            });
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
            s.delete_attachment("p00").await.unwrap();
            s.delete_attachment("never-existed").await.unwrap();
        }
        // The writer thread holds the database until its channel closes; reopen in a loop.
        let mut reopened = None;
        for _ in 0..10_000 {
            match Store::open(dir.path()) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let s = reopened.expect("database reopens once the writer has let go");
        let all = s.attachments().unwrap();
        assert_eq!(all.len(), 49);
        assert!(s.attachment("p00").unwrap().is_none());
        assert_eq!(s.attachment("p07").unwrap().unwrap(), pod("p07"));
    }
}
