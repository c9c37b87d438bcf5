//! One worker: a thread, a current-thread tokio runtime, an engine shard, and the tasks that read
//! its sockets. Tasks hold no buffers across awaits: they wait for readiness, then read into the
//! worker's one buffer and hand it to the engine synchronously. The relay sockets of all its
//! allocations are read by one task through an epoll set of their own ([`relay::poll_loop`]), so
//! an idle allocation costs a socket and a 16-byte table entry, not a task or a buffer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::net::UdpSocket;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{relay, stream, tcp_relay, Control, IoStats, RunConfig, WorkerSnapshot};
use crate::engine::server::{PEER_HEADROOM, PEER_TAILROOM};
use crate::engine::{
    AllocationId, Bind, ClientAddr, ClientDecision, Command, ConnectionId, FiveTuple, RelayKind,
    Server, Transport,
};
use crate::sys::{RecvBatch, BATCH};

/// Batches read per readiness wake-up before yielding to other sockets.
pub(crate) const READ_BUDGET: usize = 8;
/// Largest UDP payload.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

pub(crate) struct Relay {
    pub id: AllocationId,
    pub socket: UdpSocket,
    /// The IPv6 socket of a dual allocation.
    pub second: Option<UdpSocket>,
}

impl Relay {
    /// The socket that sends to `peer`: the second (IPv6) one of a dual allocation for an IPv6
    /// peer, else the first.
    #[inline]
    fn socket_for(&self, peer: SocketAddr) -> &UdpSocket {
        match &self.second {
            Some(s) if peer.is_ipv6() => s,
            _ => &self.socket,
        }
    }
}

/// Everything a worker's tasks share. Single-threaded: RefCells are never borrowed across an await.
pub(crate) struct WorkerState {
    pub engine: RefCell<Server>,
    pub udp: Vec<(SocketAddr, Rc<AsyncFd<UdpSocket>>)>,
    /// Relay sockets by allocation index, and the epoll set that watches them.
    pub relays: RefCell<Vec<Option<Relay>>>,
    pub relay_poll: relay::RelayPoll,
    pub streams: RefCell<HashMap<FiveTuple, Rc<stream::StreamTx>>>,
    /// Refusals logged once per 5-tuple, method and code, rate-limited.
    pub refusals: RefCell<super::refusals::RefusalLog>,
    /// The receive slots every socket of this worker reads into; each slot has room in front
    /// for headers written in place.
    pub batch: RefCell<RecvBatch>,
    /// Batch sizes and processing times, published with the snapshot.
    pub io_stats: RefCell<IoStats>,
    pub sock_buf_size: Option<usize>,
    /// Client stream connections: caps in total, per source address and on TLS handshakes.
    pub conn_limits: Arc<super::conn_limits::ConnLimits>,
    /// RFC 6062: listening sockets of this worker's TCP allocations, Connects under way, peer
    /// connections of all workers, and data connections about to switch to raw bytes.
    pub tcp_relays: RefCell<HashMap<AllocationId, JoinHandle<()>>>,
    pub connecting: RefCell<HashMap<ConnectionId, JoinHandle<()>>>,
    pub tcp_peers: tcp_relay::PeerTable,
    pub raw_binds: RefCell<HashMap<FiveTuple, (ConnectionId, std::net::TcpStream)>>,
    /// The kernel fast path's maps as this worker's allocations use them (`--xdp-interface`).
    pub fastpath: Option<RefCell<super::fastpath::mirror::Mirror>>,
    #[cfg(feature = "dtls")]
    pub dtls_sessions: RefCell<super::dtls::Sessions>,
    /// Where DTLS records are decrypted into (one per worker, not one per datagram).
    #[cfg(feature = "dtls")]
    pub dtls_buf: RefCell<Vec<u8>>,
}

/// Everything a worker thread starts with.
pub(crate) struct WorkerInit {
    pub index: usize,
    pub rc: RunConfig,
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
    pub tls: Vec<std::net::TcpListener>,
    pub dtls: Vec<std::net::UdpSocket>,
    pub conn_limits: Arc<super::conn_limits::ConnLimits>,
    /// Where TLS handshakes run (off the worker's thread).
    pub tls_handshakes: Option<tokio::runtime::Handle>,
    pub tcp_peers: tcp_relay::PeerTable,
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub snapshot: Arc<Mutex<WorkerSnapshot>>,
}

