//! Engine tests on simulated time: one `Instant` taken at the start is t0, and every input is given
//! t0 plus a `Duration`; nothing sleeps. A small harness plays the worker (drains commands, answers
//! `BindRelay`) and a client (long-term credentials, 401 → retry with the server's NONCE, 438 → retry
//! with the fresh one), and decodes every response with [`Message::decode`].

use super::*;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::engine::auth::{self, UserSecret};
use crate::engine::policy::IpRange;
use crate::engine::redirect::{FleetPeer, REDIRECT_MEMORY};
use crate::engine::Transport;

const REALM: &str = "example.org";
const UNIX0: u64 = 1_700_000_000;
const MIN_PORT: u16 = 50000;
const MAX_PORT: u16 = 50099;
const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const RELAY_IP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const SERVER_ADDR: &str = "192.0.2.1:3478";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn peer() -> SocketAddr {
    sa("203.0.113.5:9000")
}

fn five(transport: Transport, ip: IpAddr, port: u16) -> FiveTuple {
    FiveTuple {
        transport,
        client: SocketAddr::new(ip, port),
        server: sa(SERVER_ADDR),
    }
}

fn udp(port: u16) -> FiveTuple {
    five(Transport::Udp, CLIENT_IP, port)
}

fn tcp(port: u16) -> FiveTuple {
    five(Transport::Tcp, CLIENT_IP, port)
}

/// Static users alice and bob, one IPv4 relay address, the documentation ranges open as peers
/// (they stand for public addresses here), everything else default.
fn config() -> ServerConfig {
    let mut credentials = Credentials::new(REALM, ':');
    credentials.add_user("alice", &UserSecret::Password("alice-pw".into()));
    credentials.add_user("bob", &UserSecret::Password("bob-pw".into()));
    ServerConfig {
        realm: REALM.into(),
        credentials,
        relay_ips: vec![RELAY_IP],
        peer_policy: PeerPolicy {
            allowed: crate::engine::policy::DOCUMENTATION.to_vec(),
            ..Default::default()
        },
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------------ harness

/// A decoded response: class, method, error code and the attributes before the integrity ones.
#[derive(Debug, Clone)]
struct Resp {
    raw: Vec<u8>,
    method: Method,
    class: Class,
    code: Option<u16>,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Resp {
    fn parse(raw: Vec<u8>) -> Resp {
        let m = Message::decode(&raw)
            .unwrap_or_else(|e| panic!("engine output must decode: {e}: {raw:02x?}"));
        let attrs: Vec<(u16, Vec<u8>)> = m
            .attributes()
            .map(|a| (a.ty, raw[a.offset..a.offset + a.len].to_vec()))
            .collect();
        let code = m
            .get(attr::ERROR_CODE)
            .map(|v| attr::read_error_code(v).expect("valid ERROR-CODE").0);
        let (method, class) = (m.method(), m.class());
        Resp {
            method,
            class,
            code,
            attrs,
            raw,
        }
    }

    fn msg(&self) -> Message<'_> {
        Message::decode(&self.raw).unwrap()
    }

    fn get(&self, ty: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v.as_slice())
    }

    fn has(&self, ty: u16) -> bool {
        self.get(ty).is_some()
    }

    fn xor(&self, ty: u16) -> Option<SocketAddr> {
        self.msg().get_xor_address(ty)
    }

    fn lifetime(&self) -> Option<u32> {
        self.get(attr::LIFETIME).and_then(attr::read_u32)
    }

    #[track_caller]
    fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.class,
            Class::Success,
            "expected success, got {:?} {:?}",
            self.class,
            self.code
        );
        self
    }

    #[track_caller]
    fn assert_err(&self, code: u16) -> &Self {
        assert_eq!(
            self.class,
            Class::Error,
            "expected error {code}, got {:?}",
            self.class
        );
        assert_eq!(self.code, Some(code));
        self
    }
}

/// Plays the worker around one [`Server`].
struct H {
    s: Server,
    shared: Arc<Shared>,
    t0: Instant,
    now: Instant,
    /// How many of the next BindRelay commands fail.
    fail_binds: u32,
    binds: Vec<(AllocationId, SocketAddr)>,
    freed: Vec<AllocationId>,
    sent: Vec<(FiveTuple, Vec<u8>)>,
    /// RFC 6062 commands (ConnectPeer, BindConnection, CloseConnection), in order.
    tcp: Vec<Command>,
}

impl H {
    fn new(cfg: ServerConfig) -> H {
        H::with_ports(cfg, MIN_PORT, MAX_PORT)
    }

    fn with_ports(cfg: ServerConfig, min: u16, max: u16) -> H {
        let shared = Arc::new(Shared::new(min, max, [7; 32]));
        H::with_shared(cfg, shared)
    }

    fn with_shared(cfg: ServerConfig, shared: Arc<Shared>) -> H {
        let t0 = Instant::now();
        H {
            s: Server::new(Arc::new(cfg), shared.clone(), t0, UNIX0, 1),
            shared,
            t0,
            now: t0,
            fail_binds: 0,
            binds: Vec::new(),
            freed: Vec::new(),
            sent: Vec::new(),
            tcp: Vec::new(),
        }
    }

    /// Move simulated time to t0 + `ms` and run the timers, as a worker does.
    fn at_ms(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
        self.s.handle_timeout(self.now);
        self.drain();
    }

    fn at(&mut self, secs: u64) {
        self.at_ms(secs * 1000);
    }

    fn drain(&mut self) {
        while let Some(c) = self.s.poll_command() {
            match c {
                Command::Send { to, data } => self.sent.push((to, data)),
                Command::BindRelay { id, addr, .. } => {
                    self.binds.push((id, addr));
                    let r = if self.fail_binds > 0 {
                        self.fail_binds -= 1;
                        Err(())
                    } else {
                        Ok(())
                    };
                    self.s.handle_relay_bound(self.now, id, r);
                }
                Command::FreeRelay { id } => self.freed.push(id),
                other => self.tcp.push(other),
            }
        }
    }

    fn input(&mut self, five: FiveTuple, bytes: &[u8]) -> ClientDecision {
        let d = self.s.handle_client_input(self.now, five, bytes);
        self.drain();
        d
    }

    /// Every response sent since the last call, all to `five`.
    #[track_caller]
    fn responses(&mut self, five: FiveTuple) -> Vec<Resp> {
        self.sent
            .drain(..)
            .map(|(to, data)| {
                assert_eq!(to, five, "response to the wrong 5-tuple");
                Resp::parse(data)
            })
            .collect()
    }

    /// Feed a request and return its one response.
    #[track_caller]
    fn one(&mut self, five: FiveTuple, bytes: &[u8]) -> Resp {
        assert_eq!(self.input(five, bytes), ClientDecision::Done);
        let mut r = self.responses(five);
        assert_eq!(r.len(), 1, "expected exactly one response");
        r.pop().unwrap()
    }

    /// Feed something that must be ignored: no decision, no command.
    #[track_caller]
    fn silent(&mut self, five: FiveTuple, bytes: &[u8]) {
        let binds = self.binds.len();
        assert_eq!(
            self.input(five, bytes),
            ClientDecision::Done,
            "{bytes:02x?}"
        );
        assert!(self.sent.is_empty(), "unexpected response to {bytes:02x?}");
        assert_eq!(self.binds.len(), binds);
    }

    /// A NONCE as the server would issue it now to a client at [`CLIENT_IP`].
    fn nonce(&self) -> Vec<u8> {
        let unix = self.s.unix(self.now);
        self.s.shared.nonce_key.make(unix, CLIENT_IP).into_bytes()
    }

    fn alloc_id(&self, five: FiveTuple) -> AllocationId {
        self.s.allocation_on(&five).expect("an allocation").id
    }

    fn relay_of(&self, five: FiveTuple) -> SocketAddr {
        self.s.allocation_on(&five).expect("an allocation").relay
    }

    /// A peer datagram laid out as a worker does: headroom, payload, tailroom (filled with junk
    /// so that padding the engine writes can be seen).
    fn peer_sends(
        &mut self,
        five: FiveTuple,
        peer: SocketAddr,
        payload: &[u8],
    ) -> (PeerDecision, Vec<u8>) {
        let id = self.alloc_id(five);
        let mut buf = vec![0xEE; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let d = self.s.handle_peer_input(
            self.now,
            id,
            peer,
            &mut buf,
            PEER_HEADROOM..PEER_HEADROOM + payload.len(),
        );
        (d, buf)
    }
}

type Fill<'a> = &'a dyn Fn(&mut MessageBuilder<'_>);

fn nothing(_: &mut MessageBuilder<'_>) {}

fn requested_udp(b: &mut MessageBuilder<'_>) {
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
}

/// A TURN client with long-term credentials.
struct Client {
    five: FiveTuple,
    user: String,
    pass: String,
    nonce: Option<Vec<u8>>,
    /// PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256 instead of MD5 / MESSAGE-INTEGRITY.
    sha256: bool,
    /// USERHASH instead of USERNAME.
    userhash: bool,
    fingerprint: bool,
    tid: u32,
    last_request: Vec<u8>,
}

impl Client {
    fn new(five: FiveTuple, user: &str, pass: &str) -> Client {
        Client {
            five,
            user: user.into(),
            pass: pass.into(),
            nonce: None,
            sha256: false,
            userhash: false,
            fingerprint: false,
            tid: 0,
            last_request: Vec::new(),
        }
    }

    fn alice(five: FiveTuple) -> Client {
        Client::new(five, "alice", "alice-pw")
    }

    fn key(&self) -> Vec<u8> {
        if self.sha256 {
            auth::key_sha256(&self.user, REALM, &self.pass).to_vec()
        } else {
            auth::key_md5(&self.user, REALM, &self.pass).to_vec()
        }
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..2].copy_from_slice(&self.five.client.port().to_be_bytes());
        t[8..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// A request with the attributes `fill` adds, then (with `auth`) the credentials and
    /// MESSAGE-INTEGRITY(-SHA256), then FINGERPRINT if asked for.
    fn build(
        &self,
        method: Method,
        class: Class,
        tid: &TransactionId,
        fill: Fill,
        auth: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, method, class, tid);
        fill(&mut b);
        if auth {
            if self.userhash {
                b.attr(attr::USERHASH, &auth::userhash(&self.user, REALM));
            } else {
                b.attr(attr::USERNAME, self.user.as_bytes());
            }
            b.attr(attr::REALM, REALM.as_bytes());
            b.attr(attr::NONCE, self.nonce.as_deref().unwrap_or(b""));
            if self.sha256 {
                b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
                b.attr(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
                b.integrity_sha256(&self.key());
            } else {
                b.integrity(&self.key());
            }
        }
        if self.fingerprint {
            b.fingerprint();
        }
        out
    }

    /// Send one request (authenticated when a nonce is known) and return its response.
    fn request_once(&mut self, h: &mut H, method: Method, fill: Fill) -> Resp {
        let tid = self.next_tid();
        let auth = self.nonce.is_some();
        self.last_request = self.build(method, Class::Request, &tid, fill, auth);
        let req = self.last_request.clone();
        let r = h.one(self.five, &req);
        assert_eq!(r.method, method);
        assert_eq!(r.msg().transaction_id(), &tid);
        r
    }

    /// Send a request as a real client does: without credentials until the server sends a NONCE,
    /// and once more with the fresh NONCE after a 401 to an unauthenticated request or a 438.
    fn request(&mut self, h: &mut H, method: Method, fill: Fill) -> Resp {
        let had_nonce = self.nonce.is_some();
        let r = self.request_once(h, method, fill);
        let retry = matches!(r.code, Some(438)) || (r.code == Some(401) && !had_nonce);
        if !retry {
            return r;
        }
        self.nonce = Some(
            r.get(attr::NONCE)
                .expect("401/438 carries a NONCE")
                .to_vec(),
        );
        self.request_once(h, method, fill)
    }

    fn allocate(&mut self, h: &mut H) -> Resp {
        self.request(h, Method::ALLOCATE, &requested_udp)
    }

    fn allocate_with(&mut self, h: &mut H, fill: Fill) -> Resp {
        self.request(h, Method::ALLOCATE, &|b| {
            requested_udp(b);
            fill(b);
        })
    }

    fn refresh(&mut self, h: &mut H, lifetime: Option<u32>) -> Resp {
        self.request(h, Method::REFRESH, &|b| {
            if let Some(l) = lifetime {
                b.attr_u32(attr::LIFETIME, l);
            }
        })
    }

    fn permit(&mut self, h: &mut H, peer: SocketAddr) -> Resp {
        self.request(h, Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
    }

    fn channel_bind(&mut self, h: &mut H, number: u16, peer: SocketAddr) -> Resp {
        self.request(h, Method::CHANNEL_BIND, &|b| {
            b.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            );
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.next_tid();
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method::SEND, Class::Indication, &tid);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        b.attr(attr::DATA, data);
        out
    }
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    channel_data::write_header(&mut out, number, data.len());
    out.extend_from_slice(data);
    out
}

fn binding_request(tid: &TransactionId, fill: Fill) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Method::BINDING, Class::Request, tid);
    fill(&mut b);
    out
}

/// H + alice allocated on `udp(40000)`.
fn allocated(cfg: ServerConfig) -> (H, Client) {
    let mut h = H::new(cfg);
    let mut c = Client::alice(udp(40000));
    c.allocate(&mut h).assert_ok();
    (h, c)
}

// ------------------------------------------------------------------------------------ STUN Binding

#[test]
fn binding_returns_xor_mapped_address_and_software() {
    let mut h = H::new(config());
    let c = udp(40000);
    let r = h.one(c, &binding_request(&[1; 12], &nothing));
    r.assert_ok();
    assert_eq!(r.method, Method::BINDING);
    assert_eq!(r.msg().transaction_id(), &[1; 12]);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.client));
    assert!(r.has(attr::SOFTWARE));
    assert!(!r.msg().has_fingerprint());
    assert!(!r.msg().has_integrity());

    // IPv6 client.
    let c6 = five(Transport::Udp, "2001:db8::99".parse().unwrap(), 5000);
    let r = h.one(c6, &binding_request(&[2; 12], &nothing));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c6.client));
    assert_eq!(h.s.counters().binding_requests, 2);
}

