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

/// However a frame stream is cut, and whether frames are taken out after
/// every push or at the end, the decoder yields the frames and the error
/// the format defines, and never panics.
#[test]
fn every_frame_decoder_input_splits_the_same_however_cut() {
    replay("frame_decoder");
}

/// Every client frame payload in the corpus decodes to a typed error or to
/// a frame that survives re-encoding.
#[test]
fn every_client_frame_input_decodes_or_fails_cleanly() {
    replay("client_frame");
}

/// Every server frame payload in the corpus decodes to a typed error or to
/// a frame that survives re-encoding.
#[test]
fn every_server_frame_input_decodes_or_fails_cleanly() {
    replay("server_frame");
}

/// Every signed PQ prekey or KEM key in the corpus decodes to a typed error
/// or to a value that re-encodes to the same bytes.
#[test]
fn every_pq_prekey_input_decodes_or_fails_cleanly() {
    replay("pq_prekey");
}

/// Every envelope in the corpus decodes to a typed error or to an envelope
/// that survives re-encoding.
#[test]
fn every_envelope_input_decodes_or_fails_cleanly() {
    replay("envelope");
}

/// Every padded content in the corpus decodes to a typed error or to
/// content that survives re-encoding.
#[test]
fn every_content_input_decodes_or_fails_cleanly() {
    replay("content");
}

/// No blob in the corpus makes the decryptor release bytes it did not
/// authenticate or depend on how the blob was cut; every pointer decodes
/// canonically or fails cleanly.
#[test]
fn every_attachment_decrypt_input_releases_only_authentic_plaintext() {
    replay("attachment_decrypt");
}

