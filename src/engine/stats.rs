//! Per-allocation traffic counters: plain integers owned by the worker that owns the allocation,
//! bumped on the data path with no lock and no allocation, summed at scrape time. RFC 6062 TCP relays, whose bytes a raw pipe on any worker copies,
//! count into shared atomics instead ([`TcpTraffic`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes and packets of one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// The four flows of an allocation, as coturn names them: what the server received from and sent
/// to the client (`rcv`/`sent`), and what it sent to and received from peers (`peer_sent`/`peer_rcv`).
/// Payload bytes only (ChannelData or DATA content), so client and peer sides compare.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AllocationStats {
    pub client_rcv: Flow,
    pub client_sent: Flow,
    pub peer_rcv: Flow,
    pub peer_sent: Flow,
    /// Packets dropped by policy (no permission), quota or bandwidth cap.
    pub dropped: Flow,
}

impl AllocationStats {
    pub fn merge(&mut self, o: &AllocationStats) {
        for (a, b) in [
            (&mut self.client_rcv, o.client_rcv),
            (&mut self.client_sent, o.client_sent),
            (&mut self.peer_rcv, o.peer_rcv),
            (&mut self.peer_sent, o.peer_sent),
            (&mut self.dropped, o.dropped),
        ] {
            a.packets += b.packets;
            a.bytes += b.bytes;
        }
    }

    /// Add what was relayed without the engine (the kernel fast path), counted as the user path
    /// counts it: client → peer as `client_rcv` and `peer_sent`, peer → client as `peer_rcv`
    /// and `client_sent`.
    pub fn add_relayed(&mut self, to_peer: Flow, to_client: Flow) {
        for (f, d) in [
            (&mut self.client_rcv, to_peer),
            (&mut self.peer_sent, to_peer),
            (&mut self.peer_rcv, to_client),
            (&mut self.client_sent, to_client),
        ] {
            f.packets += d.packets;
            f.bytes += d.bytes;
        }
    }
}

/// The bytes of one RFC 6062 peer connection, counted by the raw pipe that copies them. The pipe
/// may run on another worker than the allocation's (the data connection can reach any), so the
/// counters are atomics behind an `Arc` shared with the owning engine, which folds them into the
/// allocation's [`AllocationStats`] when it reports them and when the allocation ends. Relaxed
/// adds per chunk: no lock, and the UDP data path does not see them.
#[derive(Debug, Default)]
pub struct TcpTraffic {
    up_packets: AtomicU64,
    up_bytes: AtomicU64,
    down_packets: AtomicU64,
    down_bytes: AtomicU64,
}

impl TcpTraffic {
    /// A chunk of `bytes` read from the client and written to the peer.
    #[inline]
    pub fn add_up(&self, bytes: usize) {
        self.up_packets.fetch_add(1, Ordering::Relaxed);
        self.up_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A chunk of `bytes` read from the peer and queued for the client.
    #[inline]
    pub fn add_down(&self, bytes: usize) {
        self.down_packets.fetch_add(1, Ordering::Relaxed);
        self.down_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Add what was counted so far to `stats`: client to peer is `client_rcv` and `peer_sent`,
    /// peer to client is `peer_rcv` and `client_sent`, as for UDP relays.
    pub fn add_to(&self, stats: &mut AllocationStats) {
        let up = Flow {
            packets: self.up_packets.load(Ordering::Relaxed),
            bytes: self.up_bytes.load(Ordering::Relaxed),
        };
        let down = Flow {
            packets: self.down_packets.load(Ordering::Relaxed),
            bytes: self.down_bytes.load(Ordering::Relaxed),
        };
        stats.merge(&AllocationStats {
            client_rcv: up,
            peer_sent: up,
            peer_rcv: down,
            client_sent: down,
            dropped: Flow::default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_traffic_counts_each_chunk_once_per_side() {
        let t = TcpTraffic::default();
        t.add_up(100);
        t.add_up(20);
        t.add_down(7);
        let mut s = AllocationStats::default();
        s.client_rcv.add(5);
        t.add_to(&mut s);
        let f = |packets, bytes| Flow { packets, bytes };
        assert_eq!(s.client_rcv, f(3, 125));
        assert_eq!(s.peer_sent, f(2, 120));
        assert_eq!(s.peer_rcv, f(1, 7));
        assert_eq!(s.client_sent, f(1, 7));
        assert_eq!(s.dropped, f(0, 0));
    }
}
