//! A token bucket (sans-IO: the caller passes the time), used to cap what one node may have the
//! coordinator relay.
//!
//! The bucket holds at most `burst` tokens and gains `rate` tokens per second. Taking `n` tokens
//! succeeds only if `n` are there; a refused take consumes nothing. Over any interval of length
//! `t` a bucket therefore grants at most `burst + rate * t` tokens.

use std::time::Instant;

/// A token bucket refilled continuously at a fixed rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens gained per second.
    rate: f64,
    /// Most tokens the bucket holds (the largest burst it grants at once).
    burst: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket gaining `rate` tokens per second and holding at most `burst`, as of `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Adds what accrued between the last update and `now` (a `now` earlier than the last update
    /// adds nothing: time never runs backwards here).
    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            self.last = now;
        }
    }

    /// True if `n` tokens are available at `now` (without taking them).
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` tokens if available at `now`; false (and nothing taken) otherwise.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        if self.has(n, now) {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn starts_full_and_grants_the_burst_at_once() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10, t0);
        let granted = (0..50).filter(|_| b.take(1, t0)).count();
        assert_eq!(granted, 10);
        assert!(!b.take(1, t0));
    }

    #[test]
    fn refills_at_the_rate_and_caps_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert!(b.take(100, t0));
        // 50 ms at 1000/s is 50 tokens.
        assert!(!b.take(51, ms(t0, 50)));
        assert!(b.take(50, ms(t0, 50)));
        assert!(!b.take(1, ms(t0, 50)));
        // A long idle time refills only up to the burst.
        assert!(!b.take(101, ms(t0, 10_000)));
        assert!(b.take(100, ms(t0, 10_000)));
    }

    #[test]
    fn refused_takes_consume_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 10, t0);
        assert!(!b.take(11, t0));
        assert!(b.has(10, t0));
        assert!(b.take(10, t0));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 10, ms(t0, 100));
        assert!(b.take(10, ms(t0, 100)));
        assert!(!b.take(1, t0));
        assert!(!b.take(1, ms(t0, 100)));
        assert!(b.take(1, ms(t0, 101)));
    }

    #[test]
    fn long_run_grants_at_most_burst_plus_rate_times_time() {
        // A sender trying 1 token every 100 µs (10k/s) against 2k/s with a burst of 50, for 3 s.
        let t0 = Instant::now();
        let (rate, burst) = (2000u64, 50u64);
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut granted = 0u64;
        for i in 0..30_000u64 {
            if b.take(1, t0 + Duration::from_micros(i * 100)) {
                granted += 1;
            }
        }
        let bound = burst + rate * 3;
        assert!(granted <= bound, "{granted} > {bound}");
        // And it is not stingy: the rate is granted, within rounding.
        assert!(granted >= rate * 3 - 2, "{granted}");
    }
}
