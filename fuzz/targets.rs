//! The bodies of the fuzz targets (issue 9), shared by `fuzz/fuzz_targets/*.rs` (cargo-fuzz,
//! nightly) and `tests/fuzz_corpus.rs` (the committed corpus as a plain test on stable). Each
//! takes arbitrary bytes, must never panic, and asserts what must hold whatever the input.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vigi_turn::config::Config;
use vigi_turn::engine::server::{AMPLIFICATION_SLACK, PEER_HEADROOM, PEER_TAILROOM};
use vigi_turn::engine::testing;
use vigi_turn::engine::{
    ClientAddr, Command, FiveTuple, PeerAddr, Server, ServerConfig, Shared, Transport,
};
use vigi_turn::proto::channel_data::ChannelData;
use vigi_turn::proto::framing::{frame_len, MAX_FRAME};
use vigi_turn::proto::{attr, demux, Class, Message, MessageBuilder, Method};

/// STUN decode, and every accessor on what decoded.
pub fn stun_decode(data: &[u8]) {
    let Ok(m) = Message::decode(data) else {
        return;
    };
    assert!(m.as_bytes().len() == data.len());
    for a in m.attributes() {
        let v = &data[a.offset..a.offset + a.len];
        let _ = attr::read_address(v);
        let _ = attr::read_xor_address(v, m.transaction_id());
        let _ = attr::read_error_code(v);
        let _ = attr::read_u32(v);
        let _ = attr::read_channel_number(v);
        let _ = attr::read_requested_transport(v);
        let _ = attr::read_address_family(v);
        let _ = attr::read_even_port(v);
        let _ = attr::read_password_algorithms(v).count();
    }
    let _ = m.unknown_required(16);
    let _ = m.check_integrity(b"key");
    let _ = m.check_integrity_sha256(b"key");
    // What decoded re-encodes (attribute by attribute) to something that decodes the same.
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, m.method(), m.class(), m.transaction_id());
    if !m.is_classic() {
        for a in m.attributes() {
            b.attr(a.ty, &data[a.offset..a.offset + a.len]);
        }
        let again = Message::decode(&out).expect("re-encoded message decodes");
        assert_eq!(again.attributes().count(), m.attributes().count());
    }
}

/// First-byte demux and ChannelData decode.
pub fn channel_data(data: &[u8]) {
    let kind = demux(data);
    if let Ok(cd) = ChannelData::decode(data) {
        assert_eq!(kind, vigi_turn::proto::PacketKind::ChannelData);
        assert!(cd.data.len() + 4 <= data.len());
        assert!((0x4000..=0x7FFF).contains(&cd.channel.get()));
    }
}

/// Stream framing: cut `data` into frames as a TCP reader does, fed in chunks whose sizes come
/// from the input, and decode each frame.
pub fn framing(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match frame_len(&buf) {
                Ok(Some(n)) => {
                    assert!(n >= 4 && n <= buf.len() && n <= MAX_FRAME);
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    let _ = Message::decode(&frame);
                    let _ = ChannelData::decode(&frame);
                }
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_FRAME,
                        "a reader of MAX_FRAME bytes suffices"
                    );
                    break;
                }
                Err(_) => return, // the connection would close
            }
        }
    }
}

/// The turnserver.conf parser on arbitrary text.
pub fn conf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::load_with_file_text(&["vigi-turn"], "fuzz.conf", &text) {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "an error is one line: {msg:?}");
    }
}

const MIN_PORT: u16 = 50000;
const MAX_PORT: u16 = 50015;
const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

/// Reads the input a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn five(i: u8) -> FiveTuple {
    let transport = if i & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let ip = if i & 2 == 0 {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))
    } else {
        "2001:db8::1".parse().unwrap()
    };
    FiveTuple {
        transport,
        client: ClientAddr::new(SocketAddr::new(ip, 40000 + u16::from(i & 3))),
        server: "192.0.2.1:3478".parse().unwrap(),
    }
}

fn peer(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5 + (i & 3))), 9000)
}

/// Plays the worker: drain commands, bind relays at once; checks every response.
fn drain(s: &mut Server, now: Instant, request_len: Option<usize>, bounded: bool) {
    while let Some(c) = s.poll_command() {
        match c {
            Command::Send { data, .. } => {
                let m = Message::decode(&data).expect("every response decodes");
                assert!(matches!(m.class(), Class::Success | Class::Error));
                if let (Some(n), true) = (request_len, bounded) {
                    if !m.has_integrity() {
                        assert!(
                            data.len() <= n + AMPLIFICATION_SLACK,
                            "{}-byte answer to {n} bytes",
                            data.len()
                        );
                    }
                }
            }
            Command::BindRelay { id, .. } => {
                s.handle_relay_bound(now, id, vigi_turn::engine::Bind::Bound)
            }
            // RFC 6062: every other Connect reaches its peer.
            Command::ConnectPeer { cid, .. } => {
                s.handle_tcp_peer_connected(now, cid, cid.0 % 2 == 0)
            }
            Command::FreeRelay { .. }
            | Command::BindConnection { .. }
            | Command::CloseConnection { .. } => {}
        }
    }
}

