//! Idle connections: accounts registered as the SDK registers them, then
//! logged in by a light client that signs the login challenge with
//! `hush::wire::protocol::sign_auth`, pings every 30 s as the SDK's client
//! does, and otherwise only reads (and drops) what the server sends.
//!
//! The light client keeps the load generator's own memory small: a full SDK
//! client per connection would hold a session store and 64 KiB of buffers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, IdentityKeyPair, UserId};
use hush::wire::frame::{FrameDecoder, encode_frame};
use hush::wire::protocol::{
    ClientFrame, MAX_FRAME_LEN, Push, Request, Response, ServerFrame, sign_auth,
};
use hush_server::net::{self, fresh_rng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::proc::{self, Percentiles};
use crate::report::{Report, mib, per_sec};
use crate::server::{NAME, Server};

/// How long one registration or login may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds between pings: the SDK client's default.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Connections per source address (loopback addresses 127.0.0.1, .2, …),
/// below the 28,232 ephemeral ports Linux hands out by default.
const PER_SOURCE: usize = 20_000;

/// Settings of the `idle` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Connections to open, log in and hold.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Seconds to hold them once all are logged in.
    #[arg(long, default_value_t = 65)]
    pub(crate) hold: u64,
}

/// A registered device the light client can log in as.
#[derive(Debug)]
pub(crate) struct Account {
    address: DeviceAddress,
    auth: DeviceAuthKeyPair,
}

/// Registers `count` accounts named `{prefix}{i}`.
pub(crate) async fn register(
    server: &Server,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Account>> {
    let (address, tls, prefix) = (
        server.address.clone(),
        server.tls.clone(),
        prefix.to_owned(),
    );
    crate::run_indexed(count, concurrency, move |i| {
        let (address, tls) = (address.clone(), tls.clone());
        let user = UserId::new(format!("{prefix}{i}"));
        async move {
            let user = user?;
            let mut rng = fresh_rng();
            let identity = IdentityKeyPair::generate(&mut rng);
            let auth = DeviceAuthKeyPair::generate(&mut rng);
            let device = net::register_account(
                &address,
                NAME,
                tls,
                &identity,
                &auth,
                user.clone(),
                STEP_TIMEOUT,
            )
            .await
            .with_context(|| format!("registering {}", user.as_str()))?;
            Ok(Account {
                address: DeviceAddress::new(user, device),
                auth,
            })
        }
    })
    .await
}

/// Logged-in connections held by their own tasks until dropped.
#[derive(Debug)]
pub(crate) struct Held {
    stop: watch::Sender<bool>,
    /// Connections the server closed (or that failed) while held.
    closed: Arc<AtomicUsize>,
    /// Time from the start of the connect to the login's answer, each.
    pub(crate) login_times: Percentiles,
    /// Wall time to open and log in all of them.
    pub(crate) elapsed: Duration,
}

impl Held {
    pub(crate) fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Opens a connection for every account, logs it in and keeps it open.
pub(crate) async fn connect(
    server: &Server,
    accounts: Vec<Account>,
    concurrency: usize,
) -> anyhow::Result<Held> {
    let (stop, stopped) = watch::channel(false);
    let closed = Arc::new(AtomicUsize::new(0));
    let target: SocketAddr = server.address.parse()?;
    let accounts = Arc::new(accounts);
    let count = accounts.len();
    let (tls, closed2) = (server.tls.clone(), closed.clone());
    let start = Instant::now();
    let times = crate::run_indexed(count, concurrency, move |i| {
        let (tls, accounts, stopped, closed) = (
            tls.clone(),
            accounts.clone(),
            stopped.clone(),
            closed2.clone(),
        );
        async move {
            let begun = Instant::now();
            let account = accounts.get(i).context("no such account")?;
            let source = source_address(i);
            let stream = tokio::time::timeout(STEP_TIMEOUT, log_in(target, source, tls, account))
                .await
                .map_err(|_| anyhow::anyhow!("login {i} timed out"))?
                .with_context(|| format!("login {i}"))?;
            let took = begun.elapsed();
            // The first ping at a random point of the interval, so that the
            // pings spread out as those of real clients do.
            let first = PING_INTERVAL.mul_f64(rand::random::<f64>());
            tokio::spawn(hold(stream, first, stopped, closed));
            Ok(took)
        }
    })
    .await?;
    Ok(Held {
        stop,
        closed,
        login_times: Percentiles::new(times),
        elapsed: start.elapsed(),
    })
}

/// 127.0.0.1 for the first `PER_SOURCE` connections, then 127.0.0.2, …
fn source_address(i: usize) -> Option<IpAddr> {
    let n = i / PER_SOURCE;
    (n > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (n % 250) as u8)))
}

async fn log_in(
    target: SocketAddr,
    source: Option<IpAddr>,
    tls: Arc<rustls::ClientConfig>,
    account: &Account,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = match source {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(target).await?
        }
    };
    tcp.set_nodelay(true)?;
    let name = hush_server::tls::server_name(NAME)?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let nonce = loop {
        if let ServerFrame::Push(Push::Challenge { nonce }) =
            next_frame(&mut stream, &mut decoder).await?
        {
            break nonce;
        }
    };
    let request = Request::Authenticate {
        device: account.address.clone(),
        signature: sign_auth(&account.auth, &nonce, NAME),
    };
    let frame = encode_frame(&ClientFrame { id: 1, request }.to_payload(), MAX_FRAME_LEN)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    loop {
        if let ServerFrame::Response { id: 1, result } =
            next_frame(&mut stream, &mut decoder).await?
        {
            return match result {
                Ok(Response::Authenticated { .. }) => Ok(stream),
                other => Err(anyhow::anyhow!("login refused: {other:?}")),
            };
        }
    }
}

