//! Peer policy, bandwidth buckets and quotas.
//!
//! Which peers a client may reach (RFC 8656 §9.1, §21.3; coturn's `denied-peer-ip` /
//! `allowed-peer-ip`; CVE-2020-26262: IPv4-mapped and -compatible IPv6 forms of loopback and
//! unspecified addresses must be caught too). Checked when a permission or channel is made and
//! for Send indications, never per relayed packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.start, self.end, ip) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= *x && *x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= *x && *x <= b,
            _ => false,
        }
    }
}

/// The rules for peer addresses.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
    /// coturn's `--no-multicast-peers`. Multicast is refused either way here (safe by default);
    /// the flag is kept for compatibility.
    pub no_multicast: bool,
    pub denied: Vec<IpRange>,
    pub allowed: Vec<IpRange>,
}

/// The IPv4 address an IPv6 address stands for, if it is IPv4-mapped (::ffff:a.b.c.d) or
/// IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
pub fn embedded_v4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    if s[..5] == [0; 5] && (s[5] == 0xFFFF || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        let o = ip.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

impl PeerPolicy {
    /// Whether relaying to `ip` is allowed.
    ///
    /// Order: the built-in refusals (unspecified, multicast, broadcast, link-local, and loopback
    /// unless `allow_loopback`) cannot be lifted by a list; then `allowed` wins over `denied`,
    /// as in coturn.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = match ip {
            IpAddr::V6(v6) => embedded_v4(&v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let builtin_ok = match canonical {
            IpAddr::V4(v4) => {
                !(v4.octets()[0] == 0
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || v4.is_link_local()
                    || v4.octets()[0] >= 240
                    || (v4.is_loopback() && !self.allow_loopback))
            }
            IpAddr::V6(v6) => {
                let seg0 = v6.segments()[0];
                !(v6.is_unspecified()
                    || v6.is_multicast()
                    || (seg0 & 0xFFC0) == 0xFE80
                    || (v6.is_loopback() && !self.allow_loopback))
            }
        };
        if !builtin_ok {
            return false;
        }
        let listed = |list: &[IpRange]| {
            list.iter()
                .any(|r| r.contains(&ip) || r.contains(&canonical))
        };
        if listed(&self.allowed) {
            return true;
        }
        !listed(&self.denied)
    }
}

/// A token bucket in bytes, refilled at `rate` bytes/s, holding at most one second's worth.
/// A rate of 0 means unlimited.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Take `n` bytes if the bucket holds them; false means drop the packet.
    #[inline]
    pub fn try_take(&mut self, now: Instant, n: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add = (elapsed.as_nanos() as u64).saturating_mul(self.rate) / 1_000_000_000;
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(self.rate);
                self.last = now;
            }
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cve_2020_26262_forms_are_refused() {
        let p = PeerPolicy::default();
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "127.0.0.1",
            "127.9.8.7",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "224.0.0.1",
            "ff02::1",
            "169.254.1.1",
            "fe80::1",
            "::ffff:169.254.0.1",
            "255.255.255.255",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "8.8.8.8"] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn loopback_when_allowed_and_lists() {
        let mut p = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(!p.permits(ip("0.0.0.0")));
        p.denied.push(IpRange {
            start: ip("10.0.0.0"),
            end: ip("10.255.255.255"),
        });
        assert!(!p.permits(ip("10.1.2.3")));
        assert!(!p.permits(ip("::ffff:10.1.2.3")));
        p.allowed.push(IpRange {
            start: ip("10.1.0.0"),
            end: ip("10.1.255.255"),
        });
        assert!(p.permits(ip("10.1.2.3")));
        assert!(!p.permits(ip("10.2.0.1")));
    }

    #[test]
    fn token_bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.try_take(t0, 600));
        assert!(!b.try_take(t0, 600));
        // 400 left, 300 more after 0.3 s: 700, then 100 after taking 600.
        assert!(b.try_take(t0 + Duration::from_millis(300), 600));
        assert!(!b.try_take(t0 + Duration::from_millis(300), 101));
        assert!(b.try_take(t0 + Duration::from_millis(300), 100));
        assert!(!b.try_take(t0 + Duration::from_millis(300), 1));
        // Never more than one second's worth.
        assert!(b.try_take(t0 + Duration::from_secs(100), 1000));
        assert!(!b.try_take(t0 + Duration::from_secs(100), 1));
        let mut unlimited = TokenBucket::new(0, t0);
        assert!(unlimited.try_take(t0, usize::MAX));
    }
}
