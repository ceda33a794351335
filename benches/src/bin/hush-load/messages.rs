//! Message throughput and latency: pairs of full SDK clients, one sending
//! and one receiving, for a fixed time.
//!
//! Each message's text carries its sequence number and the moment it was
//! handed to the sender's client (microseconds since a common origin in this
//! process); the recipient measures the end-to-end latency when the message
//! event comes out of its client, then confirms it (the client acknowledges
//! it to the server, which deletes it from the queue). A message is
//! "accepted" when the sender's client reports `Sent`: the server has stored
//! it for the recipient's device.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hush::client::ClientEvent;
use hush::keys::UserId;
use hush::wire::content::{Body, MessageId};
use tokio::task::JoinSet;

use crate::devices::Device;
use crate::proc::Percentiles;
use crate::report::{Report, mib, per_sec};
use crate::server::Server;

/// How long after the end senders wait for `Sent` and receivers for messages.
const GRACE: Duration = Duration::from_secs(15);

/// Settings of the `messages` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Sender/receiver pairs (two full SDK clients, two connections each).
    #[arg(long, default_value_t = 50)]
    pub(crate) pairs: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub(crate) seconds: u64,
    /// Messages per second in all, spread evenly over the pairs (an open
    /// loop: a sender does not wait for the server); 0 sends as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Messages a sender may have in flight (sent, not yet accepted) when
    /// sending as fast as possible.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub(crate) size: usize,
    /// Idle connections held beside the pairs (light clients, see `idle`).
    #[arg(long, default_value_t = 0)]
    pub(crate) idle: usize,
}

/// When and how fast a sender sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// The origin of the timestamps in the messages.
    pub(crate) epoch: Instant,
    pub(crate) start: Instant,
    /// No message is sent after it.
    pub(crate) end: Instant,
    /// One message per interval (open loop), or `None` to keep `window`
    /// messages in flight.
    pub(crate) interval: Option<Duration>,
    pub(crate) window: usize,
    /// Stop after this many.
    pub(crate) count: Option<u64>,
    /// Bytes of text per message.
    pub(crate) size: usize,
}

/// What a sender tells its receiver: how many messages to expect.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    accepted: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    pub(crate) fn finished(accepted: u64) -> Self {
        Self {
            accepted: AtomicU64::new(accepted),
            done: AtomicBool::new(true),
        }
    }
}

/// A sender's counts.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    pub(crate) accepted_in_window: u64,
    pub(crate) failed: u64,
    pub(crate) errors: Vec<String>,
    /// From the send call to the `Sent` event.
    pub(crate) accept_times: Vec<Duration>,
}

impl Sent {
    /// Keeps the first few errors for the report.
    fn note(&mut self, error: String) {
        if self.errors.len() < 5 {
            self.errors.push(error);
        }
    }
}

/// A receiver's counts.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) delivered: u64,
    pub(crate) delivered_in_window: u64,
    /// From the send call to the message event.
    pub(crate) latencies: Vec<Duration>,
}

/// `"{seq} {micros since epoch} "`, padded to `size` bytes.
fn body(seq: u64, since_epoch: Duration, size: usize) -> String {
    let mut text = format!("{seq} {} ", since_epoch.as_micros());
    if text.len() < size {
        text.extend(std::iter::repeat_n('.', size - text.len()));
    }
    text
}

/// When the message of `text` was handed to its sender's client.
fn sent_at(text: &str, epoch: Instant) -> Option<Instant> {
    let micros: u64 = text.split(' ').nth(1)?.parse().ok()?;
    Some(epoch + Duration::from_micros(micros))
}

/// Sends to `to` as `plan` says, until its end (or count), then waits up
/// to [`GRACE`] for the last `Sent` events.
pub(crate) async fn send_loop(
    mut device: Device,
    to: UserId,
    plan: Plan,
    offset: Duration,
    progress: Arc<Progress>,
) -> anyhow::Result<Sent> {
    let mut pending: HashMap<MessageId, Instant> = HashMap::new();
    let mut out = Sent::default();
    let mut next_at = plan.start + offset;
    tokio::time::sleep_until(plan.start.into()).await;
    let more = |out: &Sent, now: Instant| now < plan.end && plan.count.is_none_or(|c| out.sent < c);
    loop {
        let now = Instant::now();
        if !more(&out, now) && (pending.is_empty() || now >= plan.end + GRACE) {
            break;
        }
        while more(&out, Instant::now()) {
            let now = Instant::now();
            let due = match plan.interval {
                Some(_) => next_at <= now,
                None => pending.len() < plan.window,
            };
            if !due {
                break;
            }
            let text = body(out.sent, now.duration_since(plan.epoch), plan.size);
            let id = device.send(&to, text).await?;
            pending.insert(id, now);
            out.sent += 1;
            if let Some(interval) = plan.interval {
                next_at += interval;
            }
        }
        // Events until the next send is due, and at least every 100 ms.
        let mut wait = Duration::from_millis(100);
        if plan.interval.is_some() && more(&out, Instant::now()) {
            wait = wait.min(next_at.saturating_duration_since(Instant::now()));
        }
        match device.driven.next_event(wait).await {
            Some(ClientEvent::Sent { message, recipient }) if recipient == to => {
                if let Some(at) = pending.remove(&message) {
                    let now = Instant::now();
                    out.accept_times.push(now.duration_since(at));
                    out.accepted += 1;
                    if now <= plan.end {
                        out.accepted_in_window += 1;
                    }
                }
            }
            Some(ClientEvent::DeliveryFailed {
                message,
                recipient,
                reason,
            }) if recipient == to && pending.remove(&message).is_some() => {
                out.failed += 1;
                out.note(reason);
            }
            Some(ClientEvent::ServerError(e)) => out.note(format!("{e:?}")),
            _ => {}
        }
    }
    progress.accepted.store(out.accepted, Ordering::Release);
    progress.done.store(true, Ordering::Release);
    Ok(out)
}

