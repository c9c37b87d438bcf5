//! A UDP echo peer like coturn's `turnutils_peer`: every datagram goes back to where it came
//! from, unchanged. One thread per socket, each socket bound with SO_REUSEPORT to the same address
//! so the kernel spreads relay addresses over the threads; datagrams are read and echoed in
//! batches (`recvmmsg`/`sendmmsg`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::RecvBatch;

/// How the peer runs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub addr: SocketAddr,
    pub threads: usize,
    /// Stop after this long (None: until the process is stopped or `stop` is set).
    pub duration: Option<Duration>,
    /// Socket buffer size (0 = kernel default).
    pub sock_buf: usize,
    /// Datagrams per batch.
    pub batch: usize,
}

/// Counts of a running peer.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub echoed: AtomicU64,
    pub bytes: AtomicU64,
}

/// One SO_REUSEPORT UDP socket bound to `addr`.
pub fn bind(addr: SocketAddr, sock_buf: usize) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if sock_buf > 0 {
        let _ = s.set_recv_buffer_size(sock_buf);
        let _ = s.set_send_buffer_size(sock_buf);
    }
    s.bind(&addr.into())?;
    // Wake up now and then to look at the deadline and the stop flag.
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s)
}

/// Echo until the duration is up or `stop` is set. Binds every socket before returning the
/// first error, so a port in use is reported at once.
pub fn run(cfg: &PeerConfig, stop: &AtomicBool, counters: &PeerCounters) -> io::Result<()> {
    let sockets: Vec<Socket> = (0..cfg.threads.max(1))
        .map(|_| bind(cfg.addr, cfg.sock_buf))
        .collect::<io::Result<_>>()?;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    std::thread::scope(|sc| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|s| sc.spawn(move || echo_loop(s, cfg.batch, deadline, stop, counters)))
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("peer thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

fn echo_loop(
    s: &Socket,
    batch: usize,
    deadline: Option<Instant>,
    stop: &AtomicBool,
    counters: &PeerCounters,
) -> io::Result<()> {
    let mut b = RecvBatch::with_slots(batch, 0, 65536, 0);
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let n = match b.recv_wait(s) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let bytes: usize = (0..n).map(|i| b.datagram(i).len()).sum();
        // A full socket buffer drops echoes, as a real peer would; that shows up as loss.
        let sent = b.echo(s, n).unwrap_or(0);
        counters.echoed.fetch_add(sent as u64, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}