pub(crate) fn run(init: WorkerInit) {
    let WorkerInit {
        index,
        rc,
        udp,
        tcp,
        tls,
        dtls,
        conn_limits,
        tls_handshakes,
        tcp_peers,
        mut stop,
        control,
        snapshot,
    } = init;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker {index}: cannot start its runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seed = rand::random::<u64>() ^ index as u64;
        let mut engine = Server::new(rc.engine.clone(), rc.shared.clone(), now, unix, seed);
        let fastpath = rc.fastpath.clone().map(|fp| {
            engine.enable_fastpath();
            RefCell::new(super::fastpath::mirror::Mirror::new(fp))
        });
        let mut udp_socks = Vec::new();
        for s in udp {
            let addr = match s.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            match crate::sys::register(s, Interest::READABLE | Interest::WRITABLE) {
                Ok(s) => udp_socks.push((addr, Rc::new(s))),
                Err(e) => tracing::error!("worker {index}: udp {addr}: {e}"),
            }
        }
        let relay_poll = match relay::RelayPoll::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("worker {index}: cannot create its relay epoll set: {e}");
                return;
            }
        };
        let st = Rc::new(WorkerState {
            engine: RefCell::new(engine),
            udp: udp_socks,
            relays: RefCell::new(Vec::new()),
            relay_poll,
            streams: RefCell::new(HashMap::new()),
            refusals: RefCell::default(),
            batch: RefCell::new(RecvBatch::new(PEER_HEADROOM, MAX_DATAGRAM, PEER_TAILROOM)),
            io_stats: RefCell::new(IoStats::default()),
            sock_buf_size: rc.sock_buf_size,
            conn_limits,
            tcp_relays: RefCell::new(HashMap::new()),
            connecting: RefCell::new(HashMap::new()),
            tcp_peers,
            raw_binds: RefCell::new(HashMap::new()),
            fastpath,
            #[cfg(feature = "dtls")]
            dtls_sessions: RefCell::new(Default::default()),
            #[cfg(feature = "dtls")]
            dtls_buf: RefCell::new(Vec::new()),
        });
        for (addr, sock) in st.udp.clone() {
            tokio::task::spawn_local(udp_listener(st.clone(), addr, sock));
        }
        for l in tcp {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::task::spawn_local(stream::accept_loop(st.clone(), l, None));
                }
                Err(e) => tracing::error!("worker {index}: tcp listener: {e}"),
            }
        }
        if let Some(source) = &rc.tls_source {
            for l in tls {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        let Some(hs) = tls_handshakes.clone() else {
                            continue;
                        };
                        let source = Some((source.clone(), hs));
                        tokio::task::spawn_local(stream::accept_loop(st.clone(), l, source));
                    }
                    Err(e) => tracing::error!("worker {index}: tls listener: {e}"),
                }
            }
        }
        #[cfg(feature = "dtls")]
        if let Some(ctx) = &rc.dtls_context {
            for s in dtls {
                let Ok(addr) = s.local_addr() else {
                    continue;
                };
                match crate::sys::register(s, Interest::READABLE | Interest::WRITABLE) {
                    Ok(s) => {
                        let l = super::dtls::listener(st.clone(), ctx.clone(), addr, Rc::new(s));
                        tokio::task::spawn_local(l);
                    }
                    Err(e) => tracing::error!("worker {index}: dtls {addr}: {e}"),
                }
            }
        }
        #[cfg(not(feature = "dtls"))]
        drop(dtls);
        tokio::task::spawn_local(relay::poll_loop(st.clone()));
        tokio::task::spawn_local(timer_loop(st.clone(), snapshot));
        tokio::task::spawn_local(control_loop(st.clone(), control));
        tracing::debug!("worker {index} running");
        let _ = stop.wait_for(|s| *s).await;
        // Free every relay socket before the runtime goes away.
        st.relays.borrow_mut().clear();
        for (_, t) in st.tcp_relays.borrow_mut().drain() {
            t.abort();
        }
        for (_, t) in st.connecting.borrow_mut().drain() {
            t.abort();
        }
    });
}

/// Read `sock` in batches for as long as it is readable, handing each batch to
/// `on_batch(state, batch, now)` (see [`read_socket`]). Used by the listening sockets.
pub(crate) async fn read_batches(
    st: Rc<WorkerState>,
    sock: Rc<AsyncFd<UdpSocket>>,
    mut on_batch: impl FnMut(&Rc<WorkerState>, &mut RecvBatch, Instant),
) {
    loop {
        let mut ready = match sock.readable().await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !read_socket(&st, sock.get_ref(), &mut on_batch) {
            // The queue was empty when recvmmsg last returned: a datagram arriving since raised a
            // new event, which clear_ready keeps.
            ready.clear_ready();
        }
        tokio::task::yield_now().await;
    }
}

