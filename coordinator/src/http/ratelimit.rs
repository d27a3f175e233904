//! Per-client rate limits of the HTTP API: one pair of token buckets ([`crate::bucket`]) per
//! client address, a generous one for reads (GET, HEAD) and a tighter one for writes. Over the
//! limit a request answers 429 `rate_limited` with `Retry-After` in seconds. It applies to every
//! request, before authentication; a request that fails authentication (401) is charged to the
//! write budget as well, so guessing tokens runs at the write rate at most.
//!
//! [`RateLimiter`] is pure (the caller passes the time); [`limit`] is the middleware. The
//! client is the TCP peer address (`ConnectInfo`); an IPv6 client is its /64, since one host
//! usually holds a whole /64. `X-Forwarded-For` is not trusted: behind a reverse proxy every
//! request comes from the proxy, so all clients share one budget (rate-limit per client in the
//! proxy then). Without `ConnectInfo` (a router served without it) all requests share one
//! budget too.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Code};
use crate::bucket::TokenBucket;

/// Reads per second a client may make on average: a dashboard polling every route each second
/// stays well inside it.
pub const READ_PER_SEC: u64 = 20;
/// Reads a client may make at once.
pub const READ_BURST: u64 = 100;
/// Writes per second a client may make on average.
pub const WRITE_PER_SEC: u64 = 2;
/// Writes a client may make at once (a script creating a batch of invites or tokens).
pub const WRITE_BURST: u64 = 20;
/// Clients tracked at most; past this, clients that are not idle share one extra budget.
pub const MAX_CLIENTS: usize = 10_000;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Average reads per second per client.
    pub read_per_sec: u64,
    /// Read burst per client.
    pub read_burst: u64,
    /// Average writes per second per client.
    pub write_per_sec: u64,
    /// Write burst per client.
    pub write_burst: u64,
    /// Clients tracked at most.
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read_per_sec: READ_PER_SEC,
            read_burst: READ_BURST,
            write_per_sec: WRITE_PER_SEC,
            write_burst: WRITE_BURST,
            max_clients: MAX_CLIENTS,
        }
    }
}

/// Which budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GET and HEAD.
    Read,
    /// Everything else.
    Write,
}

impl Kind {
    /// The budget of `method`.
    pub fn of(method: &Method) -> Self {
        if method == Method::GET || method == Method::HEAD {
            Kind::Read
        } else {
            Kind::Write
        }
    }
}

/// One client's budgets.
#[derive(Debug, Clone)]
struct Client {
    /// Reads.
    read: TokenBucket,
    /// Writes.
    write: TokenBucket,
    /// Last request, to forget clients whose buckets are full again.
    last: Instant,
}

/// Budgets by client.
#[derive(Debug)]
pub struct RateLimiter {
    /// The limits.
    limits: Limits,
    /// Clients seen recently.
    clients: HashMap<IpAddr, Client>,
    /// Shared budget of clients that find the table full.
    overflow: Client,
}

impl RateLimiter {
    /// An empty limiter, as of `now`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            clients: HashMap::new(),
            overflow: Self::fresh(&limits, now),
        }
    }

    fn fresh(limits: &Limits, now: Instant) -> Client {
        Client {
            read: TokenBucket::new(limits.read_per_sec, limits.read_burst, now),
            write: TokenBucket::new(limits.write_per_sec, limits.write_burst, now),
            last: now,
        }
    }

    /// Time after which an untouched client's buckets are full again (forgetting it then
    /// changes nothing).
    fn idle_after(&self) -> Duration {
        let l = &self.limits;
        let secs = |burst: u64, rate: u64| burst.div_ceil(rate.max(1));
        Duration::from_secs(
            secs(l.read_burst, l.read_per_sec).max(secs(l.write_burst, l.write_per_sec)),
        )
    }

    /// Charges one request of `kind` from `client` at `now`; the seconds to wait if over the
    /// limit.
    pub fn check(&mut self, client: IpAddr, kind: Kind, now: Instant) -> Result<(), u64> {
        let key = client_key(client);
        if !self.clients.contains_key(&key) && self.clients.len() >= self.limits.max_clients {
            let idle = self.idle_after();
            self.clients
                .retain(|_, c| now.saturating_duration_since(c.last) < idle);
        }
        let limits = self.limits;
        let c = if self.clients.len() < limits.max_clients || self.clients.contains_key(&key) {
            self.clients
                .entry(key)
                .or_insert_with(|| Self::fresh(&limits, now))
        } else {
            &mut self.overflow
        };
        c.last = now;
        let (bucket, rate) = match kind {
            Kind::Read => (&mut c.read, limits.read_per_sec),
            Kind::Write => (&mut c.write, limits.write_per_sec),
        };
        if bucket.take(1, now) {
            Ok(())
        } else {
            // One token accrues within 1/rate seconds.
            Err(1u64.div_ceil(rate.max(1)).max(1))
        }
    }

    /// Clients tracked now.
    #[cfg(test)]
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// The budget key of an address: IPv4 as is (also when IPv4-mapped), IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limiter shared by a router's requests.
pub type Shared = Arc<Mutex<RateLimiter>>;

