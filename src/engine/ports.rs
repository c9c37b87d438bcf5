//! The relay port pool, shared by all workers (RFC 8656 §7.2 step 6: pick a relayed transport
//! address; §7.1 EVEN-PORT and RESERVATION-TOKEN).
//!
//! One bitmap per relay IP over `min_port..=max_port`. Ports are chosen at random (RFC 8656 §7.2
//! recommends it, RFC 6056) by the caller's random number, so tests stay deterministic. A port held
//! by another process is found when the worker's bind fails; the engine then gives it back and picks
//! again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Ports in use, per relay address.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    inner: Mutex<HashMap<IpAddr, Bitmap>>,
}

#[derive(Debug)]
struct Bitmap {
    words: Vec<u64>,
    used: u32,
}

impl PortPool {
    /// A pool over `min..=max` (min <= max; a reversed range is taken as one port, `min`).
    pub fn new(min: u16, max: u16) -> Self {
        PortPool {
            min,
            max: max.max(min),
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn size(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    /// How many ports of `ip` are free.
    pub fn free(&self, ip: IpAddr) -> u32 {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.size() - g.get(&ip).map_or(0, |b| b.used)
    }

    /// Take a free port of `ip`, starting the search at a point chosen by `random`. With `even`,
    /// only an even port whose successor is in range is taken, and with `reserve_next` that
    /// successor is taken too (EVEN-PORT with the R bit). None when nothing fits (508).
    pub fn take(&self, ip: IpAddr, random: u64, even: bool, reserve_next: bool) -> Option<u16> {
        let size = self.size();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let bm = g.entry(ip).or_insert_with(|| Bitmap {
            words: vec![0; (size as usize).div_ceil(64)],
            used: 0,
        });
        if bm.used >= size {
            return None;
        }
        let start = (random % u64::from(size)) as u32;
        for i in 0..size {
            let idx = (start + i) % size;
            let port = self.min as u32 + idx;
            if even && (port % 2 != 0 || port + 1 > self.max as u32) {
                continue;
            }
            if bm.get(idx) {
                continue;
            }
            if even && reserve_next && bm.get(idx + 1) {
                continue;
            }
            bm.set(idx, true);
            if even && reserve_next {
                bm.set(idx + 1, true);
            }
            return Some(port as u16);
        }
        None
    }

    /// Take this exact port (a reserved one, or a retry). False when it is taken or out of range.
    pub fn take_exact(&self, ip: IpAddr, port: u16) -> bool {
        if port < self.min || port > self.max {
            return false;
        }
        let size = self.size();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let bm = g.entry(ip).or_insert_with(|| Bitmap {
            words: vec![0; (size as usize).div_ceil(64)],
            used: 0,
        });
        let idx = u32::from(port - self.min);
        if bm.get(idx) {
            return false;
        }
        bm.set(idx, true);
        true
    }

    /// Give a port back. Giving back a free or foreign port does nothing.
    pub fn release(&self, ip: IpAddr, port: u16) {
        if port < self.min || port > self.max {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bm) = g.get_mut(&ip) {
            bm.set(u32::from(port - self.min), false);
        }
    }
}

impl Bitmap {
    fn get(&self, idx: u32) -> bool {
        self.words
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    fn set(&mut self, idx: u32, on: bool) {
        let Some(w) = self.words.get_mut((idx / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (idx % 64);
        let was = *w & bit != 0;
        if on && !was {
            *w |= bit;
            self.used += 1;
        } else if !on && was {
            *w &= !bit;
            self.used -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn takes_every_port_once_then_none() {
        let p = PortPool::new(50000, 50009);
        let mut got: Vec<u16> = (0..10)
            .map(|i| p.take(IP, i * 7919, false, false).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert_eq!(p.take(IP, 3, false, false), None);
        assert_eq!(p.free(IP), 0);
        p.release(IP, 50004);
        assert_eq!(p.take(IP, 0, false, false), Some(50004));
        // Another IP has its own ports.
        assert!(p
            .take(IpAddr::V4([10, 0, 0, 1].into()), 0, false, false)
            .is_some());
    }

    #[test]
    fn even_port_with_reservation() {
        let p = PortPool::new(50001, 50004);
        let port = p.take(IP, 0, true, true).unwrap();
        assert_eq!(port, 50002);
        assert!(!p.take_exact(IP, 50003));
        p.release(IP, 50003);
        assert!(p.take_exact(IP, 50003));
        // 50004 is even but 50005 is out of range.
        assert_eq!(p.take(IP, 0, true, false), None);
        assert!(!p.take_exact(IP, 60000));
    }
}
