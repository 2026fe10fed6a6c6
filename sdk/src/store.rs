//! A small durable key-value store for drivers and the host: redb underneath, named tables of
//! bytes, and one writer thread that batches whatever is queued into a single durable
//! transaction (group commit), so concurrent writers share one fsync instead of queueing behind
//! one another. Reads use redb's MVCC read transactions directly.

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating the directory or the writer thread failed.
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
    /// A table name was not declared at open.
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    /// The writer thread is gone.
    #[error("store writer stopped")]
    WriterGone,
}

type R<T> = std::result::Result<T, StoreError>;

/// One change: `value: None` deletes `key`.
#[derive(Debug, Clone)]
pub struct Change {
    /// Table (declared at open).
    pub table: &'static str,
    /// Key.
    pub key: String,
    /// New value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

struct Write {
    changes: Vec<Change>,
    /// Whether the caller waits for the changes to be on disk (else: visible at once, on disk
    /// with the next durable commit or within [`FLUSH_AFTER`]).
    durable: bool,
    done: oneshot::Sender<Result<(), String>>,
}

/// How long changes written without waiting for the disk may stay off it.
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tables: Arc<[&'static str]>,
    writes: std::sync::mpsc::Sender<Write>,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

fn def(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl Store {
    /// Opens (or creates) `<dir>/<file>` with `tables`, and starts the writer thread.
    pub fn open(dir: &Path, file: &str, tables: &[&'static str]) -> R<Self> {
        let dir_err = |source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        };
        // Attachments and allocations are the node's business only: the directory is 0700 and
        // the database 0600, whatever the umask, also when they existed before.
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let path = dir.join(file);
        let db = Arc::new(Database::create(&path).map_err(db_err)?);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(dir_err)?;
        {
            // Create the tables so that read transactions find them.
            let tx = db.begin_write().map_err(db_err)?;
            for t in tables {
                tx.open_table(def(t)).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Write>();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("netlet-store".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(dir_err)?;
        Ok(Self {
            db,
            tables: tables.into(),
            writes: tx,
        })
    }

    fn check(&self, table: &str) -> R<()> {
        if self.tables.contains(&table) {
            Ok(())
        } else {
            Err(StoreError::UnknownTable(table.to_string()))
        }
    }

    /// Applies `changes` atomically and durably (one transaction, possibly shared with other
    /// writers' changes).
    pub async fn write(&self, changes: Vec<Change>) -> R<()> {
        self.send(changes, true).await
    }

    async fn send(&self, changes: Vec<Change>, durable: bool) -> R<()> {
        for c in &changes {
            self.check(c.table)?;
        }
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write {
                changes,
                durable,
                done,
            })
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Db(redb::Error::Io(std::io::Error::other(msg)))),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Stores `value` under `key` durably.
    pub async fn put(&self, table: &'static str, key: &str, value: Vec<u8>) -> R<()> {
        self.write(vec![Change {
            table,
            key: key.to_string(),
            value: Some(value),
        }])
        .await
    }

    /// Removes `key` durably; a missing key is not an error.
    pub async fn delete(&self, table: &'static str, key: &str) -> R<()> {
        self.write(vec![Change {
            table,
            key: key.to_string(),
            value: None,
        }])
        .await
    }

    /// Removes `key` without waiting for the disk: readers see it gone when this returns; it is
    /// on disk with the next durable commit, or within [`FLUSH_AFTER`]. For removals whose loss
    /// in a crash is repaired at the next start (a forgotten attachment found again and
    /// cleaned up), not for anything whose loss would hand out something twice.
    pub async fn delete_lazy(&self, table: &'static str, key: &str) -> R<()> {
        self.send(
            vec![Change {
                table,
                key: key.to_string(),
                value: None,
            }],
            false,
        )
        .await
    }

    /// The value under `key`.
    pub fn get(&self, table: &'static str, key: &str) -> R<Option<Vec<u8>>> {
        self.check(table)?;
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(def(table)).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Every row of `table`, ordered by key.
    pub fn scan(&self, table: &'static str) -> R<Vec<(String, Vec<u8>)>> {
        self.check(table)?;
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(def(table)).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn writer(db: Arc<Database>, rx: std::sync::mpsc::Receiver<Write>) {
    use std::sync::mpsc::RecvTimeoutError;
    // Whether commits were made that are not on disk yet.
    let mut pending = false;
    loop {
        let first = if pending {
            match rx.recv_timeout(FLUSH_AFTER) {
                Ok(w) => w,
                Err(e) => {
                    if let Err(e) = flush(&db) {
                        tracing::error!(error = %e, "store flush failed");
                    } else {
                        pending = false;
                    }
                    if e == RecvTimeoutError::Disconnected {
                        return;
                    }
                    continue;
                }
            }
        } else {
            match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|w| w.durable);
        let res = commit(&db, &batch, durable).map_err(|e| e.to_string());
        match &res {
            Err(e) => tracing::error!(error = %e, writes = batch.len(), "store commit failed"),
            // A durable commit takes the earlier ones to disk with it.
            Ok(()) => pending = !durable,
        }
        for w in batch {
            let _ = w.done.send(res.clone());
        }
    }
}

/// An empty durable commit: what earlier non-durable commits changed goes to disk.
fn flush(db: &Database) -> Result<(), redb::Error> {
    db.begin_write()?.commit()?;
    Ok(())
}

fn commit(db: &Database, batch: &[Write], durable: bool) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    if !durable {
        tx.set_durability(redb::Durability::None)
            .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    }
    for c in batch.iter().flat_map(|w| &w.changes) {
        let mut t = tx.open_table(def(c.table))?;
        match &c.value {
            Some(v) => {
                t.insert(c.key.as_str(), v.as_slice())?;
            }
            None => {
                t.remove(c.key.as_str())?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_private_whatever_the_umask() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state/drivers/x");
        // An existing directory left world-readable is tightened too.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _s = Store::open(&dir, "t.redb", &["t"]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("t.redb")), 0o600);
    }

    /// What a crash would leave: the file as it is on disk now, opened on its own.
    fn disk_image(dir: &Path, into: &Path) -> Vec<(String, Vec<u8>)> {
        std::fs::copy(dir.join("t.redb"), into.join("t.redb")).unwrap();
        let db = Database::create(into.join("t.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(def("t")).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_string(), v.value().to_vec())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_lazy_removal_is_seen_at_once_and_reaches_the_disk_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "t.redb", &["t"]).unwrap();
        s.put("t", "a", vec![1]).await.unwrap();
        s.put("t", "b", vec![2]).await.unwrap();
        s.delete_lazy("t", "a").await.unwrap();
        assert_eq!(s.get("t", "a").unwrap(), None, "readers see it at once");
        // With no other write coming, the removal is flushed within FLUSH_AFTER.
        let copy = tempfile::tempdir().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let image = disk_image(dir.path(), copy.path());
            if image == vec![("b".to_string(), vec![2])] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the removal never reached the disk: {image:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_batches_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), "t.redb", &["t"]).unwrap();
            let writes = (0..50).map(|i| {
                let s = s.clone();
                async move { s.put("t", &format!("p{i:02}"), vec![i]).await }
            });
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
            s.delete("t", "p00").await.unwrap();
            s.delete("t", "never-existed").await.unwrap();
            assert!(matches!(
                s.put("nope", "k", vec![]).await,
                Err(StoreError::UnknownTable(_))
            ));
        }
        // The writer thread holds the database until its channel closes; reopen in a loop.
        let mut reopened = None;
        for _ in 0..10_000 {
            match Store::open(dir.path(), "t.redb", &["t"]) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let s = reopened.expect("database reopens once the writer has let go");
        let all = s.scan("t").unwrap();
        assert_eq!(all.len(), 49);
        assert!(s.get("t", "p00").unwrap().is_none());
        assert_eq!(s.get("t", "p07").unwrap(), Some(vec![7]));
    }
}