#[test]
fn binding_fingerprint_iff_request_had_one_or_configured() {
    let mut h = H::new(config());
    let c = udp(40000);
    let with_fp = binding_request(&[3; 12], &|b| {
        b.fingerprint();
    });
    assert!(h.one(c, &with_fp).msg().has_fingerprint());
    assert!(!h
        .one(c, &binding_request(&[4; 12], &nothing))
        .msg()
        .has_fingerprint());

    let mut cfg = config();
    cfg.fingerprint = true;
    cfg.software = None;
    let mut h = H::new(cfg);
    let r = h.one(c, &binding_request(&[5; 12], &nothing));
    assert!(r.msg().has_fingerprint());
    assert!(!r.has(attr::SOFTWARE));
}

// ----------------------------------------------------------------- RFC 5780 NAT behaviour discovery

fn rfc5780_config() -> ServerConfig {
    let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
    ServerConfig {
        rfc5780: Some(Rfc5780::new(&ips, 3478, 3479)),
        ..config()
    }
}

fn change_request(ip: bool, port: bool) -> impl Fn(&mut MessageBuilder<'_>) {
    move |b: &mut MessageBuilder<'_>| {
        let flags = (u8::from(ip) << 2) | (u8::from(port) << 1);
        b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
}

#[test]
fn rfc5780_pairs_addresses_of_one_family() {
    let ips: Vec<IpAddr> = ["192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let r = Rfc5780::new(&ips, 3478, 3479);
    assert_eq!(
        r.other_address(sa("192.0.2.1:3478")),
        Some(sa("192.0.2.2:3479"))
    );
    assert_eq!(
        r.other_address(sa("192.0.2.3:3479")),
        Some(sa("192.0.2.1:3478"))
    );
    // Alone in its family, or on a port that is neither: no alternate.
    assert_eq!(r.other_address(sa("[2001:db8::1]:3478")), None);
    assert_eq!(r.other_address(sa("192.0.2.1:5349")), None);
    assert_eq!(
        r.source(sa("192.0.2.2:3478"), false, true),
        Some(sa("192.0.2.2:3479"))
    );
    assert_eq!(
        r.source(sa("192.0.2.2:3478"), true, false),
        Some(sa("192.0.2.3:3478"))
    );
}

#[test]
fn rfc5780_answers_from_the_changed_address_with_origin_and_other() {
    let mut h = H::new(rfc5780_config());
    let c = udp(40000);
    for (ip, port, from) in [
        (false, false, "192.0.2.1:3478"),
        (false, true, "192.0.2.1:3479"),
        (true, false, "192.0.2.2:3478"),
        (true, true, "192.0.2.2:3479"),
    ] {
        assert_eq!(
            h.input(c, &binding_request(&[7; 12], &change_request(ip, port))),
            ClientDecision::Done
        );
        let (to, data) = h.sent.pop().expect("one answer");
        assert!(h.sent.is_empty());
        assert_eq!(to.client, c.client);
        assert_eq!(to.server, sa(from), "CHANGE-REQUEST ip={ip} port={port}");
        let m = Message::decode(&data).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.get_xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.client));
        let origin = m.get(attr::RESPONSE_ORIGIN).and_then(attr::read_address);
        assert_eq!(origin, Some(sa(from)));
        let other = m.get(attr::OTHER_ADDRESS).and_then(attr::read_address);
        assert_eq!(other, Some(sa("192.0.2.2:3479")));
    }
    // A plain Binding advertises the alternate address too, and comes from where it went.
    let r = h.one(c, &binding_request(&[8; 12], &nothing));
    r.assert_ok();
    assert!(r.has(attr::OTHER_ADDRESS) && r.has(attr::RESPONSE_ORIGIN));
}

#[test]
fn change_request_without_rfc5780_is_420_and_over_tcp_is_400() {
    let mut h = H::new(config());
    let r = h.one(
        udp(40000),
        &binding_request(&[9; 12], &change_request(true, true)),
    );
    r.assert_err(420);
    assert_eq!(
        r.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&attr::CHANGE_REQUEST.to_be_bytes()[..])
    );
    let r = h.one(udp(40000), &binding_request(&[10; 12], &nothing));
    assert!(!r.has(attr::OTHER_ADDRESS));

    let mut h = H::new(rfc5780_config());
    h.one(
        tcp(40001),
        &binding_request(&[11; 12], &change_request(false, true)),
    )
    .assert_err(400);
    // A malformed CHANGE-REQUEST (not 4 bytes) is 400 as well.
    h.one(
        udp(40002),
        &binding_request(&[12; 12], &|b| {
            b.attr(attr::CHANGE_REQUEST, &[0, 6]);
        }),
    )
    .assert_err(400);
}

#[test]
fn classic_rfc3489_binding_gets_mapped_address() {
    let mut h = H::new(config());
    let c = udp(40000);
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    let id: Vec<u8> = (0xA0..0xB0).collect();
    req.extend_from_slice(&id);
    let r = h.one(c, &req);
    r.assert_ok();
    assert!(r.msg().is_classic());
    assert_eq!(
        &r.raw[4..20],
        &id[..],
        "the 128-bit transaction id is echoed"
    );
    assert_eq!(
        r.get(attr::MAPPED_ADDRESS).and_then(attr::read_address),
        Some(c.client)
    );
    assert!(!r.has(attr::XOR_MAPPED_ADDRESS));
    // Classic non-Binding requests are ignored.
    let mut alloc = req.clone();
    alloc[1] = 0x03;
    h.silent(c, &alloc);
}

#[test]
fn garbage_short_responses_and_stray_channel_data_are_ignored() {
    let mut h = H::new(config());
    let c = udp(40000);
    let tid = [9u8; 12];
    let mut success = Vec::new();
    MessageBuilder::new(&mut success, Method::BINDING, Class::Success, &tid)
        .xor_address(attr::XOR_MAPPED_ADDRESS, &c.client);
    let mut error = Vec::new();
    MessageBuilder::new(&mut error, Method::ALLOCATE, Class::Error, &tid).error_code(401, "");
    let mut indication = Vec::new();
    MessageBuilder::new(&mut indication, Method::BINDING, Class::Indication, &tid);
    let mut bad_fp = binding_request(&tid, &|b| {
        b.fingerprint();
    });
    *bad_fp.last_mut().unwrap() ^= 1;
    let mut bad_len = binding_request(&tid, &nothing);
    bad_len[3] = 4;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],
        vec![0, 1, 0, 0, 0x21, 0x12, 0xA4],
        binding_request(&tid, &nothing)[..19].to_vec(),
        bad_len,
        bad_fp,
        vec![0xFF; 64],
        vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        channel_data(0x4000, b"hello"),
        channel_data(0x4FFF, b""),
        vec![0x40, 0x00, 0x00, 0x10, 1],
        vec![0x40],
        success,
        error,
        indication,
    ];
    for i in &inputs {
        h.silent(c, i);
    }
    assert!(h.s.counters().malformed > 0);
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = H::new(config());
    let c = udp(40000);
    let req = binding_request(&[1; 12], &|b| {
        b.attr(0x0031, b"xyz");
        b.attr(0x8031, b"optional is fine");
    });
    let r = h.one(c, &req);
    r.assert_err(420);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x31][..]));
    // Comprehension-optional alone is ignored.
    h.one(
        c,
        &binding_request(&[2; 12], &|b| {
            b.attr(0x8031, b"x");
        }),
    )
    .assert_ok();
    // The same on a TURN request, before authentication.
    let mut a = Client::alice(c);
    let r = a.request(&mut h, Method::ALLOCATE, &|b| {
        requested_udp(b);
        b.attr(0x0031, &[0; 4]);
    });
    r.assert_err(420);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x31][..]));
    assert!(h.binds.is_empty());
}

// ------------------------------------------------------------------------------------ authentication

#[test]
fn unauthenticated_request_is_401_with_realm_nonce_and_algorithms() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.request_once(&mut h, Method::ALLOCATE, &requested_udp);
    r.assert_err(401);
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    assert!(r.get(attr::NONCE).unwrap().starts_with(b"obMatJos2"));
    let algs: Vec<u16> = attr::read_password_algorithms(r.get(attr::PASSWORD_ALGORITHMS).unwrap())
        .map(|(a, _)| a)
        .collect();
    assert!(algs.contains(&attr::PASSWORD_ALGORITHM_MD5));
    assert!(algs.contains(&attr::PASSWORD_ALGORITHM_SHA256));
    assert!(!r.msg().has_integrity());
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().unauthorized, 1);
}

