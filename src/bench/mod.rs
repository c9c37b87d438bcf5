//! The load harness behind `vigi-bench`: a `turnutils_uclient`-style client that drives many TURN
//! sessions from a few threads, and a fast UDP echo peer. It shares only [`crate::proto`] and the
//! credential code ([`crate::engine::auth`]) with the relay.
//!
//! - [`session`]: one client session, set up with blocking sockets (Allocate, ChannelBind or
//!   CreatePermission; long-term or TURN REST credentials).
//! - [`load`]: the data phase, an epoll loop per thread over non-blocking sockets.
//! - [`stats`]: RTT/jitter histograms and the printed summaries (uclient's lines, a table, JSON).
//! - [`peer`]: the echo peer.
//! - Epoll sets and `recvmmsg`/`sendmmsg` are [`crate::sys`]'s, shared with the relay.

pub mod load;
pub mod peer;
pub mod session;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use session::{Session, SessionConfig, SetupError};

/// The channel number each session binds (channels are per allocation, so one number serves all).
pub const CHANNEL: u16 = 0x4000;

/// Where each client sends.
#[derive(Debug, Clone, Copy)]
pub enum PeerPlan {
    /// Every client to this peer (an echo peer).
    Fixed(SocketAddr),
    /// Clients in pairs, each to the other's relay address (`-y`).
    Pairs,
}

/// What setting up many sessions gave.
#[derive(Debug)]
pub struct Setup {
    /// The sessions that were set up, in client order.
    pub sessions: Vec<Session>,
    pub failures: Vec<SetupError>,
    /// Time to allocate every relay, and the whole setup.
    pub allocate_time: Duration,
    pub total_time: Duration,
    pub allocations: usize,
}

impl Setup {
    pub fn allocations_per_s(&self) -> f64 {
        let s = self.allocate_time.as_secs_f64();
        if s > 0.0 {
            self.allocations as f64 / s
        } else {
            0.0
        }
    }
}

/// Run `f(i)` for every i in 0..n on `threads` threads; results in order.
fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|sc| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

/// Allocate `clients` relays: over UDP with `window` > 1, `threads` threads each keep up to
/// `window` Allocates in flight; otherwise (and over TCP) each thread allocates one at a time.
fn allocate_all(
    cfg: &SessionConfig,
    clients: usize,
    threads: usize,
    window: usize,
) -> Vec<Result<Session, SetupError>> {
    if cfg.tcp || window <= 1 || clients == 0 {
        return par_map(clients, threads, |i| Session::allocate(cfg, i as u32));
    }
    let threads = threads.clamp(1, clients);
    let per = clients.div_ceil(threads);
    let chunks = par_map(threads, threads, |t| {
        let start = (t * per).min(clients) as u32;
        let end = ((t + 1) * per).min(clients) as u32;
        session::allocate_pipelined(cfg, start..end, window)
    });
    chunks.into_iter().flatten().collect()
}

/// Allocate `clients` relays (see [`allocate_all`]), then bind each to its peer: a channel, or a
/// permission when `send_indications`. With [`PeerPlan::Pairs`] a client whose partner failed is
/// dropped too.
pub fn setup(
    cfg: &SessionConfig,
    clients: usize,
    threads: usize,
    window: usize,
    peers: PeerPlan,
    send_indications: bool,
    bind_peers: bool,
) -> Setup {
    let t0 = Instant::now();
    let allocated = allocate_all(cfg, clients, threads, window);
    let allocate_time = t0.elapsed();
    let mut failures = Vec::new();
    let mut slots: Vec<Option<Session>> = Vec::with_capacity(clients);
    for r in allocated {
        match r {
            Ok(s) => slots.push(Some(s)),
            Err(e) => {
                failures.push(e);
                slots.push(None);
            }
        }
    }
    let allocations = slots.iter().flatten().count();
    if let PeerPlan::Pairs = peers {
        for pair in slots.chunks_mut(2) {
            if pair.len() < 2 || pair[0].is_none() || pair[1].is_none() {
                pair.iter_mut().for_each(|s| *s = None);
            }
        }
    }
    let targets: Vec<Option<SocketAddr>> = (0..slots.len())
        .map(|i| match peers {
            PeerPlan::Fixed(p) => Some(p),
            PeerPlan::Pairs => slots.get(i ^ 1).and_then(|s| s.as_ref()).map(|s| s.relay),
        })
        .collect();
    let channel = (!send_indications).then_some(CHANNEL);
    let cells: Vec<Mutex<Option<Session>>> = slots.into_iter().map(Mutex::new).collect();
    let bound = par_map(cells.len(), threads, |i| {
        let mut s = cells[i].lock().unwrap_or_else(|e| e.into_inner()).take()?;
        if !bind_peers {
            return Some(Ok(s));
        }
        let r = match targets[i] {
            Some(peer) => s.bind_peer(cfg, peer, channel),
            None => return None,
        };
        Some(r.map(|()| s))
    });
    let mut sessions = Vec::new();
    for r in bound.into_iter().flatten() {
        match r {
            Ok(s) => sessions.push(s),
            Err(e) => failures.push(e),
        }
    }
    Setup {
        sessions,
        failures,
        allocate_time,
        total_time: t0.elapsed(),
        allocations,
    }
}
