//! `SqliteStore`: atomic batches across a process kill, wrong keys, moved,
//! corrupted and truncated values.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{T0, addr, bundle_with_one_time, device, rng};
use hush::store::{Batch, MemoryStore, SqliteStore, StorageKey, Store, StoreError, Table};
use hush::{Error, SessionManager};

const ROWS: u32 = 40;
const CHILD_ENV: &str = "HUSH_CRASH_CHILD_DB";

fn counter_batch(counter: u64) -> Batch {
    let mut b = Batch::new();
    for row in 0..ROWS {
        b.put(
            Table::Sessions,
            row.to_be_bytes().to_vec(),
            counter.to_be_bytes().repeat(64),
        );
    }
    b
}

/// Commits numbered batches: forever when run as the child of a crash test,
/// otherwise twenty of them, checked.
#[test]
fn writer_commits_numbered_batches() {
    let (path, limit, _dir) = match std::env::var(CHILD_ENV) {
        Ok(path) => (path.into(), u64::MAX, None),
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            (dir.path().join("w.db"), 20, Some(dir))
        }
    };
    let path: std::path::PathBuf = path;
    let mut store = SqliteStore::open(&path).unwrap();
    let start = current_counter(&store).map_or(0, |c| c + 1);
    for counter in start..start.saturating_add(limit) {
        store.apply(counter_batch(counter)).unwrap();
    }
    drop(store);
    assert_eq!(
        current_counter(&SqliteStore::open(&path).unwrap()),
        Some(start + limit - 1)
    );
}

/// A conversation on SQLite: forever when run as the child of a crash test,
/// otherwise ten round trips, checked.
#[test]
fn conversation_on_sqlite() {
    let (dir, rounds, _tmp) = match std::env::var(CHILD_ENV) {
        Ok(dir) => (std::path::PathBuf::from(dir), u64::MAX, None),
        Err(_) => {
            let tmp = tempfile::tempdir().unwrap();
            setup_conversation(tmp.path());
            (tmp.path().to_path_buf(), 10, Some(tmp))
        }
    };
    let (mut alice, mut bob) = open_pair(&dir);
    let mut r = rng(std::process::id().into());
    for i in 0..rounds {
        let m = alice
            .encrypt(&mut r, bob.address(), &i.to_be_bytes(), T0)
            .unwrap();
        assert_eq!(
            bob.decrypt(&mut r, alice.address(), &m, T0)
                .unwrap()
                .plaintext,
            i.to_be_bytes()
        );
        let reply = bob
            .encrypt(&mut r, alice.address(), &i.to_be_bytes(), T0)
            .unwrap();
        assert_eq!(
            alice
                .decrypt(&mut r, bob.address(), &reply, T0)
                .unwrap()
                .plaintext,
            i.to_be_bytes()
        );
    }
}

fn current_counter(store: &SqliteStore) -> Option<u64> {
    let rows = store.scan(Table::Sessions).unwrap();
    if rows.is_empty() {
        return None;
    }
    assert_eq!(rows.len(), ROWS as usize, "a batch landed partly");
    let first = rows[0].1.clone();
    assert!(
        rows.iter().all(|(_, v)| *v == first),
        "rows from different batches"
    );
    Some(u64::from_be_bytes(first[..8].try_into().unwrap()))
}

