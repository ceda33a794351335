//! `hush-cli` end to end: a reference server in this process, and the CLI
//! as separate processes, one home folder per device. Alice and Bob
//! register, exchange a text and a file, Alice links a second device that
//! then receives from Bob; bad input gets clear errors, never a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hush_server::blob::LocalBlobStore;
use hush_server::config::Config;
use hush_server::storage::{SqliteStorage, Storage};

/// The reference server on a free loopback port, on a runtime of its own.
struct Server {
    runtime: tokio::runtime::Runtime,
    running: Option<hush_server::RunningServer>,
    address: String,
    cert: PathBuf,
    database: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut config = Config {
            data_dir: dir.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: String::new(),
            server_names: vec!["localhost".into()],
            ..Config::default()
        };
        config.validate().unwrap();
        hush_server::tls::generate_dev_cert(
            &config.server_names,
            &config.cert_path(),
            &config.key_path(),
        )
        .unwrap();
        let cert = config.cert_path();
        let database = config.sqlite_path();
        let running = runtime.block_on(async {
            let storage = SqliteStorage::open(&config.sqlite_path()).unwrap();
            storage.migrate().await.unwrap();
            let blobs = LocalBlobStore::open(&config.blob_dir()).unwrap();
            let tls =
                hush_server::tls::server_config(&config.cert_path(), &config.key_path()).unwrap();
            hush_server::start(config, storage, blobs, tls, None)
                .await
                .unwrap()
        });
        Self {
            address: running.address.to_string(),
            running: Some(running),
            runtime,
            cert,
            database,
        }
    }

    /// Deletes an account, as `hush-server delete-account` does.
    fn delete_account(&self, user: &str) {
        self.runtime.block_on(async {
            let storage = SqliteStorage::open(&self.database).unwrap();
            let user = hush::keys::UserId::new(user).unwrap();
            storage.delete_account(&user).await.unwrap();
        });
    }

    /// The flags `register` and `link` take (and save for later commands).
    fn flags(&self) -> Vec<String> {
        vec![
            "--server".into(),
            self.address.clone(),
            "--server-name".into(),
            "localhost".into(),
            "--ca".into(),
            self.cert.display().to_string(),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime
                .block_on(running.shutdown(Duration::from_secs(1)));
        }
    }
}

fn cli(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hush-cli"));
    command.arg("--home").arg(home).stdin(Stdio::null());
    command
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the CLI and returns its stdout; it must succeed.
fn ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI and returns its stderr; it must fail without panicking.
fn fails(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    String::from_utf8(out.stderr).unwrap()
}

/// Runs `chat` with `input` on stdin; it must succeed.
fn chat(home: &Path, input: &str) -> (String, String) {
    let mut child = cli(home)
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn safety_digits(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("safety number with ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no safety number in {stdout}"));
    let (_, groups) = line.split_once(": ").unwrap();
    let digits: String = groups.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 60, "{line}");
    digits
}