/// Read the non-blocking UDP socket `sock` (recvmmsg into the worker's slots), up to
/// [`READ_BUDGET`] batches, handing each batch to `on_batch(state, batch, now)`. Returns whether
/// the budget ran out with datagrams perhaps still queued; false once a batch came back short
/// (the queue was empty then: the call that would say EAGAIN is skipped) or the socket said
/// EAGAIN.
pub(crate) fn read_socket(
    st: &Rc<WorkerState>,
    sock: &UdpSocket,
    mut on_batch: impl FnMut(&Rc<WorkerState>, &mut RecvBatch, Instant),
) -> bool {
    for _ in 0..READ_BUDGET {
        let mut batch = st.batch.borrow_mut();
        let n = match batch.recv(sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            // ICMP errors surface as recv errors on Linux; they concern one peer, not us.
            Err(_) => continue,
        };
        let now = Instant::now();
        on_batch(st, &mut batch, now);
        drop(batch);
        let us = now.elapsed().as_micros() as u64;
        st.io_stats.borrow_mut().record(n, us);
        if n < BATCH {
            return false;
        }
    }
    true
}

/// Read client datagrams from one listening socket.
async fn udp_listener(st: Rc<WorkerState>, local: SocketAddr, sock: Rc<AsyncFd<UdpSocket>>) {
    read_batches(st, sock, move |st, batch, now| {
        for i in 0..batch.len() {
            let Some(from) = batch.addr(i) else {
                continue;
            };
            let five = FiveTuple {
                transport: Transport::Udp,
                client: ClientAddr::new(from),
                server: local,
            };
            let (slot, range) = batch.slot_mut(i);
            let packet = &slot[range];
            let decision = st
                .engine
                .borrow_mut()
                .handle_client_input(now, five, packet);
            if let ClientDecision::Forward {
                relay,
                peer,
                payload,
            } = decision
            {
                st.send_to_peer(relay, peer.addr(), &packet[payload]);
            }
        }
        st.drain_commands(now);
    })
    .await
}

/// Once a second: give the engine the wall clock, expire allocations (the engine's own heap
/// orders them), and publish what the worker holds for metrics and the admin API.
async fn timer_loop(st: Rc<WorkerState>, snapshot: Arc<Mutex<WorkerSnapshot>>) {
    // The snapshot published the round before, swapped back: its vectors keep their capacity.
    let mut spare = WorkerSnapshot::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        st.engine.borrow_mut().handle_wall_clock(now, unix);
        st.engine.borrow_mut().handle_timeout(now);
        st.drain_commands(now);
        #[cfg(feature = "dtls")]
        super::dtls::sweep(&st, now);
        if let Some(m) = &st.fastpath {
            m.borrow_mut().fold(&mut st.engine.borrow_mut());
        }
        st.publish(now, &snapshot, &mut spare);
    }
}

/// Carry out what the rest of the process asks (reload, drain, kill).
async fn control_loop(st: Rc<WorkerState>, mut control: mpsc::UnboundedReceiver<Control>) {
    while let Some(c) = control.recv().await {
        let now = Instant::now();
        {
            let mut engine = st.engine.borrow_mut();
            match c {
                Control::Reload(cfg) => engine.set_config(cfg),
                Control::Drain(on) => engine.set_draining(on),
                Control::Kill(id) => {
                    engine.kill(id);
                }
                Control::KillUser(user) => {
                    engine.kill_user(&user);
                }
                Control::List { select, reply } => {
                    let _ = reply.send(engine.list(now, &select));
                }
                Control::CountByUser { reply } => {
                    let _ = reply.send(engine.count_by_user());
                }
                Control::Snapshot { reply } => {
                    let mut snap = WorkerSnapshot {
                        live: engine.totals(now),
                        ..WorkerSnapshot::default()
                    };
                    st.fill_snapshot(&engine, &mut snap);
                    let _ = reply.send(snap);
                }
            }
        }
        st.drain_commands(now);
    }
}

impl WorkerState {
    /// Publish this worker's totals and top K: filled into `spare` (last round's snapshot, so
    /// nothing is allocated), then swapped with the published one under its lock.
    fn publish(&self, now: Instant, snapshot: &Mutex<WorkerSnapshot>, spare: &mut WorkerSnapshot) {
        let mut engine = self.engine.borrow_mut();
        engine.publish(now, &mut spare.live);
        self.fill_snapshot(&engine, spare);
        drop(engine);
        std::mem::swap(
            &mut *snapshot.lock().unwrap_or_else(|e| e.into_inner()),
            spare,
        );
    }

    /// A snapshot's counters and the worker's own state (all but `live`).
    fn fill_snapshot(&self, engine: &Server, snap: &mut WorkerSnapshot) {
        snap.counters = *engine.counters();
        snap.draining = engine.is_draining();
        #[cfg(feature = "dtls")]
        {
            (snap.dtls_sessions, snap.dtls_handshakes) = self.dtls_sessions.borrow().counts();
        }
        snap.io = *self.io_stats.borrow();
    }

