//! Caps on client stream connections (TCP and TLS), shared by every worker: in total
//! (`--max-tcp-connections`), per source address (`--max-tcp-connections-per-ip`; IPv6 sources by
//! their /64, which one host usually holds whole), and TLS handshakes under way per source
//! address ([`HANDSHAKES_PER_IP`]). Without the per-address caps one address could hold every
//! connection slot and lock out everyone else. The table has an entry only for addresses with a
//! connection open, so it is bounded by the total cap. Slots are RAII guards: a connection gives
//! its slot back however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// TLS handshakes one source address may have under way at once.
pub const HANDSHAKES_PER_IP: u32 = 8;

/// The key of a source: an IPv4 address (also when seen as `::ffff:a.b.c.d`), or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Net(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PerSource {
    conns: u32,
    handshakes: u32,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
    Handshakes,
}

#[derive(Debug)]
pub struct ConnLimits {
    total: AtomicUsize,
    max_total: usize,
    max_per_ip: u32,
    by_source: Mutex<HashMap<SourceKey, PerSource>>,
}

impl ConnLimits {
    /// `max_total` and `max_per_ip`: 0 means no cap.
    pub fn new(max_total: usize, max_per_ip: u32) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            total: AtomicUsize::new(0),
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_ip: if max_per_ip == 0 {
                u32::MAX
            } else {
                max_per_ip
            },
            by_source: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, PerSource>> {
        self.by_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip`, if the caps allow one.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let n = self.total.fetch_add(1, Ordering::Relaxed);
        if n >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let key = SourceKey::of(ip);
        let mut table = self.table();
        let e = table.entry(key).or_default();
        if e.conns >= self.max_per_ip {
            drop(table);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PerIp);
        }
        e.conns += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Connections open now (all sources).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Source entries held (for tests: one per address with a connection open).
    pub fn sources(&self) -> usize {
        self.table().len()
    }
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    key: SourceKey,
}

impl ConnSlot {
    /// Room for this connection's TLS handshake, if its source has fewer than
    /// [`HANDSHAKES_PER_IP`] under way; given back when the guard drops (handshake done or
    /// failed).
    pub fn handshake(&self) -> Result<HandshakeSlot<'_>, Refused> {
        let mut table = self.limits.table();
        let e = table.entry(self.key).or_default();
        if e.handshakes >= HANDSHAKES_PER_IP {
            return Err(Refused::Handshakes);
        }
        e.handshakes += 1;
        Ok(HandshakeSlot { conn: self })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut table = self.limits.table();
        if let Some(e) = table.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && e.handshakes == 0 {
                table.remove(&self.key);
            }
        }
        drop(table);
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TLS handshake under way.
#[derive(Debug)]
pub struct HandshakeSlot<'a> {
    conn: &'a ConnSlot,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut table = self.conn.limits.table();
        if let Some(e) = table.get_mut(&self.conn.key) {
            e.handshakes = e.handshakes.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let l = ConnLimits::new(10, 3);
        let a: Vec<ConnSlot> = (0..3)
            .map(|_| l.admit(ip("198.51.100.1")).unwrap())
            .collect();
        assert_eq!(l.admit(ip("198.51.100.1")).unwrap_err(), Refused::PerIp);
        assert_eq!(
            l.admit(ip("::ffff:198.51.100.1")).unwrap_err(),
            Refused::PerIp
        );
        let b = l.admit(ip("198.51.100.2")).unwrap();
        assert_eq!(l.open(), 4);
        drop(a);
        assert_eq!(l.open(), 1);
        assert_eq!(l.sources(), 1, "entries go with their last connection");
        drop(b);
        assert_eq!((l.open(), l.sources()), (0, 0));
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let l = ConnLimits::new(0, 2);
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = l.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(l.admit(ip("2001:db8:1:2::77")).unwrap_err(), Refused::PerIp);
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn the_total_cap_holds() {
        let l = ConnLimits::new(2, 0);
        let _a = l.admit(ip("192.0.2.1")).unwrap();
        let _b = l.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(l.admit(ip("192.0.2.3")).unwrap_err(), Refused::Total);
        assert_eq!(l.sources(), 2);
    }

    #[test]
    fn handshakes_per_address_are_capped() {
        let l = ConnLimits::new(0, 0);
        let conns: Vec<ConnSlot> = (0..HANDSHAKES_PER_IP + 1)
            .map(|_| l.admit(ip("203.0.113.9")).unwrap())
            .collect();
        let hs: Vec<HandshakeSlot<'_>> = conns[..HANDSHAKES_PER_IP as usize]
            .iter()
            .map(|c| c.handshake().unwrap())
            .collect();
        assert_eq!(
            conns[HANDSHAKES_PER_IP as usize].handshake().unwrap_err(),
            Refused::Handshakes
        );
        drop(hs);
        assert!(conns[HANDSHAKES_PER_IP as usize].handshake().is_ok());
    }
}
