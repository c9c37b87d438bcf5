//! DTLS listeners (RFC 8656 §3.1: TURN over DTLS, `turns:` over UDP), with the system OpenSSL
//! (`--features dtls`). coturn's rule: on the TLS port, over UDP, when `--cert` is given and not
//! `--no-dtls`. Each client address gets an OpenSSL DTLS 1.2 session over an in-memory datagram
//! queue: the worker pushes received datagrams in and sends what OpenSSL writes; decrypted
//! records go to the engine as [`Transport::Dtls`] packets, and the engine's answers and relayed
//! data are encrypted on the way out.
//!
//! The cookie exchange (RFC 6347 §4.2.1) is stateless: a ClientHello from an address without a
//! session goes to OpenSSL's `DTLSv1_listen` on a throwaway `SSL`; without a valid cookie (a
//! keyed hash of the client's address) it is answered with a HelloVerifyRequest, no larger than
//! the ClientHello, and nothing is kept. Only a ClientHello that echoes the cookie, so comes from
//! an address that receives, opens a session, and that `SSL` goes on with the handshake. So a
//! spoofed ClientHello can neither turn the listener into an amplifier nor hold any state, and a
//! flood of them from many addresses leaves every handshake slot free. Handshakes not done in
//! 10 s and idle sessions are dropped; a worker holds at most [`MAX_SESSIONS`], of which at most
//! [`MAX_HANDSHAKES`] still handshaking, and one source IP (an IPv6 source by its /64) at most
//! [`MAX_HANDSHAKES_PER_IP`] of those, so one real address cannot take every handshake slot.
//! A ClientHello on the address of an established session (a client restarted on the same port,
//! RFC 6347 §4.2.8) goes through the same exchange; once its cookie is verified a new session
//! replaces the old one, whose allocation ends as if the client had closed, so nobody off-path
//! can end a session. SIGUSR2 reloads the certificate and key: new handshakes use them, live
//! sessions keep theirs.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVersion,
};
use tokio::io::unix::AsyncFd;

use super::worker::{read_batches, WorkerState};
use crate::engine::{ClientAddr, ClientDecision, FiveTuple, Transport};

/// Sessions one worker keeps at once; beyond it new handshakes are ignored.
pub const MAX_SESSIONS: usize = 20_000;
/// Sessions one worker lets handshake at once (each past the cookie exchange); beyond it
/// ClientHellos with a valid cookie are ignored until some finish or time out (the client
/// retransmits).
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes past the cookie exchange one source IP (IPv6: one /64) may have at once; beyond it
/// a verified ClientHello from that source is dropped until some finish or time out.
pub const MAX_HANDSHAKES_PER_IP: u32 = 8;
/// A handshake not done in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session without an allocation, silent this long, is dropped (as TCP connections are).
const NO_ALLOCATION_IDLE: Duration = Duration::from_secs(60);
/// A session with an allocation, silent this long, is dropped (clients refresh well within it).
const IDLE: Duration = Duration::from_secs(600);
/// Largest DTLS record payload we let OpenSSL build, below a typical path MTU.
const MTU: u32 = 1400;

/// The DTLS server context in force (certificate, key, cookie secret), and where to reload it from.
pub struct DtlsContext {
    ctx: ArcSwap<SslContext>,
    cert: PathBuf,
    key: PathBuf,
    secret: [u8; 32],
}

impl std::fmt::Debug for DtlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsContext")
    }
}

/// Where the client address of a session is kept for the cookie callbacks.
fn addr_index() -> openssl::ex_data::Index<Ssl, SocketAddr> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, SocketAddr>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

/// What the per-source handshake cap counts by: an IPv4 address (also seen as ::ffff:a.b.c.d),
/// or an IPv6 /64, as the UDP limiter keys them (one host usually holds a whole /64).
fn source_key(ip: IpAddr) -> u128 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

