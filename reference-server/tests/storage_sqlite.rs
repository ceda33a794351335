//! The SQLite backend against the conformance suite, plus what only SQLite
//! has: in-memory databases, the file's settings, raw-row checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

#[macro_use]
mod conformance;

use std::path::PathBuf;
use std::sync::Arc;

use hush::keys::{DeviceAddress, DeviceId};
use hush_server::storage::{SqliteStorage, Storage, StorageError};
use tempfile::TempDir;

use conformance::{Keys, TestDb, account};

/// A database file in a temporary directory, deleted with it.
struct SqliteDb {
    storage: Arc<SqliteStorage>,
    path: PathBuf,
    _dir: TempDir,
}

impl TestDb for SqliteDb {
    type Storage = SqliteStorage;

    async fn fresh() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hush.db");
        let storage = SqliteStorage::open(&path).unwrap();
        assert_eq!(
            storage.migrate().await.unwrap(),
            conformance::SCHEMA_VERSION
        );
        Some(Self {
            storage: Arc::new(storage),
            path,
            _dir: dir,
        })
    }

    fn storage(&self) -> Arc<SqliteStorage> {
        Arc::clone(&self.storage)
    }

    async fn reopen(self) -> Self {
        let Self {
            storage,
            path,
            _dir,
        } = self;
        drop(storage);
        Self {
            storage: Arc::new(SqliteStorage::open(&path).unwrap()),
            path,
            _dir,
        }
    }

    async fn close(self) {}
}

conformance_tests!(SqliteDb);

/// A raw connection to the file, to plant rows the backend would not write.
fn raw(db: &SqliteDb) -> rusqlite::Connection {
    rusqlite::Connection::open(&db.path).unwrap()
}

#[tokio::test]
async fn the_file_is_in_wal_mode_with_full_sync() {
    let db = SqliteDb::fresh().await.unwrap();
    let conn = raw(&db);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", (), |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // synchronous and foreign_keys are per connection: checked through the
    // behaviour they cause (cascades) in the conformance cases.
}

#[tokio::test]
async fn an_in_memory_database_works() {
    let storage = SqliteStorage::open_in_memory().unwrap();
    assert_eq!(
        storage.migrate().await.unwrap(),
        conformance::SCHEMA_VERSION
    );
    let mut keys = Keys::new(100);
    let alice = account(&storage, &mut keys, "alice").await;
    assert_eq!(
        storage.identity(&alice.user).await.unwrap(),
        Some(alice.identity.public_key())
    );
    assert_eq!(
        storage.migrate().await.unwrap(),
        conformance::SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = SqliteDb::fresh().await.unwrap();
    raw(&db)
        .execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
            (),
        )
        .unwrap();
    match db.storage.migrate().await {
        Err(StorageError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (99, conformance::SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn rows_that_do_not_decode_are_reported_as_corrupt() {
    let db = SqliteDb::fresh().await.unwrap();
    let mut keys = Keys::new(101);
    let alice = account(&*db.storage, &mut keys, "alice").await;
    raw(&db)
        .execute(
            "UPDATE devices SET auth_key = x'00' WHERE user_id = 'alice'",
            (),
        )
        .unwrap();
    raw(&db)
        .execute(
            "UPDATE accounts SET identity = zeroblob(32) WHERE user_id = 'alice'",
            (),
        )
        .unwrap();
    let address = DeviceAddress::new(alice.user.clone(), DeviceId(1));
    assert!(matches!(
        db.storage.device(&address).await,
        Err(StorageError::Corrupt("devices"))
    ));
    assert!(matches!(
        db.storage.identity(&alice.user).await,
        Err(StorageError::Corrupt("accounts"))
    ));
}

#[test]
fn storage_debug_shows_no_connections() {
    let storage = SqliteStorage::open_in_memory().unwrap();
    let debug = format!("{storage:?}");
    assert!(debug.starts_with("SqliteStorage"), "{debug}");
}