#[test]
fn wrong_password_and_unknown_user_are_401() {
    let mut h = H::new(config());
    let mut c = Client::new(udp(40000), "alice", "not-the-password");
    c.allocate(&mut h).assert_err(401);
    let mut m = Client::new(udp(40001), "mallory", "whatever");
    let r = m.allocate(&mut h);
    r.assert_err(401);
    assert!(r.has(attr::NONCE));
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().auth_failures, 2);
    let r = h.s.counters().auth_failures_by_reason;
    assert_eq!((r.wrong_credentials, r.unknown_user, r.expired), (1, 1, 0));
}

#[test]
fn integrity_without_realm_nonce_or_username_is_400() {
    let mut h = H::new(config());
    let c = udp(40000);
    let nonce = h.nonce();
    let key = auth::key_md5("alice", REALM, "alice-pw");
    for omit in [attr::USERNAME, attr::REALM, attr::NONCE] {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(
            &mut out,
            Method::ALLOCATE,
            Class::Request,
            &[omit as u8; 12],
        );
        requested_udp(&mut b);
        for (ty, v) in [
            (attr::USERNAME, b"alice".as_slice()),
            (attr::REALM, REALM.as_bytes()),
            (attr::NONCE, nonce.as_slice()),
        ] {
            if ty != omit {
                b.attr(ty, v);
            }
        }
        b.integrity(&key);
        h.one(c, &out).assert_err(400);
    }
    assert!(h.binds.is_empty());
}

#[test]
fn stale_and_forged_nonces_are_438() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.allocate(&mut h).assert_ok();
    let old = c.nonce.clone();

    // Still fresh at nonce_lifetime, stale one second later.
    h.at(600);
    let mut d = Client::alice(udp(40001));
    d.nonce = old.clone();
    d.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_ok();
    h.at(601);
    let mut e = Client::alice(udp(40002));
    e.nonce = old.clone();
    let r = e.request_once(&mut h, Method::ALLOCATE, &requested_udp);
    r.assert_err(438);
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    let fresh = r.get(attr::NONCE).unwrap().to_vec();
    assert_ne!(Some(fresh.clone()), old);
    // The client retries with the fresh one.
    e.nonce = Some(fresh);
    e.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_ok();

    // Forged: the right shape, a wrong MAC.
    let mut f = Client::alice(udp(40003));
    f.nonce = Some(
        format!(
            "{}{:016x}{:016x}",
            auth::NONCE_PREFIX,
            UNIX0 + 601,
            0xdead_beef_u64
        )
        .into_bytes(),
    );
    f.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    f.nonce = Some(b"not-a-nonce-at-all".to_vec());
    f.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    // Issued to another client address.
    let mut g = Client::alice(five(Transport::Udp, "198.51.100.2".parse().unwrap(), 40004));
    g.nonce = e.nonce.clone();
    g.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    assert_eq!(h.s.counters().stale_nonces, 4);
}

#[test]
fn other_user_on_the_same_five_tuple_is_441() {
    let (mut h, c) = allocated(config());
    let mut bob = Client::new(c.five, "bob", "bob-pw");
    let r = bob.refresh(&mut h, None);
    r.assert_err(441);
    // The 441 is signed with bob's key (he authenticated).
    assert!(r.msg().check_integrity(&bob.key()));
    bob.permit(&mut h, peer()).assert_err(441);
    bob.channel_bind(&mut h, 0x4000, peer()).assert_err(441);
    assert!(h.s.allocation_on(&c.five).is_some());
    assert!(h.freed.is_empty());
}

#[test]
fn allocation_mismatch_is_437() {
    let (mut h, mut c) = allocated(config());
    // A second Allocate (new transaction) on the same 5-tuple.
    c.allocate(&mut h).assert_err(437);
    assert_eq!(h.binds.len(), 1);

    // Issue 15: without an allocation an unsigned request gets no challenge, a signed one 437.
    let mut d = Client::alice(udp(40001));
    let tid = d.next_tid();
    let bare = d.build(Method::REFRESH, Class::Request, &tid, &|_| {}, false);
    h.silent(d.five, &bare);
    d.nonce = Some(h.nonce());
    d.refresh(&mut h, None).assert_err(437);
    d.permit(&mut h, peer()).assert_err(437);
    let r = d.channel_bind(&mut h, 0x4000, peer());
    r.assert_err(437);
    assert!(r.msg().check_integrity(&d.key()));
}

#[test]
fn retransmitted_allocate_gets_the_identical_response() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let first = c.allocate(&mut h);
    first.assert_ok();
    let req = c.last_request.clone();
    let again = h.one(c.five, &req);
    assert_eq!(again.raw, first.raw);
    assert_eq!(h.binds.len(), 1, "no second relay");
}

#[test]
fn requested_transport_errors() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    // TCP is a relay kind of its own (RFC 6062), but not over UDP: 400.
    for (proto, code) in [(attr::PROTO_TCP, 400), (99, 442)] {
        c.request(&mut h, Method::ALLOCATE, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0]);
        })
        .assert_err(code);
    }
    c.request(&mut h, Method::ALLOCATE, &nothing)
        .assert_err(400);
    c.request(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0]);
    })
    .assert_err(400);
    c.allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &[1; 8]);
        b.attr(attr::EVEN_PORT, &[0x80]);
    })
    .assert_err(400);
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().allocations_refused, 5);
}

#[test]
fn address_family_not_supported_is_440() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    for fam in [attr::FAMILY_IPV6, 0x03] {
        c.allocate_with(&mut h, &|b| {
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[fam, 0, 0, 0]);
        })
        .assert_err(440);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    // IPv4 explicitly is fine.
    c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV4, 0, 0, 0],
        );
    })
    .assert_ok();
}

#[test]
fn peer_of_the_other_family_is_443() {
    let (mut h, mut c) = allocated(config());
    let v6 = sa("[2001:db8::1]:9000");
    c.permit(&mut h, v6).assert_err(443);
    c.channel_bind(&mut h, 0x4000, v6).assert_err(443);
    // Refresh asking for the other family.
    c.request(&mut h, Method::REFRESH, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_err(443);
}

#[test]
fn peer_policy_refusals_are_403() {
    let mut cfg = config();
    cfg.relay_ips.push(RELAY_IP6);
    cfg.peer_policy.denied.push(IpRange {
        start: "10.0.0.0".parse().unwrap(),
        end: "10.255.255.255".parse().unwrap(),
    });
    let (mut h, mut c) = allocated(cfg);
    for bad in [
        "127.0.0.1:9000",
        "0.0.0.0:9000",
        "127.1.2.3:9000",
        "10.1.2.3:9000",
        "224.0.0.1:9000",
    ] {
        c.permit(&mut h, sa(bad)).assert_err(403);
        c.channel_bind(&mut h, 0x4000, sa(bad)).assert_err(403);
    }
    // The IPv6 forms of CVE-2020-26262, on an IPv6 allocation (on an IPv4 one they are 443).
    let mut c6 = Client::alice(udp(40001));
    let r = c6.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    r.assert_ok();
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().ip(), RELAY_IP6);
    for bad in [
        "[::]:9000",
        "[::1]:9000",
        "[::ffff:127.0.0.1]:9000",
        "[::ffff:0.0.0.0]:9000",
        "[::127.0.0.1]:9000",
        // Issue 15: tunnels, NAT64/SIIT forms of private and loopback addresses, and a denied
        // range reached through NAT64.
        "[2002:7f00:1::]:9000",
        "[2001::1]:9000",
        "[64:ff9b::7f00:1]:9000",
        "[::ffff:0:7f00:1]:9000",
        "[64:ff9b::a00:1]:9000",
        "[fd00::1]:9000",
    ] {
        c6.permit(&mut h, sa(bad)).assert_err(403);
        c6.channel_bind(&mut h, 0x4000, sa(bad)).assert_err(403);
        c.permit(&mut h, sa(bad)).assert_err(443);
    }
    // All or nothing: one bad address refuses the whole request.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
        b.xor_address(attr::XOR_PEER_ADDRESS, &sa("127.0.0.1:1"));
    })
    .assert_err(403);
    let id = h.alloc_id(c.five);
    assert!(h.s.get(id).unwrap().permissions.is_empty(h.now));
    c6.permit(&mut h, sa("[2001:db8::77]:1")).assert_ok();
    c.permit(&mut h, peer()).assert_ok();

    // With allow_loopback, 127.0.0.1 is fine; 0.0.0.0 never is.
    let mut cfg = config();
    cfg.peer_policy.allow_loopback = true;
    let (mut h, mut c) = allocated(cfg);
    c.permit(&mut h, sa("127.0.0.1:9000")).assert_ok();
    c.permit(&mut h, sa("0.0.0.0:9000")).assert_err(403);
}

#[test]
fn quotas_are_486() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let mut h = H::new(cfg);
    Client::alice(udp(40000)).allocate(&mut h).assert_ok();
    let mut second = Client::alice(udp(40001));
    second.allocate(&mut h).assert_err(486);
    Client::new(udp(40002), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    assert_eq!(h.binds.len(), 2);
    // Releasing alice's first allocation gives her quota back.
    h.s.handle_transport_closed(udp(40000));
    h.drain();
    second.allocate(&mut h).assert_ok();

    let mut cfg = config();
    cfg.total_quota = 2;
    let mut h = H::new(cfg);
    Client::alice(udp(40000)).allocate(&mut h).assert_ok();
    Client::new(udp(40001), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    Client::alice(udp(40002)).allocate(&mut h).assert_err(486);
    Client::new(udp(40003), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    let by_code: Vec<(u16, u64)> =
        h.s.counters()
            .refused_by_code
            .iter()
            .filter(|c| c.1 > 0)
            .collect();
    assert_eq!(by_code, vec![(486, 2)]);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
}

#[test]
fn exhausted_port_range_is_508() {
    let mut h = H::with_ports(config(), 50000, 50001);
    let a = Client::alice(udp(40000)).allocate(&mut h);
    let b = Client::alice(udp(40001)).allocate(&mut h);
    let mut ports = vec![
        a.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        b.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
    ];
    ports.sort();
    assert_eq!(ports, vec![50000, 50001]);
    let mut c = Client::alice(udp(40002));
    c.allocate(&mut h).assert_err(508);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
    assert!(h.s.allocation_on(&c.five).is_none());
    h.s.handle_transport_closed(udp(40000));
    h.drain();
    c.allocate(&mut h).assert_ok();
}

#[test]
fn relay_bind_failing_every_attempt_is_508() {
    // Few ports, so that picking the failed one again would be likely.
    let (min, max) = (MIN_PORT, MIN_PORT + 2);
    let mut h = H::with_ports(config(), min, max);
    h.fail_binds = u32::from(BIND_ATTEMPTS);
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    r.assert_err(508);
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(h.binds.len(), usize::from(BIND_ATTEMPTS));
    // A retry never picks the port that just failed: someone else holds it.
    assert!(
        h.binds.windows(2).all(|w| w[0].1 != w[1].1),
        "{:?}",
        h.binds
    );
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.shared.ports.free(RELAY_IP), u32::from(max - min) + 1);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);

    // A SHA-256 client's 508 carries MESSAGE-INTEGRITY-SHA256 as every other answer it gets
    // (issue 15/17: this answer was built by hand and lost it).
    let mut h = H::with_ports(config(), min, max);
    h.fail_binds = u32::from(BIND_ATTEMPTS);
    let mut c = Client::alice(udp(40000));
    c.sha256 = true;
    let r = c.allocate(&mut h);
    r.assert_err(508);
    assert!(
        r.msg().has_integrity_sha256(),
        "508 without MESSAGE-INTEGRITY-SHA256"
    );
    assert!(r.msg().check_integrity_sha256(&c.key()));

    // One failure less: the last attempt binds.
    let mut h = H::new(config());
    h.fail_binds = u32::from(BIND_ATTEMPTS) - 1;
    let r = Client::alice(udp(40000)).allocate(&mut h);
    r.assert_ok();
    let (_, last) = *h.binds.last().unwrap();
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(last));
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT)
    );
}

