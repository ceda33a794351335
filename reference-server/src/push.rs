//! The push hook: wakes an offline device when a message is queued for it.
//!
//! The hook learns only the device and its push token, never message
//! content, sender or size. [`Webhook`] POSTs them as JSON to a URL, where a
//! small gateway of the operator's choosing (FCM, APNs, UnifiedPush) takes
//! over.

use std::sync::Arc;
use std::time::Duration;

use hush::keys::DeviceAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Something that can wake an offline device.
pub trait PushHook: Send + Sync + 'static {
    /// A message was queued for `device`, which is not connected and
    /// registered `token`. Must not block: work happens in the background.
    fn notify(&self, device: &DeviceAddress, token: &str);
}

/// POSTs `{"user": …, "device": …, "token": …}` to an `http://` URL in the
/// background, with a 10-second timeout. At most [`MAX_IN_FLIGHT`] requests
/// run at once and at most one per device (a device with a wake-up on its
/// way is not woken again); calls beyond that are dropped, since a woken
/// device fetches everything queued for it anyway.
#[derive(Debug, Clone)]
pub struct Webhook {
    host: String,
    authority: String,
    path: String,
    calls: Arc<std::sync::atomic::AtomicU64>,
    in_flight: Arc<tokio::sync::Semaphore>,
    pending: Arc<std::sync::Mutex<std::collections::HashSet<DeviceAddress>>>,
}

/// Push hook requests running at once, at most.
pub const MAX_IN_FLIGHT: usize = 64;

/// Why a webhook URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("push webhook URL must be http://host[:port]/path: {0}")]
pub struct WebhookUrlError(String);

impl Webhook {
    /// A hook for `url` (`http://host[:port][/path]`). TLS to the gateway is
    /// the gateway's business: run it on the same machine or a private network.
    ///
    /// # Errors
    /// [`WebhookUrlError`].
    pub fn new(url: &str) -> Result<Self, WebhookUrlError> {
        let err = || WebhookUrlError(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(err)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
            return Err(err());
        }
        let host = if authority.starts_with('[') || authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            host,
            authority: authority.to_owned(),
            path: path.to_owned(),
            calls: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            pending: Arc::default(),
        })
    }

    /// Requests made so far (for tests and metrics).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn post(&self, body: String) -> std::io::Result<()> {
        let mut stream = tokio::net::TcpStream::connect(&self.host).await?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.path,
            self.authority,
            body.len(),
            body
        );
        stream.write_all(request.as_bytes()).await?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).await?;
        if status.starts_with(b"HTTP/1.1 2") || status.starts_with(b"HTTP/1.0 2") {
            Ok(())
        } else {
            Err(std::io::Error::other("push gateway refused"))
        }
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl PushHook for Webhook {
    fn notify(&self, device: &DeviceAddress, token: &str) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!("push hook saturated; wake-up dropped");
            return;
        };
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !pending.insert(device.clone()) {
                return;
            }
        }
        let body = format!(
            "{{\"user\":{},\"device\":{},\"token\":{}}}",
            json_string(device.user.as_str()),
            device.device.0,
            json_string(token)
        );
        let hook = self.clone();
        let device = device.clone();
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), hook.post(body)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "push hook failed"),
                Err(_) => tracing::warn!("push hook timed out"),
            }
            hook.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&device);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn urls_are_parsed_and_strings_escaped() {
        let w = Webhook::new("http://127.0.0.1:9000/push").unwrap();
        assert_eq!(
            (w.host.as_str(), w.path.as_str()),
            ("127.0.0.1:9000", "/push")
        );
        let w = Webhook::new("http://gateway").unwrap();
        assert_eq!((w.host.as_str(), w.path.as_str()), ("gateway:80", "/"));
        for bad in ["https://x/", "ftp://x", "http://", "http://u@x/"] {
            assert!(Webhook::new(bad).is_err(), "{bad}");
        }
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
