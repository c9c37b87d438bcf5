//! A per-source-IP limit on unauthenticated work (`--unauthorized-ratelimit N`): 401/438
//! challenges and Allocate attempts cost one token each from a bucket that refills at N per second
//! and holds at most [`BURST_SECS`] seconds' worth. A source over its limit gets no answer at all,
//! so a spoofed flood can neither reflect 401s at a victim nor make the server hash forever
//! (RFC 8656 §21.1.2, RFC 8489 §16.1.3 on amplification). An Allocate that authenticates gets
//! its own token and its challenge's back ([`Limiter::refund`]): the limit counts work that led
//! nowhere, so many real clients behind one NAT address can all log in.
//!
//! Requests whose NONCE is one we issued to that very address, still fresh, draw from a bucket
//! of their own ([`Class::Proven`]): such a source has shown return routability, so a flood of
//! unanswerable challenges from one address (spoofed, or one host behind a NAT) cannot lock out
//! the real clients behind that address that already hold a nonce, while wrong passwords sent
//! with a valid nonce are still limited (hash burning).
//!
//! Memory is fixed: a table of [`SLOTS`] buckets indexed by a keyed hash of the IP, allocated on
//! first use. Addresses that collide share a bucket (a collision can only make a source stricter,
//! never give it a fresh bucket), so a flood from many addresses cannot grow the table or evict
//! anyone's state. The key is random per engine, so which addresses collide cannot be chosen.
//! Time is an input, as everywhere in the engine.

use std::net::IpAddr;
use std::time::Instant;

/// Buckets per engine (16 bytes each: 64 KiB).
pub const SLOTS: usize = 4096;
/// A bucket holds this many seconds' worth of tokens, so a client that opens several allocations
/// at once (turnutils_uclient `-m 10`: 10 × (401 + Allocate)) is not cut.
pub const BURST_SECS: u64 = 5;

/// Tokens are kept in thousandths so slow rates refill smoothly.
const MILLI: u64 = 1000;

/// Which bucket of a source a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No nonce, or one we cannot tie to this address: the source may be spoofed.
    Unproven,
    /// A fresh nonce we issued to this address: the source read our challenge.
    Proven,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Milli-tokens left.
    tokens: u64,
    /// Milliseconds since the limiter's base when `tokens` was last brought up to date; 0 = never
    /// used (the bucket starts full).
    last_ms: u64,
}

/// The keyed table of buckets. See the module docs.
#[derive(Debug)]
pub struct Limiter {
    base: Instant,
    key: (u64, u64),
    buckets: Vec<Bucket>,
}

impl Limiter {
    /// A limiter whose clock starts at `now`; `key` randomises which addresses share a bucket.
    pub fn new(now: Instant, key: (u64, u64)) -> Self {
        Limiter {
            base: now,
            key,
            buckets: Vec::new(),
        }
    }

