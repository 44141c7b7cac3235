//! Limits failed authentications per client address and endpoint.
//!
//! A fixed one-minute window per (address, endpoint): after `limit` failures in it, further
//! attempts are refused (53300) until the window ends. Success does not reset the count, so
//! a guesser cannot interleave a known password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lakebed_config::EndpointName;

const WINDOW: Duration = Duration::from_secs(60);
/// Above this many tracked keys, expired ones are pruned on the next failure.
const PRUNE_AT: usize = 10_000;

/// The limiter. Cheap: one mutex, touched only on failures and at auth start.
pub struct AuthFailureLimiter {
    limit: u32,
    failures: Mutex<HashMap<(IpAddr, EndpointName), (Instant, u32)>>,
}

impl AuthFailureLimiter {
    /// Allows `limit` failures per minute per (address, endpoint).
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, EndpointName), (Instant, u32)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another attempt may be made now.
    pub fn allows(&self, ip: IpAddr, endpoint: &EndpointName) -> bool {
        match self.lock().get(&(ip, endpoint.clone())) {
            Some((start, count)) => start.elapsed() >= WINDOW || *count < self.limit,
            None => true,
        }
    }

    /// Counts a failure.
    pub fn record_failure(&self, ip: IpAddr, endpoint: &EndpointName) {
        let mut map = self.lock();
        if map.len() >= PRUNE_AT {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = map
            .entry((ip, endpoint.clone()))
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refuses_after_the_limit_per_address_and_endpoint() {
        let l = AuthFailureLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let ep: EndpointName = "main".parse().unwrap();
        assert!(l.allows(ip, &ep));
        l.record_failure(ip, &ep);
        assert!(l.allows(ip, &ep));
        l.record_failure(ip, &ep);
        assert!(!l.allows(ip, &ep));
        assert!(l.allows(other, &ep));
        assert!(l.allows(ip, &"second".parse().unwrap()));
    }
}
