//! Messages for an offline device: what each takes in storage while it
//! waits, and how fast the device catches up when it reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hush_server::net::Connection;

use crate::devices::Device;
use crate::messages::{Plan, Progress, receive_loop, send_loop};
use crate::report::{Report, per_sec};
use crate::server::{NAME, Server};

/// Settings of the `queue` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Messages to queue for the offline device.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub(crate) size: usize,
    /// Messages the sender may have in flight (sent, not yet accepted).
    #[arg(long, default_value_t = 32)]
    pub(crate) window: usize,
}

/// The `queue` scenario.
pub(crate) async fn run(
    server: &Server,
    options: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let k = options.messages;
    report.section(&format!(
        "queue: {k} messages of {} bytes of text for an offline device",
        options.size
    ));
    let mut devices = Device::create_many(server, "queue-", 2, 2)
        .await?
        .into_iter();
    let (Some(mut a), Some(mut b)) = (devices.next(), devices.next()) else {
        anyhow::bail!("two devices were asked for");
    };
    Device::introduce(&mut a, &mut b).await?;
    let (b_user, (client, _)) = (b.user.clone(), b.driven.close().await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_before = server.stored_bytes().await?;

    eprintln!("queueing {k} messages for an offline device");
    let epoch = Instant::now();
    let plan = Plan {
        epoch,
        start: epoch,
        end: epoch + Duration::from_secs(24 * 3600),
        interval: None,
        window: options.window.max(1),
        count: Some(k),
        size: options.size,
    };
    let sent = send_loop(
        a,
        b_user.clone(),
        plan,
        Duration::ZERO,
        Arc::new(Progress::default()),
    )
    .await?;
    let took = epoch.elapsed();
    anyhow::ensure!(
        sent.accepted == k,
        "{} of {k} accepted ({} failed: {:?})",
        sent.accepted,
        sent.failed,
        sent.errors
    );
    report.figure(
        "queued (accepted for the offline device)",
        format!(
            "{k} in {:.1} s = {}",
            took.as_secs_f64(),
            per_sec(k, took.as_secs_f64())
        ),
    );
    let stored_queued = server.stored_bytes().await?;
    report.figure(
        "storage per queued message",
        format!(
            "{:.0} bytes ({} bytes for {k})",
            stored_queued.saturating_sub(stored_before) as f64 / k as f64,
            stored_queued.saturating_sub(stored_before)
        ),
    );

    eprintln!("reconnecting the offline device");
    let start = Instant::now();
    let connection = Connection::open(&server.address, NAME, server.tls.clone(), client).await?;
    let b = Device {
        user: b_user,
        driven: connection.spawn(),
    };
    let replay = Plan {
        epoch: start,
        end: start,
        ..plan
    };
    let (b, received) = receive_loop(
        b,
        replay,
        Arc::new(Progress::finished(k)),
        start + Duration::from_secs(600),
    )
    .await?;
    let took = start.elapsed();
    report.figure(
        "delivered on reconnect",
        format!(
            "{} in {:.1} s = {}",
            received.delivered,
            took.as_secs_f64(),
            per_sec(received.delivered, took.as_secs_f64())
        ),
    );
    let acked = server
        .until_queue_empty(Duration::from_secs(600))
        .await?
        .map(|more| took + more);
    report.figure(
        "acknowledged (the queue is empty)",
        match acked {
            Some(t) => format!(
                "{k} in {:.1} s = {} (from the reconnect)",
                t.as_secs_f64(),
                per_sec(k, t.as_secs_f64())
            ),
            None => "not within 10 minutes".into(),
        },
    );
    let stored_after = server.stored_bytes().await?;
    drop(b);
    report.figure(
        "storage after the acknowledgements",
        format!(
            "{:+} bytes against before queueing",
            stored_after as i64 - stored_before as i64
        ),
    );
    Ok(())
}