    fn slot(&self, ip: IpAddr, class: Class) -> usize {
        // An IPv4 client seen on a dual-stack socket (::ffff:a.b.c.d) is that IPv4 client: its
        // /64 would lump every IPv4 client together.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits: u128 = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // IPv6 sources are keyed by their /64: one host usually holds a whole /64, and keying
            // by full address would give it 2^64 buckets to rotate through.
            IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
        } | match class {
            Class::Unproven => 0,
            Class::Proven => 1 << 126,
        };
        let mut h = self.key.0 ^ (bits as u64);
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= self.key.1 ^ ((bits >> 64) as u64);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h as usize) % SLOTS
    }

    /// Take one token for `ip` at `now` with `rate` tokens per second (0 = no limit). False means
    /// the source is over its limit: send nothing.
    pub fn try_take(&mut self, now: Instant, ip: IpAddr, rate: u32) -> bool {
        self.try_take_in(now, ip, Class::Unproven, rate)
    }

    /// [`Limiter::try_take`] from the bucket of `class`.
    pub fn try_take_in(&mut self, now: Instant, ip: IpAddr, class: Class, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let b = self.refilled(now, ip, class, rate);
        if b.tokens >= MILLI {
            b.tokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// Give `ip` back `n` tokens (never beyond a full bucket): what a request that went on to
    /// authenticate had paid. The nonce it carried is bound to its IP, so the source is real and
    /// read our challenge: the limit is for challenges nobody answers (reflection off spoofed
    /// sources) and failed attempts (guessing, hash burning), not for clients behind one address
    /// that log in.
    pub fn refund(&mut self, now: Instant, ip: IpAddr, class: Class, rate: u32, n: u32) {
        if rate == 0 {
            return;
        }
        let cap = Self::cap(rate);
        let b = self.refilled(now, ip, class, rate);
        b.tokens = b.tokens.saturating_add(u64::from(n) * MILLI).min(cap);
    }

    fn cap(rate: u32) -> u64 {
        u64::from(rate) * BURST_SECS * MILLI
    }

    /// The bucket of `ip`, refilled up to `now`.
    fn refilled(&mut self, now: Instant, ip: IpAddr, class: Class, rate: u32) -> &mut Bucket {
        if self.buckets.is_empty() {
            self.buckets = vec![Bucket::default(); SLOTS];
        }
        let slot = self.slot(ip, class);
        let cap = Self::cap(rate);
        // +1 so that 0 keeps meaning "never used".
        let now_ms = now.saturating_duration_since(self.base).as_millis() as u64 + 1;
        let b = &mut self.buckets[slot];
        if b.last_ms == 0 {
            b.tokens = cap;
        } else {
            let elapsed = now_ms.saturating_sub(b.last_ms);
            // rate tokens per 1000 ms = rate milli-tokens per ms.
            b.tokens = b
                .tokens
                .saturating_add(elapsed.saturating_mul(u64::from(rate)))
                .min(cap);
        }
        b.last_ms = b.last_ms.max(now_ms);
        b
    }

    /// Bytes held by the table (fixed once used).
    pub fn memory(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (1, 2));
        let ip = v4(0xC633_6401);
        // A full bucket: 5 s × 10/s = 50 at once, then nothing.
        for i in 0..50 {
            assert!(l.try_take(t0, ip, 10), "token {i}");
        }
        assert!(!l.try_take(t0, ip, 10));
        // 10 per second after that: one every 100 ms.
        assert!(!l.try_take(t0 + Duration::from_millis(99), ip, 10));
        assert!(l.try_take(t0 + Duration::from_millis(100), ip, 10));
        assert!(!l.try_take(t0 + Duration::from_millis(100), ip, 10));
        let mut granted = 0;
        for ms in (100..=10_100).step_by(10) {
            if l.try_take(t0 + Duration::from_millis(ms), ip, 10) {
                granted += 1;
            }
        }
        assert!((99..=101).contains(&granted), "{granted} in 10 s at 10/s");
        // Idle long enough: full again, but never more than the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..50 {
            assert!(l.try_take(later, ip, 10));
        }
        assert!(!l.try_take(later, ip, 10));
    }

    #[test]
    fn refunds_restore_tokens_up_to_a_full_bucket() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (11, 12));
        let ip = v4(0xC633_6402);
        // Empty the bucket (2/s × 5 s = 10), then each refund of 2 buys two more.
        while l.try_take(t0, ip, 2) {}
        for _ in 0..100 {
            l.refund(t0, ip, Class::Unproven, 2, 2);
            assert!(l.try_take(t0, ip, 2));
            assert!(l.try_take(t0, ip, 2));
            assert!(!l.try_take(t0, ip, 2));
        }
        // Refunds never fill a bucket past its burst.
        let later = t0 + Duration::from_secs(60);
        l.refund(later, ip, Class::Unproven, 2, 1000);
        let mut granted = 0;
        while l.try_take(later, ip, 2) {
            granted += 1;
        }
        assert_eq!(granted, 10);
        l.refund(later, ip, Class::Unproven, 0, 5);
    }

    #[test]
    fn sources_are_independent_and_zero_is_off() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (3, 4));
        let (a, b) = (v4(0x0A00_0001), v4(0x0A00_0002));
        assert_ne!(
            l.slot(a, Class::Unproven),
            l.slot(b, Class::Unproven),
            "test key must separate these two"
        );
        while l.try_take(t0, a, 1) {}
        assert!(l.try_take(t0, b, 1));
        assert!(l.try_take(t0, a, 0), "rate 0 means no limit");
    }

    #[test]
    fn table_is_fixed_whatever_the_number_of_sources() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (5, 6));
        assert_eq!(l.memory(), 0, "nothing until used");
        for n in 0..200_000u32 {
            l.try_take(t0, v4(n), 20);
        }
        let m = l.memory();
        assert_eq!(m, SLOTS * 16);
        for n in 0..200_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64));
            l.try_take(t0, ip, 20);
        }
        assert_eq!(l.memory(), m);
    }

    #[test]
    fn ipv4_mapped_sources_are_their_ipv4_address() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (9, 10));
        let a = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped());
        let b = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped());
        assert_eq!(
            l.slot(a, Class::Unproven),
            l.slot(v4(0xC633_6401), Class::Unproven)
        );
        while l.try_take(t0, a, 1) {}
        assert!(
            l.try_take(t0, b, 1),
            "another IPv4 client is another source"
        );
    }

    #[test]
    fn one_ipv6_slash64_is_one_source() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0, (7, 8));
        let net: u128 = 0x2001_0db8_0000_0001 << 64;
        let mut granted = 0;
        for host in 0..1000u128 {
            if l.try_take(t0, IpAddr::V6(Ipv6Addr::from(net | host)), 2) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10, "2/s × 5 s burst for the whole /64");
    }
}