#[test]
fn channel_bind_bad_requests_are_400() {
    let (mut h, mut c) = allocated(config());
    let p2 = sa("203.0.113.6:9000");
    // Outside the range a client may bind (RFC 8656 §12: 0x4000..=0x4FFF; CHANNEL_MAX may be
    // raised to RFC 5766's 0x7FFF for coturn's clients, so the top is taken from the constant).
    let (min, max) = (channel_data::CHANNEL_MIN, channel_data::CHANNEL_MAX);
    for bad in [0x0000, 0x3FFF, min - 1, max + 1, 0x8000, 0xFFFF] {
        c.channel_bind(&mut h, bad, peer()).assert_err(400);
    }
    c.channel_bind(&mut h, max, sa("203.0.113.7:1")).assert_ok();
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok(); // a refresh
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400); // number taken
    c.channel_bind(&mut h, 0x4001, peer()).assert_err(400); // peer taken
                                                            // Same IP, other port: a different transport address, so a separate channel is fine.
    c.channel_bind(&mut h, 0x4ABC, sa("203.0.113.5:9001"))
        .assert_ok();
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &p2);
    })
    .assert_err(400);
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0]);
    })
    .assert_err(400);
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02]);
        b.xor_address(attr::XOR_PEER_ADDRESS, &p2);
    })
    .assert_err(400);
    c.request(&mut h, Method::CREATE_PERMISSION, &nothing)
        .assert_err(400);
}

// ------------------------------------------------------------------------------------ success paths

#[test]
fn allocate_success_response() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    r.assert_ok();
    let relay = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip(), RELAY_IP);
    assert!((MIN_PORT..=MAX_PORT).contains(&relay.port()));
    assert_eq!(h.binds, vec![(h.alloc_id(c.five), relay)]);
    assert_eq!(r.lifetime(), Some(600));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.five.client));
    assert!(r.has(attr::SOFTWARE));
    let m = r.msg();
    assert!(m.check_integrity(&c.key()));
    assert!(!m.check_integrity(&auth::key_md5("alice", REALM, "other")));
    assert!(!m.has_fingerprint());
    assert!(!m.has_integrity_sha256());
    assert_eq!(h.s.counters().allocations_created, 1);

    // With FINGERPRINT in the request, the response has one.
    let mut f = Client::alice(udp(40001));
    f.fingerprint = true;
    assert!(f.allocate(&mut h).assert_ok().msg().has_fingerprint());
}

#[test]
fn allocate_lifetimes() {
    let mut h = H::new(config());
    for (i, (asked, got)) in [
        (1200, 1200),
        (99999, 3600),
        (10, 600),
        (600, 600),
        (3600, 3600),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Client::alice(udp(41000 + i as u16));
        let r = c.allocate_with(&mut h, &|b| {
            b.attr_u32(attr::LIFETIME, asked);
        });
        assert_eq!(r.assert_ok().lifetime(), Some(got), "asked {asked}");
        assert_eq!(
            h.s.allocation_on(&c.five).unwrap().expires,
            h.t0 + Duration::from_secs(u64::from(got))
        );
    }
}

#[test]
fn external_ip_mapping_changes_xor_relayed_address() {
    let public: IpAddr = "203.0.113.77".parse().unwrap();
    for private in [None, Some(RELAY_IP)] {
        let mut cfg = config();
        cfg.external_ips = vec![(public, private)];
        let (h, c) = allocated(cfg);
        let a = h.s.allocation_on(&c.five).unwrap();
        assert_eq!(a.relay.ip(), RELAY_IP);
        assert_eq!(a.reported_relay, SocketAddr::new(public, a.relay.port()));
    }
    // A mapping for another private address leaves ours alone.
    let mut cfg = config();
    cfg.external_ips = vec![(public, Some("192.0.2.99".parse().unwrap()))];
    let mut h = H::new(cfg);
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(h.relay_of(c.five)));

    let mut cfg = config();
    cfg.external_ips = vec![(public, None)];
    let mut h = H::new(cfg);
    let r = Client::alice(udp(40000)).allocate(&mut h);
    let got = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(got.ip(), public);
    assert_eq!(got.port(), h.binds[0].1.port());
}

#[test]
fn even_port_and_reservation_token() {
    let mut h = H::new(config());
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x00]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    assert!(!r.has(attr::RESERVATION_TOKEN));

    let r = Client::alice(udp(40001)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    let token = r
        .get(attr::RESERVATION_TOKEN)
        .expect("R bit gives a token")
        .to_vec();
    assert_eq!(token.len(), 8);
    // The reserved port is not handed out to anyone else.
    assert!(!h.shared.ports.take_exact(RELAY_IP, port + 1));

    let mut other = Client::alice(udp(40002));
    let r = other.allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        port + 1
    );
    // A token is good once.
    Client::alice(udp(40003))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &token);
        })
        .assert_err(508);
    // An unknown token, or one of the wrong size.
    Client::alice(udp(40004))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &[0xAB; 8]);
        })
        .assert_err(508);
    Client::alice(udp(40005))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &[0xAB; 4]);
        })
        .assert_err(400);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 3);
}

/// Issue 15: a reservation counts against the reserving user's quota until it is used or
/// released, so EVEN-PORT is no way around `--user-quota`; a REST user counts by its user part,
/// so a fresh credential is no way around it either.
#[test]
fn reservations_and_fresh_rest_credentials_count_against_the_user() {
    let mut cfg = rest_config(&[b"north"]);
    cfg.user_quota = 2;
    let mut h = H::new(cfg);
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let token = r.assert_ok().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    // One allocation and one reservation: alice is at her quota.
    Client::alice(udp(40001)).allocate(&mut h).assert_err(486);
    // Her reservation is hers to use: the allocation made from it takes its place.
    Client::alice(udp(40002))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &token);
        })
        .assert_ok();
    Client::alice(udp(40003)).allocate(&mut h).assert_err(486);
    // An unused reservation gives the quota back when its 30 s are up.
    h.s.handle_transport_closed(udp(40002));
    h.drain();
    let mut c = Client::new(udp(40004), "bob", "bob-pw");
    c.allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    })
    .assert_ok();
    Client::new(udp(40005), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    h.at(RESERVATION_SECS + 1);
    Client::new(udp(40006), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    // Two credentials of one REST user share its quota.
    let first = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0 + 40, ':');
    let second = auth::mint_rest_credentials(b"north", "carol", 7200, UNIX0 + 40, ':');
    Client::new(udp(40007), &first.username, &first.password)
        .allocate(&mut h)
        .assert_ok();
    Client::new(udp(40008), &second.username, &second.password)
        .allocate(&mut h)
        .assert_ok();
    Client::new(udp(40009), &first.username, &first.password)
        .allocate(&mut h)
        .assert_err(486);
}

#[test]
fn unclaimed_reservation_is_released() {
    let mut h = H::with_ports(config(), 50000, 50001);
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        50000
    );
    let mut c = Client::alice(udp(40001));
    c.allocate(&mut h).assert_err(508);
    h.at(RESERVATION_SECS + 1);
    c.allocate(&mut h).assert_ok();
}

// ------------------------------------------------------------------------------------ REST, SHA-256, USERHASH

fn rest_config(secrets: &[&[u8]]) -> ServerConfig {
    let mut cfg = config();
    for s in secrets {
        cfg.credentials.add_rest_secret(s);
    }
    cfg
}

#[test]
fn rest_credentials_authenticate_until_they_expire() {
    let mut h = H::new(rest_config(&[b"north"]));
    let cred = auth::mint_rest_credentials(b"north", "carol", 100, UNIX0, ':');
    let mut c = Client::new(udp(40000), &cred.username, &cred.password);
    c.allocate(&mut h).assert_ok();
    assert_eq!(h.s.allocation_on(&c.five).unwrap().username, cred.username);
    // A bare-expiry username works too.
    let bare = auth::mint_rest_credentials(b"north", "", 100, UNIX0, ':');
    Client::new(udp(40001), &bare.username, &bare.password)
        .allocate(&mut h)
        .assert_ok();
    // Minted with another secret: 401.
    let wrong = auth::mint_rest_credentials(b"south", "carol", 100, UNIX0, ':');
    Client::new(udp(40002), &wrong.username, &wrong.password)
        .allocate(&mut h)
        .assert_err(401);
    // Expired (minted long ago), and expired by simulated time.
    let old = auth::mint_rest_credentials(b"north", "carol", 100, UNIX0 - 1000, ':');
    Client::new(udp(40003), &old.username, &old.password)
        .allocate(&mut h)
        .assert_err(401);
    h.at(101);
    let mut late = Client::new(udp(40004), &cred.username, &cred.password);
    late.allocate(&mut h).assert_err(401);
    let r = h.s.counters().auth_failures_by_reason;
    assert_eq!((r.wrong_credentials, r.expired), (1, 2));
    // Static users still work alongside.
    Client::alice(udp(40005)).allocate(&mut h).assert_ok();
}

/// Issue 15: REST expiry follows the wall clock given to the engine, not the one read at start
/// plus monotonic time: after an NTP step forward a day, yesterday's credential is refused; after
/// a step back, one minted now (by the real clock) is accepted.
#[test]
fn rest_expiry_follows_wall_clock_steps() {
    let mut h = H::new(rest_config(&[b"north"]));
    let cred = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0, ':');
    Client::new(udp(40000), &cred.username, &cred.password)
        .allocate(&mut h)
        .assert_ok();
    // The wall clock jumps a day ahead while monotonic time moves one second.
    h.at(1);
    h.s.handle_wall_clock(h.now, UNIX0 + 86_400);
    Client::new(udp(40001), &cred.username, &cred.password)
        .allocate(&mut h)
        .assert_err(401);
    // A credential minted by the real (stepped) clock works at once.
    let fresh = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0 + 86_400, ':');
    Client::new(udp(40002), &fresh.username, &fresh.password)
        .allocate(&mut h)
        .assert_ok();
    // Stepped back two days: one minted then is accepted, as the endpoint that minted it would.
    h.s.handle_wall_clock(h.now, UNIX0 - 86_400);
    let back = auth::mint_rest_credentials(b"north", "dave", 60, UNIX0 - 86_400, ':');
    Client::new(udp(40003), &back.username, &back.password)
        .allocate(&mut h)
        .assert_ok();
}

