//! Rate limits and per-IP accounting.
//!
//! Time is passed in (seconds as `f64` since any fixed origin), so the
//! arithmetic is tested without clocks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(rate: f64, burst: f64, now: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: f64) -> bool {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (and may be forgotten).
    pub fn is_full(&self, now: f64) -> bool {
        self.tokens + (now - self.last).max(0.0) * self.rate >= self.burst
    }
}

/// Why a new connection from an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// Too many of its connections have not authenticated.
    PreAuthCap,
    /// It opens connections too fast.
    Rate,
}

#[derive(Debug)]
struct IpState {
    preauth: usize,
    bucket: TokenBucket,
}

/// Per-IP accounting of unauthenticated connections and of the rate of new
/// connections. Authenticated connections are not counted per IP, so many
/// users behind one carrier NAT address are not locked out.
#[derive(Debug)]
pub struct IpLimits {
    max_preauth: usize,
    rate: f64,
    burst: f64,
    state: Mutex<HashMap<IpAddr, IpState>>,
}

impl IpLimits {
    /// Limits with the given cap and rate.
    pub fn new(max_preauth: usize, rate: f64, burst: f64) -> Self {
        Self {
            max_preauth,
            rate,
            burst,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a new, unauthenticated connection from `ip`, counting it.
    ///
    /// # Errors
    /// The reason it is refused; nothing is counted then.
    pub fn admit(&self, ip: IpAddr, now: f64) -> Result<(), IpRefusal> {
        let mut map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, s| s.preauth > 0 || !s.bucket.is_full(now));
        }
        let state = map.entry(ip).or_insert_with(|| IpState {
            preauth: 0,
            bucket: TokenBucket::new(self.rate, self.burst, now),
        });
        if state.preauth >= self.max_preauth {
            return Err(IpRefusal::PreAuthCap);
        }
        if !state.bucket.try_take(now) {
            return Err(IpRefusal::Rate);
        }
        state.preauth += 1;
        Ok(())
    }

    /// A connection from `ip` authenticated or closed before it did.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get_mut(&ip) {
            state.preauth = state.preauth.saturating_sub(1);
        }
    }

    /// Unauthenticated connections from `ip` now.
    pub fn preauth(&self, ip: IpAddr) -> usize {
        let map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).map_or(0, |s| s.preauth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(2.0, 3.0, 0.0);
        assert!((0..3).all(|_| b.try_take(0.0)));
        assert!(!b.try_take(0.0));
        assert!(!b.try_take(0.4));
        assert!(b.try_take(0.5));
        assert!(!b.try_take(0.5));
        // Idle time refills up to the burst, not beyond.
        assert!((0..3).all(|_| b.try_take(100.0)));
        assert!(!b.try_take(100.0));
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_address() {
        let limits = IpLimits::new(2, 100.0, 100.0);
        let (a, b) = (
            "10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4])),
            IpAddr::from([10, 0, 0, 2]),
        );
        assert_eq!(limits.admit(a, 0.0), Ok(()));
        assert_eq!(limits.admit(a, 0.0), Ok(()));
        assert_eq!(limits.admit(a, 0.0), Err(IpRefusal::PreAuthCap));
        assert_eq!(
            limits.admit(b, 0.0),
            Ok(()),
            "other addresses are not affected"
        );
        limits.release(a);
        assert_eq!(limits.preauth(a), 1);
        assert_eq!(limits.admit(a, 0.0), Ok(()));
    }

    #[test]
    fn new_connections_are_rate_limited_per_address() {
        let limits = IpLimits::new(100, 1.0, 2.0);
        let a = IpAddr::from([10, 0, 0, 3]);
        assert_eq!(limits.admit(a, 0.0), Ok(()));
        assert_eq!(limits.admit(a, 0.0), Ok(()));
        assert_eq!(limits.admit(a, 0.0), Err(IpRefusal::Rate));
        assert_eq!(limits.admit(a, 1.0), Ok(()));
    }
}
