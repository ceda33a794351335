//! Counters and gauges, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A reason a connection or request was refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The global connection cap.
    Connections,
    /// The per-IP cap on unauthenticated connections.
    PreAuthPerIp,
    /// The per-IP rate of new connections.
    ConnectionRate,
    /// A frame over the size cap.
    FrameSize,
    /// The TLS handshake took too long.
    HandshakeTimeout,
    /// No authentication in time.
    AuthTimeout,
    /// No frame for the idle timeout.
    IdleTimeout,
    /// The outbound queue of a slow reader overflowed.
    SlowReader,
    /// The send rate of a device.
    SendRate,
    /// The bundle fetch rate of a device.
    FetchRate,
    /// An upload cap (size, per user or global).
    Upload,
    /// The server-wide rate of registrations.
    RegistrationRate,
    /// The per-device rate of other requests.
    RequestRate,
}

const REJECTIONS: [(Rejection, &str); 13] = [
    (Rejection::Connections, "connections"),
    (Rejection::PreAuthPerIp, "preauth_per_ip"),
    (Rejection::ConnectionRate, "connection_rate"),
    (Rejection::FrameSize, "frame_size"),
    (Rejection::HandshakeTimeout, "handshake_timeout"),
    (Rejection::AuthTimeout, "auth_timeout"),
    (Rejection::IdleTimeout, "idle_timeout"),
    (Rejection::SlowReader, "slow_reader"),
    (Rejection::SendRate, "send_rate"),
    (Rejection::FetchRate, "fetch_rate"),
    (Rejection::Upload, "upload"),
    (Rejection::RegistrationRate, "registration_rate"),
    (Rejection::RequestRate, "request_rate"),
];

/// Latency buckets of storage calls, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections.
    pub connections: AtomicU64,
    /// Authenticated connections.
    pub authenticated: AtomicU64,
    /// Envelopes accepted for delivery.
    pub messages_relayed: AtomicU64,
    /// Envelopes pushed live to a connected device.
    pub messages_pushed: AtomicU64,
    /// Envelopes in the queue, as last counted.
    pub queue_depth: AtomicU64,
    /// Push hook calls made.
    pub push_hook_calls: AtomicU64,
    rejections: [AtomicU64; 13],
    latency_buckets: [AtomicU64; 10],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts a refusal by a limit.
    pub fn reject(&self, why: Rejection) {
        if let Some(i) = REJECTIONS.iter().position(|(r, _)| *r == why) {
            self.rejections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many refusals of this kind so far.
    pub fn rejections(&self, why: Rejection) -> u64 {
        REJECTIONS
            .iter()
            .position(|(r, _)| *r == why)
            .map_or(0, |i| self.rejections[i].load(Ordering::Relaxed))
    }

    /// Records the duration of one storage call.
    pub fn storage_latency(&self, seconds: f64) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "hush_connections",
                "gauge",
                "Open connections.",
                load(&self.connections),
            ),
            (
                "hush_authenticated_connections",
                "gauge",
                "Authenticated connections.",
                load(&self.authenticated),
            ),
            (
                "hush_messages_relayed_total",
                "counter",
                "Envelopes accepted for delivery.",
                load(&self.messages_relayed),
            ),
            (
                "hush_messages_pushed_total",
                "counter",
                "Envelopes pushed live to a connected device.",
                load(&self.messages_pushed),
            ),
            (
                "hush_queue_depth",
                "gauge",
                "Envelopes waiting in the queue.",
                load(&self.queue_depth),
            ),
            (
                "hush_push_hook_calls_total",
                "counter",
                "Push hook calls for offline devices.",
                load(&self.push_hook_calls),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP hush_rejections_total Connections and requests refused by a limit.\n# TYPE hush_rejections_total counter"
        );
        for (i, (_, label)) in REJECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "hush_rejections_total{{limit=\"{label}\"}} {}",
                load(&self.rejections[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP hush_storage_seconds Latency of storage calls.\n# TYPE hush_storage_seconds histogram"
        );
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "hush_storage_seconds_bucket{{le=\"{bound}\"}} {}",
                load(&self.latency_buckets[i])
            );
        }
        let count = load(&self.latency_count);
        let _ = writeln!(out, "hush_storage_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "hush_storage_seconds_sum {}",
            load(&self.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "hush_storage_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_series() {
        let m = Metrics::default();
        m.reject(Rejection::SendRate);
        m.reject(Rejection::SendRate);
        m.storage_latency(0.002);
        m.messages_relayed.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("hush_rejections_total{limit=\"send_rate\"} 2"));
        assert!(text.contains("hush_rejections_total{limit=\"upload\"} 0"));
        assert!(text.contains("hush_messages_relayed_total 3"));
        assert!(text.contains("hush_storage_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("hush_storage_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("hush_storage_seconds_count 1"));
        assert_eq!(m.rejections(Rejection::SendRate), 2);
    }
}
