//! Stores written by an earlier release keep working: `tests/fixtures/store-v1`
//! holds two SQLite stores written by Hush 0.1 (X3DH, before PQXDH), with a
//! session between them and one message in flight. They are opened with
//! today's code, the message in flight is decrypted, and the conversation
//! goes on both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use hush::SessionManager;
use hush::store::{SqliteStore, StorageKey};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const NOW: u64 = 1_790_000_000 + 3600;

fn fixture(
    dir: &std::path::Path,
) -> (
    SessionManager<SqliteStore>,
    SessionManager<SqliteStore>,
    Vec<u8>,
) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    for name in ["alice.db", "bob.db"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let keys = std::fs::read_to_string(src.join("keys.hex")).unwrap();
    let keys: Vec<StorageKey> = keys
        .lines()
        .map(|l| StorageKey::from_bytes(hex::decode(l).unwrap().try_into().unwrap()))
        .collect();
    let in_flight = hex::decode(
        std::fs::read_to_string(src.join("in-flight.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let alice =
        SessionManager::open(SqliteStore::open(dir.join("alice.db")).unwrap(), &keys[0]).unwrap();
    let bob =
        SessionManager::open(SqliteStore::open(dir.join("bob.db")).unwrap(), &keys[1]).unwrap();
    (alice, bob, in_flight)
}

#[test]
fn a_store_written_before_pqxdh_continues_its_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, in_flight) = fixture(dir.path());
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let (a, b) = (alice.address().clone(), bob.address().clone());
    let got = bob.decrypt(&mut rng, &a, &in_flight, NOW).unwrap();
    assert_eq!(&got.plaintext[..], b"in flight across the upgrade");
    for i in 0..4 {
        let text = format!("after the upgrade {i}");
        let (s, r, to, from) = if i % 2 == 0 {
            (&mut bob, &mut alice, &a, &b)
        } else {
            (&mut alice, &mut bob, &b, &a)
        };
        let wire = s.encrypt(&mut rng, to, text.as_bytes(), NOW).unwrap();
        assert_eq!(
            &r.decrypt(&mut rng, from, &wire, NOW).unwrap().plaintext[..],
            text.as_bytes()
        );
    }
    // Reopened once more, the state written by today's code reads back.
    drop((alice, bob));
    let keys = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/keys.hex"),
    )
    .unwrap();
    let key = StorageKey::from_bytes(
        hex::decode(keys.lines().next().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let mut alice = SessionManager::open(
        SqliteStore::open(dir.path().join("alice.db")).unwrap(),
        &key,
    )
    .unwrap();
    assert!(alice.encrypt(&mut rng, &b, b"still here", NOW).is_ok());
}
