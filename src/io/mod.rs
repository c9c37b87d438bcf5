//! The relay's I/O: worker threads, UDP listeners, TCP and TLS streams and relay sockets (the raw
//! system calls among them, batched receive and send and the relay epoll sets, are
//! [`crate::sys`]'s).
//!
//! Workers share nothing (DESIGN.md, "The data path"): each is a thread with its own
//! current-thread tokio runtime, its own engine shard ([`crate::engine::Server`]), its own
//! SO_REUSEPORT listening socket per address and the relay sockets of the allocations it made.
//! The kernel hashes a client's 5-tuple to one worker, so a flow never crosses threads and no
//! lock is taken per packet. All sockets are bound by [`start`] before any worker runs, so a
//! busy port is an error at start-up, not a log line later.

#[cfg(feature = "dtls")]
pub mod dtls;
/// Built without the `dtls` feature: no DTLS context can exist.
#[cfg(not(feature = "dtls"))]
pub mod dtls {
    #[derive(Debug)]
    pub enum DtlsContext {}

    impl DtlsContext {
        pub fn reload(&self) -> Result<(), String> {
            match *self {}
        }
    }
}
pub mod conn_limits;
// aya's `Pod` markers, the clock its maps' timestamps follow, its map views.
#[allow(unsafe_code)]
pub mod fastpath;
mod refusals;
pub mod relay;
pub mod stream;
pub mod tcp_relay;
pub mod tls;
pub mod udp;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::engine::server::{Aggregates, Select};
use crate::engine::{AllocationId, AllocationInfo, Counters, ServerConfig, Shared};

/// What the rest of the process can ask of a worker.
#[derive(Debug, Clone)]
pub enum Control {
    /// Swap in a new engine configuration (SIGHUP); allocations stay.
    Reload(Arc<ServerConfig>),
    /// Refuse new allocations (`true`) or accept them again.
    Drain(bool),
    /// End one allocation of this worker now.
    Kill(AllocationId),
    /// End every allocation of this user on this worker.
    KillUser(String),
    /// Send the live allocations `select` picks, with their counters and rates, to `reply`
    /// (the admin API's listing and `--redis-statsdb`: built only when asked).
    List {
        select: Select,
        reply: mpsc::UnboundedSender<Vec<AllocationInfo>>,
    },
    /// Send how many live allocations each user holds on this worker to `reply` (the fleet
    /// quota, with `--redis-statsdb`, once a second: names shared, not copied).
    CountByUser {
        reply: mpsc::UnboundedSender<Vec<(Arc<str>, u32)>>,
    },
    /// Send a snapshot of the worker as it is now (sums only: no top K, no traffic per user) to
    /// `reply` (`/api/stats`, which must agree with the listing).
    Snapshot {
        reply: mpsc::UnboundedSender<WorkerSnapshot>,
    },
}

/// What a worker last published about itself (about once a second): totals, never a list of
/// every allocation ([`Control::List`] asks for that).
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    pub counters: Counters,
    /// Sums over its live allocations, its busiest ones, traffic per user.
    pub live: Aggregates,
    pub draining: bool,
    pub io: IoStats,
    /// DTLS sessions established, and handshaking past the cookie exchange (0 without the
    /// `dtls` feature).
    pub dtls_sessions: usize,
    pub dtls_handshakes: usize,
}

/// Upper bounds of the batch-size buckets: datagrams one recvmmsg returned.
pub const BATCH_BUCKETS: [u64; 6] = [1, 2, 4, 8, 16, 32];
/// Upper bounds of the relay-latency buckets, in microseconds: from the moment a batch was read
/// to the moment its last datagram was handed to the kernel again.
pub const LATENCY_BUCKETS_US: [u64; 8] = [5, 10, 25, 50, 100, 250, 1000, 10_000];

/// What a worker's sockets did, counted per batch (not per packet) by the worker itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Batches by size: `batch_sizes[i]` counts batches of at most `BATCH_BUCKETS[i]` datagrams
    /// (and more than the bucket before).
    pub batch_sizes: [u64; BATCH_BUCKETS.len()],
    pub batches: u64,
    pub datagrams: u64,
    /// Batches by processing time, as `batch_sizes`; the last slot counts the slower ones.
    pub latency: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub latency_sum_us: u64,
}

impl IoStats {
    /// Count one batch of `n` datagrams that took `us` microseconds.
    #[inline]
    pub fn record(&mut self, n: usize, us: u64) {
        let n = n as u64;
        let b = BATCH_BUCKETS
            .iter()
            .position(|&m| n <= m)
            .unwrap_or(BATCH_BUCKETS.len() - 1);
        self.batch_sizes[b] += 1;
        self.batches += 1;
        self.datagrams += n;
        let l = LATENCY_BUCKETS_US
            .iter()
            .position(|&m| us <= m)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[l] += 1;
        self.latency_sum_us += us;
    }
}

/// A running worker: how to reach it and what it last said.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pub index: usize,
    pub control: mpsc::UnboundedSender<Control>,
    pub snapshot: Arc<Mutex<WorkerSnapshot>>,
}

/// What the I/O layer needs to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Worker threads (each with its own listeners and engine shard).
    pub workers: usize,
    /// UDP listening addresses (every worker binds each).
    pub udp: Vec<SocketAddr>,
    /// TCP listening addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS listening addresses (served only when `tls_source` is set).
    pub tls: Vec<SocketAddr>,
    /// The certificate in force for TLS listeners (swapped on SIGUSR2).
    pub tls_source: Option<Arc<tls::TlsSource>>,
    /// DTLS listening addresses (UDP), served with `dtls` (feature `dtls`).
    pub dtls: Vec<SocketAddr>,
    pub dtls_context: Option<Arc<dtls::DtlsContext>>,
    /// SO_RCVBUF/SO_SNDBUF for listeners and relay sockets.
    pub sock_buf_size: Option<usize>,
    /// Open TCP connections allowed at once, all workers together.
    pub max_tcp_connections: usize,
    /// Of those, from one source address (an IPv6 /64); 0: no cap.
    pub max_tcp_connections_per_ip: u32,
    pub engine: Arc<ServerConfig>,
    pub shared: Arc<Shared>,
    /// The kernel fast path, loaded and attached (`--xdp-interface`), shared by the workers.
    pub fastpath: Option<Arc<Mutex<fastpath::FastPath>>>,
}

