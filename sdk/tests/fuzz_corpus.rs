//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! fuzz harness (`fuzz/harness.rs`), so every input the fuzzers were seeded
//! with or found is checked by a plain `cargo test`.

#![allow(clippy::expect_used, clippy::panic, reason = "tests")]

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use hush::SessionManager;
use hush::store::StorageKey;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The corpus files of `target`, sorted by name (hidden files skipped).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            (!name.starts_with('.')).then(|| (name, fs::read(&path).expect("corpus file")))
        })
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = harness::TARGETS
        .into_iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for (name, bytes) in files {
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target}: corpus file {name} panicked");
    }
}

/// No message in the corpus makes the receiver panic, change its store on a
/// failed decrypt, or decrypt one message twice.
#[test]
fn every_decrypt_message_input_is_handled_without_panic() {
    replay("decrypt_message");
}

/// No damaged or replaced stored row makes opening the device or any
/// operation on it panic, or change the store when the operation fails.
#[test]
fn every_open_stored_state_input_is_handled_without_panic() {
    replay("open_stored_state");
}

/// The harness seals rows exactly as the store does: every sealed row of the
/// fixture opens with it, and a row it re-seals opens in Hush. Without this
/// the `open_stored_state` fuzzer would only ever reach the AEAD check.
#[test]
fn the_harness_seals_rows_like_the_store() {
    let fx = harness::fixture();
    let mut sealed_rows = 0;
    let mut store = fx.established.clone();
    for ((table, row), value) in harness::established_rows() {
        if let Some(record) = harness::unseal(table, &row, &value) {
            sealed_rows += 1;
            store
                .rows_mut()
                .insert((table, row.clone()), harness::seal(table, &row, &record));
        }
    }
    assert!(
        sealed_rows >= 10,
        "only {sealed_rows} rows opened with the harness"
    );
    let mut bob = SessionManager::open(store, &StorageKey::from_bytes(harness::STORAGE_KEY))
        .expect("re-sealed store opens");
    assert!(bob.has_session(&fx.alice).expect("sessions row opens"));
    let mut rng =
        <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed([1; 32]);
    let got = bob
        .decrypt(&mut rng, &fx.alice, &fx.messages.alice_next, harness::NOW)
        .expect("the next message decrypts on re-sealed state");
    assert_eq!(got.plaintext, b"good");
}

/// The seed corpus is generated deterministically from the harness; the
/// committed seeds must be what this build generates (run with
/// `HUSH_REGENERATE_CORPUS=1` to rewrite them after changing the harness).
#[test]
fn the_committed_seed_corpus_is_current() {
    let regenerate = std::env::var_os("HUSH_REGENERATE_CORPUS").is_some();
    assert!(
        !(regenerate && std::env::var("CI").as_deref() == Ok("true")),
        "CI checks the corpus; it never rewrites it"
    );
    let seeds = harness::seed_corpus();
    assert!(
        seeds.len() > 10,
        "a seed corpus of {} files proves little",
        seeds.len()
    );
    for (target, name, bytes) in seeds {
        let path = corpus_dir(target).join(&name);
        if regenerate {
            fs::create_dir_all(corpus_dir(target)).expect("corpus directory");
            fs::write(&path, &bytes).expect("corpus file");
            continue;
        }
        let stored = fs::read(&path).unwrap_or_default();
        assert!(
            stored == bytes,
            "fuzz/corpus/{target}/{name} is missing or stale"
        );
    }
}