/// Issue 15: a user removed on reload loses its live allocations (revocation), unless
/// `keep_removed_users`; a rotated REST secret cuts nobody (the allocation keeps its key).
#[test]
fn removed_users_lose_their_allocations_on_reload() {
    let mut h = H::new(rest_config(&[b"north"]));
    let (mut alice, mut bob) = (
        Client::alice(udp(40000)),
        Client::new(udp(40001), "bob", "bob-pw"),
    );
    alice.allocate(&mut h).assert_ok();
    bob.allocate(&mut h).assert_ok();
    let cred = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0, ':');
    let mut carol = Client::new(udp(40002), &cred.username, &cred.password);
    carol.allocate(&mut h).assert_ok();
    // Reload: bob is gone from the config, the REST secret rotated.
    let mut credentials = Credentials::new(REALM, ':');
    credentials.add_user("alice", &UserSecret::Password("alice-pw".into()));
    credentials.add_rest_secret(b"south");
    let next = ServerConfig {
        credentials: credentials.clone(),
        ..config()
    };
    h.s.set_config(Arc::new(next));
    assert!(
        h.s.allocation_on(&bob.five).is_none(),
        "bob's allocation ended"
    );
    assert!(h.s.allocation_on(&alice.five).is_some());
    assert!(
        h.s.allocation_on(&carol.five).is_some(),
        "a rotated secret cuts no call"
    );
    alice.refresh(&mut h, None).assert_ok();
    carol.refresh(&mut h, None).assert_ok();

    // With keep_removed_users, a removed user keeps its allocation until it expires.
    let mut h = H::new(config());
    let mut bob = Client::new(udp(40001), "bob", "bob-pw");
    bob.allocate(&mut h).assert_ok();
    h.s.set_config(Arc::new(ServerConfig {
        credentials,
        keep_removed_users: true,
        ..config()
    }));
    assert!(h.s.allocation_on(&bob.five).is_some());
}

/// The same for a user of the user database: the next snapshot without it ends its allocation
/// at the next tick; the snapshot merely going stale (Redis away) ends nothing.
#[test]
fn users_dropped_from_the_user_database_lose_their_allocations() {
    let mut h = H::new(config());
    let db = |users: &[&str]| {
        let mut d = auth::UserDb::new(UNIX0);
        for u in users {
            d.add_user(u, REALM, &UserSecret::Password(format!("{u}-pw")));
        }
        d
    };
    h.shared.userdb.store(db(&["dan", "erin"]), 300);
    h.at(1);
    let mut dan = Client::new(udp(40000), "dan", "dan-pw");
    let mut erin = Client::new(udp(40001), "erin", "erin-pw");
    dan.allocate(&mut h).assert_ok();
    erin.allocate(&mut h).assert_ok();
    h.shared.userdb.store(db(&["erin"]), 300);
    h.at(2);
    assert!(h.s.allocation_on(&dan.five).is_none(), "dan was removed");
    assert!(h.s.allocation_on(&erin.five).is_some());
    // Stale (no new snapshot for longer than its max age): nothing ends.
    h.at(400);
    assert!(h.s.allocation_on(&erin.five).is_some());
}

#[test]
fn rest_with_two_secrets_accepts_either() {
    let mut h = H::new(rest_config(&[b"old-secret", b"new-secret"]));
    for (i, secret) in [&b"old-secret"[..], b"new-secret"].into_iter().enumerate() {
        let cred = auth::mint_rest_credentials(secret, "dave", 3600, UNIX0, ':');
        let mut c = Client::new(udp(40000 + i as u16), &cred.username, &cred.password);
        let r = c.allocate(&mut h);
        r.assert_ok();
        assert!(r.msg().check_integrity(&c.key()));
        c.refresh(&mut h, None).assert_ok();
    }
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.sha256 = true;
    let r = c.allocate(&mut h);
    r.assert_ok();
    let m = r.msg();
    assert!(m.has_integrity_sha256());
    assert!(m.check_integrity_sha256(&auth::key_sha256("alice", REALM, "alice-pw")));
    c.permit(&mut h, peer()).assert_ok();
    assert!(c
        .refresh(&mut h, None)
        .assert_ok()
        .msg()
        .check_integrity_sha256(&c.key()));
    // The wrong password with SHA-256 is 401 too.
    let mut w = Client::new(udp(40001), "alice", "nope");
    w.sha256 = true;
    w.allocate(&mut h).assert_err(401);
    // An unknown PASSWORD-ALGORITHM is 400.
    let mut u = Client::alice(udp(40002));
    u.nonce = Some(h.nonce());
    let r = u.request_once(&mut h, Method::ALLOCATE, &|b| {
        requested_udp(b);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 9, 0, 0]);
    });
    r.assert_err(400);
}

/// RFC 8489 §9.2.4: PASSWORD-ALGORITHM needs PASSWORD-ALGORITHMS exactly as the challenge sent
/// it, so a man in the middle who struck SHA-256 from the list (to force MD5) is caught.
#[test]
fn password_algorithms_must_match_the_challenge() {
    let mut h = H::new(config());
    let key = auth::key_md5("alice", REALM, "alice-pw");
    let nonce = h.nonce();
    let signed = |h: &mut H, port: u16, extra: &dyn Fn(&mut MessageBuilder)| {
        let mut req = Vec::new();
        let mut b = MessageBuilder::new(
            &mut req,
            Method::ALLOCATE,
            Class::Request,
            &[port as u8; 12],
        );
        requested_udp(&mut b);
        extra(&mut b);
        b.attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, &nonce)
            .integrity(&key);
        h.one(udp(port), &req)
    };
    // The list as a downgrading middlebox left it (MD5 only), with MD5 chosen: 400.
    signed(&mut h, 40010, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0]);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_err(400);
    // PASSWORD-ALGORITHM alone, or the list alone: 400.
    signed(&mut h, 40011, &|b| {
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_err(400);
    signed(&mut h, 40012, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
    })
    .assert_err(400);
    // The list as sent, MD5 chosen: fine; neither attribute (MD5, RFC 5389 clients): fine.
    signed(&mut h, 40013, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_ok();
    signed(&mut h, 40014, &|_| {}).assert_ok();
}

#[test]
fn userhash_in_place_of_username() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.userhash = true;
    let r = c.allocate(&mut h);
    r.assert_ok();
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(h.s.allocation_on(&c.five).unwrap().username, "alice");
    c.permit(&mut h, peer()).assert_ok();
    let mut x = Client::new(udp(40001), "nobody", "pw");
    x.userhash = true;
    x.allocate(&mut h).assert_err(401);
}

// ------------------------------------------------------------------------------------ data plane

#[test]
fn send_indication_needs_a_permission() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    let ind = c.send_indication(peer(), b"hello peer");
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_no_permission, 1);
    assert!(h.sent.is_empty());

    let r = c.permit(&mut h, peer());
    r.assert_ok();
    assert!(r.msg().check_integrity(&c.key()));
    let d = h.input(c.five, &ind);
    let ClientDecision::Forward {
        relay,
        peer: to,
        payload,
    } = d
    else {
        panic!("expected Forward, got {d:?}");
    };
    assert_eq!((relay, to), (id, peer()));
    assert_eq!(&ind[payload], b"hello peer");
    // The permission is per IP: another port of the same peer passes.
    let other_port = c.send_indication(sa("203.0.113.5:1"), b"x");
    assert!(matches!(
        h.input(c.five, &other_port),
        ClientDecision::Forward { .. }
    ));
    // Another IP does not.
    let other_ip = c.send_indication(sa("203.0.113.6:9000"), b"x");
    assert_eq!(h.input(c.five, &other_ip), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_no_permission, 2);
    // A Send without DATA or XOR-PEER-ADDRESS, or from a 5-tuple without allocation.
    let mut no_data = Vec::new();
    MessageBuilder::new(&mut no_data, Method::SEND, Class::Indication, &[1; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, &peer());
    h.silent(c.five, &no_data);
    h.silent(udp(40999), &ind);
    // Empty DATA is forwarded as an empty datagram.
    let empty = c.send_indication(peer(), b"");
    let ClientDecision::Forward { payload, .. } = h.input(c.five, &empty) else {
        panic!("empty DATA");
    };
    assert!(payload.is_empty());
    // Counted as relayed: the three forwarded, not the refused or malformed ones.
    assert_eq!(h.s.counters().send_indications, 3);
}

#[test]
fn channel_bind_then_channel_data_forwards() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    // Unbound channel: dropped.
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"early")),
        ClientDecision::Done
    );
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    for len in [0usize, 1, 5, 100, 0xFFFF] {
        let data = vec![0x5A; len];
        let cd = channel_data(0x4000, &data);
        assert_eq!(
            h.input(c.five, &cd),
            ClientDecision::Forward {
                relay: id,
                peer: peer(),
                payload: 4..4 + len
            }
        );
        // Padding after the data (stream transports, or a sloppy UDP sender) is ignored.
        let mut padded = cd.clone();
        padded.extend_from_slice(&[0; 3]);
        assert!(
            matches!(h.input(c.five, &padded), ClientDecision::Forward { payload, .. } if payload == (4..4 + len))
        );
    }
    // The channel installed the permission: Send works too.
    let ind = c.send_indication(peer(), b"x");
    assert!(matches!(
        h.input(c.five, &ind),
        ClientDecision::Forward { .. }
    ));
    // A length beyond the packet, or another channel number.
    h.silent(c.five, &[0x40, 0x00, 0x00, 0x09, 1, 2, 3]);
    h.silent(c.five, &channel_data(0x4001, b"x"));
    assert!(h.sent.is_empty());
}

#[test]
fn peer_data_becomes_a_data_indication() {
    let (mut h, mut c) = allocated(config());
    let (d, _) = h.peer_sends(c.five, peer(), b"too early");
    assert_eq!(d, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 1);
    c.permit(&mut h, peer()).assert_ok();
    for payload in [&b""[..], b"a", b"four", b"hello", &[7u8; 1000]] {
        let (d, buf) = h.peer_sends(c.five, peer(), payload);
        let PeerDecision::Forward { to, frame } = d else {
            panic!("expected Forward, got {d:?}");
        };
        assert_eq!(to, c.five);
        let m = Message::decode(&buf[frame.clone()]).expect("a well-formed Data indication");
        assert_eq!((m.method(), m.class()), (Method::DATA, Class::Indication));
        assert!(!m.is_classic());
        assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer()));
        assert_eq!(m.get(attr::DATA), Some(payload));
        assert_eq!(frame.end, PEER_HEADROOM + payload.len().div_ceil(4) * 4);
    }
    // Not permitted: dropped.
    let (d, _) = h.peer_sends(c.five, sa("203.0.113.6:9000"), b"x");
    assert_eq!(d, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 2);
    let a = h.s.allocation_on(&c.five).unwrap();
    assert_eq!(a.stats.client_sent.packets, 5);
    assert_eq!(a.stats.peer_rcv.packets, 7);
    assert_eq!(h.s.counters().data_indications, 5);
}

#[test]
fn peer_data_to_an_ipv6_allocation() {
    let mut cfg = config();
    cfg.relay_ips.push(RELAY_IP6);
    let mut h = H::new(cfg);
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_ok();
    let p6 = sa("[2001:db8::5]:7000");
    c.permit(&mut h, p6).assert_ok();
    let max = 0xFFFF - 64;
    for len in [0, 3, max] {
        let payload = vec![0xA5; len];
        let (d, buf) = h.peer_sends(c.five, p6, &payload);
        let PeerDecision::Forward { frame, .. } = d else {
            panic!("len {len}: {d:?}");
        };
        assert_eq!(frame.start, 0, "the IPv6 header uses all the headroom");
        let m = Message::decode(&buf[frame]).unwrap();
        assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(p6));
        assert_eq!(m.get(attr::DATA), Some(&payload[..]));
    }
}

