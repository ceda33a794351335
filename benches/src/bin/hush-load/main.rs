//! `hush-load`: a load generator for the Hush reference server.
//!
//! It starts a `hush-server` process (the release binary beside its own, or
//! `--server-bin`) on a fresh SQLite database or on a fresh database of a
//! MySQL server, drives it over TLS on loopback with many clients, reads the
//! server's memory and CPU time from `/proc/<pid>`, and prints a plain-text
//! report with every figure and the command that produced it.
//!
//! ```sh
//! cargo build --release -p hush-server -p hush-benches
//! ulimit -n 65536        # a descriptor per connection, on both sides
//! target/release/hush-load idle --connections 10000
//! target/release/hush-load messages --pairs 50 --seconds 30
//! target/release/hush-load --database-url mysql://root@127.0.0.1:3306 messages --pairs 50
//! target/release/hush-load queue --messages 20000
//! ```
//!
//! Scenarios:
//! - `idle`: registers N accounts, logs N devices in over N connections (a
//!   light raw client that signs the login challenge, then pings every 30 s
//!   as the SDK does) and holds them; reports the server's memory per
//!   connection and the time to connect.
//! - `messages`: M sender/receiver pairs of full SDK clients exchange text
//!   messages for T seconds, as fast as a window of unacknowledged messages
//!   allows or at a target rate; reports messages per second accepted and
//!   delivered and the end-to-end latency (send to message event at the
//!   recipient). `--idle N` holds N idle connections beside them.
//! - `queue`: K messages for an offline device, then its reconnection;
//!   reports the storage each queued message takes and the catch-up rate.
//!
//! The server's limits are raised for the run (all clients come from
//! 127.0.0.1); the report lists every setting that differs from the default.

mod devices;
mod idle;
mod messages;
mod proc;
mod queue;
mod report;
mod server;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::task::JoinSet;

use crate::report::Report;
use crate::server::{Server, Settings};

/// Drives a `hush-server` process with many clients and reports what it
/// holds and how fast it relays.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    #[command(flatten)]
    server: server::Options,
    /// Clients set up at once (registrations, connections).
    #[arg(long, default_value_t = 32, global = true)]
    concurrency: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N authenticated connections held idle.
    Idle(idle::Options),
    /// M sender/receiver pairs exchanging messages for T seconds.
    Messages(messages::Options),
    /// K messages queued for an offline device, then delivered on reconnect.
    Queue(queue::Options),
}

impl Scenario {
    /// What the server must allow for this scenario.
    fn settings(&self) -> Settings {
        match self {
            Self::Idle(o) => Settings::for_connections(o.connections),
            Self::Messages(o) => Settings::for_connections(o.idle + 2 * o.pairs),
            Self::Queue(_) => Settings::for_connections(2),
        }
    }

    /// Connections this process holds at most.
    fn connections(&self) -> usize {
        match self {
            Self::Idle(o) => o.connections,
            Self::Messages(o) => o.idle + 2 * o.pairs,
            Self::Queue(_) => 2,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The server and this process each need a descriptor per connection.
    let wanted = cli.scenario.connections() as u64 + 256;
    let limit = proc::open_files_limit()?;
    if limit < wanted {
        anyhow::bail!(
            "the open-files limit is {limit}; {wanted} are needed: raise it first (`ulimit -n {}`)",
            wanted.next_multiple_of(1024)
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut report = Report::new();
    let server = Server::start(&cli.server, cli.scenario.settings()).await?;
    report.header(&server).await;
    let scenario = async {
        match &cli.scenario {
            Scenario::Idle(o) => idle::run(&server, o, cli.concurrency, &mut report).await,
            Scenario::Messages(o) => messages::run(&server, o, cli.concurrency, &mut report).await,
            Scenario::Queue(o) => queue::run(&server, o, &mut report).await,
        }
    };
    // Ctrl-C stops the server too (and drops the MySQL database).
    let outcome = tokio::select! {
        outcome = scenario => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    report.figure("load average at the end", proc::load_average());
    let stopped = server.stop().await;
    report.print();
    outcome?;
    stopped
}

/// Runs `work(0)`, …, `work(count - 1)` with at most `concurrency` at once;
/// the results in index order. Stops at the first error.
async fn run_indexed<T, F, Fut>(count: usize, concurrency: usize, work: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (work, next) = (work.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(done);
                }
                done.push((i, work(i).await?));
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        all.extend(joined??);
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}