/// Whether `data` starts with a plaintext (epoch 0) handshake record holding a ClientHello.
fn is_client_hello(data: &[u8]) -> bool {
    // Record header: type, version (2), epoch (2), sequence (6), length (2); then the handshake
    // message type.
    data.len() > 13 && data[0] == 22 && data[3] == 0 && data[4] == 0 && data[13] == 1
}

/// HMAC-free but keyed: SHA-256 over a per-process secret and the client's address.
fn cookie(secret: &[u8; 32], addr: Option<&SocketAddr>, window: u64) -> [u8; 16] {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(&window.to_be_bytes());
    m.update(addr.map(|a| a.to_string()).unwrap_or_default().as_bytes());
    let d = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// A cookie is made for the current [`COOKIE_WINDOW`] and accepted in it and the next, so a
/// cookie-carrying ClientHello seen on the wire cannot be replayed from its address (to restart
/// that client's session) more than two windows later.
const COOKIE_WINDOW: u64 = 60;

fn cookie_window(unix_secs: u64) -> u64 {
    unix_secs / COOKIE_WINDOW
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `got` is a cookie made for `addr` at most one window before `unix_secs`'s.
fn cookie_valid(secret: &[u8; 32], addr: Option<&SocketAddr>, got: &[u8], unix_secs: u64) -> bool {
    let now = cookie_window(unix_secs);
    got.len() == 16
        && [now, now.saturating_sub(1)]
            .iter()
            .any(|&w| openssl::memcmp::eq(&cookie(secret, addr, w), got))
}

impl DtlsContext {
    /// Load `cert` (PEM chain) and `key` (PEM); the error names the file that failed.
    pub fn new(cert: &Path, key: &Path) -> Result<DtlsContext, String> {
        let secret: [u8; 32] = rand::random();
        let ctx = Self::build(cert, key, secret)?;
        Ok(DtlsContext {
            ctx: ArcSwap::from_pointee(ctx),
            cert: cert.to_owned(),
            key: key.to_owned(),
            secret,
        })
    }

    /// Read the certificate and key again from the paths given at start (SIGUSR2). On error the
    /// context in force stays.
    pub fn reload(&self) -> Result<(), String> {
        let ctx = Self::build(&self.cert, &self.key, self.secret)?;
        self.ctx.store(Arc::new(ctx));
        Ok(())
    }

    fn build(cert: &Path, key: &Path, secret: [u8; 32]) -> Result<SslContext, String> {
        let mut b = SslContextBuilder::new(SslMethod::dtls()).map_err(|e| e.to_string())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(|e| e.to_string())?;
        b.set_certificate_chain_file(cert)
            .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| format!("--pkey {}: {e}", key.display()))?;
        b.check_private_key()
            .map_err(|e| format!("--pkey {}: does not match --cert: {e}", key.display()))?;
        b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
        b.set_cookie_generate_cb(move |ssl, out| {
            let window = cookie_window(unix_secs());
            let c = cookie(&secret, ssl.ex_data(addr_index()), window);
            out[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        });
        b.set_cookie_verify_cb(move |ssl, got| {
            cookie_valid(&secret, ssl.ex_data(addr_index()), got, unix_secs())
        });
        Ok(b.build())
    }
}

/// The datagrams of one session: what arrived (read by OpenSSL one at a time) and what OpenSSL
/// wrote (sent by the worker).
#[derive(Default)]
struct Dgram {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Read for Dgram {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Dgram {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) struct Session {
    stream: SslStream<Dgram>,
    socket: Rc<AsyncFd<UdpSocket>>,
    /// Until then the session is handshaking, past the cookie exchange: counted in
    /// [`Sessions::handshaking`] and [`Sessions::verified_by_source`].
    established: bool,
    created: Instant,
    last_seen: Instant,
}

impl Session {
    fn flush(&mut self, to: SocketAddr) {
        for d in self.stream.get_mut().outbox.drain(..) {
            let _ = self.socket.get_ref().send_to(&d, to);
        }
    }
}

/// A server-side DTLS stream for `from` that has not read anything yet.
fn new_stream(ctx: &DtlsContext, from: SocketAddr) -> Option<SslStream<Dgram>> {
    let mut ssl = Ssl::new(&ctx.ctx.load()).ok()?;
    ssl.set_ex_data(addr_index(), from);
    let _ = ssl.set_mtu(MTU);
    ssl.set_accept_state();
    SslStream::new(ssl, Dgram::default()).ok()
}

/// RFC 6347 §4.2.1 without state: `datagram` (from `from`, with no session that could take it)
/// goes to [`crate::sys::dtls_listen`] on a fresh `SSL`. A ClientHello with a valid cookie comes back as a stream
/// that goes on with the handshake; anything else is `Err` with what to send back (the
/// HelloVerifyRequest, or nothing), and the `SSL` is freed.
fn verified_hello(
    ctx: &DtlsContext,
    from: SocketAddr,
    datagram: Vec<u8>,
) -> Result<SslStream<Dgram>, Vec<Vec<u8>>> {
    // Anything else would only cost an `SSL` to drop.
    if !is_client_hello(&datagram) {
        return Err(Vec::new());
    }
    let Some(mut stream) = new_stream(ctx, from) else {
        return Err(Vec::new());
    };
    stream.get_mut().inbox.push_back(datagram);
    if crate::sys::dtls_listen(stream.ssl()) == 1 {
        stream.get_mut().outbox.clear();
        Ok(stream)
    } else {
        Err(std::mem::take(&mut stream.get_mut().outbox))
    }
}

/// A worker's DTLS sessions by (local address, client address), how many still handshake, and
/// how many of those by source (entries only while non-zero, so at most [`MAX_HANDSHAKES`] of
/// them).
#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<(SocketAddr, SocketAddr), Session>,
    handshaking: usize,
    verified_by_source: HashMap<u128, u32>,
}

impl Sessions {
    /// Sessions established, and sessions still handshaking (for metrics).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.map.len() - self.handshaking, self.handshaking)
    }

    /// A ClientHello with a valid cookie from `from`, on an address without a session or with an
    /// established one (a restarted client, RFC 6347 §4.2.8): a new session handshakes, within
    /// the caps, and replaces the old one. Returns whether one was replaced (its allocation must
    /// end).
    fn try_open(
        &mut self,
        mut stream: SslStream<Dgram>,
        key: (SocketAddr, SocketAddr),
        socket: &Rc<AsyncFd<UdpSocket>>,
        now: Instant,
    ) -> bool {
        let from = key.1;
        let replaces = self.map.contains_key(&key);
        if self.handshaking >= MAX_HANDSHAKES || (!replaces && self.map.len() >= MAX_SESSIONS) {
            tracing::debug!("dtls handshake from {from}: too many handshakes or sessions");
            return false;
        }
        if !try_take_source(&mut self.verified_by_source, from.ip()) {
            tracing::debug!("dtls handshake from {from}: too many from its source");
            return false;
        }
        let res = stream.do_handshake();
        for d in stream.get_mut().outbox.drain(..) {
            let _ = socket.get_ref().send_to(&d, from);
        }
        if let Err(e) = res {
            if !matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) {
                tracing::debug!("dtls handshake from {from}: {e}");
                release_source(&mut self.verified_by_source, from.ip());
                return false;
            }
        }
        self.handshaking += 1;
        let session = Session {
            stream,
            socket: socket.clone(),
            established: false,
            created: now,
            last_seen: now,
        };
        let replaced = self.map.insert(key, session).is_some();
        if replaced {
            tracing::debug!("dtls client {from} restarted its session");
        }
        replaced
    }

    /// A session that was still handshaking ended: its slots are free.
    fn release_handshake(&mut self, from: IpAddr) {
        self.handshaking -= 1;
        release_source(&mut self.verified_by_source, from);
    }
}

/// Count a verified handshake from `ip`, unless its source is at [`MAX_HANDSHAKES_PER_IP`].
fn try_take_source(by_source: &mut HashMap<u128, u32>, ip: IpAddr) -> bool {
    let n = by_source.entry(source_key(ip)).or_insert(0);
    if *n >= MAX_HANDSHAKES_PER_IP {
        return false;
    }
    *n += 1;
    true
}

/// A verified handshake from `ip` finished or was dropped.
fn release_source(by_source: &mut HashMap<u128, u32>, ip: IpAddr) {
    if let Entry::Occupied(mut e) = by_source.entry(source_key(ip)) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// Read one DTLS listening socket.
pub(crate) async fn listener(
    st: Rc<WorkerState>,
    ctx: Arc<DtlsContext>,
    local: SocketAddr,
    sock: Rc<AsyncFd<UdpSocket>>,
) {
    let sock2 = sock.clone();
    read_batches(st, sock, move |st, batch, now| {
        for i in 0..batch.len() {
            let Some(from) = batch.addr(i) else {
                continue;
            };
            let (slot, range) = batch.slot_mut(i);
            let data = slot[range].to_vec();
            handle(st, &ctx, local, &sock2, from, data, now);
        }
    })
    .await
}

fn handle(
    st: &Rc<WorkerState>,
    ctx: &DtlsContext,
    local: SocketAddr,
    sock: &Rc<AsyncFd<UdpSocket>>,
    from: SocketAddr,
    datagram: Vec<u8>,
    now: Instant,
) {
    let five = FiveTuple {
        transport: Transport::Dtls,
        client: ClientAddr::new(from),
        server: local,
    };
    let key = (local, from);
    let mut guard = st.dtls_sessions.borrow_mut();
    let established = guard.map.get(&key).map(|s| s.established);
    // A handshaking session takes everything from its address, retransmitted ClientHellos too
    // (its `SSL` knows where its handshake is); otherwise only a ClientHello is for us, and its
    // cookie is checked before anything is kept.
    if established.is_none() || (established == Some(true) && is_client_hello(&datagram)) {
        let restarted = match verified_hello(ctx, from, datagram) {
            Ok(stream) => guard.try_open(stream, key, sock, now),
            Err(answer) => {
                for d in answer {
                    let _ = sock.get_ref().send_to(&d, from);
                }
                false
            }
        };
        drop(guard);
        if restarted {
            // The new session replaced the old one: its allocation ends.
            st.engine.borrow_mut().handle_transport_closed(five);
            st.drain_commands(now);
        }
        return;
    }
    let mut records = Vec::new();
    let mut closed = false;
    let was_established;
    {
        let sessions = &mut *guard;
        let Some(s) = sessions.map.get_mut(&key) else {
            return;
        };
        // Only here: a ClientHello anyone can send from an established session's address keeps
        // it no longer alive.
        s.last_seen = now;
        s.stream.get_mut().inbox.push_back(datagram);
        if !s.established {
            match s.stream.do_handshake() {
                Ok(()) => {
                    s.established = true;
                    sessions.handshaking -= 1;
                    release_source(&mut sessions.verified_by_source, from.ip());
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(e) => {
                    tracing::debug!("dtls handshake from {from}: {e}");
                    closed = true;
                }
            }
        }
        was_established = s.established;
        if s.established && !closed {
            let mut buf = st.dtls_buf.borrow_mut();
            buf.resize(65_536, 0);
            loop {
                match s.stream.ssl_read(&mut buf) {
                    Ok(n) => records.push(buf[..n].to_vec()),
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        closed = true;
                        break;
                    }
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(e) => {
                        tracing::debug!("dtls read from {from}: {e}");
                        closed = true;
                        break;
                    }
                }
            }
        }
        s.flush(from);
        if closed {
            if !s.established {
                sessions.release_handshake(from.ip());
            }
            sessions.map.remove(&key);
        }
    }
    drop(guard);
    for r in records {
        let decision = st.engine.borrow_mut().handle_client_input(now, five, &r);
        if let ClientDecision::Forward {
            relay,
            peer,
            payload,
        } = decision
        {
            st.send_to_peer(relay, peer.addr(), &r[payload]);
        }
    }
    if closed && was_established {
        st.engine.borrow_mut().handle_transport_closed(five);
    }
    st.drain_commands(now);
}

/// Encrypt `data` for the client on `to` and send it.
pub(crate) fn send(st: &WorkerState, to: FiveTuple, data: &[u8]) {
    let mut sessions = st.dtls_sessions.borrow_mut();
    if let Some(s) = sessions.map.get_mut(&(to.server, to.client.addr())) {
        if s.established && s.stream.ssl_write(data).is_ok() {
            s.flush(to.client.addr());
        }
    }
}

/// Drop handshakes past [`HANDSHAKE_TIMEOUT`] and idle sessions; an idle session's allocation
/// ends with it.
pub(crate) fn sweep(st: &Rc<WorkerState>, now: Instant) {
    let mut ended = Vec::new();
    {
        let engine = st.engine.borrow();
        let mut guard = st.dtls_sessions.borrow_mut();
        let Sessions {
            map,
            handshaking,
            verified_by_source,
        } = &mut *guard;
        map.retain(|(local, client), s| {
            let five = FiveTuple {
                transport: Transport::Dtls,
                client: ClientAddr::new(*client),
                server: *local,
            };
            let idle = now.saturating_duration_since(s.last_seen);
            let keep = if !s.established {
                now.saturating_duration_since(s.created) < HANDSHAKE_TIMEOUT
            } else if engine.allocation_on(&five).is_some() {
                idle < IDLE
            } else {
                idle < NO_ALLOCATION_IDLE
            };
            if !keep && s.established {
                ended.push(five);
            }
            if !keep && !s.established {
                *handshaking -= 1;
                release_source(verified_by_source, client.ip());
            }
            keep
        });
    }
    for five in ended {
        st.engine.borrow_mut().handle_transport_closed(five);
    }
    st.drain_commands(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let v4 = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(v4("192.0.2.1"), v4("::ffff:192.0.2.1"));
        assert_ne!(v4("192.0.2.1"), v4("192.0.2.2"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:2:ffff::9"));
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
        // An IPv6 /64 whose upper bits look like an IPv4 address is not that address.
        assert_ne!(v4("::c000:201"), v4("192.0.2.1"));
    }

    #[test]
    fn per_source_count_caps_and_frees() {
        let mut by = HashMap::new();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..MAX_HANDSHAKES_PER_IP {
            assert!(try_take_source(&mut by, ip));
        }
        assert!(!try_take_source(&mut by, same), "same /64, over the cap");
        assert!(try_take_source(&mut by, "2001:db9::1".parse().unwrap()));
        release_source(&mut by, same);
        assert!(try_take_source(&mut by, ip));
        for _ in 0..MAX_HANDSHAKES_PER_IP {
            release_source(&mut by, ip);
        }
        release_source(&mut by, ip);
        assert_eq!(by.len(), 1, "a source at zero leaves the map");
    }

    #[test]
    fn client_hellos_are_plaintext_handshake_records() {
        let mut hello = vec![
            22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 1, 0, 0, 28, 0, 0,
        ];
        hello.resize(60, 0);
        assert!(is_client_hello(&hello));
        hello[18] = 1; // message_seq 1: the ClientHello with the cookie
        assert!(is_client_hello(&hello));
        hello[4] = 1; // epoch 1: encrypted
        assert!(!is_client_hello(&hello));
        hello[4] = 0;
        hello[13] = 2; // a ServerHello
        assert!(!is_client_hello(&hello));
        assert!(!is_client_hello(&[22, 0xfe, 0xfd, 0, 0]));
        assert!(!is_client_hello(&[]));
    }

    /// A context with a fresh self-signed certificate (its files are gone once it is loaded).
    fn test_context() -> DtlsContext {
        let dir = std::env::temp_dir().join(format!(
            "vigi-dtls-unit-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let ctx = DtlsContext::new(&cert, &key);
        let _ = std::fs::remove_dir_all(&dir);
        ctx.unwrap()
    }

    /// Run `s`'s handshake on what its inbox holds; what it wrote.
    fn step(s: &mut SslStream<Dgram>) -> Vec<Vec<u8>> {
        let _ = s.do_handshake();
        std::mem::take(&mut s.get_mut().outbox)
    }

    #[test]
    fn cookies_are_bound_to_the_address_and_expire_after_two_windows() {
        let secret = [7u8; 32];
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let t = 1_800_000_000u64;
        let c = cookie(&secret, Some(&a), cookie_window(t));
        assert!(cookie_valid(&secret, Some(&a), &c, t));
        assert!(!cookie_valid(&secret, Some(&b), &c, t), "another port");
        assert!(!cookie_valid(&[8u8; 32], Some(&a), &c, t), "another secret");
        assert!(!cookie_valid(&secret, Some(&a), &c[..15], t), "cut short");
        // Valid through the next window, not after it.
        assert!(cookie_valid(&secret, Some(&a), &c, t + COOKIE_WINDOW));
        let later = (cookie_window(t) + 2) * COOKIE_WINDOW;
        assert!(
            !cookie_valid(&secret, Some(&a), &c, later),
            "replayed too late"
        );
    }

    #[test]
    fn cookie_exchange_keeps_no_state_and_the_verified_hello_completes() {
        let ctx = test_context();
        let from: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut client_ctx = SslContextBuilder::new(SslMethod::dtls()).unwrap();
        client_ctx.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let mut ssl = Ssl::new(&client_ctx.build()).unwrap();
        ssl.set_connect_state();
        let mut client = SslStream::new(ssl, Dgram::default()).unwrap();
        let hello = step(&mut client);
        assert_eq!(hello.len(), 1);
        let hello = hello.into_iter().next().unwrap();

        // RFC 6347 §4.2.1: no cookie, so a HelloVerifyRequest (handshake type 3), no larger than
        // the ClientHello; the same one every time, as nothing was kept between the two.
        let Err(hvr) = verified_hello(&ctx, from, hello.clone()) else {
            panic!("a ClientHello without a cookie was taken");
        };
        assert_eq!(hvr.len(), 1);
        assert_eq!((hvr[0][0], hvr[0][13]), (22, 3), "a HelloVerifyRequest");
        assert!(hvr[0].len() <= hello.len());
        assert_eq!(verified_hello(&ctx, from, hello).err(), Some(hvr.clone()));
        // Not a ClientHello: nothing is answered.
        assert_eq!(verified_hello(&ctx, from, vec![22; 40]).err(), Some(vec![]));

        client.get_mut().inbox.extend(hvr);
        let hello2 = step(&mut client);
        assert_eq!(hello2.len(), 1);
        let hello2 = hello2.into_iter().next().unwrap();
        // The cookie is bound to the address: from another port it is answered anew.
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let Err(again) = verified_hello(&ctx, other, hello2.clone()) else {
            panic!("a cookie accepted from another address");
        };
        assert_eq!(again.len(), 1);
        assert_eq!(again[0][13], 3);
        // From the address it was made for, the handshake goes on from the same `SSL`.
        let Ok(mut server) = verified_hello(&ctx, from, hello2) else {
            panic!("a valid cookie refused");
        };
        let mut to_client = step(&mut server);
        assert!(!to_client.is_empty(), "the server's flight");
        for _ in 0..4 {
            client.get_mut().inbox.extend(to_client.drain(..));
            let to_server = step(&mut client);
            server.get_mut().inbox.extend(to_server);
            to_client = step(&mut server);
        }
        client.get_mut().inbox.extend(to_client);
        let _ = step(&mut client);
        assert!(server.ssl().is_init_finished() && client.ssl().is_init_finished());
        client.ssl_write(b"binding").unwrap();
        server.get_mut().inbox.extend(step(&mut client));
        let mut buf = [0u8; 64];
        let n = server.ssl_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"binding");
    }
}