#[test]
fn peer_data_on_a_channel_gets_a_channel_data_header() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut h = H::new(config());
        let mut c = Client::alice(five(transport, CLIENT_IP, 40000));
        c.allocate(&mut h).assert_ok();
        c.channel_bind(&mut h, 0x4ABC, peer()).assert_ok();
        for payload in [&b""[..], b"a", b"four", b"hello"] {
            let (d, buf) = h.peer_sends(c.five, peer(), payload);
            let PeerDecision::Forward { to, frame } = d else {
                panic!("{d:?}");
            };
            assert_eq!(to, c.five);
            assert_eq!(frame.start, PEER_HEADROOM - 4);
            let pad = if transport.is_stream() {
                (4 - payload.len() % 4) % 4
            } else {
                0
            };
            assert_eq!(
                frame.len(),
                4 + payload.len() + pad,
                "{transport:?} {payload:?}"
            );
            let f = &buf[frame];
            let cd = ChannelData::decode(f).unwrap();
            assert_eq!((cd.channel, cd.data), (0x4ABC, payload));
            assert!(
                f[4 + payload.len()..].iter().all(|&b| b == 0),
                "padding is zeros"
            );
        }
        // Another peer with only a permission gets Data indications.
        let p2 = sa("203.0.113.5:9999");
        let (d, buf) = h.peer_sends(c.five, p2, b"xyz");
        let PeerDecision::Forward { frame, .. } = d else {
            panic!("{d:?}");
        };
        assert_eq!(
            Message::decode(&buf[frame]).unwrap().get(attr::DATA),
            Some(&b"xyz"[..])
        );
    }
}

#[test]
fn peer_input_with_bad_buffers_is_dropped() {
    let (mut h, mut c) = allocated(config());
    c.permit(&mut h, peer()).assert_ok();
    let id = h.alloc_id(c.five);
    let now = h.now;
    let mut buf = vec![0u8; 200];
    let cases: Vec<Range<usize>> = vec![
        0..10,                                 // no headroom
        PEER_HEADROOM - 1..PEER_HEADROOM + 10, // one byte short
        PEER_HEADROOM..200,                    // no tailroom
        PEER_HEADROOM..197,                    // three bytes of tailroom
        PEER_HEADROOM..500,                    // past the buffer
        Range {
            start: 100,
            end: 60,
        }, // reversed
        PEER_HEADROOM..usize::MAX,             // absurd
        usize::MAX - 1..usize::MAX,            // absurd
    ];
    for r in cases {
        assert_eq!(
            h.s.handle_peer_input(now, id, peer(), &mut buf, r.clone()),
            PeerDecision::Drop,
            "{r:?}"
        );
    }
    // Too big for a Data indication.
    let mut big = vec![0u8; PEER_HEADROOM + 0xFFFF + PEER_TAILROOM];
    let r = PEER_HEADROOM..PEER_HEADROOM + 0xFFFF - 63;
    assert_eq!(
        h.s.handle_peer_input(now, id, peer(), &mut big, r),
        PeerDecision::Drop
    );
    // An id from nowhere.
    let bogus = AllocationId {
        index: 77,
        generation: 3,
    };
    assert_eq!(
        h.s.handle_peer_input(now, bogus, peer(), &mut buf, PEER_HEADROOM..60),
        PeerDecision::Drop
    );
    // The exact minimum works.
    let mut ok = vec![0u8; PEER_HEADROOM + 4 + PEER_TAILROOM];
    assert!(matches!(
        h.s.handle_peer_input(now, id, peer(), &mut ok, PEER_HEADROOM..PEER_HEADROOM + 4),
        PeerDecision::Forward { .. }
    ));
}

// ------------------------------------------------------------------------------------ expiry

#[test]
fn allocation_expires_at_its_lifetime() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let (mut h, c) = allocated(cfg);
    let id = h.alloc_id(c.five);
    let relay = h.relay_of(c.five);
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(600)));
    h.at(599);
    assert!(h.freed.is_empty());
    assert!(h.s.allocation_on(&c.five).is_some());
    h.at(600);
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.s.counters().allocations_expired, 1);
    assert_eq!(h.s.poll_timeout(), None);
    // Its port is free again, and so is alice's quota.
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT) + 1
    );
    assert!(h.shared.ports.take_exact(RELAY_IP, relay.port()));
    h.shared.ports.release(RELAY_IP, relay.port());
    Client::alice(udp(40001)).allocate(&mut h).assert_ok();
    // The old id finds nothing, even though the slot is reused.
    let mut buf = vec![0u8; 64];
    assert_eq!(
        h.s.handle_peer_input(h.now, id, peer(), &mut buf, PEER_HEADROOM..52),
        PeerDecision::Drop
    );
    assert_ne!(h.alloc_id(udp(40001)), id);
}

#[test]
fn refresh_extends_and_poll_timeout_follows() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    h.at(100);
    assert_eq!(
        c.refresh(&mut h, Some(1200)).assert_ok().lifetime(),
        Some(1200)
    );
    // The old deadline may still wake the worker, but frees nothing.
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(600)));
    h.at(600);
    assert!(h.freed.is_empty());
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(1300)));
    // Refresh without LIFETIME: the default.
    h.at(1000);
    assert_eq!(c.refresh(&mut h, None).assert_ok().lifetime(), Some(600));
    h.at(1300);
    assert!(h.freed.is_empty());
    h.at(1599);
    assert!(h.freed.is_empty());
    h.at(1600);
    assert_eq!(h.freed, vec![id]);
}

/// Issue 15: a million Refreshes of one allocation leave one timer entry, not a million
/// (3 M Refreshes grew RSS by 70 MB for an hour), and it still ends on time.
#[test]
fn refreshes_keep_one_timer_entry_per_allocation() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    assert_eq!(h.s.timer_entries(), 1);
    for i in 0..1_000u64 {
        h.now = h.t0 + Duration::from_millis(i);
        c.refresh(&mut h, Some(1200)).assert_ok();
    }
    assert_eq!(h.s.timer_entries(), 1);
    // The entry fires at the first deadline (600 s), finds the later one and moves there.
    h.at(600);
    assert!(h.freed.is_empty());
    assert_eq!(h.s.timer_entries(), 1);
    assert_eq!(
        h.s.poll_timeout(),
        Some(h.t0 + Duration::from_millis(1_200_999))
    );
    h.at(1200);
    assert!(h.freed.is_empty());
    h.at(1201);
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.s.timer_entries(), 0);
}

#[test]
fn refresh_with_lifetime_zero_deletes() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    let r = c.refresh(&mut h, Some(0));
    assert_eq!(r.assert_ok().lifetime(), Some(0));
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    assert_eq!(h.s.counters().allocations_deleted, 1);
    c.refresh(&mut h, None).assert_err(437);
    // And a new allocation on the same 5-tuple is possible.
    c.allocate(&mut h).assert_ok();
}

#[test]
fn permission_expires_after_300s_unless_refreshed() {
    let (mut h, mut c) = allocated(config());
    let p2 = sa("203.0.113.6:9000");
    c.permit(&mut h, peer()).assert_ok();
    c.permit(&mut h, p2).assert_ok();
    h.at(200);
    c.permit(&mut h, p2).assert_ok();
    h.at(299);
    for p in [peer(), p2] {
        let ind = c.send_indication(p, b"x");
        assert!(matches!(
            h.input(c.five, &ind),
            ClientDecision::Forward { .. }
        ));
        assert!(matches!(
            h.peer_sends(c.five, p, b"y").0,
            PeerDecision::Forward { .. }
        ));
    }
    h.at(300);
    let ind = c.send_indication(peer(), b"x");
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.peer_sends(c.five, peer(), b"y").0, PeerDecision::Drop);
    let ind = c.send_indication(p2, b"x");
    assert!(matches!(
        h.input(c.five, &ind),
        ClientDecision::Forward { .. }
    ));
    h.at(500);
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.peer_sends(c.five, p2, b"y").0, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 4);
}

#[test]
fn channel_expires_after_600s_then_quarantine() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &|b| {
        b.attr_u32(attr::LIFETIME, 3600);
    })
    .assert_ok();
    let p2 = sa("203.0.113.6:9000");
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    // Keep the permission alive; the channel is not refreshed.
    h.at(250);
    c.permit(&mut h, peer()).assert_ok();
    h.at(500);
    c.permit(&mut h, peer()).assert_ok();
    h.at(599);
    assert!(matches!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward { .. }
    ));
    let (d, buf) = h.peer_sends(c.five, peer(), b"x");
    let PeerDecision::Forward { frame, .. } = d else {
        panic!()
    };
    assert!(ChannelData::decode(&buf[frame]).is_ok());
    h.at(600);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Done
    );
    // Peer data falls back to Data indications.
    let (d, buf) = h.peer_sends(c.five, peer(), b"x");
    let PeerDecision::Forward { frame, .. } = d else {
        panic!()
    };
    assert!(Message::decode(&buf[frame]).is_ok());
    // Quarantined: neither the number nor the peer may be bound to something else.
    h.at(601);
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400);
    c.channel_bind(&mut h, 0x4001, peer()).assert_err(400);
    h.at(899);
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400);
    h.at(900);
    c.channel_bind(&mut h, 0x4000, p2).assert_ok();
    c.channel_bind(&mut h, 0x4001, peer()).assert_ok();
    let id = h.alloc_id(c.five);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward {
            relay: id,
            peer: p2,
            payload: 4..5
        }
    );
}

#[test]
fn rebinding_the_same_pair_refreshes_the_channel() {
    let (mut h, mut c) = allocated(config());
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    h.at(400);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    c.refresh(&mut h, None).assert_ok();
    h.at(650);
    assert!(matches!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward { .. }
    ));
    h.at(1000);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Done
    );
}

#[test]
fn bandwidth_cap_drops_excess_and_recovers() {
    let mut cfg = config();
    cfg.max_bps = 1000;
    let (mut h, mut c) = allocated(cfg);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    let cd = channel_data(0x4000, &[0; 600]);
    assert!(matches!(
        h.input(c.five, &cd),
        ClientDecision::Forward { .. }
    ));
    assert_eq!(h.input(c.five, &cd), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_bandwidth, 1);
    // The other direction has its own bucket.
    assert!(matches!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Forward { .. }
    ));
    assert_eq!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Drop
    );
    assert_eq!(h.s.counters().dropped_bandwidth, 2);
    h.at_ms(700);
    assert!(matches!(
        h.input(c.five, &cd),
        ClientDecision::Forward { .. }
    ));
    assert!(matches!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Forward { .. }
    ));
    let a = h.s.allocation_on(&c.five).unwrap();
    assert_eq!(a.stats.dropped.packets, 2);
    assert_eq!(a.stats.peer_sent.bytes, 1200);
}