fn spawn_child(test: &str, arg: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(CHILD_ENV, arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL a writer in the middle of its commits, many times: every reopen
/// sees whole batches only, and never an older one than before.
#[test]
fn a_killed_writer_leaves_whole_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut last = None;
    let mut progressed = 0;
    for round in 0..12u64 {
        let mut child = spawn_child("writer_commits_numbered_batches", &path);
        std::thread::sleep(Duration::from_millis(80 + (round * 37) % 150));
        child.kill().unwrap();
        child.wait().unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let now = current_counter(&store);
        assert!(
            now >= last,
            "a committed batch was lost: {now:?} < {last:?}"
        );
        if now > last {
            progressed += 1;
        }
        last = now;
    }
    assert!(
        progressed > 0,
        "the child never committed; the test proved nothing"
    );
}

/// Alice and Bob on SQLite files in `dir`, with one message exchanged.
fn setup_conversation(dir: &Path) {
    let mut r = rng(1);
    let a = SqliteStore::open(dir.join("alice.db")).unwrap();
    let b = SqliteStore::open(dir.join("bob.db")).unwrap();
    let mut alice = device(a, &StorageKey::from_bytes([1; 32]), "alice", 1, &mut r);
    let mut bob = device(b, &StorageKey::from_bytes([2; 32]), "bob", 1, &mut r);
    let bundle = bundle_with_one_time(&mut bob, &mut r);
    alice.start_session(&mut r, &bundle, T0).unwrap();
    let m = alice.encrypt(&mut r, bob.address(), b"hello", T0).unwrap();
    bob.decrypt(&mut r, alice.address(), &m, T0).unwrap();
}

fn open_pair(dir: &Path) -> (SessionManager<SqliteStore>, SessionManager<SqliteStore>) {
    let keys = (
        StorageKey::from_bytes([1; 32]),
        StorageKey::from_bytes([2; 32]),
    );
    let a = SqliteStore::open(dir.join("alice.db")).unwrap();
    let b = SqliteStore::open(dir.join("bob.db")).unwrap();
    (
        SessionManager::open(a, &keys.0).unwrap(),
        SessionManager::open(b, &keys.1).unwrap(),
    )
}

/// Kill a process in the middle of a conversation on SQLite, many times: the
/// reopened devices always continue it (messages in flight are simply lost).
#[test]
fn a_killed_conversation_always_continues() {
    let dir = tempfile::tempdir().unwrap();
    setup_conversation(dir.path());
    let mut r = rng(2);
    for round in 0..8u64 {
        let mut child = spawn_child("conversation_on_sqlite", dir.path());
        std::thread::sleep(Duration::from_millis(100 + (round * 53) % 200));
        child.kill().unwrap();
        child.wait().unwrap();
        let (mut alice, mut bob) = open_pair(dir.path());
        let m = alice
            .encrypt(&mut r, bob.address(), b"after the crash", T0)
            .unwrap();
        assert_eq!(
            bob.decrypt(&mut r, alice.address(), &m, T0)
                .unwrap()
                .plaintext,
            b"after the crash"
        );
        let reply = bob
            .encrypt(&mut r, alice.address(), b"still here", T0)
            .unwrap();
        assert_eq!(
            alice
                .decrypt(&mut r, bob.address(), &reply, T0)
                .unwrap()
                .plaintext,
            b"still here"
        );
    }
}

/// A store whose commits can be made to fail, to check that a failed commit
/// releases nothing and changes nothing.
struct Faulty {
    inner: MemoryStore,
    fail: bool,
}

impl Store for Faulty {
    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(t, k)
    }
    fn scan(&self, t: Table) -> Result<hush::store::Rows, StoreError> {
        self.inner.scan(t)
    }
    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        if self.fail {
            return Err(StoreError::Backend("injected fault".into()));
        }
        self.inner.apply(batch)
    }
}

#[test]
fn a_failed_commit_releases_no_ciphertext_and_changes_nothing() {
    let mut r = rng(3);
    let key = StorageKey::generate(&mut r);
    let mut alice = device(
        Faulty {
            inner: MemoryStore::new(),
            fail: false,
        },
        &key,
        "alice",
        1,
        &mut r,
    );
    let mut bob = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "bob",
        1,
        &mut r,
    );
    let bundle = bundle_with_one_time(&mut bob, &mut r);
    alice.start_session(&mut r, &bundle, T0).unwrap();
    let m1 = alice.encrypt(&mut r, bob.address(), b"one", T0).unwrap();
    bob.decrypt(&mut r, alice.address(), &m1, T0).unwrap();
    let reply = bob.encrypt(&mut r, alice.address(), b"r", T0).unwrap();

    let mut alice = SessionManager::open(
        Faulty {
            inner: alice.into_store().inner,
            fail: true,
        },
        &key,
    )
    .unwrap();
    let before = alice.store().inner.clone();
    assert!(matches!(
        alice.encrypt(&mut r, bob.address(), b"lost", T0),
        Err(Error::Store(_))
    ));
    assert!(matches!(
        alice.decrypt(&mut r, bob.address(), &reply, T0),
        Err(Error::Store(_))
    ));
    assert_eq!(before, alice.store().inner);

    let mut alice = SessionManager::open(
        Faulty {
            inner: alice.into_store().inner,
            fail: false,
        },
        &key,
    )
    .unwrap();
    assert_eq!(
        alice
            .decrypt(&mut r, bob.address(), &reply, T0)
            .unwrap()
            .plaintext,
        b"r"
    );
    let m2 = alice.encrypt(&mut r, bob.address(), b"two", T0).unwrap();
    assert_eq!(
        bob.decrypt(&mut r, alice.address(), &m2, T0)
            .unwrap()
            .plaintext,
        b"two"
    );
}

