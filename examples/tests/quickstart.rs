//! The quickstart runs to the end: a server on the embedded default, three
//! devices, messages both ways and a 3 MiB attachment over TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[test]
fn the_quickstart_runs_to_the_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .output()
        .expect("the quickstart binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[bob] from alice device 1: Hi Bob, this is end-to-end encrypted.",
        "[alice laptop] copy of what alice device 1 sent to bob",
        "[alice laptop] from bob device 1: Hi Alice!",
        "SHA-256 matches the sent file",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
}
