//! The data plane: ChannelData and Send from clients, datagrams from peers (RFC 8656 §10–§12).

use super::*;
use crate::proto::message;

/// [`Allocation::admit`] for the packet, and the engine's drop counters for a packet it drops.
/// Always inlined: its two callers are the per-packet paths, and as a call it cost 27
/// instructions a packet (callgrind, tests/zero_alloc.rs in release).
#[inline(always)]
fn admit(
    a: &mut Allocation,
    counters: &mut Counters,
    capacity: &mut TokenBucket,
    now: Instant,
    peer: PeerAddr,
    len: usize,
    way: Way,
) -> bool {
    match a.admit(capacity, now, peer.ip(), len, way) {
        Admission::Admitted => true,
        Admission::NoPermission => {
            counters.dropped_no_permission += 1;
            false
        }
        Admission::NoBandwidth => {
            counters.dropped_bandwidth += 1;
            false
        }
    }
}

impl Server {
    /// ChannelData from a client (RFC 8656 §12.6).
    pub(super) fn handle_channel_data(
        &mut self,
        now: Instant,
        five: FiveTuple,
        packet: &[u8],
    ) -> ClientDecision {
        let Ok(cd) = ChannelData::decode(packet) else {
            self.counters.malformed += 1;
            return ClientDecision::Done;
        };
        let Some(&id) = self.by_five_tuple.get(&five) else {
            return ClientDecision::Done;
        };
        let len = cd.data.len();
        let Some(a) = self.get_mut(id) else {
            return ClientDecision::Done;
        };
        a.count_from_client(len);
        let Some(peer) = a.channels().peer(cd.channel, now) else {
            a.count_dropped(len);
            self.counters.dropped_no_permission += 1;
            return ClientDecision::Done;
        };
        self.forward_to_peer(
            now,
            id,
            peer,
            channel_data::HEADER_LEN..channel_data::HEADER_LEN + len,
        )
    }

    /// Shared tail of ChannelData and Send: permission, bandwidth, counters.
    #[inline]
    pub(super) fn forward_to_peer(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: PeerAddr,
        payload: Range<usize>,
    ) -> ClientDecision {
        let Some(a) = slot_mut(&mut self.slots, id) else {
            return ClientDecision::Done;
        };
        let len = payload.len();
        if !admit(
            a,
            &mut self.counters,
            &mut self.capacity,
            now,
            peer,
            len,
            Way::ToPeer,
        ) {
            return ClientDecision::Done;
        }
        ClientDecision::Forward {
            relay: id,
            peer,
            payload,
        }
    }

    /// Send indication (RFC 8656 §10.2).
    pub(super) fn handle_send(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
    ) -> ClientDecision {
        let Some(&id) = self.by_five_tuple.get(&five) else {
            return ClientDecision::Done;
        };
        let (Some(peer), Some(data)) = (
            m.get_xor_address(attr::XOR_PEER_ADDRESS).map(PeerAddr::new),
            m.get_range(attr::DATA),
        ) else {
            self.counters.malformed += 1;
            return ClientDecision::Done;
        };
        if let Some(a) = self.get_mut(id) {
            a.count_from_client(data.len());
        }
        let d = self.forward_to_peer(now, id, peer, data);
        if matches!(d, ClientDecision::Forward { .. }) {
            self.counters.send_indications += 1;
        }
        d
    }

    // ---------------------------------------------------------------- peer input

    /// A datagram from `peer` arrived on the relay socket of allocation `relay`; it lies in
    /// `buf[payload]`, with at least [`PEER_HEADROOM`] bytes before and [`PEER_TAILROOM`] after.
    /// On `Forward`, the ChannelData or Data-indication header has been written in place in front
    /// of the payload (RFC 8656 §11.3 and §12.7), and `buf[frame]` is what to send.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay: AllocationId,
        peer: PeerAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerDecision {
        let len = payload.len();
        if payload.start < PEER_HEADROOM
            || payload.start > payload.end
            || payload.end.saturating_add(PEER_TAILROOM) > buf.len()
            || len > 0xFFFF - 64
        {
            return PeerDecision::Drop;
        }
        let tid: [u8; 12] = self.rng.gen();
        let Some(a) = slot_mut(&mut self.slots, relay) else {
            return PeerDecision::Drop;
        };
        a.count_from_peer(len);
        if !admit(
            a,
            &mut self.counters,
            &mut self.capacity,
            now,
            peer,
            len,
            Way::ToClient,
        ) {
            return PeerDecision::Drop;
        }
        let to = a.five_tuple();
        if let Some(number) = a.channels().number(peer, now) {
            let start = payload.start - channel_data::HEADER_LEN;
            channel_data::write_header(&mut buf[start..payload.start], number, len);
            let mut end = payload.end;
            if to.transport.is_stream() {
                let pad = channel_data::stream_padding(len);
                buf[end..end + pad].fill(0);
                end += pad;
            }
            return PeerDecision::Forward {
                to,
                frame: start..end,
            };
        }
        // Data indication: header, XOR-PEER-ADDRESS, DATA (RFC 8656 §11.3).
        self.counters.data_indications += 1;
        let start = payload.start - message::data_indication_header_len(peer.as_addr());
        let pad = (4 - len % 4) % 4;
        message::write_data_indication_header(
            &mut buf[start..payload.start],
            peer.as_addr(),
            &tid,
            len,
        );
        buf[payload.end..payload.end + pad].fill(0);
        PeerDecision::Forward {
            to,
            frame: start..payload.end + pad,
        }
    }
}