/// Receives and confirms messages until the sender is done and everything
/// it saw accepted has arrived, or until `give_up`. Returns the device too:
/// closing its connection at once would drop the acknowledgements the
/// server has not read yet (they would be delivered again next time).
pub(crate) async fn receive_loop(
    mut device: Device,
    plan: Plan,
    progress: Arc<Progress>,
    give_up: Instant,
) -> anyhow::Result<(Device, Received)> {
    let mut out = Received::default();
    loop {
        if progress.done.load(Ordering::Acquire)
            && out.delivered >= progress.accepted.load(Ordering::Acquire)
        {
            break;
        }
        if Instant::now() >= give_up {
            break;
        }
        if let Some(ClientEvent::Message {
            envelope_id,
            content,
            ..
        }) = device.driven.next_event(Duration::from_millis(100)).await
        {
            let arrived = Instant::now();
            if let Body::Text(text) = &content.body
                && let Some(sent) = sent_at(text, plan.epoch)
            {
                out.latencies.push(arrived.saturating_duration_since(sent));
            }
            out.delivered += 1;
            if arrived <= plan.end {
                out.delivered_in_window += 1;
            }
            device.confirm(envelope_id).await?;
        }
    }
    Ok((device, out))
}

/// The `messages` scenario.
pub(crate) async fn run(
    server: &Server,
    options: &Options,
    concurrency: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pairs = options.pairs.max(1);
    let how = if options.rate > 0.0 {
        format!("{} messages/s in all", options.rate)
    } else {
        format!("as fast as possible, window {}", options.window)
    };
    report.section(&format!(
        "messages: {pairs} pairs, {} s, {how}, {} bytes of text{}",
        options.seconds,
        options.size,
        if options.idle > 0 {
            format!(", beside {} idle connections", options.idle)
        } else {
            String::new()
        }
    ));

    let idle = if options.idle > 0 {
        eprintln!("registering and connecting {} idle devices", options.idle);
        let accounts = crate::idle::register(server, "idle-", options.idle, concurrency).await?;
        let held = crate::idle::connect(server, accounts, concurrency).await?;
        report.figure(
            "idle connections, connect + TLS + login",
            format!("{} in {:.1} s", options.idle, held.elapsed.as_secs_f64()),
        );
        Some(held)
    } else {
        None
    };

    eprintln!("setting up {} SDK devices", 2 * pairs);
    let stored_before = server.stored_bytes().await?;
    let start = Instant::now();
    let devices = Device::create_many(server, "pair-", 2 * pairs, concurrency).await?;
    report.figure(
        "SDK devices: register, log in, publish",
        format!("{} in {:.1} s", 2 * pairs, start.elapsed().as_secs_f64()),
    );
    let stored_setup = server.stored_bytes().await?;
    report.figure(
        "storage per SDK account (50 one-time prekeys)",
        format!(
            "{:.0} bytes",
            stored_setup.saturating_sub(stored_before) as f64 / (2 * pairs) as f64
        ),
    );

    let mut devices = devices.into_iter();
    let mut couples = Vec::with_capacity(pairs);
    while let (Some(a), Some(b)) = (devices.next(), devices.next()) {
        couples.push((a, b));
    }
    eprintln!("introducing the pairs");
    let couples = introduce_all(couples, concurrency).await?;

    let epoch = Instant::now();
    let plan = Plan {
        epoch,
        start: epoch + Duration::from_millis(200),
        end: epoch + Duration::from_millis(200) + Duration::from_secs(options.seconds),
        interval: (options.rate > 0.0)
            .then(|| Duration::from_secs_f64(pairs as f64 / options.rate)),
        window: options.window.max(1),
        count: None,
        size: options.size,
    };
    let stored_start = server.stored_bytes().await?;
    let metrics_start = server.metrics().await?;
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for (i, (a, b)) in couples.into_iter().enumerate() {
        let progress = Arc::new(Progress::default());
        // Senders at a target rate start spread over one interval.
        let offset = plan
            .interval
            .map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / pairs as f64));
        let to = b.user.clone();
        senders.spawn(send_loop(a, to, plan, offset, progress.clone()));
        receivers.spawn(receive_loop(b, plan, progress, plan.end + 2 * GRACE));
    }
    eprintln!("sending for {} s", options.seconds);
    tokio::time::sleep_until(plan.start.into()).await;
    let usage_start = server.usage()?;
    tokio::time::sleep_until(plan.end.into()).await;
    let usage_end = server.usage()?;
    let window = plan.end.duration_since(plan.start);

    let mut sent = Sent::default();
    while let Some(s) = senders.join_next().await {
        let s = s??;
        sent.sent += s.sent;
        sent.accepted += s.accepted;
        sent.accepted_in_window += s.accepted_in_window;
        sent.failed += s.failed;
        sent.errors.extend(s.errors);
        sent.accept_times.extend(s.accept_times);
    }
    let mut received = Received::default();
    let mut connected = Vec::with_capacity(pairs);
    while let Some(r) = receivers.join_next().await {
        let (device, r) = r??;
        connected.push(device);
        received.delivered += r.delivered;
        received.delivered_in_window += r.delivered_in_window;
        received.latencies.extend(r.latencies);
    }
    let finished = plan.end.elapsed();
    let acked = server.until_queue_empty(GRACE).await?;
    let metrics_end = server.metrics().await?;
    let stored_end = server.stored_bytes().await?;

    let secs = window.as_secs_f64();
    report.figure(
        "accepted by the server (Sent)",
        format!(
            "{} in {secs:.1} s = {}",
            sent.accepted_in_window,
            per_sec(sent.accepted_in_window, secs)
        ),
    );
    report.figure(
        "delivered to recipients",
        format!(
            "{} in {secs:.1} s = {}",
            received.delivered_in_window,
            per_sec(received.delivered_in_window, secs)
        ),
    );
    report.figure(
        "all sent / accepted / delivered",
        format!(
            "{} / {} / {} (the last within {:.1} s after the end)",
            sent.sent,
            sent.accepted,
            received.delivered,
            finished.as_secs_f64()
        ),
    );
    report.figure("failed sends", sent.failed);
    for e in &sent.errors {
        report.note(&format!("error: {e}"));
    }
    report.figure(
        "end-to-end latency (send to message)",
        Percentiles::new(received.latencies).summary(),
    );
    report.figure(
        "accept latency (send to Sent)",
        Percentiles::new(sent.accept_times).summary(),
    );
    for (name, value) in usage_end.cpu_since(&usage_start, window) {
        report.figure(&format!("{name}, while sending"), value);
    }
    report.figure(
        "server RSS at the end / peak",
        format!(
            "{} / {}",
            mib(usage_end.server.rss_kib),
            mib(usage_end.server.peak_kib)
        ),
    );
    let (calls, mean) = metrics_end.storage_calls_since(&metrics_start);
    report.figure(
        "storage calls (server)",
        format!(
            "{calls:.0}, mean {:.2} ms (about {:.1} per delivered message)",
            mean * 1e3,
            calls / received.delivered.max(1) as f64
        ),
    );
    report.figure(
        "envelopes relayed / pushed live",
        format!(
            "{} / {}",
            metrics_end.value("hush_messages_relayed_total")
                - metrics_start.value("hush_messages_relayed_total"),
            metrics_end.value("hush_messages_pushed_total")
                - metrics_start.value("hush_messages_pushed_total"),
        ),
    );
    report.figure(
        "queue empty (all acknowledged)",
        match acked {
            Some(t) => format!("{:.1} s after the last delivery", t.as_secs_f64()),
            None => format!("not within {} s after the last delivery", GRACE.as_secs()),
        },
    );
    report.figure(
        "storage after all were acknowledged",
        format!(
            "{:+} bytes against the start (acknowledged messages are deleted)",
            stored_end as i64 - stored_start as i64,
        ),
    );
    report.figure("limits that refused something", metrics_end.rejections());
    if let Some(held) = &idle {
        report.figure("idle connections closed meanwhile", held.closed());
    }
    drop((idle, connected));
    Ok(())
}

/// One message each way in every pair, `concurrency` pairs at a time.
async fn introduce_all(
    couples: Vec<(Device, Device)>,
    concurrency: usize,
) -> anyhow::Result<Vec<(Device, Device)>> {
    let mut done = Vec::with_capacity(couples.len());
    let mut pending = couples.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < concurrency.max(1) {
            let Some((mut a, mut b)) = pending.next() else {
                break;
            };
            running.spawn(async move {
                Device::introduce(&mut a, &mut b).await?;
                anyhow::Ok((a, b))
            });
        }
        match running.join_next().await {
            Some(pair) => done.push(pair??),
            None => return Ok(done),
        }
    }
}