    /// Send a payload from an allocation's relay socket. Non-blocking: a full socket buffer drops
    /// the datagram, as the network would.
    pub fn send_to_peer(&self, id: AllocationId, peer: SocketAddr, data: &[u8]) {
        let relays = self.relays.borrow();
        if let Some(Some(r)) = relays.get(id.index()) {
            if r.id == id {
                let _ = r.socket_for(peer).send_to(data, peer);
            }
        }
    }

    /// Send framed datagrams (ranges of `batch`'s receive area) to their clients: UDP ones
    /// through their listening socket with one sendmmsg per run of the same socket.
    pub fn send_frames_to_client(
        &self,
        batch: &RecvBatch,
        frames: &[(std::ops::Range<usize>, Option<FiveTuple>)],
    ) {
        let mut msgs: [(&[u8], SocketAddr); BATCH] =
            [(&[], SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
        let mut n = 0;
        let mut sock: Option<&Rc<AsyncFd<UdpSocket>>> = None;
        for (range, to) in frames {
            let Some(to) = to else {
                continue;
            };
            let data = batch.bytes(range.clone());
            if to.transport != Transport::Udp {
                self.send_to_client(*to, data);
                continue;
            }
            let Some((_, s)) = self.udp.iter().find(|(a, _)| *a == to.server) else {
                continue;
            };
            if sock.is_some_and(|cur| !Rc::ptr_eq(cur, s)) {
                if let Some(cur) = sock {
                    crate::sys::send_batch(cur.get_ref(), &msgs[..n]);
                }
                n = 0;
            }
            sock = Some(s);
            msgs[n] = (data, to.client.addr());
            n += 1;
        }
        if let (Some(s), true) = (sock, n > 0) {
            crate::sys::send_batch(s.get_ref(), &msgs[..n]);
        }
    }

    /// Send bytes to a client on its 5-tuple.
    pub fn send_to_client(&self, to: FiveTuple, data: &[u8]) {
        match to.transport {
            Transport::Udp => {
                if let Some((_, s)) = self.udp.iter().find(|(a, _)| *a == to.server) {
                    let _ = s.get_ref().send_to(data, to.client.addr());
                }
            }
            #[cfg(feature = "dtls")]
            Transport::Dtls => super::dtls::send(self, to, data),
            #[cfg(not(feature = "dtls"))]
            Transport::Dtls => {}
            Transport::Tcp | Transport::Tls => {
                if let Some(tx) = self.streams.borrow().get(&to) {
                    tx.send_frame(data);
                }
            }
        }
    }

    /// Carry out everything the engine asked for.
    pub fn drain_commands(self: &Rc<Self>, now: Instant) {
        // Fast-path changes first: a client that got its ChannelBind answer finds the channel
        // in the kernel already.
        if let Some(m) = &self.fastpath {
            m.borrow_mut().apply(&mut self.engine.borrow_mut(), now);
        }
        loop {
            let cmd = self.engine.borrow_mut().poll_command();
            let Some(cmd) = cmd else {
                if let Some(m) = &self.fastpath {
                    m.borrow_mut().apply(&mut self.engine.borrow_mut(), now);
                }
                return;
            };
            match cmd {
                Command::Send { to, data } => {
                    self.refusals.borrow_mut().observe(now, to, &data);
                    self.send_to_client(to, &data)
                }
                Command::BindRelay {
                    id,
                    addr,
                    dont_fragment,
                    kind,
                } => {
                    let result = match kind {
                        RelayKind::Tcp => tcp_relay::listen(self, id, addr.addr()),
                        RelayKind::Udp => relay::bind(self, id, addr.addr(), dont_fragment, false),
                        RelayKind::UdpSecond => {
                            relay::bind(self, id, addr.addr(), dont_fragment, true)
                        }
                    };
                    let outcome = match &result {
                        Ok(_) => Bind::Bound,
                        Err(e) => {
                            tracing::debug!("relay bind {addr}: {e}");
                            Bind::Failed
                        }
                    };
                    self.engine
                        .borrow_mut()
                        .handle_relay_bound(now, id, outcome);
                }
                Command::ConnectPeer { cid, from, peer } => {
                    tcp_relay::connect(self, cid, from.addr(), peer.addr())
                }
                Command::BindConnection { cid, client } => tcp_relay::bind(self, cid, client),
                Command::CloseConnection { cid } => tcp_relay::close(self, cid),
                Command::FreeRelay { id } => {
                    tcp_relay::unlisten(self, id);
                    let mut relays = self.relays.borrow_mut();
                    if let Some(slot) = relays.get_mut(id.index()) {
                        if slot.as_ref().is_some_and(|r| r.id == id) {
                            // Closing the sockets takes them out of the epoll set.
                            *slot = None;
                        }
                    }
                }
            }
        }
    }
}
