//! The data plane: ChannelData and Send from clients, datagrams from peers (RFC 8656 §10–§12).

use super::*;
use crate::proto::message;

/// Which way a relayed packet goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToPeer,
    ToClient,
}

/// The checks both ways share, and their accounting: the allocation is live and UDP (a TCP
/// allocation relays over its connections only, RFC 6062 §5) and has a permission for the peer
/// (else a no-permission drop); the allocation's bucket for this way and the server's
/// (`--max-bps`, `--bps-capacity`) have room (else a bandwidth drop). An admitted packet is
/// counted as sent; a dropped one in the allocation's and the engine's drop counters. Always
/// inlined: its two callers are the per-packet paths, and as a call it cost 27 instructions a
/// packet (callgrind, tests/zero_alloc.rs in release).
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
    if a.tcp
        || a.state != State::Active
        || a.expires <= now
        || !a.permissions.allows(peer.ip(), now)
    {
        a.stats.dropped.add(len);
        counters.dropped_no_permission += 1;
        return false;
    }
    let bucket = match way {
        Way::ToPeer => &mut a.to_peer_bucket,
        Way::ToClient => &mut a.to_client_bucket,
    };
    if !bucket.try_take(now, len) || !capacity.try_take(now, len) {
        a.stats.dropped.add(len);
        counters.dropped_bandwidth += 1;
        return false;
    }
    match way {
        Way::ToPeer => a.stats.peer_sent.add(len),
        Way::ToClient => a.stats.client_sent.add(len),
    }
    true
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
        a.stats.client_rcv.add(len);
        let Some(peer) = a.channels.peer(cd.channel, now) else {
            a.stats.dropped.add(len);
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
            a.stats.client_rcv.add(data.len());
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
        a.stats.peer_rcv.add(len);
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
        let to = a.five_tuple;
        if let Some(number) = a.channels.number(peer, now) {
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
        let start = payload.start - message::data_indication_header_len(&peer.addr());
        let pad = (4 - len % 4) % 4;
        message::write_data_indication_header(
            &mut buf[start..payload.start],
            &peer.addr(),
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
