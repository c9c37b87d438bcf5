//! DTLS listeners (RFC 8656 §3.1: TURN over DTLS, `turns:` over UDP), with the system OpenSSL
//! (`--features dtls`). coturn's rule: on the TLS port, over UDP, when `--cert` is given and not
//! `--no-dtls`. Each client address gets an OpenSSL DTLS 1.2 session over an in-memory datagram
//! queue: the worker pushes received datagrams in and sends what OpenSSL writes; decrypted
//! records go to the engine as [`Transport::Dtls`] packets, and the engine's answers and relayed
//! data are encrypted on the way out. A HelloVerifyRequest cookie (RFC 6347 §4.2.1) must be
//! echoed before the server sends its certificate, so a spoofed ClientHello cannot turn the
//! listener into an amplifier; handshakes not done in 10 s and idle sessions are dropped, and a
//! worker holds at most [`MAX_SESSIONS`], of which at most [`MAX_HANDSHAKES`] still handshaking
//! (spoofed ClientHellos cannot grow memory without bound). Of those, one source IP (an IPv6
//! source by its /64) holds at most [`MAX_HANDSHAKES_PER_IP`] past the cookie exchange, so a real
//! (not spoofed) address cannot take every handshake slot; only cookie-verified handshakes count,
//! so a spoofer cannot use up a victim's. A ClientHello on the address of an established session
//! (a client restarted on the same port, RFC 6347 §4.2.8) starts a handshake beside it; once its
//! cookie is verified the new session replaces the old one, whose allocation ends as if the
//! client had closed. SIGUSR2 reloads the certificate and key: new handshakes use them, live
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
use crate::engine::{ClientDecision, FiveTuple, Transport};

/// Sessions one worker keeps at once; beyond it new handshakes are ignored.
pub const MAX_SESSIONS: usize = 20_000;
/// Sessions one worker lets handshake at once; beyond it new ClientHellos are ignored until
/// some finish or time out (the client retransmits).
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

/// Set on a session once its ClientHello's cookie has been verified.
fn verified_index() -> openssl::ex_data::Index<Ssl, bool> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, bool>> = OnceLock::new();
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

/// A ClientHello that starts a handshake (message_seq 0, after the handshake message's type and
/// length): the one sent before the cookie, or its retransmission.
fn opens_handshake(data: &[u8]) -> bool {
    is_client_hello(data) && data.get(17..19) == Some(&[0, 0][..])
}

