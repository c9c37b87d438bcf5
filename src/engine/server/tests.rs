//! Engine tests on simulated time: one `Instant` taken at the start is t0, and every input is given
//! t0 plus a `Duration`; nothing sleeps. A small harness plays the worker (drains commands, answers
//! `BindRelay`) and a client (long-term credentials, 401 → retry with the server's NONCE, 438 → retry
//! with the fresh one), and decodes every response with [`Message::decode`].

use super::*;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::engine::auth::{self, UserSecret};
use crate::engine::policy::IpRange;
use crate::engine::redirect::{FleetPeer, REDIRECT_MEMORY};
use crate::engine::{ClientAddr, Transport};

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
        client: ClientAddr::new(SocketAddr::new(ip, port)),
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
        let shared = Arc::new(Shared::new(min, max, [7; 32], std::time::Instant::now()));
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
                    self.binds.push((id, addr.addr()));
                    let r = if self.fail_binds > 0 {
                        self.fail_binds -= 1;
                        Bind::Failed
                    } else {
                        Bind::Bound
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
        self.s.allocation_on(&five).expect("an allocation").id()
    }

    fn relay_of(&self, five: FiveTuple) -> SocketAddr {
        self.s
            .allocation_on(&five)
            .expect("an allocation")
            .relay()
            .addr()
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
            PeerAddr::new(peer),
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
    // Any number, bindable or not: the tests send out-of-range ones too.
    let mut out = number.to_be_bytes().to_vec();
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
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

/// REST credentials (`--use-auth-secret`) with these secrets.
fn rest_config(secrets: &[&[u8]]) -> ServerConfig {
    let mut cfg = config();
    for s in secrets {
        cfg.credentials.add_rest_secret(s);
    }
    cfg
}

mod allocate;
mod binding;
mod credentials;
mod data;
mod dual;
mod fastpath;
mod hardening;
mod lifetimes;
mod limits;
mod mutation;
mod props;
mod publish;
mod redirect;
mod tcp;