#[test]
fn transport_closed_frees_the_allocation() {
    let mut h = H::new(config());
    let mut c = Client::alice(tcp(40000));
    c.allocate(&mut h).assert_ok();
    let id = h.alloc_id(c.five);
    h.s.handle_transport_closed(tcp(40001)); // someone else's connection
    h.drain();
    assert!(h.freed.is_empty());
    h.s.handle_transport_closed(c.five);
    h.drain();
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT) + 1
    );
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    assert_eq!(h.s.counters().allocations_deleted, 1);
    // Twice is harmless.
    h.s.handle_transport_closed(c.five);
    h.drain();
    assert_eq!(h.freed.len(), 1);
    // The timer that was set for it frees nothing later.
    h.at(600);
    assert_eq!(h.freed.len(), 1);
}

#[test]
fn no_auth_mode_allocates_without_credentials() {
    let mut cfg = config();
    cfg.no_auth = true;
    let mut h = H::new(cfg);
    let c = udp(40000);
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Request, &[1; 12]);
    requested_udp(&mut b);
    let r = h.one(c, &out);
    r.assert_ok();
    assert!(!r.msg().has_integrity());
}

// ------------------------------------------------------------------------------------ mutation

/// xorshift64: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A byte-level mutation of a valid message.
fn mutate(rng: &mut Rng, mut m: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(3) {
        match rng.below(9) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => m.truncate(rng.below(m.len() + 1)),
            3 => {
                let n = rng.below(16);
                m.extend(rng.bytes(n));
            }
            4 if m.len() >= 24 => {
                // An attribute length field somewhere in the message.
                let i = 20 + rng.below((m.len() - 20) / 4) * 4 + 2;
                if i + 1 < m.len() {
                    m[i..i + 2].copy_from_slice(&(rng.next() as u16 % 64).to_be_bytes());
                }
            }
            5 if m.len() >= 20 => {
                // Insert a random attribute and fix the header length.
                let ty = [
                    0x0031,
                    0x8031,
                    attr::LIFETIME,
                    attr::DATA,
                    attr::XOR_PEER_ADDRESS,
                    rng.next() as u16,
                ][rng.below(6)];
                let len = rng.below(24);
                let mut tlv = ty.to_be_bytes().to_vec();
                tlv.extend_from_slice(&(len as u16).to_be_bytes());
                tlv.extend(rng.bytes((len + 3) & !3));
                let at = 20 + rng.below((m.len() - 20) / 4 + 1) * 4;
                let at = at.min(m.len());
                m.splice(at..at, tlv);
                let body = (m.len() - 20) as u16;
                m[2..4].copy_from_slice(&body.to_be_bytes());
            }
            6 if m.len() >= 4 => {
                let body = (m.len().saturating_sub(20) as u16)
                    .wrapping_add(rng.below(9) as u16)
                    .wrapping_sub(4);
                m[2..4].copy_from_slice(&body.to_be_bytes());
            }
            7 if !m.is_empty() => m[0] = [0x00, 0x01, 0x40, 0x4F, 0x80, 0x16][rng.below(6)],
            _ => {
                let n = rng.below(m.len() + 1);
                let dup = m[..n].to_vec();
                m.extend(dup);
            }
        }
    }
    m
}

/// A request with random attributes, signed with valid credentials: it passes authentication,
/// so the handlers behind it see the strange values.
fn structured(rng: &mut Rng, c: &mut Client) -> Vec<u8> {
    let methods = [
        Method::ALLOCATE,
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
        Method::BINDING,
        Method::SEND,
        Method(rng.next() as u16 & 0x0FFF),
    ];
    let method = methods[rng.below(methods.len())];
    let class = if method == Method::SEND {
        Class::Indication
    } else {
        Class::Request
    };
    let types = [
        attr::REQUESTED_TRANSPORT,
        attr::LIFETIME,
        attr::XOR_PEER_ADDRESS,
        attr::CHANNEL_NUMBER,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
        attr::DONT_FRAGMENT,
        attr::DATA,
        attr::PASSWORD_ALGORITHM,
        attr::SOFTWARE,
    ];
    let mut picks: Vec<(u16, Vec<u8>, bool)> = Vec::new();
    for _ in 0..rng.below(7) {
        let ty = types[rng.below(types.len())];
        let v = match rng.below(4) {
            0 => {
                let n = rng.below(40);
                rng.bytes(n)
            }
            1 => vec![[17u8, 6, 1, 2, 0x80, 0][rng.below(6)], 0, 0, 0],
            2 => rng.bytes(4),
            _ => rng.bytes(8),
        };
        picks.push((ty, v, rng.below(3) == 0));
    }
    let peers = [
        peer(),
        sa("127.0.0.1:1"),
        sa("[2001:db8::1]:2"),
        sa("203.0.113.9:3"),
    ];
    let peer = peers[rng.below(peers.len())];
    let number = [0x4000u16, 0x4001, 0x3FFF, 0x5000, rng.next() as u16][rng.below(5)];
    let well_formed = rng.below(2) == 0;
    let auth = rng.below(8) != 0;
    c.fingerprint = rng.below(3) == 0;
    c.sha256 = rng.below(4) == 0;
    let tid = c.next_tid();
    c.build(
        method,
        class,
        &tid,
        &|b| {
            if well_formed {
                requested_udp(b);
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
                b.attr(
                    attr::CHANNEL_NUMBER,
                    &[(number >> 8) as u8, number as u8, 0, 0],
                );
            }
            for (ty, v, xor) in &picks {
                if *xor && v.len() == 8 {
                    b.xor_address(*ty, &peer);
                } else {
                    b.attr(*ty, v);
                }
            }
        },
        auth,
    )
}

#[test]
fn mutated_requests_never_panic_and_a_good_client_keeps_relaying() {
    let mut h = H::with_ports(config(), 50000, 50063);
    let mut good = Client::alice(udp(40000));
    good.allocate_with(&mut h, &|b| {
        b.attr_u32(attr::LIFETIME, 3600);
    })
    .assert_ok();
    good.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    good.permit(&mut h, peer()).assert_ok();
    let nonce = good.nonce.clone();

    // Valid requests of every kind, from the good client's credentials, to mutate.
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut proto = Client::alice(udp(41000));
    proto.nonce = nonce.clone();
    for fp in [false, true] {
        proto.fingerprint = fp;
        let fills: [Fill; 6] = [
            &requested_udp,
            &|b| {
                requested_udp(b);
                b.attr(attr::EVEN_PORT, &[0x80]);
                b.attr_u32(attr::LIFETIME, 1200);
                b.attr(attr::DONT_FRAGMENT, &[]);
            },
            &|b| {
                b.attr_u32(attr::LIFETIME, 0);
            },
            &|b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
            },
            &|b| {
                b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
            },
            &|b| {
                b.attr(attr::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8]);
                requested_udp(b);
            },
        ];
        let methods = [
            Method::ALLOCATE,
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
            Method::ALLOCATE,
        ];
        for (m, f) in methods.into_iter().zip(fills) {
            let tid = proto.next_tid();
            seeds.push(proto.build(m, Class::Request, &tid, f, true));
            seeds.push(proto.build(m, Class::Request, &tid, f, false));
        }
        seeds.push(binding_request(&[1; 12], &|b| {
            b.fingerprint();
        }));
        seeds.push(proto.send_indication(peer(), b"payload"));
        seeds.push(channel_data(0x4000, b"channel payload"));
    }
    let mut classic = vec![0x00, 0x01, 0x00, 0x00];
    classic.extend_from_slice(&[0x55; 16]);
    seeds.push(classic);

    // Clients the noise comes from (never the good one's 5-tuple).
    let tuples: Vec<FiveTuple> = (0..6)
        .map(|i| {
            let t = if i % 2 == 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            five(t, CLIENT_IP, 42000 + i)
        })
        .collect();
    let mut noisy: Vec<Client> = tuples
        .iter()
        .map(|&t| {
            let mut c = Client::alice(t);
            c.nonce = nonce.clone();
            c
        })
        .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ms = 0u64;
    let mut responses = 0usize;
    for _ in 0..6000 {
        h.fail_binds = u32::from(rng.below(10) == 0);
        match rng.below(10) {
            0..=5 => {
                let seed = seeds[rng.below(seeds.len())].clone();
                let m = mutate(&mut rng, seed);
                let t = tuples[rng.below(tuples.len())];
                let _ = h.input(t, &m);
            }
            6 | 7 => {
                let i = rng.below(noisy.len());
                let m = structured(&mut rng, &mut noisy[i]);
                let _ = h.input(noisy[i].five, &m);
            }
            8 => {
                if let Some(&(id, _)) = h.binds.get(rng.below(h.binds.len())) {
                    let len = rng.below(300);
                    let mut buf = rng.bytes(len);
                    let a = rng.below(len + 8);
                    let b = rng.below(len + 8);
                    let peers = [peer(), sa("203.0.113.9:3"), sa("[2001:db8::1]:2")];
                    let p = peers[rng.below(peers.len())];
                    let d =
                        h.s.handle_peer_input(h.now, id, p, &mut buf, a.min(b)..a.max(b));
                    if let PeerDecision::Forward { frame, .. } = d {
                        assert!(frame.end <= buf.len());
                    }
                }
            }
            _ => {
                ms += rng.below(100) as u64;
                h.at_ms(ms);
                if rng.below(20) == 0 {
                    let t = tuples[rng.below(tuples.len())];
                    h.s.handle_transport_closed(t);
                    h.drain();
                }
            }
        }
        // Everything the engine says decodes.
        for (_, data) in h.sent.drain(..) {
            Resp::parse(data);
            responses += 1;
        }
    }
    assert!(
        responses > 500,
        "the noise should reach the handlers ({responses} responses)"
    );
    assert!(
        h.binds.len() > 10,
        "some noise should allocate ({} binds)",
        h.binds.len()
    );

    // The good client is unharmed.
    let id = h.alloc_id(good.five);
    let ind = good.send_indication(peer(), b"still here");
    assert!(
        matches!(h.input(good.five, &ind), ClientDecision::Forward { relay, .. } if relay == id)
    );
    assert_eq!(
        h.input(good.five, &channel_data(0x4000, b"abc")),
        ClientDecision::Forward {
            relay: id,
            peer: peer(),
            payload: 4..7
        }
    );
    let (d, buf) = h.peer_sends(good.five, peer(), b"back");
    let PeerDecision::Forward { to, frame } = d else {
        panic!("{d:?}");
    };
    assert_eq!(to, good.five);
    assert_eq!(ChannelData::decode(&buf[frame]).unwrap().data, b"back");
    good.refresh(&mut h, None).assert_ok();
    good.permit(&mut h, sa("203.0.113.9:3")).assert_ok();
}

#[test]
fn requests_after_the_lifetime_find_no_allocation_even_before_the_timer_runs() {
    // The worker's timer may fire late (a busy loop, a batch of packets first): a request that
    // arrives after the lifetime must not revive the allocation.
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    h.now = h.t0 + Duration::from_secs(600); // no handle_timeout
    c.refresh(&mut h, None).assert_err(437);
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.s.counters().allocations_expired, 1);
    // The timer firing afterwards frees nothing twice.
    h.at(601);
    assert_eq!(h.freed, vec![id]);
    // And a new Allocate on the same 5-tuple succeeds instead of 437.
    c.allocate(&mut h).assert_ok();
}