async fn next_frame(
    stream: &mut TlsStream<TcpStream>,
    decoder: &mut FrameDecoder,
) -> anyhow::Result<ServerFrame> {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(payload) = decoder.next_frame()? {
            return Ok(ServerFrame::from_payload(&payload)?);
        }
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        decoder.push(&buf[..n])?;
    }
}

/// Keeps a logged-in connection: pings, and reads and drops what comes.
async fn hold(
    mut stream: TlsStream<TcpStream>,
    first_ping: Duration,
    mut stop: watch::Receiver<bool>,
    closed: Arc<AtomicUsize>,
) {
    let mut pings =
        tokio::time::interval_at(tokio::time::Instant::now() + first_ping, PING_INTERVAL);
    let mut id = 2u32;
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            read = stream.read(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
            }
            _ = pings.tick() => {
                let frame = ClientFrame { id, request: Request::Ping }.to_payload();
                id = id.wrapping_add(1).max(2);
                let sent = match encode_frame(&frame, MAX_FRAME_LEN) {
                    Ok(bytes) => stream.write_all(&bytes).await.is_ok() && stream.flush().await.is_ok(),
                    Err(_) => false,
                };
                if !sent {
                    break;
                }
            }
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// The `idle` scenario.
pub(crate) async fn run(
    server: &Server,
    options: &Options,
    concurrency: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = options.connections;
    report.section(&format!("idle: {n} authenticated connections"));
    let fresh = server.sample()?;
    let stored_fresh = server.stored_bytes().await?;
    report.figure("server RSS at start", mib(fresh.rss_kib));

    eprintln!("registering {n} accounts, {concurrency} at a time");
    let start = Instant::now();
    let accounts = register(server, "idle-", n, concurrency).await?;
    let took = start.elapsed();
    report.figure(
        "registrations",
        format!(
            "{n} in {:.1} s ({}; one TLS connection each)",
            took.as_secs_f64(),
            per_sec(n as u64, took.as_secs_f64())
        ),
    );
    let stored = server.stored_bytes().await?;
    report.figure(
        "storage per account (no prekeys)",
        format!(
            "{:.0} bytes",
            stored.saturating_sub(stored_fresh) as f64 / n.max(1) as f64
        ),
    );
    // Let the registration connections close before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.sample()?;
    let kernel_before = proc::kernel_kib()?;
    report.figure("server RSS, registered, no connection", mib(before.rss_kib));

    eprintln!("opening and logging in {n} connections, {concurrency} at a time");
    let held = connect(server, accounts, concurrency).await?;
    report.figure(
        "connect + TLS + login, all",
        format!(
            "{n} in {:.1} s ({})",
            held.elapsed.as_secs_f64(),
            per_sec(n as u64, held.elapsed.as_secs_f64())
        ),
    );
    report.figure("connect + TLS + login, each", held.login_times.summary());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = server.usage()?;
    let metrics = server.metrics().await?;
    report.figure(
        "authenticated connections (server)",
        metrics.value("hush_authenticated_connections"),
    );
    report.figure("server RSS, all connected", mib(connected.server.rss_kib));

    eprintln!("holding them for {} s", options.hold);
    let hold_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.hold)).await;
    let held_for = hold_start.elapsed();
    let usage = server.usage()?;
    let kernel_after = proc::kernel_kib()?;
    let (after, client) = (usage.server, usage.client);
    let metrics = server.metrics().await?;
    report.figure(
        &format!("server RSS after {} s idle", options.hold),
        mib(after.rss_kib),
    );
    report.figure("server peak RSS (VmHWM)", mib(after.peak_kib));
    let per_connection = after.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0 / n as f64;
    report.figure(
        "server memory per connection",
        format!(
            "{:.1} KiB ((RSS after hold - RSS before connecting) / {n})",
            per_connection / 1024.0
        ),
    );
    report.figure(
        "kernel memory per connection",
        format!(
            "slab {:.1} KiB, TCP buffers {:.1} KiB (machine-wide, both ends of each connection)",
            kernel_after.0.saturating_sub(kernel_before.0) as f64 / n as f64,
            kernel_after.1.saturating_sub(kernel_before.1) as f64 / n as f64
        ),
    );
    for (name, value) in usage.cpu_since(&connected, held_for) {
        report.figure(&format!("{name}, while idle"), value);
    }
    report.figure(
        "authenticated connections at the end",
        metrics.value("hush_authenticated_connections"),
    );
    report.figure("connections closed while held", held.closed());
    report.figure("limits that refused something", metrics.rejections());
    report.figure(
        "load generator RSS (light clients)",
        format!(
            "{} ({:.1} KiB per connection, all included)",
            mib(client.rss_kib),
            client.rss_kib as f64 / n as f64
        ),
    );
    drop(held);
    Ok(())
}
