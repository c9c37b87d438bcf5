//! Per-allocation traffic counters: plain integers owned by the worker that owns the allocation,
//! bumped on the data path with no lock and no allocation, summed at scrape time.

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
}
