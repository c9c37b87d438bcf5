//! One TURN client session of the harness, set up with blocking sockets: Allocate (answering the
//! 401 challenge with long-term or TURN REST credentials, and a 438 with the fresh nonce), then a
//! ChannelBind or CreatePermission towards the peer (RFC 8656 §7, §9, §11, §12).
//!
//! UDP requests are retransmitted (RFC 8489 §6.2.1, shortened: 5 tries 500 ms apart on a LAN);
//! TCP requests are sent once and framed with [`crate::proto::framing`]. Once set up, a session's
//! socket is handed to the load loop ([`super::load`]), which makes it non-blocking.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

use crate::engine::auth::{key_md5, mint_rest_credentials};
use crate::proto::{attr, framing, Class, Message, MessageBuilder, Method, TransactionId};

/// How a client authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credentials (a server with `--no-auth`).
    None,
    /// `-u USER -w PASSWORD`.
    LongTerm { user: String, password: String },
    /// `-u USER -W SECRET`: credentials minted as `expiry SEP user` (coturn's REST scheme).
    Rest {
        user: String,
        secret: String,
        separator: char,
    },
}

/// What a session asks of the server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub server: SocketAddr,
    pub tcp: bool,
    pub auth: Auth,
    pub dont_fragment: bool,
    /// REQUESTED-ADDRESS-FAMILY (`-X` IPv4, `-x` IPv6).
    pub family: Option<u8>,
    /// Socket buffer size for client sockets (0 = kernel default).
    pub sock_buf: usize,
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("no answer to {0}")]
    Timeout(&'static str),
    #[error("{method} refused: {code} {reason}")]
    Rejected {
        method: &'static str,
        code: u16,
        reason: String,
    },
    #[error("the server asks for credentials: give -u and -w (or -W)")]
    NeedCredentials,
    /// `what` names the missing or broken piece and describes the answer (class, error code,
    /// attribute types, length), so a rare failure under load can be read from one line.
    #[error("malformed answer to {method}: {what}")]
    Malformed { method: &'static str, what: String },
}

/// A client's socket to the server.
#[derive(Debug)]
pub enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Udp(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }
}

