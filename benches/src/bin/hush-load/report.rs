//! The plain-text report: printed to stdout at the end, while progress goes
//! to stderr as it happens.

use crate::proc;
use crate::server::Server;

/// Lines of the report.
#[derive(Debug, Default)]
pub(crate) struct Report {
    lines: Vec<String>,
}

impl Report {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The command, the server's settings, the storage and the machine.
    pub(crate) async fn header(&mut self, server: &Server) {
        self.lines.push("hush-load report".into());
        let args: Vec<String> = std::env::args().skip(1).map(quote).collect();
        self.figure("command", format!("hush-load {}", args.join(" ")));
        self.figure("server", server.command());
        for setting in server.settings_text().lines() {
            self.figure("  setting", setting);
        }
        self.figure("storage", server.storage_kind().await);
        self.figure(
            "machine",
            format!("{}; the clients and the server share it", proc::machine()),
        );
        self.figure("load average at start", proc::load_average());
        if let Some(date) = utc_now() {
            self.figure("started", date);
        }
    }

    /// Starts a section.
    pub(crate) fn section(&mut self, title: &str) {
        self.lines.push(String::new());
        self.lines.push(format!("== {title}"));
    }

    /// One figure.
    pub(crate) fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.lines.push(format!("{name:<40} {value}"));
    }

    /// A free line (a note on how to read a figure).
    pub(crate) fn note(&mut self, text: &str) {
        self.lines.push(format!("   {text}"));
    }

    pub(crate) fn print(&self) {
        println!("{}", self.lines.join("\n"));
    }
}

fn quote(arg: String) -> String {
    if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
        format!("'{}'", arg.replace('\'', r"'\''"))
    } else {
        arg
    }
}

fn utc_now() -> Option<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `n` KiB as MiB.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A rate, per second.
pub(crate) fn per_sec(count: u64, secs: f64) -> String {
    format!("{:.0}/s", count as f64 / secs.max(1e-9))
}