/// Middleware: 429 for a client over its budget.
pub async fn limit(State(limiter): State<Shared>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let kind = Kind::of(req.method());
    let verdict =
        limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(client, kind, Instant::now());
    match verdict {
        Ok(()) => {
            let resp = next.run(req).await;
            if resp.status() == StatusCode::UNAUTHORIZED {
                // A failed authentication also costs a write: guessing tokens runs at the
                // write rate at best, whatever the method.
                let _ = limiter.lock().unwrap_or_else(|e| e.into_inner()).check(
                    client,
                    Kind::Write,
                    Instant::now(),
                );
            }
            resp
        }
        Err(secs) => {
            tracing::debug!(?kind, "API request over the rate limit");
            let mut e = ApiError::new(
                Code::RateLimited,
                format!("too many requests; retry in {secs} s"),
            );
            e.retry_after = Some(secs);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            read_per_sec: 10,
            read_burst: 5,
            write_per_sec: 1,
            write_burst: 2,
            max_clients: 3,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn reads_and_writes_have_separate_budgets_per_client() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(limits(), t0);
        let a = ip("192.0.2.1");
        assert_eq!(
            (0..10)
                .filter(|_| l.check(a, Kind::Write, t0).is_ok())
                .count(),
            2
        );
        assert_eq!(l.check(a, Kind::Write, t0), Err(1));
        // Reads still pass, and another client is unaffected.
        assert_eq!(
            (0..10)
                .filter(|_| l.check(a, Kind::Read, t0).is_ok())
                .count(),
            5
        );
        assert!(l.check(ip("192.0.2.2"), Kind::Write, t0).is_ok());
        // One second later a write token is back.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check(a, Kind::Write, t1).is_ok());
        assert!(l.check(a, Kind::Write, t1).is_err());
        // 100 ms after the reads ran out, one read is back.
        let t2 = t0 + Duration::from_millis(100);
        assert!(l.check(a, Kind::Read, t2).is_ok());
        assert!(l.check(a, Kind::Read, t2).is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_mapped_ipv4_is_ipv4() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(limits(), t0);
        assert!(l.check(ip("2001:db8::1"), Kind::Write, t0).is_ok());
        assert!(l.check(ip("2001:db8::ffff:2"), Kind::Write, t0).is_ok());
        assert!(l.check(ip("2001:db8::3"), Kind::Write, t0).is_err());
        assert!(l.check(ip("2001:db8:0:1::1"), Kind::Write, t0).is_ok());
        assert_eq!(client_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_clients() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(limits(), t0);
        for i in 1..=3 {
            assert!(l
                .check(ip(&format!("198.51.100.{i}")), Kind::Write, t0)
                .is_ok());
        }
        // A full table: newcomers share the overflow budget (write burst 2).
        assert!(l.check(ip("198.51.100.4"), Kind::Write, t0).is_ok());
        assert!(l.check(ip("198.51.100.5"), Kind::Write, t0).is_ok());
        assert!(l.check(ip("198.51.100.6"), Kind::Write, t0).is_err());
        assert_eq!(l.clients(), 3);
        // Once the others are idle (buckets full again), a newcomer gets its own budget.
        let later = t0 + Duration::from_secs(3);
        assert!(l.check(ip("198.51.100.6"), Kind::Write, later).is_ok());
        assert_eq!(l.clients(), 1);
    }
}
