//! A [`Store`] in a SQLite database (bundled SQLite).
//!
//! One table `kv(tbl, k, v)`; WAL journal with `synchronous = FULL`, so a batch
//! that `apply` reported as written survives a power loss, and each batch is
//! one SQLite transaction, so a crash never leaves half of it.
//!
//! The database is used by one instance at a time, enforced with an exclusive
//! lock on `<database>.lock` held while the store is open.
//! Two `SessionManager`s over one database would each commit state computed
//! from what they read before, and could bring back a spent message key; a
//! second open fails with [`StoreError::Locked`] instead. Deleted content is
//! overwritten (`secure_delete`), so old ratchet states do not linger in free pages.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Batch, Op, Rows, Store, StoreError, Table};

/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// A [`Store`] backed by one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// An exclusive advisory lock on `<database>.lock`, held while open.
    _lock: Option<std::fs::File>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Locked
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the file cannot be opened or is not a Hush
    /// database; [`StoreError::UnsupportedVersion`] for a newer schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Backend(Box::new(e))),
        }
        Self::setup(Connection::open(path).map_err(backend)?, Some(lock))
    }

    /// A private in-memory database.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if SQLite fails.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(backend)?, None)
    }

    fn setup(conn: Connection, lock: Option<std::fs::File>) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        match version {
            0 => {
                conn.execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS kv (
                         tbl INTEGER NOT NULL,
                         k   BLOB    NOT NULL,
                         v   BLOB    NOT NULL,
                         PRIMARY KEY (tbl, k)
                     ) WITHOUT ROWID;
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(backend)?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(StoreError::UnsupportedVersion(
                    u8::try_from(v).unwrap_or(u8::MAX),
                ));
            }
        }
        Ok(Self { conn, _lock: lock })
    }
}

impl Store for SqliteStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT v FROM kv WHERE tbl = ?1 AND k = ?2")
            .map_err(backend)?
            .query_row(params![table.id(), key], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT k, v FROM kv WHERE tbl = ?1 ORDER BY k")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![table.id()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO kv (tbl, k, v) VALUES (?1, ?2, ?3)")
                .map_err(backend)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND k = ?2")
                .map_err(backend)?;
            for op in batch.ops() {
                match op {
                    Op::Put { table, key, value } => {
                        put.execute(params![table.id(), key, value])
                            .map_err(backend)?;
                    }
                    Op::Delete { table, key } => {
                        delete.execute(params![table.id(), key]).map_err(backend)?;
                    }
                }
            }
        }
        // Dropping `tx` on an error above rolls the whole batch back.
        tx.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            let mut b = Batch::new();
            b.put(Table::Sessions, b"a".to_vec(), b"1".to_vec());
            b.put(Table::Sessions, b"b".to_vec(), b"2".to_vec());
            b.put(Table::Inbox, b"a".to_vec(), b"3".to_vec());
            s.apply(b).unwrap();
            let mut b = Batch::new();
            b.delete(Table::Sessions, b"a".to_vec());
            s.apply(b).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get(Table::Sessions, b"a").unwrap(), None);
        assert_eq!(s.get(Table::Sessions, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            s.scan(Table::Inbox).unwrap(),
            vec![(b"a".to_vec(), b"3".to_vec())]
        );
    }

    #[test]
    fn a_second_instance_on_one_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.db");
        let first = SqliteStore::open(&path).unwrap();
        let second = SqliteStore::open(&path);
        assert!(matches!(second, Err(StoreError::Locked)), "{second:?}");
        drop(first);
        assert!(SqliteStore::open(&path).is_ok());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Backend(_))
        ));
    }
}
