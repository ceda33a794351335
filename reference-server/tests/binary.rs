//! The `hush-server` binary's subcommands: `gen-dev-cert`, `migrate`,
//! `delete-account` and `purge` on a data folder, as an operator runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Backend, TestServer};
use hush_server::storage::Storage;

fn hush_server(data_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hush-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--server-name")
        .arg(common::NAME)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the server binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn gen_dev_cert_and_migrate_prepare_a_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = hush_server(dir.path(), &["gen-dev-cert"]);
    assert!(ok, "{out}");
    let cert = dir.path().join("dev-cert.pem");
    assert!(out.contains("dev-cert.pem"));
    hush_server::tls::client_config(&cert).expect("a usable certificate");
    // It does not overwrite without --force.
    let (ok, out) = hush_server(dir.path(), &["gen-dev-cert"]);
    assert!(!ok && out.contains("--force"), "{out}");
    assert!(hush_server(dir.path(), &["gen-dev-cert", "--force"]).0);
    let (ok, out) = hush_server(dir.path(), &["migrate"]);
    assert!(ok, "{out}");
    assert!(dir.path().join("hush.db").exists());
    // Bad settings are refused with a message, not a panic.
    let (ok, out) = hush_server(dir.path(), &["--server-name", "bad name:1", "migrate"]);
    assert!(!ok && out.contains("server_names"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_account_and_purge_remove_what_they_should() {
    let mut server = TestServer::start(Backend::Sqlite, |c| c.message_ttl = 1)
        .await
        .unwrap();
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let bob_address = bob.address();
    bob.disconnect().await;
    alice.send_and_wait("bob", "expires").await;
    let storage = server.storage().await;
    assert_eq!(storage.queued(&bob_address, 0, 10).await.unwrap().len(), 1);
    alice.disconnect().await;
    server.stop().await;
    let dir = server.config.data_dir.clone();

    let (ok, out) = hush_server(&dir, &["delete-account", "alice"]);
    assert!(ok, "{out}");
    assert!(
        storage
            .identity(&alice.address().user)
            .await
            .unwrap()
            .is_none()
    );
    let (ok, out) = hush_server(&dir, &["delete-account", "alice"]);
    assert!(!ok && out.contains("no account"), "{out}");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, out) = hush_server(&dir, &["purge"]);
    assert!(
        ok && out.contains("purged 0 envelopes"),
        "30 days by default: {out}"
    );
    // Blob files without an index entry (a crash between file and row): the
    // one older than the TTL and an idle upload's lifetime goes, the recent
    // one stays.
    let blobs = server.config.blob_dir().join("blobs");
    let (orphan, recent) = (blobs.join("ab".repeat(16)), blobs.join("cd".repeat(16)));
    for path in [&orphan, &recent] {
        std::fs::write(path, b"ciphertext").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3 * 86_400))
        .unwrap();
    let file = dir.join("short.toml");
    std::fs::write(&file, "message_ttl = 1\n").unwrap();
    let (ok, out) = hush_server(&dir, &["--config", file.to_str().unwrap(), "purge"]);
    assert!(ok, "{out}");
    assert!(out.contains("purged 1 envelopes"), "{out}");
    assert!(out.contains("1 orphaned blob files"), "{out}");
    assert!(!orphan.exists() && recent.exists());
    assert!(
        storage
            .queued(&bob_address, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    server.finish().await;
}