fn check(s: &Server, shared: &Shared, now: Instant) {
    let live: Vec<_> = s.allocations().collect();
    let relays: HashSet<SocketAddr> = live.iter().map(|a| a.relay().addr()).collect();
    assert_eq!(relays.len(), live.len(), "double-booked relay port");
    let size = u32::from(MAX_PORT - MIN_PORT) + 1;
    // EVEN-PORT with R holds a second port for up to 30 s, even after its allocation ends.
    assert!(size - shared.ports.free(RELAY_IP) >= live.len() as u32);
    // Reservations count against the quotas too, until used or expired.
    assert_eq!(
        shared.total_allocations.load(Ordering::Relaxed),
        (live.len() + shared.reservations_held()) as u32
    );
    for a in &live {
        assert!(a.expires() > now, "allocation outlived its lifetime");
    }
}

/// The engine fed a sequence of client datagrams, peer datagrams, timer ticks and closes.
/// The first byte picks the configuration (bit 0: `--no-auth`, so requests reach the handlers;
/// bit 1: `--fingerprint`); then each op byte is followed by its operands.
pub fn engine(data: &[u8]) {
    let mut inp = Input(data);
    let flags = inp.byte();
    let no_auth = flags & 1 != 0;
    let cfg = ServerConfig {
        fingerprint: flags & 2 != 0,
        max_lifetime: 600,
        total_quota: 8,
        ..testing::config(!no_auth)
    };
    let t0 = Instant::now();
    let mut now = t0;
    let (mut s, shared) = testing::engine_on_ports(cfg, MIN_PORT, MAX_PORT, t0, 1);
    let mut tid = 0u32;
    let mut steps = 0;
    while !inp.done() && steps < 256 {
        steps += 1;
        let op = inp.byte();
        let who = inp.byte();
        match op % 6 {
            0 => {
                let len = usize::from(inp.byte());
                let p = inp.bytes(len).to_vec();
                let _ = s.handle_client_input(now, five(who), &p);
                drain(&mut s, now, Some(p.len()), !no_auth);
            }
            1 => {
                now += Duration::from_millis(u64::from(inp.byte()) * 1000 + 1);
                s.handle_timeout(now);
                drain(&mut s, now, None, false);
            }
            2 => {
                let len = usize::from(inp.byte());
                let payload = inp.bytes(len).to_vec();
                if let Some(id) = s.allocation_on(&five(who)).map(|a| a.id()) {
                    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
                    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
                    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
                    let _ = s.handle_peer_input(
                        now,
                        id,
                        PeerAddr::new(peer(who >> 2)),
                        &mut buf,
                        range,
                    );
                }
            }
            3 => {
                s.handle_transport_closed(five(who));
                drain(&mut s, now, None, false);
            }
            _ => {
                // A well-formed request, so short inputs reach deep states.
                tid += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tid.to_be_bytes());
                let arg = inp.byte();
                let mut out = Vec::new();
                let method = match arg % 4 {
                    0 => Method::ALLOCATE,
                    1 => Method::REFRESH,
                    2 => Method::CREATE_PERMISSION,
                    _ => Method::CHANNEL_BIND,
                };
                let mut b = MessageBuilder::new(&mut out, method, Class::Request, &t);
                match arg % 4 {
                    0 => {
                        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
                        if arg & 0x10 != 0 {
                            b.attr(attr::EVEN_PORT, &[arg & 0x80]);
                        }
                    }
                    1 => {
                        b.attr_u32(attr::LIFETIME, u32::from(arg >> 2) * 20);
                    }
                    2 => {
                        b.xor_address(attr::XOR_PEER_ADDRESS, &peer(arg >> 2));
                    }
                    _ => {
                        let n = 0x4000 + u16::from(arg >> 5);
                        b.attr(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0]);
                        b.xor_address(attr::XOR_PEER_ADDRESS, &peer(arg >> 2));
                    }
                }
                let _ = s.handle_client_input(now, five(who), &out);
                drain(&mut s, now, Some(out.len()), !no_auth);
            }
        }
        check(&s, &shared, now);
    }
    // Everything ends.
    now += Duration::from_secs(3600);
    s.handle_timeout(now);
    drain(&mut s, now, None, false);
    assert_eq!(s.allocations().count(), 0);
    // EVEN-PORT reservations end 30 s after they are made; the sweep above freed them.
    assert_eq!(
        shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT) + 1
    );
}
