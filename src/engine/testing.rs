//! A simulated worker and client for driving a [`Server`] with no socket and no clock: the
//! engine's benches (`benches/engine.rs`), the zero-allocation test (`tests/zero_alloc.rs`) and
//! the fuzz targets (`fuzz/targets.rs`) build their engines and allocations here, so a change in
//! how an engine is made or an allocation set up is made once. (The engine's unit tests keep a
//! richer harness of their own in `server/tests.rs`: failing binds, timers, every answer decoded.)
//!
//! Addresses come from the documentation ranges (RFC 5737): the relay is 192.0.2.10, the server
//! 192.0.2.1:3478, clients 198.51.100.1, and peers in 203.0.113.0/24, which
//! [`config`] allows as if they were public.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::auth::{key_md5, Credentials, UserSecret};
use super::policy::{PeerPolicy, DOCUMENTATION};
use super::{
    AllocationId, Bind, ClientAddr, Command, FiveTuple, Server, ServerConfig, Shared, Transport,
};
use crate::proto::{attr, channel_data, Class, Message, MessageBuilder, Method};

pub const REALM: &str = "test.local";
pub const USER: &str = "bench";
pub const PASSWORD: &str = "benchpw";
/// The Unix time the engines start at.
pub const UNIX0: u64 = 1_700_000_000;
pub const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
pub const MIN_PORT: u16 = 50000;
pub const MAX_PORT: u16 = 50099;

/// An engine configuration: relays on [`RELAY_IP`], documentation peers allowed, and the user
/// [`USER`] (or `--no-auth` when `auth` is false).
pub fn config(auth: bool) -> ServerConfig {
    let mut credentials = Credentials::new(REALM, ':');
    credentials.add_user(USER, &UserSecret::Password(PASSWORD.into()));
    ServerConfig {
        realm: REALM.into(),
        credentials,
        no_auth: !auth,
        relay_ips: vec![RELAY_IP],
        peer_policy: PeerPolicy {
            allowed: DOCUMENTATION.to_vec(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An engine on `config` with its own [`Shared`] (ports [`MIN_PORT`]..=[`MAX_PORT`] of
/// [`RELAY_IP`]), started at `now` and [`UNIX0`].
pub fn engine(config: ServerConfig, now: Instant, seed: u64) -> (Server, Arc<Shared>) {
    engine_on_ports(config, MIN_PORT, MAX_PORT, now, seed)
}

/// [`engine`] with relay ports `min..=max` (a small range runs out of ports soon).
pub fn engine_on_ports(
    config: ServerConfig,
    min: u16,
    max: u16,
    now: Instant,
    seed: u64,
) -> (Server, Arc<Shared>) {
    let shared = Arc::new(Shared::new(min, max, [7; 32], now));
    let s = Server::new(Arc::new(config), shared.clone(), now, UNIX0, seed);
    (s, shared)
}

/// Play the worker once: every relay socket binds; the answers sent, in order. Other commands
/// (RFC 6062, frees) are left to the caller's own driver, if it has one.
pub fn drain(s: &mut Server, now: Instant) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    while let Some(c) = s.poll_command() {
        match c {
            Command::Send { data, .. } => sent.push(data),
            Command::BindRelay { id, .. } => s.handle_relay_bound(now, id, Bind::Bound),
            _ => {}
        }
    }
    sent
}

/// A UDP client 5-tuple from 198.51.100.1:`port` to 192.0.2.1:3478.
pub fn udp(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: ClientAddr::new(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            port,
        )),
        server: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 3478),
    }
}

/// A peer address in 203.0.113.0/24.
pub fn peer(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, host)), port)
}

/// ChannelData on `number` carrying `payload`.
pub fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut cd = vec![0u8; channel_data::HEADER_LEN + payload.len()];
    cd[..2].copy_from_slice(&number.to_be_bytes());
    cd[2..4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    cd[channel_data::HEADER_LEN..].copy_from_slice(payload);
    cd
}

/// A Send indication of `payload` to `peer`.
pub fn send_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::SEND, Class::Indication, &[1; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, &peer)
        .attr(attr::DATA, payload);
    out
}

/// A client with [`USER`]'s long-term credentials (sent only to an engine that asks for them).
#[derive(Debug)]
pub struct Client {
    pub five: FiveTuple,
    nonce: Option<Vec<u8>>,
    tid: u32,
}

impl Client {
    pub fn new(five: FiveTuple) -> Client {
        Client {
            five,
            nonce: None,
            tid: 0,
        }
    }

    fn build(&mut self, method: Method, fill: &dyn Fn(&mut MessageBuilder)) -> Vec<u8> {
        self.tid += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, method, Class::Request, &tid);
        fill(&mut b);
        if let Some(n) = &self.nonce {
            b.attr(attr::USERNAME, USER.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, n)
                .integrity(&key_md5(USER, REALM, PASSWORD));
        }
        out
    }

    /// Send a request and return its answer, answering a 401 or 438 challenge once with the
    /// NONCE it brings. Panics when nothing is answered.
    pub fn request(
        &mut self,
        s: &mut Server,
        now: Instant,
        method: Method,
        fill: &dyn Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        for _ in 0..2 {
            let req = self.build(method, fill);
            s.handle_client_input(now, self.five, &req);
            let answer = drain(s, now).pop().expect("an answer");
            let m = Message::decode(&answer).expect("the answer decodes");
            let challenged = m.class() == Class::Error
                && matches!(m.get(attr::ERROR_CODE), Some(e) if e.len() >= 4 && matches!(u16::from(e[2]) * 100 + u16::from(e[3]), 401 | 438));
            match m.get(attr::NONCE) {
                Some(n) if challenged => self.nonce = Some(n.to_vec()),
                _ => return answer,
            }
        }
        panic!("challenged twice");
    }

    /// Request a request and assert it succeeded.
    fn ok(
        &mut self,
        s: &mut Server,
        now: Instant,
        method: Method,
        fill: &dyn Fn(&mut MessageBuilder),
    ) {
        let r = self.request(s, now, method, fill);
        let m = Message::decode(&r).expect("the answer decodes");
        assert_eq!(m.class(), Class::Success, "{method:?} refused");
    }

    /// A UDP allocation; its id.
    pub fn allocate(&mut self, s: &mut Server, now: Instant) -> AllocationId {
        self.ok(s, now, Method::ALLOCATE, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
        });
        s.allocation_on(&self.five).expect("allocated").id()
    }

    /// A permission for `peer`.
    pub fn permit(&mut self, s: &mut Server, now: Instant, peer: SocketAddr) {
        self.ok(s, now, Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        });
    }

    /// Channel `number` bound to `peer`.
    pub fn channel_bind(&mut self, s: &mut Server, now: Instant, number: u16, peer: SocketAddr) {
        self.ok(s, now, Method::CHANNEL_BIND, &|b| {
            b.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, &peer);
        });
    }
}

/// An engine with one allocation relaying: channel `number` bound to `chan_peer`, a permission
/// for `send_peer`.
pub fn relaying(
    auth: bool,
    now: Instant,
    number: u16,
    chan_peer: SocketAddr,
    send_peer: SocketAddr,
) -> (Server, FiveTuple, AllocationId) {
    let (mut s, _) = engine(config(auth), now, 1);
    let mut c = Client::new(udp(40000));
    let id = c.allocate(&mut s, now);
    c.channel_bind(&mut s, now, number, chan_peer);
    c.permit(&mut s, now, send_peer);
    (s, c.five, id)
}