#[test]
fn two_users_chat_send_a_file_and_link_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    let laptop = dir.path().join("alice-laptop");

    let out = ok(cli(&alice).args(server.flags()).args(["register", "alice"]));
    assert!(
        out.contains("registered alice: this is device alice/1"),
        "{out}"
    );
    ok(cli(&bob).args(server.flags()).args(["register", "bob"]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(alice.join("storage.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The name is taken: the server's refusal, in words.
    let stderr = fails(
        cli(&dir.path().join("mallory"))
            .args(server.flags())
            .args(["register", "alice"]),
    );
    assert!(stderr.contains("refused to register alice"), "{stderr}");

    // From here on the saved settings find the server.
    let out = ok(cli(&alice).args(["send", "bob", "hello", "bob"]));
    assert!(out.contains("sent to bob"), "{out}");
    let out = ok(cli(&bob).args(["listen", "--count", "1", "--timeout", "20"]));
    assert!(out.contains("[from alice/1] hello bob"), "{out}");
    // Both see the same safety number.
    let on_alice = safety_digits(&ok(cli(&alice).args(["safety", "bob"])));
    let on_bob = safety_digits(&ok(cli(&bob).args(["safety", "alice"])));
    assert_eq!(on_alice, on_bob);

    // A file, from Bob to Alice's downloads, byte for byte.
    let file = dir.path().join("notes.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 997) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = ok(cli(&bob).arg("send-file").arg("alice").arg(&file));
    assert!(out.contains("sent \"notes.bin\" to alice"), "{out}");
    let out = ok(cli(&alice).args(["listen", "--count", "1", "--timeout", "20"]));
    assert!(out.contains("[from bob/1] file \"notes.bin\""), "{out}");
    assert!(out.contains("saved to"), "{out}");
    assert_eq!(
        std::fs::read(alice.join("downloads").join("notes.bin")).unwrap(),
        data
    );

    // Alice links her laptop: `link` prints a code, her first device
    // approves it in `chat`.
    let mut link = cli(&laptop)
        .args(server.flags())
        .arg("link")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(link.stdout.take().unwrap()).lines();
    let code = loop {
        let line = lines
            .next()
            .expect("`link` ended before printing a code")
            .unwrap();
        if let Some(code) = line.strip_prefix("link code: ") {
            break code.to_owned();
        }
    };
    let (out, _) = chat(&alice, &format!("/link {code}\n/quit\n"));
    assert!(out.contains("linked alice/2"), "{out}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = link.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("linked: this is device alice/2")),
        "{rest:?}"
    );

    // Bob's next message reaches both of Alice's devices.
    ok(cli(&bob).args(["send", "alice", "hi", "both"]));
    let out = ok(cli(&laptop).args(["listen", "--count", "1", "--timeout", "20"]));
    assert!(out.contains("[from bob/1] hi both"), "{out}");
    let out = ok(cli(&alice).args(["listen", "--count", "1", "--timeout", "20"]));
    assert!(out.contains("[from bob/1] hi both"), "{out}");

    // The laptop is lost: Alice removes it, and it can no longer log in.
    let (out, _) = chat(&alice, "/remove-device 2\n/devices\n/quit\n");
    assert!(out.contains("removed alice/2"), "{out}");
    assert!(!out.contains("\nalice/2\n"), "{out}");
    let stderr = fails(cli(&laptop).args(["listen", "--timeout", "5"]));
    assert!(stderr.contains("was this device removed?"), "{stderr}");
}

#[test]
fn an_identity_change_is_a_warning_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    ok(cli(&alice).args(server.flags()).args(["register", "alice"]));
    ok(cli(&bob).args(server.flags()).args(["register", "bob"]));
    ok(cli(&bob).args(["send", "alice", "first"]));
    ok(cli(&alice).args(["listen", "--count", "1", "--timeout", "20"]));

    // Bob's account is made anew under the same name, with a new identity.
    server.delete_account("bob");
    let bob = dir.path().join("bob-again");
    ok(cli(&bob).args(server.flags()).args(["register", "bob"]));
    ok(cli(&bob).args(["send", "alice", "it is me, new phone"]));

    let (out, stderr) = chat(&alice, "/msg bob really?\n/accept bob\n/quit\n");
    let warning = out
        .find("WARNING: bob's identity key CHANGED")
        .unwrap_or_else(|| panic!("no warning in {out}"));
    assert!(stderr.contains("bob's identity changed"), "{stderr}");
    let shown = out
        .find("[from bob/1] it is me, new phone")
        .unwrap_or_else(|| panic!("not shown after /accept: {out}"));
    assert!(warning < shown);
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let carol = dir.path().join("carol");

    let stderr = fails(cli(&carol).arg("chat"));
    assert!(stderr.contains("no Hush device in"), "{stderr}");
    let stderr = fails(
        cli(&carol)
            .args(["--ca", "no-such.pem"])
            .args(["register", "carol"]),
    );
    assert!(stderr.contains("no-such.pem"), "{stderr}");
    assert!(!carol.join("hush.db").exists());
    ok(cli(&carol).args(server.flags()).args(["register", "carol"]));
    let stderr = fails(cli(&carol).args(server.flags()).args(["register", "carol"]));
    assert!(
        stderr.contains("already holds the device carol/1"),
        "{stderr}"
    );

    let stderr = fails(cli(&carol).args(["send", "nobody", "hi"]));
    assert!(
        stderr.contains("1 message(s) could not be sent"),
        "{stderr}"
    );
    let stderr = fails(cli(&carol).args(["approve", "zz"]));
    assert!(stderr.contains("not a link code"), "{stderr}");

    let (out, stderr) = chat(
        &carol,
        "hello\n/msg\n/msg carol\n/frobnicate\n/add\n/add nobody\n/safety nobody\n\
         /remove-device x\n/remove-device 1\n/remove-device 7\n/link 00ff\n/devices\n/help\n",
    );
    for expected in [
        "not a command",
        "usage: /msg USER TEXT",
        "unknown command /frobnicate",
        "usage: /add USER",
        "cannot add nobody",
        "not a device number",
        "cannot remove itself",
        "carol/7 is not one of your devices",
        "not a valid link code",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in\n{stderr}");
    }
    assert!(
        out.contains("no identity of nobody is trusted yet"),
        "{out}"
    );
    assert!(out.contains("carol/1 (this device)"), "{out}");
    assert!(out.contains("/send-file USER PATH"), "{out}");
}
