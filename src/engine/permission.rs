//! Permissions (RFC 8656 §9): which peer IP addresses an allocation may exchange data with.
//! Keyed by IP only; the port is ignored (§9). Bounded per allocation.

use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// The permissions of one allocation. A small vector: allocations hold a handful of peers, and a
/// linear scan over a few entries beats hashing on the data path.
#[derive(Debug, Default)]
pub struct Permissions {
    list: Vec<Permission>,
}

impl Permissions {
    /// Whether data to/from `ip` may pass at `now` (RFC 8656 §9, §10.3, §11.5).
    #[inline]
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        self.list.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Whether `n` new IPs fit under `max` (0: no cap) once expired entries are gone.
    pub fn room_for(&mut self, ips: &[IpAddr], now: Instant, max: usize) -> bool {
        self.list.retain(|p| p.expires > now);
        // `ips` holds no duplicates (the caller sorted and deduplicated them), and the list is
        // bounded by `max`, so this is O(n x max).
        let new = ips
            .iter()
            .filter(|ip| !self.list.iter().any(|p| p.ip == **ip))
            .count();
        max == 0 || self.list.len() + new <= max
    }

    /// When the permission for `ip` ends (for the fast path, which checks expiry itself).
    pub fn expires(&self, ip: IpAddr) -> Option<Instant> {
        self.list.iter().find(|p| p.ip == ip).map(|p| p.expires)
    }

    /// Every permission still live at `now` (for the fast path).
    pub fn live(&self, now: Instant) -> impl Iterator<Item = &Permission> + '_ {
        self.list.iter().filter(move |p| p.expires > now)
    }

    /// Install or refresh the permission for `ip` (RFC 8656 §9.2).
    pub fn install(&mut self, ip: IpAddr, expires: Instant) {
        match self.list.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.list.push(Permission { ip, expires }),
        }
    }

    pub fn len(&self, now: Instant) -> usize {
        self.list.iter().filter(|p| p.expires > now).count()
    }

    pub fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }
}