impl Conn {
    pub fn is_tcp(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Udp(s) => s.set_nonblocking(on),
            Conn::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

struct Creds {
    username: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// A set-up TURN session.
pub struct Session {
    pub conn: Conn,
    /// XOR-RELAYED-ADDRESS of the allocation.
    pub relay: SocketAddr,
    /// The channel bound to the peer, or None when Send indications are used.
    pub channel: Option<u16>,
    pub peer: Option<SocketAddr>,
    creds: Option<Creds>,
    tid: u64,
    id: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("relay", &self.relay)
            .field("channel", &self.channel)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

const UDP_RTO: Duration = Duration::from_millis(500);
const UDP_TRIES: u32 = 5;
/// Attempts of one request: the first, after a 401 challenge, after a 438 stale nonce.
const ATTEMPTS: u32 = 3;
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::ALLOCATE => "Allocate",
        Method::CHANNEL_BIND => "ChannelBind",
        Method::CREATE_PERMISSION => "CreatePermission",
        Method::REFRESH => "Refresh",
        _ => "request",
    }
}

/// The attributes of the harness's Allocate request.
fn fill_allocate(cfg: &SessionConfig, b: &mut MessageBuilder<'_>) {
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    if let Some(f) = cfg.family {
        b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[f, 0, 0, 0]);
    }
    if cfg.dont_fragment {
        b.attr(attr::DONT_FRAGMENT, &[]);
    }
}

/// One Allocate in flight in [`allocate_pipelined`].
struct Pending {
    session: Session,
    tid: TransactionId,
    req: Vec<u8>,
    attempt: u32,
    tries: u32,
    sent: Instant,
}

/// Allocate sessions `ids` over UDP from one thread with up to `window` Allocates in flight
/// (non-blocking sockets on one epoll set), so that a flood of allocations measures the server
/// rather than the client's round trips. Retransmits as [`Session::allocate`] does; results in
/// the order of `ids`, each session's socket back in blocking mode.
pub fn allocate_pipelined(
    cfg: &SessionConfig,
    ids: std::ops::Range<u32>,
    window: usize,
) -> Vec<Result<Session, SetupError>> {
    let first = ids.start;
    let mut out: Vec<Option<Result<Session, SetupError>>> = ids.clone().map(|_| None).collect();
    let epoll = match crate::sys::Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            let kind = e.kind();
            return ids
                .map(|_| Err(SetupError::Io(io::Error::new(kind, e.to_string()))))
                .collect();
        }
    };
    let mut pending: std::collections::HashMap<u32, Pending> = Default::default();
    let mut next = ids.start;
    let mut events = crate::sys::Events::with_capacity(256);
    let mut buf = [0u8; 2048];
    while next < ids.end || !pending.is_empty() {
        // Keep the window full.
        while next < ids.end && pending.len() < window.max(1) {
            let id = next;
            next += 1;
            let start = connect(cfg).and_then(|conn| {
                conn.set_nonblocking(true)?;
                epoll.add(&conn, u64::from(id), crate::sys::Trigger::Level)?;
                let mut session = Session::new(conn, id);
                let (tid, req) = session.request(Method::ALLOCATE, &|b| fill_allocate(cfg, b));
                if let Conn::Udp(s) = &session.conn {
                    send_ignoring_full(s, &req)?;
                }
                Ok(Pending {
                    session,
                    tid,
                    req,
                    attempt: 0,
                    tries: 1,
                    sent: Instant::now(),
                })
            });
            match start {
                Ok(p) => {
                    pending.insert(id, p);
                }
                Err(e) => out[(id - first) as usize] = Some(Err(e.into())),
            }
        }
        if let Err(e) = epoll.wait(&mut events, 10) {
            eprintln!("vigi-bench: epoll: {e}");
        }
        for id in events.tokens().map(|t| t as u32) {
            let Some(mut p) = pending.remove(&id) else {
                continue;
            };
            let mut verdict: Option<Result<bool, SetupError>> = None;
            if let Conn::Udp(s) = &p.session.conn {
                loop {
                    let n = match s.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => {
                            verdict = Some(Err(e.into()));
                            break;
                        }
                    };
                    let matches = Message::decode(&buf[..n])
                        .map(|m| m.transaction_id() == &p.tid)
                        .unwrap_or(false);
                    if matches {
                        let resp = buf[..n].to_vec();
                        verdict =
                            Some(p.session.judge(cfg, "Allocate", &resp, p.attempt).and_then(
                                |ok| {
                                    if ok {
                                        p.session.set_relay(&resp)?;
                                    }
                                    Ok(ok)
                                },
                            ));
                        break;
                    }
                }
            }
            match verdict {
                None => {
                    pending.insert(id, p);
                }
                Some(Ok(false)) => {
                    // Challenged (401) or stale nonce (438): again, with credentials.
                    let (tid, req) = p
                        .session
                        .request(Method::ALLOCATE, &|b| fill_allocate(cfg, b));
                    let sent = match &p.session.conn {
                        Conn::Udp(s) => send_ignoring_full(s, &req),
                        Conn::Tcp(_) => Ok(()),
                    };
                    match sent {
                        Ok(()) => {
                            p.tid = tid;
                            p.req = req;
                            p.attempt += 1;
                            p.tries = 1;
                            p.sent = Instant::now();
                            pending.insert(id, p);
                        }
                        Err(e) => out[(id - first) as usize] = Some(Err(e.into())),
                    }
                }
                Some(Ok(true)) => {
                    let r = epoll
                        .delete(&p.session.conn)
                        .and_then(|()| p.session.conn.set_nonblocking(false))
                        .map(|()| p.session)
                        .map_err(SetupError::from);
                    out[(id - first) as usize] = Some(r);
                }
                Some(Err(e)) => out[(id - first) as usize] = Some(Err(e)),
            }
        }
        // Retransmit what timed out (RFC 8489 §6.2.1, shortened as in `exchange`).
        let now = Instant::now();
        let mut expired = Vec::new();
        for (&id, p) in pending.iter_mut() {
            if now.duration_since(p.sent) < UDP_RTO {
                continue;
            }
            if p.tries >= UDP_TRIES {
                expired.push(id);
                continue;
            }
            if let Conn::Udp(s) = &p.session.conn {
                let _ = send_ignoring_full(s, &p.req);
            }
            p.tries += 1;
            p.sent = now;
        }
        for id in expired {
            pending.remove(&id);
            out[(id - first) as usize] = Some(Err(SetupError::Timeout("Allocate")));
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Err(SetupError::Timeout("Allocate"))))
        .collect()
}