/// Every harness target is a cargo-fuzz target of the same name (so CI,
/// which runs every target `cargo fuzz list` knows, runs it) and has a
/// seed corpus.
#[test]
fn every_harness_target_is_a_cargo_fuzz_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let seeds = harness::seed_corpus();
    for (target, _) in harness::TARGETS {
        assert!(
            manifest.contains(&format!(
                "name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\""
            )),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        let source = fs::read_to_string(fuzz.join(format!("fuzz_targets/{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        assert!(
            source.contains(&format!("::{target}(data)")),
            "fuzz_targets/{target}.rs does not call the harness's {target}"
        );
        assert!(
            seeds.iter().filter(|(t, _, _)| *t == target).count() >= 5,
            "{target} has fewer than 5 seeds"
        );
    }
    assert_eq!(
        manifest.matches("[[bin]]").count(),
        harness::TARGETS.len(),
        "fuzz/Cargo.toml has a target the harness does not list"
    );
}

/// The seeds mean what their names say: valid encodings decode, valid blobs
/// decrypt and pointers decode (in every piece size), damaged ones do not,
/// and the frame streams hold frames or end in the error they are named for.
/// Without this a mistake in a seed's framing would leave the fuzzer
/// starting from inputs that all fail at the first byte.
#[test]
fn the_seeds_reach_what_they_are_named_for() {
    use hush::wire::content::Content;
    use hush::wire::envelope::Envelope;
    use hush::wire::frame::FrameError;
    use hush::wire::protocol::{ClientFrame, ServerFrame};

    for (target, name, bytes) in harness::seed_corpus() {
        let valid = name.starts_with("valid-");
        match target {
            "client_frame" if valid => assert!(ClientFrame::from_payload(&bytes).is_ok(), "{name}"),
            "server_frame" if valid => assert!(ServerFrame::from_payload(&bytes).is_ok(), "{name}"),
            "envelope" if valid => assert!(Envelope::from_bytes(&bytes).is_ok(), "{name}"),
            "content" if valid => assert!(Content::from_padded(&bytes).is_ok(), "{name}"),
            "pq_prekey" => {
                let decodes = hush::keys::SignedPqPreKey::from_bytes(&bytes).is_ok()
                    || hush::keys::KemPublicKey::from_bytes(&bytes).is_ok();
                assert_eq!(decodes, valid, "pq_prekey/{name}");
            }
            "client_frame" | "server_frame" | "envelope" | "content"
                if name.starts_with("truncated-") || name.starts_with("trailing-") =>
            {
                let decodes = match target {
                    "client_frame" => ClientFrame::from_payload(&bytes).is_ok(),
                    "server_frame" => ServerFrame::from_payload(&bytes).is_ok(),
                    "envelope" => Envelope::from_bytes(&bytes).is_ok(),
                    _ => Content::from_padded(&bytes).is_ok(),
                };
                assert!(!decodes, "{target}/{name} decodes");
            }
            "attachment_decrypt" => {
                let good = ["-whole", "-pieces", "-bytewise", "-longer-id"]
                    .iter()
                    .any(|s| name.ends_with(s))
                    || [
                        "raw-0",
                        "raw-1",
                        "pointer-0",
                        "pointer-1",
                        "pointer-2",
                        "pointer-3",
                    ]
                    .contains(&name.as_str());
                let got = harness::attachment::accepted(&bytes);
                let expected = if name == "empty" { None } else { Some(good) };
                assert_eq!(got, expected, "attachment_decrypt/{name}");
            }
            "frame_decoder" => {
                let split = harness::wire::split_frames(&bytes);
                if name == "empty" || name == "prefix-only" {
                    assert_eq!(split.map(|s| s.frames.len()), Some(0), "{name}");
                } else if ["over-cap", "one-under", "huge", "zero-cap"]
                    .iter()
                    .any(|s| name.contains(s))
                {
                    let end = split.map(|s| s.end);
                    assert!(
                        matches!(end, Some(Err(FrameError::TooLong { .. }))),
                        "{name}: {end:?}"
                    );
                } else {
                    let split = split.expect("a split");
                    assert!(!split.frames.is_empty(), "{name}");
                    assert!(split.end.is_ok(), "{name}");
                    assert_eq!(
                        split.end == Ok(0),
                        !name.contains("incomplete"),
                        "{name}: {:?}",
                        split.end
                    );
                }
            }
            _ => {}
        }
    }
}

/// The variant tags found at byte `at` of `encodings` are 0, 1, 2, ... with
/// no gap; the next tag, followed by what follows the tag in any of them,
/// does not decode. Together: the seeds hold a valid encoding of every
/// variant (a variant added later is caught unless its fields look like no
/// existing variant's).
fn covers_every_variant(
    what: &str,
    encodings: &[Vec<u8>],
    at: usize,
    decodes: impl Fn(&[u8]) -> bool,
) {
    let mut tags: Vec<u8> = encodings.iter().map(|e| e[at]).collect();
    tags.sort_unstable();
    tags.dedup();
    let expected: Vec<u8> = (0..tags.len() as u8).collect();
    assert_eq!(tags, expected, "{what}: variant tags with a gap");
    let next = tags.len() as u8;
    assert!(next < 0x80, "{what}: tags are one-byte varints");
    for encoding in encodings {
        for end in [at + 1, encoding.len()] {
            let mut probe = encoding[..end].to_vec();
            probe[at] = next;
            assert!(
                !decodes(&probe),
                "{what}: tag {next} decodes, a variant the seeds lack"
            );
        }
    }
}

/// The seeds hold a valid encoding of every request, response, error code,
/// push, envelope kind and content body.
#[test]
fn the_seeds_hold_every_message_variant() {
    use hush::wire::content::Content;
    use hush::wire::envelope::{Envelope, EnvelopeKind};
    use hush::wire::protocol::{ClientFrame, ServerFrame};

    // `version || id || request tag`, every id below 128.
    let requests: Vec<Vec<u8>> = harness::wire::client_frames()
        .into_iter()
        .map(|(_, f)| f.to_payload())
        .collect();
    assert!(requests.iter().all(|p| p[1] < 0x80));
    covers_every_variant("Request", &requests, 2, |p| {
        ClientFrame::from_payload(p).is_ok()
    });

    let server: Vec<Vec<u8>> = harness::wire::server_frames()
        .into_iter()
        .map(|(_, f)| f.to_payload())
        .collect();
    let server_decodes = |p: &[u8]| ServerFrame::from_payload(p).is_ok();
    // `version || frame tag || ...`: a response, then a push.
    covers_every_variant("ServerFrame", &server, 1, server_decodes);
    // `version || 0 || id || 0 (Ok) || response tag`, `... || 1 (Err) || code`.
    let results = |ok: u8| -> Vec<Vec<u8>> {
        server
            .iter()
            .filter(|p| p[1] == 0 && p[2] < 0x80 && p[3] == ok)
            .cloned()
            .collect()
    };
    covers_every_variant("Response", &results(0), 4, server_decodes);
    covers_every_variant("ErrorCode", &results(1), 4, server_decodes);
    assert_eq!(results(1).len(), harness::wire::ERROR_CODES.len());
    // `version || 1 || push tag`.
    let pushes: Vec<Vec<u8>> = server.iter().filter(|p| p[1] == 1).cloned().collect();
    covers_every_variant("Push", &pushes, 2, server_decodes);

    let kinds: Vec<EnvelopeKind> = harness::wire::envelopes()
        .iter()
        .map(|(_, e)| e.kind())
        .collect();
    assert!(kinds.contains(&EnvelopeKind::Initial) && kinds.contains(&EnvelopeKind::Normal));
    assert!(
        harness::wire::envelopes()
            .iter()
            .all(|(_, e)| Envelope::from_bytes(&e.to_bytes()).as_ref() == Ok(e))
    );

    let bodies: Vec<Vec<u8>> = harness::wire::contents()
        .into_iter()
        .map(|(_, c)| c.to_padded().expect("seed content encodes").to_vec())
        .collect();
    covers_every_variant("Body", &bodies, harness::wire::CONTENT_BODY_TAG_AT, |p| {
        Content::from_padded(&hush::wire::padding::pad(
            hush::wire::padding::unpad(p).unwrap_or(p),
        ))
        .is_ok()
    });
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
