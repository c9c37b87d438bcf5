//! DTLS listeners (RFC 8656 §3.1: TURN over DTLS, `turns:` over UDP), with the system OpenSSL
//! (`--features dtls`). coturn's rule: on the TLS port, over UDP, when `--cert` is given and not
//! `--no-dtls`. Each client address gets an OpenSSL DTLS 1.2 session over an in-memory datagram
//! queue: the worker pushes received datagrams in and sends what OpenSSL writes; decrypted
//! records go to the engine as [`Transport::Dtls`] packets, and the engine's answers and relayed
//! data are encrypted on the way out. A HelloVerifyRequest cookie (RFC 6347 §4.2.1) must be
//! echoed before the server sends its certificate, so a spoofed ClientHello cannot turn the
//! listener into an amplifier; handshakes not done in 10 s and idle sessions are dropped, and a
//! worker holds at most [`MAX_SESSIONS`], of which at most [`MAX_HANDSHAKES`] still handshaking
//! (spoofed ClientHellos cannot grow memory without bound). SIGUSR2 reloads the certificate and key: new
//! handshakes use them, live sessions keep theirs.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
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
            openssl::memcmp::eq(&want, got.get(..16).unwrap_or(&[0; 16])) && got.len() == 16
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

/// A worker's DTLS sessions by (local address, client address), and how many still handshake.
#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<(SocketAddr, SocketAddr), Session>,
    handshaking: usize,
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
    {
        let mut guard = st.dtls_sessions.borrow_mut();
        let Sessions { map, handshaking } = &mut *guard;
        let full = map.len() >= MAX_SESSIONS || *handshaking >= MAX_HANDSHAKES;
        let s = match map.entry((local, from)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // Only a handshake record (content type 22) opens a session.
                if full || datagram.first() != Some(&22) {
                    return;
                }
                let Ok(mut ssl) = Ssl::new(&ctx.ctx.load()) else {
                    return;
                };
                ssl.set_ex_data(addr_index(), from);
                let _ = ssl.set_mtu(MTU);
                ssl.set_accept_state();
                let Ok(stream) = SslStream::new(ssl, Dgram::default()) else {
                    return;
                };
                *handshaking += 1;
                e.insert(Session {
                    stream,
                    socket: sock.clone(),
                    established: false,
                    created: now,
                    last_seen: now,
                })
            }
        };
        s.stream.get_mut().inbox.push_back(datagram);
        s.last_seen = now;
        if !s.established {
            match s.stream.do_handshake() {
                Ok(()) => {
                    s.established = true;
                    *handshaking -= 1;
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(e) => {
                    tracing::debug!("dtls handshake from {from}: {e}");
                    closed = true;
                }
            }
        }
        was_established = was_established || s.established;
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
                *handshaking -= 1;
            }
            map.remove(&(local, from));
        }
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
        let Sessions { map, handshaking } = &mut *guard;
        map.retain(|(local, client), s| {
            let five = FiveTuple {
                transport: Transport::Dtls,
                client: *client,
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
            }
            keep
        });
    }
    for five in ended {
        st.engine.borrow_mut().handle_transport_closed(five);
    }
    st.drain_commands(now);
}
