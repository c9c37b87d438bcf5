//! Token buckets keyed by who asks (a user id, a client address), with a bound on how many keys
//! are remembered. No clock: `now` is a parameter, so tests step time instead of sleeping.
//!
//! A bucket holds up to `burst` tokens and gains one every `refill`; a full bucket carries no
//! information (a new key starts full), so it is what gets forgotten when the table is at its
//! bound. Buckets are keyed by identity, not by connection: reconnecting does not refill them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many tokens, how fast they come back, how many keys at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub refill: Duration,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens as of `at`, in units of 1/1000 token.
    milli: u64,
    at: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    bucket_by_key: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Limiter {
            rate,
            bucket_by_key: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.rate.burst) * 1000
    }

    /// The tokens of `b` at `now`, refilled.
    fn level(&self, b: &Bucket, now: Instant) -> u64 {
        let refill_ms = self.rate.refill.as_millis().max(1);
        let gained = now.saturating_duration_since(b.at).as_millis() * 1000 / refill_ms;
        let gained = u64::try_from(gained).unwrap_or(u64::MAX);
        b.milli.saturating_add(gained).min(self.full())
    }

    /// Take one token of `key` at `now`. `Err(wait)`: none left; one comes back after `wait`.
    /// A new key when the table is full (after forgetting full buckets) is refused too, for
    /// `refill`: the bound holds whoever asks.
    pub fn try_take(&mut self, now: Instant, key: &K) -> Result<(), Duration> {
        if !self.bucket_by_key.contains_key(key) && self.bucket_by_key.len() >= self.rate.max_keys {
            self.forget_full(now);
            if self.bucket_by_key.len() >= self.rate.max_keys {
                return Err(self.rate.refill);
            }
        }
        let full = self.full();
        let b = *self.bucket_by_key.get(key).unwrap_or(&Bucket {
            milli: full,
            at: now,
        });
        let level = self.level(&b, now);
        if level < 1000 {
            let missing = u128::from(1000 - level);
            let wait_ms = missing * self.rate.refill.as_millis() / 1000;
            // The bucket stays as it was: (tokens, at) still describes it, and rewriting it on
            // every refusal would drop the fraction gained since, starving a busy key.
            self.bucket_by_key.entry(key.clone()).or_insert(b);
            return Err(Duration::from_millis(
                u64::try_from(wait_ms).unwrap_or(u64::MAX).max(1),
            ));
        }
        self.bucket_by_key.insert(
            key.clone(),
            Bucket {
                milli: level - 1000,
                at: now,
            },
        );
        Ok(())
    }

    /// Give `key` one token back (never beyond a full bucket): what an attempt that turned out
    /// well had paid.
    pub fn refund(&mut self, now: Instant, key: &K) {
        let full = self.full();
        if let Some(b) = self.bucket_by_key.get(key).copied() {
            let level = self.level(&b, now);
            self.bucket_by_key.insert(
                key.clone(),
                Bucket {
                    milli: (level + 1000).min(full),
                    at: now,
                },
            );
        }
    }

    /// Forget every bucket that is full again at `now`; call now and then to keep the table
    /// small.
    pub fn forget_full(&mut self, now: Instant) {
        let full = self.full();
        let rate = self.rate;
        let refill_ms = rate.refill.as_millis().max(1);
        self.bucket_by_key.retain(|_, b| {
            let gained = now.saturating_duration_since(b.at).as_millis() * 1000 / refill_ms;
            u128::from(b.milli) + gained < u128::from(full)
        });
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.bucket_by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bucket_by_key.is_empty()
    }
}

/// The key a client address is limited by: the address for IPv4 (and IPv4-mapped IPv6), its /64
/// for IPv6, since one host commonly holds a whole /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        refill: Duration::from_secs(2),
        max_keys: 2,
    };

    #[test]
    fn burst_then_refill() {
        let t = Instant::now();
        let mut l = Limiter::new(RATE);
        for _ in 0..3 {
            l.try_take(t, &"a").unwrap();
        }
        assert_eq!(l.try_take(t, &"a"), Err(Duration::from_secs(2)));
        assert_eq!(
            l.try_take(t + Duration::from_secs(1), &"a"),
            Err(Duration::from_secs(1))
        );
        l.try_take(t + Duration::from_secs(2), &"a").unwrap();
        assert!(l.try_take(t + Duration::from_secs(2), &"a").is_err());
        // Other keys have their own bucket.
        l.try_take(t, &"b").unwrap();
    }

    #[test]
    fn frequent_refusals_do_not_stop_the_refill() {
        let t = Instant::now();
        let mut l = Limiter::new(RATE);
        let mut ok = 0;
        // Asked every 100 µs for 10 s: the burst, then one per 2 s.
        for i in 0..100_000u32 {
            if l.try_take(t + Duration::from_micros(u64::from(i) * 100), &"a")
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 3 + 4);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_full_buckets() {
        let t = Instant::now();
        let mut l = Limiter::new(RATE);
        l.try_take(t, &"a").unwrap();
        l.try_take(t, &"b").unwrap();
        assert_eq!(l.try_take(t, &"c"), Err(RATE.refill));
        assert_eq!(l.len(), 2);
        // After one refill both are full again and forgotten: room for a new key.
        l.try_take(t + RATE.refill, &"c").unwrap();
        assert_eq!(l.len(), 1);
        l.forget_full(t + RATE.refill * 2);
        assert!(l.is_empty());
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