fn sqlite_pair(
    dir: &Path,
) -> (
    SessionManager<SqliteStore>,
    SessionManager<SqliteStore>,
    StorageKey,
) {
    let mut r = rng(4);
    let key = StorageKey::generate(&mut r);
    let mut alice = device(
        SqliteStore::open(dir.join("a.db")).unwrap(),
        &key,
        "alice",
        1,
        &mut r,
    );
    let mut bob = device(
        SqliteStore::open_in_memory().unwrap(),
        &StorageKey::generate(&mut r),
        "bob",
        1,
        &mut r,
    );
    let bundle = bundle_with_one_time(&mut bob, &mut r);
    alice.start_session(&mut r, &bundle, T0).unwrap();
    (alice, bob, key)
}

#[test]
fn reopening_with_a_wrong_key_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _bob, key) = sqlite_pair(dir.path());
    drop(alice);
    let wrong = StorageKey::from_bytes([0x42; 32]);
    let store = SqliteStore::open(dir.path().join("a.db")).unwrap();
    assert!(matches!(
        SessionManager::open(store, &wrong),
        Err(Error::Store(StoreError::WrongKey))
    ));
    let store = SqliteStore::open(dir.path().join("a.db")).unwrap();
    assert!(SessionManager::open(store, &key).is_ok());
    let empty = SqliteStore::open(dir.path().join("empty.db")).unwrap();
    assert!(matches!(
        SessionManager::open(empty, &key),
        Err(Error::Store(StoreError::NoAccount))
    ));
}

#[test]
fn a_value_moved_to_another_row_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, key) = sqlite_pair(dir.path());
    let mut r = rng(5);
    let mut carol = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "carol",
        1,
        &mut r,
    );
    let bundle = bundle_with_one_time(&mut carol, &mut r);
    alice.start_session(&mut r, &bundle, T0).unwrap();
    let to_bob = alice
        .encrypt(&mut r, bob.address(), b"for bob", T0)
        .unwrap();
    bob.decrypt(&mut r, alice.address(), &to_bob, T0).unwrap();
    drop(alice);

    // Copy the Carol session's sealed value over the Bob session's row.
    let mut store = SqliteStore::open(dir.path().join("a.db")).unwrap();
    let rows = store.scan(Table::Sessions).unwrap();
    assert_eq!(rows.len(), 2);
    let mut batch = Batch::new();
    batch.put(Table::Sessions, rows[0].0.clone(), rows[1].1.clone());
    batch.put(Table::Sessions, rows[1].0.clone(), rows[0].1.clone());
    store.apply(batch).unwrap();
    let mut alice = SessionManager::open(store, &key).unwrap();
    for peer in [addr("bob", 1), addr("carol", 1)] {
        assert!(matches!(
            alice.encrypt(&mut r, &peer, b"x", T0),
            Err(Error::Store(StoreError::Corrupted(Table::Sessions)))
        ));
    }
}

#[test]
fn corrupted_and_truncated_databases_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _bob, key) = sqlite_pair(dir.path());
    drop(alice);
    let path = dir.path().join("a.db");

    // One flipped byte in a sealed value.
    let mut store = SqliteStore::open(&path).unwrap();
    let (row, mut value) = store.scan(Table::Sessions).unwrap().remove(0);
    value[20] ^= 1;
    let mut batch = Batch::new();
    batch.put(Table::Sessions, row, value);
    store.apply(batch).unwrap();
    let mut alice = SessionManager::open(store, &key).unwrap();
    let mut r = rng(6);
    assert!(matches!(
        alice.encrypt(&mut r, &addr("bob", 1), b"x", T0),
        Err(Error::Store(StoreError::Corrupted(Table::Sessions)))
    ));
    drop(alice);

    // The file cut in half.
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 4096,
        "the data lives in the main file after close"
    );
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let _ = std::fs::remove_file(dir.path().join("a.db-wal"));
    let opened = SqliteStore::open(&path)
        .map_err(Error::from)
        .and_then(|s| SessionManager::open(s, &key));
    let mut alice = match opened {
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Store(StoreError::Backend(_) | StoreError::Corrupted(_))
                ),
                "{e:?}"
            );
            return;
        }
        Ok(alice) => alice,
    };
    // SQLite may open a cut file lazily; then the first read must fail cleanly,
    // as a storage error (not as a missing session).
    let got = alice.encrypt(&mut r, &addr("bob", 1), b"x", T0);
    assert!(
        matches!(
            got,
            Err(Error::Store(
                StoreError::Backend(_) | StoreError::Corrupted(_)
            ))
        ),
        "{got:?}"
    );
}