/// Running workers; dropping it does not stop them, [`Running::shutdown`] does.
pub struct Running {
    threads: Vec<JoinHandle<()>>,
    pub workers: Vec<WorkerHandle>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The addresses actually bound (with ports resolved when 0 was asked for, worker 0's).
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    pub dtls_addrs: Vec<SocketAddr>,
    /// The TLS certificate source shared by the workers (for SIGUSR2).
    pub tls: Option<Arc<tls::TlsSource>>,
    /// The DTLS context shared by the workers (for SIGUSR2).
    pub dtls: Option<Arc<dtls::DtlsContext>>,
    /// The thread TLS handshakes run on, while there are TLS listeners.
    _handshaker: Option<tls::Handshaker>,
}

/// Bind every listener for every worker, then start the workers.
///
/// With port 0 in an address, worker 0 picks the port and the other workers bind the same one.
pub fn start(rc: RunConfig) -> io::Result<Running> {
    let workers = rc.workers.max(1);
    let mut per_worker = Vec::new();
    let mut udp_addrs = rc.udp.clone();
    let mut tcp_addrs = rc.tcp.clone();
    let mut tls_addrs = if rc.tls_source.is_some() {
        rc.tls.clone()
    } else {
        Vec::new()
    };
    let mut dtls_addrs = if rc.dtls_context.is_some() {
        rc.dtls.clone()
    } else {
        Vec::new()
    };
    for w in 0..workers {
        let mut udp = Vec::new();
        for a in udp_addrs.iter_mut() {
            let s = udp::bind_udp(*a, true, rc.sock_buf_size)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on udp {a}: {e}")))?;
            if w == 0 {
                *a = s.local_addr()?;
            }
            udp.push(s);
        }
        let mut tcp = Vec::new();
        for a in tcp_addrs.iter_mut() {
            let l = udp::bind_tcp(*a, 1024)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tcp {a}: {e}")))?;
            if w == 0 {
                *a = l.local_addr()?;
            }
            tcp.push(l);
        }
        let mut tls = Vec::new();
        for a in tls_addrs.iter_mut() {
            let l = udp::bind_tcp(*a, 1024)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tls {a}: {e}")))?;
            if w == 0 {
                *a = l.local_addr()?;
            }
            tls.push(l);
        }
        let mut dtls = Vec::new();
        for a in dtls_addrs.iter_mut() {
            let s = udp::bind_udp(*a, true, rc.sock_buf_size)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on dtls {a}: {e}")))?;
            if w == 0 {
                *a = s.local_addr()?;
            }
            dtls.push(s);
        }
        per_worker.push((udp, tcp, tls, dtls));
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let conn_limits =
        conn_limits::ConnLimits::new(rc.max_tcp_connections, rc.max_tcp_connections_per_ip);
    let handshaker = match rc.tls_source {
        Some(_) => Some(tls::Handshaker::start()?),
        None => None,
    };
    let tcp_peers = tcp_relay::PeerTable::default();
    let mut threads = Vec::new();
    let mut workers = Vec::new();
    for (i, (udp, tcp, tls, dtls)) in per_worker.into_iter().enumerate() {
        let rc = rc.clone();
        let stop_rx = stop_rx.clone();
        let conn_limits = conn_limits.clone();
        let tls_handshakes = handshaker.as_ref().map(tls::Handshaker::handle);
        let tcp_peers = tcp_peers.clone();
        let (control, control_rx) = mpsc::unbounded_channel();
        let snapshot = Arc::new(Mutex::new(WorkerSnapshot::default()));
        let snap = snapshot.clone();
        let t = std::thread::Builder::new()
            .name(format!("vigi-worker-{i}"))
            .spawn(move || {
                worker::run(worker::WorkerInit {
                    index: i,
                    rc,
                    udp,
                    tcp,
                    tls,
                    dtls,
                    conn_limits,
                    tls_handshakes,
                    tcp_peers,
                    stop: stop_rx,
                    control: control_rx,
                    snapshot: snap,
                })
            })?;
        threads.push(t);
        workers.push(WorkerHandle {
            index: i,
            control,
            snapshot,
        });
    }
    Ok(Running {
        threads,
        workers,
        stop,
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        dtls_addrs,
        tls: rc.tls_source.clone(),
        dtls: rc.dtls_context.clone(),
        _handshaker: handshaker,
    })
}

impl Running {
    /// Send a control message to every worker.
    pub fn broadcast(&self, c: Control) {
        for w in &self.workers {
            let _ = w.control.send(c.clone());
        }
    }

    /// The last snapshot of every worker.
    pub fn snapshots(&self) -> Vec<WorkerSnapshot> {
        self.workers
            .iter()
            .map(|w| w.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Stop every worker, close every socket, and wait for the threads.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stats_buckets() {
        let mut s = IoStats::default();
        s.record(1, 3);
        s.record(3, 12);
        s.record(32, 20_000);
        assert_eq!(s.batch_sizes, [1, 0, 1, 0, 0, 1]);
        assert_eq!((s.batches, s.datagrams), (3, 36));
        assert_eq!(s.latency, [1, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.latency_sum_us, 20_015);
    }
}