#[test]
fn permission_and_channel_caps_are_508() {
    let mut cfg = config();
    cfg.max_permissions = 2;
    cfg.max_channels = 1;
    let (mut h, mut c) = allocated(cfg);
    c.permit(&mut h, sa("203.0.113.1:1")).assert_ok();
    c.permit(&mut h, sa("203.0.113.2:1")).assert_ok();
    c.permit(&mut h, sa("203.0.113.2:2")).assert_ok(); // same IP: a refresh
    c.permit(&mut h, sa("203.0.113.3:1")).assert_err(508);
    c.channel_bind(&mut h, 0x4000, sa("203.0.113.1:1"))
        .assert_ok();
    c.channel_bind(&mut h, 0x4001, sa("203.0.113.2:1"))
        .assert_err(508);
    // Expired permissions make room.
    h.at(300);
    c.permit(&mut h, sa("203.0.113.3:1")).assert_ok();
}

/// Issue 15: a CreatePermission naming more peers than the cap is refused before any work, and
/// one naming the same peer many times counts it once.
#[test]
fn create_permission_with_many_peers_is_capped_and_deduplicated() {
    let mut cfg = config();
    cfg.max_permissions = 4;
    let (mut h, mut c) = allocated(cfg);
    let many: Vec<SocketAddr> = (0..5u8)
        .map(|i| SocketAddr::from(([203, 0, 113, 10 + i], 1)))
        .collect();
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for p in &many {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    })
    .assert_err(508);
    let id = h.alloc_id(c.five);
    assert!(h.s.get(id).unwrap().permissions.is_empty(h.now));
    // The same four addresses, each named (with other ports) -- 4 distinct IPs, 4 attributes.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for p in &many[..4] {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    })
    .assert_ok();
    assert_eq!(h.s.get(id).unwrap().permissions.len(h.now), 4);
    // One IP named four times is one permission: it fits beside... nothing more, but refreshes.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for port in 1..=4 {
            b.xor_address(
                attr::XOR_PEER_ADDRESS,
                &SocketAddr::from(([203, 0, 113, 10], port)),
            );
        }
    })
    .assert_ok();
    assert_eq!(h.s.get(id).unwrap().permissions.len(h.now), 4);
}

#[test]
fn dont_fragment_reaches_the_bind_command() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.nonce = Some(h.nonce());
    let tid = c.next_tid();
    let req = c.build(
        Method::ALLOCATE,
        Class::Request,
        &tid,
        &|b| {
            requested_udp(b);
            b.attr(attr::DONT_FRAGMENT, &[]);
        },
        true,
    );
    h.s.handle_client_input(h.now, c.five, &req);
    let Some(Command::BindRelay { dont_fragment, .. }) = h.s.poll_command() else {
        panic!("expected BindRelay");
    };
    assert!(dont_fragment);
    // While the relay binds, a retransmission is not answered twice and makes no second relay.
    h.s.handle_client_input(h.now, c.five, &req);
    assert_eq!(h.s.poll_command(), None);
}

#[test]
fn even_port_with_reservation_survives_a_busy_port() {
    // turnutils_uclient asks for EVEN-PORT with the R bit; a port held by another process must
    // not turn that into 508: another even port is tried, and the reservation follows it.
    let mut h = H::new(config());
    h.fail_binds = 2;
    let r = Client::alice(udp(40010)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    assert_eq!(h.binds.len(), 3, "two failed binds, then one that worked");
    assert!(h.binds.iter().all(|(_, a)| a.port() % 2 == 0));
    let token = r.get(attr::RESERVATION_TOKEN).expect("token").to_vec();
    // The failed ports and their reserved successors went back to the pool.
    for (_, a) in &h.binds[..2] {
        assert!(h.shared.ports.take_exact(RELAY_IP, a.port()));
        assert!(h.shared.ports.take_exact(RELAY_IP, a.port() + 1));
    }
    let r = Client::alice(udp(40011)).allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        port + 1
    );
}

#[test]
fn bps_capacity_caps_the_whole_server() {
    // Two allocations, no per-allocation cap, 1000 bytes/s for the engine in all.
    let mut h = H::new(ServerConfig {
        bps_capacity: 1000,
        ..config()
    });
    let mut a = Client::alice(udp(41000));
    let mut b = Client::alice(udp(41001));
    for c in [&mut a, &mut b] {
        c.allocate(&mut h).assert_ok();
        c.permit(&mut h, peer()).assert_ok();
    }
    let data = [7u8; 400];
    let si_a = a.send_indication(peer(), &data);
    let si_b = b.send_indication(peer(), &data);
    assert!(matches!(
        h.input(udp(41000), &si_a),
        ClientDecision::Forward { .. }
    ));
    assert!(matches!(
        h.input(udp(41001), &si_b),
        ClientDecision::Forward { .. }
    ));
    // 800 of 1000 bytes used: the third 400-byte packet, from either client, is dropped.
    assert_eq!(h.input(udp(41000), &si_a), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_bandwidth, 1);
    // A second later the bucket has refilled.
    h.at(1);
    assert!(matches!(
        h.input(udp(41001), &si_b),
        ClientDecision::Forward { .. }
    ));
}

mod dual;
#[test]
fn alternate_servers_redirect_every_allocate_round_robin_never_to_self() {
    let alt = |s: &str| -> SocketAddr { sa(s) };
    let cfg = ServerConfig {
        // The node's own address is in the list (a shared config): it is skipped.
        alternate_servers: vec![
            alt("192.0.2.10:3478"),
            alt(SERVER_ADDR),
            alt("192.0.2.11:3478"),
        ],
        tls_alternate_servers: vec![alt("192.0.2.20:5349")],
        ..config()
    };
    let mut h = H::new(cfg);
    let mut seen = Vec::new();
    for port in 0..4 {
        let mut c = Client::alice(udp(42000 + port));
        let r = c.allocate(&mut h);
        r.assert_err(300);
        assert!(r.msg().has_integrity(), "the 300 is signed (RFC 8489 §10)");
        seen.push(
            r.get(attr::ALTERNATE_SERVER)
                .and_then(attr::read_address)
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![
            alt("192.0.2.10:3478"),
            alt("192.0.2.11:3478"),
            alt("192.0.2.10:3478"),
            alt("192.0.2.11:3478")
        ]
    );
    let mut t = Client::alice(five(Transport::Tls, CLIENT_IP, 42100));
    let r = t.allocate(&mut h);
    r.assert_err(300);
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(alt("192.0.2.20:5349"))
    );
    // A list naming only this node redirects nothing; a bad password is still a 401.
    let mut h = H::new(ServerConfig {
        alternate_servers: vec![alt(SERVER_ADDR)],
        ..config()
    });
    Client::alice(udp(42200)).allocate(&mut h).assert_ok();
    Client::new(udp(42201), "alice", "wrong")
        .allocate(&mut h)
        .assert_err(401);
}

#[test]
fn draining_node_redirects_to_its_least_loaded_fresh_fleet_peer_once() {
    let mut h = H::new(config());
    let peer = sa("192.0.2.30:3478");
    h.shared.fleet_peers.store(
        UNIX0,
        vec![
            fleet_peer("192.0.2.30:3478", 0, true),
            fleet_peer("192.0.2.31:3478", 1, true),
        ],
    );
    // Not draining: no redirect, whatever the fleet says.
    Client::alice(udp(43000)).allocate(&mut h).assert_ok();
    h.s.set_draining(true);
    let r = Client::alice(udp(43001)).allocate(&mut h);
    r.assert_err(300);
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(peer)
    );
    // TLS clients cannot be sent to a UDP/TCP address: 403.
    Client::alice(five(Transport::Tls, CLIENT_IP, 43002))
        .allocate(&mut h)
        .assert_err(403);
    // A fleet view older than its maximum age is not used: 403.
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    Client::alice(udp(43003)).allocate(&mut h).assert_err(403);
}

#[test]
fn fleet_counts_join_the_user_and_total_quotas_while_fresh() {
    let mut h = H::new(ServerConfig {
        user_quota: 2,
        total_quota: 3,
        ..config()
    });
    // The other nodes hold one allocation of alice and one of carol.
    h.shared.fleet_usage.store(
        UNIX0,
        HashMap::from([("alice".to_owned(), 1), ("carol".to_owned(), 1)]),
    );
    Client::alice(udp(45000)).allocate(&mut h).assert_ok();
    // alice: 1 here + 1 elsewhere = her quota of 2.
    Client::alice(udp(45001)).allocate(&mut h).assert_err(486);
    // The realm: 1 here + 2 elsewhere = the total quota of 3, whoever asks.
    Client::new(udp(45002), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 1);
    // The fleet count goes stale (Redis away): each node counts its own.
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    Client::new(udp(45003), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    Client::alice(udp(45004)).allocate(&mut h).assert_ok();
    Client::new(udp(45005), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
}

fn fleet_peer(addr: &str, allocations: u64, takes_load: bool) -> FleetPeer {
    FleetPeer {
        addr: sa(addr),
        allocations,
        takes_load,
    }
}

#[test]
fn loaded_node_redirects_to_a_less_loaded_peer_under_its_threshold_once_per_client() {
    let mut h = H::new(ServerConfig {
        redirect_over_allocations: 2,
        ..config()
    });
    let (busy, calm) = ("192.0.2.30:3478", "192.0.2.31:3478");
    h.shared.fleet_peers.store(
        UNIX0,
        vec![fleet_peer(calm, 0, true), fleet_peer(busy, 1, false)],
    );
    let client = |last: u8, port: u16| {
        Client::alice(five(
            Transport::Udp,
            IpAddr::from([198, 51, 100, last]),
            port,
        ))
    };
    // Under the threshold: served here, whatever the fleet says.
    client(1, 44000).allocate(&mut h).assert_ok();
    client(1, 44001).allocate(&mut h).assert_ok();
    // Holding 2: a new client goes to the calm peer (the busy one is over its own threshold),
    // signed; nothing is allocated here.
    let r = client(2, 44002).allocate(&mut h);
    r.assert_err(300);
    assert!(r.msg().has_integrity());
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(sa(calm))
    );
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
    // The same client back (from another port, as after a bounce): served here, not sent
    // away twice.
    client(2, 44003).allocate(&mut h).assert_ok();
    // TLS clients cannot be sent to a UDP/TCP address: served here.
    Client::alice(five(Transport::Tls, IpAddr::from([198, 51, 100, 3]), 44004))
        .allocate(&mut h)
        .assert_ok();
    // Holding 4, a peer over its own threshold is never chosen, even when it holds fewer.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(busy, 1, false)]);
    client(4, 44005).allocate(&mut h).assert_ok();
    // A peer that takes load but holds as many as this node is not less loaded.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(calm, 5, true)]);
    client(5, 44006).allocate(&mut h).assert_ok();
    // A fleet view older than its maximum age is not used.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(calm, 0, true)]);
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    client(6, 44007).allocate(&mut h).assert_ok();
    // A fresh one is; and after the memory expires, client 2 may be sent away again.
    let later = UNIX0 + auth::FLEET_USAGE_MAX_AGE + 1;
    h.shared
        .fleet_peers
        .store(later, vec![fleet_peer(calm, 0, true)]);
    client(7, 44008).allocate(&mut h).assert_err(300);
    h.shared
        .fleet_peers
        .store(UNIX0 + REDIRECT_MEMORY, vec![fleet_peer(calm, 0, true)]);
    h.at(REDIRECT_MEMORY);
    client(2, 44009).allocate(&mut h).assert_err(300);
}

mod hardening;
mod props;
mod tcp;
