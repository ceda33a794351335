//! The MySQL backend against the conformance suite, plus raw-row checks.
//!
//! Needs a server: `HUSH_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test`
//! (any database the user may connect to; each test creates and drops its
//! own, so tests run in parallel). Without the variable the tests are
//! skipped, except under `CI=true`, where they fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

#[macro_use]
mod conformance;

use std::sync::Arc;

use hush::keys::{DeviceAddress, DeviceId};
use hush_server::storage::{MysqlStorage, Storage, StorageError};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use conformance::{Keys, TestDb, account};

const URL_VARIABLE: &str = "HUSH_TEST_MYSQL_URL";

/// The server URL from the environment; `None` (with a note) to skip.
fn server_url() -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{URL_VARIABLE} is not set: CI must run the MySQL storage tests \
             (e.g. {URL_VARIABLE}=mysql://root@127.0.0.1:3306/test)"
        ),
        _ => {
            eprintln!(
                "skipped: set {URL_VARIABLE} (e.g. mysql://root@127.0.0.1:3306/test) to run it"
            );
            None
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..]
        .find('/')
        .map_or(head.len(), |i| authority + i);
    let mut out = format!("{}/{database}", &head[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database of its own, dropped when this is dropped (also when the test
/// panics).
struct TempDatabase {
    server: String,
    name: String,
}

impl TempDatabase {
    async fn create(server: String) -> Self {
        let name = format!("hush_test_{:016x}", rand::random::<u64>());
        let mut conn = Conn::from_url(server.as_str()).await.unwrap();
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        Self { server, name }
    }

    fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: drop the database from a
        // thread with a runtime of its own.
        let server = self.server.clone();
        let statement = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut conn = Conn::from_url(server.as_str()).await?;
                conn.query_drop(statement).await?;
                conn.disconnect().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

struct MysqlDb {
    storage: Arc<MysqlStorage>,
    // Dropped after the storage.
    database: TempDatabase,
}

async fn disconnect(storage: Arc<MysqlStorage>) {
    let storage = Arc::try_unwrap(storage).expect("the storage is still in use");
    storage.disconnect().await.unwrap();
}

impl TestDb for MysqlDb {
    type Storage = MysqlStorage;

    async fn fresh() -> Option<Self> {
        let database = TempDatabase::create(server_url()?).await;
        let storage = MysqlStorage::connect(&database.url(), 10).await.unwrap();
        assert_eq!(
            storage.migrate().await.unwrap(),
            conformance::SCHEMA_VERSION
        );
        Some(Self {
            storage: Arc::new(storage),
            database,
        })
    }

    fn storage(&self) -> Arc<MysqlStorage> {
        Arc::clone(&self.storage)
    }

    async fn reopen(self) -> Self {
        let Self { storage, database } = self;
        disconnect(storage).await;
        let storage = MysqlStorage::connect(&database.url(), 10).await.unwrap();
        Self {
            storage: Arc::new(storage),
            database,
        }
    }

    async fn close(self) {
        disconnect(self.storage).await;
    }
}

conformance_tests!(MysqlDb);

/// A raw connection to the test's database.
async fn raw(db: &MysqlDb) -> Conn {
    Conn::from_url(db.database.url().as_str()).await.unwrap()
}

#[test]
fn urls_get_the_test_database() {
    assert_eq!(
        with_database("mysql://root@127.0.0.1:3306/test", "x"),
        "mysql://root@127.0.0.1:3306/x"
    );
    assert_eq!(
        with_database("mysql://u:p@db:3306?pool_max=3", "x"),
        "mysql://u:p@db:3306/x?pool_max=3"
    );
    assert_eq!(with_database("mysql://db/a?b=c", "x"), "mysql://db/x?b=c");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(db) = MysqlDb::fresh().await else {
        return;
    };
    let mut conn = raw(&db).await;
    conn.query_drop("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    match db.storage.migrate().await {
        Err(StorageError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (99, conformance::SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    db.close().await;
}

#[tokio::test]
async fn rows_that_do_not_decode_are_reported_as_corrupt() {
    let Some(db) = MysqlDb::fresh().await else {
        return;
    };
    let mut keys = Keys::new(101);
    let alice = account(&*db.storage, &mut keys, "alice").await;
    let mut conn = raw(&db).await;
    conn.query_drop("UPDATE devices SET auth_key = REPEAT(x'00', 32) WHERE user_id = 'alice'")
        .await
        .unwrap();
    conn.query_drop("UPDATE accounts SET identity = REPEAT(x'00', 32) WHERE user_id = 'alice'")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    let address = DeviceAddress::new(alice.user.clone(), DeviceId(1));
    assert!(matches!(
        db.storage.device(&address).await,
        Err(StorageError::Corrupt("devices"))
    ));
    assert!(matches!(
        db.storage.identity(&alice.user).await,
        Err(StorageError::Corrupt("accounts"))
    ));
    db.close().await;
}

#[tokio::test]
async fn a_bad_url_or_server_is_an_error() {
    assert!(matches!(
        MysqlStorage::connect("postgres://nope", 2).await,
        Err(StorageError::Mysql(_))
    ));
    // Nothing listens on port 1.
    assert!(matches!(
        MysqlStorage::connect("mysql://root@127.0.0.1:1/test", 2).await,
        Err(StorageError::Mysql(_))
    ));
}