/// Send a datagram; a full socket buffer counts as a loss that retransmission repairs.
fn send_ignoring_full(s: &UdpSocket, req: &[u8]) -> io::Result<()> {
    match s.send(req) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Open the client socket of session `id`.
pub fn connect(cfg: &SessionConfig) -> io::Result<Conn> {
    let domain = Domain::for_address(cfg.server);
    if cfg.tcp {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        s.set_nodelay(true)?;
        if cfg.sock_buf > 0 {
            let _ = s.set_recv_buffer_size(cfg.sock_buf);
            let _ = s.set_send_buffer_size(cfg.sock_buf);
        }
        s.connect_timeout(&cfg.server.into(), TCP_TIMEOUT)?;
        Ok(Conn::Tcp(s.into()))
    } else {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if cfg.sock_buf > 0 {
            let _ = s.set_recv_buffer_size(cfg.sock_buf);
            let _ = s.set_send_buffer_size(cfg.sock_buf);
        }
        let any: SocketAddr = match cfg.server.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        s.bind(&any.into())?;
        s.connect(&cfg.server.into())?;
        Ok(Conn::Udp(s.into()))
    }
}

impl Session {
    /// Connect and allocate a relay (RFC 8656 §7.1-7.3).
    pub fn allocate(cfg: &SessionConfig, id: u32) -> Result<Session, SetupError> {
        let mut s = Session::new(connect(cfg)?, id);
        let resp = s.transact(cfg, Method::ALLOCATE, &|b| fill_allocate(cfg, b))?;
        s.set_relay(&resp)?;
        Ok(s)
    }

    fn new(conn: Conn, id: u32) -> Session {
        Session {
            conn,
            relay: SocketAddr::from(([0, 0, 0, 0], 0)),
            channel: None,
            peer: None,
            creds: None,
            tid: 0,
            id,
            rx: Vec::new(),
        }
    }

    fn set_relay(&mut self, allocate_success: &[u8]) -> Result<(), SetupError> {
        let m = Message::decode(allocate_success)
            .map_err(|e| malformed("Allocate", allocate_success, &format!("{e}")))?;
        self.relay = m
            .get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .ok_or_else(|| malformed("Allocate", allocate_success, "no XOR-RELAYED-ADDRESS"))?;
        Ok(())
    }

    /// Bind `channel` to `peer` (RFC 8656 §11), or with `channel` None install a permission for
    /// Send indications (RFC 8656 §9).
    pub fn bind_peer(
        &mut self,
        cfg: &SessionConfig,
        peer: SocketAddr,
        channel: Option<u16>,
    ) -> Result<(), SetupError> {
        match channel {
            Some(ch) => {
                self.transact(cfg, Method::CHANNEL_BIND, &|b| {
                    b.attr(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0]);
                    b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
                })?;
            }
            None => {
                self.transact(cfg, Method::CREATE_PERMISSION, &|b| {
                    b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
                })?;
            }
        }
        self.peer = Some(peer);
        self.channel = channel;
        Ok(())
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.id.to_be_bytes());
        t[4..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    fn mint_creds(&self, cfg: &SessionConfig, realm: &[u8], nonce: &[u8]) -> Option<Creds> {
        let realm_s = String::from_utf8_lossy(realm);
        let (username, password) = match &cfg.auth {
            Auth::None => return None,
            Auth::LongTerm { user, password } => (user.clone(), password.clone()),
            Auth::Rest {
                user,
                secret,
                separator,
            } => {
                let c =
                    mint_rest_credentials(secret.as_bytes(), user, 86_400, unix_now(), *separator);
                (c.username, c.password)
            }
        };
        let key = key_md5(&username, &realm_s, &password);
        Some(Creds {
            username,
            realm: realm.to_vec(),
            nonce: nonce.to_vec(),
            key,
        })
    }

    /// Build request `method` with a fresh transaction id, authenticated once the server has
    /// challenged.
    fn request(
        &mut self,
        method: Method,
        fill: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> (TransactionId, Vec<u8>) {
        let tid = self.next_tid();
        let mut req = Vec::with_capacity(256);
        {
            let mut b = MessageBuilder::new(&mut req, method, Class::Request, &tid);
            fill(&mut b);
            if let Some(c) = &self.creds {
                b.attr(attr::USERNAME, c.username.as_bytes());
                b.attr(attr::REALM, &c.realm);
                b.attr(attr::NONCE, &c.nonce);
                b.integrity(&c.key);
            }
        }
        (tid, req)
    }

    /// Judge the response to attempt `attempt` of a request: `Ok(true)` on success, `Ok(false)`
    /// when a 401 challenge or a 438 stale nonce asks for another attempt (the new credentials are
    /// kept), an error otherwise.
    fn judge(
        &mut self,
        cfg: &SessionConfig,
        name: &'static str,
        resp: &[u8],
        attempt: u32,
    ) -> Result<bool, SetupError> {
        let m = Message::decode(resp).map_err(|e| malformed(name, resp, &format!("{e}")))?;
        match m.class() {
            Class::Success => Ok(true),
            Class::Error => {
                let (code, reason) = m
                    .get(attr::ERROR_CODE)
                    .and_then(attr::read_error_code)
                    .map(|(c, r)| (c, r.to_owned()))
                    .unwrap_or((0, String::new()));
                let fresh = (code == 401 && self.creds.is_none()) || code == 438;
                if !(fresh && attempt + 1 < ATTEMPTS) {
                    return Err(SetupError::Rejected {
                        method: name,
                        code,
                        reason,
                    });
                }
                let realm = m.get(attr::REALM).map(<[u8]>::to_vec);
                let nonce = m
                    .get(attr::NONCE)
                    .ok_or_else(|| malformed(name, resp, "a challenge without NONCE"))?;
                let realm = match (realm, &self.creds) {
                    (Some(r), _) => r,
                    (None, Some(c)) => c.realm.clone(),
                    (None, None) => {
                        return Err(malformed(name, resp, "a first challenge without REALM"))
                    }
                };
                self.creds = Some(
                    self.mint_creds(cfg, &realm, nonce)
                        .ok_or(SetupError::NeedCredentials)?,
                );
                Ok(false)
            }
            _ => Err(malformed(name, resp, "neither a success nor an error")),
        }
    }

    /// Send a request (authenticated once the server has challenged) and return the raw success
    /// response; answers 401 and 438 by retrying with the new NONCE.
    fn transact(
        &mut self,
        cfg: &SessionConfig,
        method: Method,
        fill: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Result<Vec<u8>, SetupError> {
        let name = method_name(method);
        for attempt in 0..ATTEMPTS {
            let (tid, req) = self.request(method, fill);
            let resp = self.exchange(&req, &tid, name)?;
            if self.judge(cfg, name, &resp, attempt)? {
                return Ok(resp);
            }
        }
        Err(SetupError::Timeout(name))
    }

    /// Send `req` and wait for the response with transaction id `tid`.
    fn exchange(
        &mut self,
        req: &[u8],
        tid: &TransactionId,
        name: &'static str,
    ) -> Result<Vec<u8>, SetupError> {
        match &mut self.conn {
            Conn::Udp(s) => {
                let mut buf = [0u8; 2048];
                for _ in 0..UDP_TRIES {
                    s.send(req)?;
                    let deadline = Instant::now() + UDP_RTO;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        s.set_read_timeout(Some(left))?;
                        let n = match s.recv(&mut buf) {
                            Ok(n) => n,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) =>
                            {
                                break
                            }
                            // ICMP port unreachable from an earlier try: keep waiting.
                            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                            Err(e) => return Err(e.into()),
                        };
                        if let Ok(m) = Message::decode(&buf[..n]) {
                            if m.transaction_id() == tid {
                                return Ok(buf[..n].to_vec());
                            }
                        }
                    }
                }
                Err(SetupError::Timeout(name))
            }
            Conn::Tcp(s) => {
                s.write_all(req)?;
                let deadline = Instant::now() + TCP_TIMEOUT;
                let mut chunk = [0u8; 4096];
                loop {
                    while let Ok(Some(n)) = framing::frame_len(&self.rx) {
                        let frame: Vec<u8> = self.rx.drain(..n).collect();
                        if let Ok(m) = Message::decode(&frame) {
                            if m.transaction_id() == tid {
                                return Ok(frame);
                            }
                        }
                    }
                    if let Err(e) = framing::frame_len(&self.rx) {
                        return Err(SetupError::Malformed {
                            method: name,
                            what: format!("unframeable stream ({e:?})"),
                        });
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SetupError::Timeout(name));
                    }
                    s.set_read_timeout(Some(left))?;
                    let n = match s.read(&mut chunk) {
                        Ok(0) => {
                            return Err(SetupError::Io(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "server closed the connection",
                            )))
                        }
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Err(SetupError::Timeout(name))
                        }
                        Err(e) => return Err(e.into()),
                    };
                    self.rx.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// Bytes already read from a TCP stream but not yet framed (handed on to the load loop).
    pub fn take_rx(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rx)
    }
}

/// A [`SetupError::Malformed`] for answer `raw` to `method`, saying what is wrong with it.
fn malformed(method: &'static str, raw: &[u8], problem: &str) -> SetupError {
    let what = match Message::decode(raw) {
        Ok(m) => {
            let code = m
                .get(attr::ERROR_CODE)
                .and_then(attr::read_error_code)
                .map(|(c, r)| format!(" {c} {r:?}"))
                .unwrap_or_default();
            let types: Vec<String> = m.attributes().map(|a| format!("{:#06x}", a.ty)).collect();
            format!(
                "{problem}: {:?} {:?}{code}, {} bytes, attributes [{}]",
                m.method(),
                m.class(),
                raw.len(),
                types.join(" ")
            )
        }
        Err(_) => {
            let head: Vec<String> = raw.iter().take(24).map(|b| format!("{b:02x}")).collect();
            format!("{problem}: {} bytes, starting {}", raw.len(), head.concat())
        }
    };
    SetupError::Malformed { method, what }
}