/// HMAC-free but keyed: SHA-256 over a per-process secret and the client's address.
fn cookie(secret: &[u8; 32], addr: Option<&SocketAddr>) -> [u8; 16] {
    let mut h = openssl::sha::Sha256::new();
    h.update(secret);
    h.update(addr.map(|a| a.to_string()).unwrap_or_default().as_bytes());
    let d = h.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
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
            let c = cookie(&secret, ssl.ex_data(addr_index()));
            out[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        });
        b.set_cookie_verify_cb(move |ssl, got| {
            let want = cookie(&secret, ssl.ex_data(addr_index()));
            let ok =
                openssl::memcmp::eq(&want, got.get(..16).unwrap_or(&[0; 16])) && got.len() == 16;
            if ok {
                ssl.set_ex_data(verified_index(), true);
            }
            ok
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
    established: bool,
    /// Handshaking past the cookie exchange: counted in [`Sessions::verified_by_source`].
    verified: bool,
    /// A new handshake from the same address while established (a restarted client), until its
    /// cookie is verified, and when it began (dropped after [`HANDSHAKE_TIMEOUT`]).
    restart: Option<(Instant, Box<SslStream<Dgram>>)>,
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

fn is_verified(stream: &SslStream<Dgram>) -> bool {
    stream.ssl().ex_data(verified_index()).is_some()
}

/// A worker's DTLS sessions by (local address, client address), how many still handshake, and
/// how many of those are past the cookie exchange by source (entries only while non-zero, so at
/// most [`MAX_HANDSHAKES`] of them).
#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<(SocketAddr, SocketAddr), Session>,
    handshaking: usize,
    verified_by_source: HashMap<u128, u32>,
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
        client: from,
        server: local,
    };
    let mut records = Vec::new();
    let mut closed = false;
    let mut was_established = false;
    let mut restarted = false;
    {
        let mut guard = st.dtls_sessions.borrow_mut();
        let Sessions {
            map,
            handshaking,
            verified_by_source,
        } = &mut *guard;
        let full = map.len() >= MAX_SESSIONS || *handshaking >= MAX_HANDSHAKES;
        let s = match map.entry((local, from)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // Only a first ClientHello opens a session: a later handshake message could
                // never be read by a new one.
                if full || !opens_handshake(&datagram) {
                    return;
                }
                let Some(stream) = new_stream(ctx, from) else {
                    return;
                };
                *handshaking += 1;
                e.insert(Session {
                    stream,
                    socket: sock.clone(),
                    established: false,
                    verified: false,
                    restart: None,
                    created: now,
                    last_seen: now,
                })
            }
        };
        if s.established && is_client_hello(&datagram) {
            // RFC 6347 §4.2.8: a ClientHello on an established association is a restarted
            // client. It gets its own handshake; the old session stays until the new one's
            // cookie is verified, so nobody off-path can end it.
            if s.restart.is_none() {
                if *handshaking >= MAX_HANDSHAKES || !opens_handshake(&datagram) {
                    return;
                }
                let Some(r) = new_stream(ctx, from) else {
                    return;
                };
                s.restart = Some((now, Box::new(r)));
            }
            let Some((_, r)) = s.restart.as_mut() else {
                return;
            };
            r.get_mut().inbox.push_back(datagram);
            let res = r.do_handshake();
            if !is_verified(r) {
                match res {
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        for d in r.get_mut().outbox.drain(..) {
                            let _ = s.socket.get_ref().send_to(&d, from);
                        }
                    }
                    _ => s.restart = None,
                }
                return;
            }
            let restart = s.restart.take();
            if res.is_err_and(|e| !matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE))
                || *handshaking >= MAX_HANDSHAKES
                || !try_take_source(verified_by_source, from.ip())
            {
                return;
            }
            let Some((_, r)) = restart else {
                return;
            };
            // The new session replaces the old one, whose allocation ends below.
            s.stream = *r;
            s.established = false;
            s.verified = true;
            s.created = now;
            s.last_seen = now;
            *handshaking += 1;
            restarted = true;
            tracing::debug!("dtls client {from} restarted its session");
        } else {
            // Only here: a ClientHello anyone can send from the address keeps no session alive.
            s.last_seen = now;
            s.stream.get_mut().inbox.push_back(datagram);
            if !s.established {
                let res = s.stream.do_handshake();
                if !s.verified && is_verified(&s.stream) {
                    if try_take_source(verified_by_source, from.ip()) {
                        s.verified = true;
                    } else {
                        tracing::debug!("dtls handshake from {from}: too many from its source");
                        s.stream.get_mut().outbox.clear();
                        closed = true;
                    }
                }
                match res {
                    _ if closed => {}
                    Ok(()) => {
                        s.established = true;
                        *handshaking -= 1;
                        if s.verified {
                            release_source(verified_by_source, from.ip());
                            s.verified = false;
                        }
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
        }
        s.flush(from);
        if closed {
            if !s.established {
                *handshaking -= 1;
                if s.verified {
                    release_source(verified_by_source, from.ip());
                }
            }
            map.remove(&(local, from));
        }
    }
    if restarted {
        st.engine.borrow_mut().handle_transport_closed(five);
    }
    for r in records {
        let decision = st.engine.borrow_mut().handle_client_input(now, five, &r);
        if let ClientDecision::Forward {
            relay,
            peer,
            payload,
        } = decision
        {
            st.send_to_peer(relay, peer, &r[payload]);
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
    if let Some(s) = sessions.map.get_mut(&(to.server, to.client)) {
        if s.established && s.stream.ssl_write(data).is_ok() {
            s.flush(to.client);
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
                client: *client,
                server: *local,
            };
            let idle = now.saturating_duration_since(s.last_seen);
            if s.restart
                .as_ref()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= HANDSHAKE_TIMEOUT)
            {
                s.restart = None;
            }
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
                if s.verified {
                    release_source(verified_by_source, client.ip());
                }
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
    fn only_a_first_client_hello_opens_a_handshake() {
        let mut hello = vec![
            22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 1, 0, 0, 28, 0, 0,
        ];
        hello.resize(60, 0);
        assert!(is_client_hello(&hello) && opens_handshake(&hello));
        hello[18] = 1; // message_seq 1: the ClientHello with the cookie
        assert!(is_client_hello(&hello) && !opens_handshake(&hello));
        hello[4] = 1; // epoch 1: encrypted
        assert!(!is_client_hello(&hello));
        assert!(!opens_handshake(&[22, 0xfe, 0xfd, 0, 0]));
        assert!(!opens_handshake(&[]));
    }
}
