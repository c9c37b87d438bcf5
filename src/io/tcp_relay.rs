//! TCP relays (RFC 6062), the I/O half: the listening socket on an allocation's relayed address,
//! outgoing connections to peers (Connect), and the raw byte pipe between a client's data
//! connection and its peer once ConnectionBind has joined them. The engine decides; this module
//! only carries out [`Command::BindRelay`] (with `tcp`), [`Command::ConnectPeer`],
//! [`Command::BindConnection`] and [`Command::CloseConnection`].
//!
//! A peer connection waiting for its ConnectionBind is parked, unread, in a table shared by the
//! workers (the client's data connection may reach any worker); the worker that takes the data
//! connection takes the peer socket from there.
//!
//! [`Command::BindRelay`]: crate::engine::Command::BindRelay
//! [`Command::ConnectPeer`]: crate::engine::Command::ConnectPeer
//! [`Command::BindConnection`]: crate::engine::Command::BindConnection
//! [`Command::CloseConnection`]: crate::engine::Command::CloseConnection

use crate::engine::policy::{PipeBudget, PipeDir};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use super::worker::WorkerState;
use crate::engine::{AllocationId, ConnectionId, FiveTuple};

/// A peer connection as the workers share it.
#[derive(Debug)]
pub(crate) enum PeerConn {
    /// Connected, waiting for the client's ConnectionBind; not read meanwhile, so the kernel
    /// buffers what the peer sends (RFC 6062 §5.3).
    Parked(std::net::TcpStream),
    /// Piped to a data connection; notify to close both.
    Bound(Arc<Notify>),
}

/// Peer connections of every worker by CONNECTION-ID.
pub(crate) type PeerTable = Arc<Mutex<HashMap<ConnectionId, PeerConn>>>;

fn lock(t: &PeerTable) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, PeerConn>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listening socket of a TCP allocation. SO_REUSEPORT lets Connect's outgoing connections
/// bind the same address (RFC 6062 §5.2: they come from the relayed transport address).
pub(crate) fn listen(st: &Rc<WorkerState>, id: AllocationId, addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::from_std(super::udp::bind_tcp(addr, 64)?)?;
    let task = tokio::task::spawn_local(accept_loop(st.clone(), id, listener));
    if let Some(old) = st.tcp_relays.borrow_mut().insert(id, task) {
        old.abort();
    }
    Ok(())
}

/// Stop listening for allocation `id` (its connections are closed by their own commands).
pub(crate) fn unlisten(st: &WorkerState, id: AllocationId) {
    if let Some(t) = st.tcp_relays.borrow_mut().remove(&id) {
        t.abort();
    }
}

async fn accept_loop(st: Rc<WorkerState>, id: AllocationId, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("tcp relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let cid = st
            .engine
            .borrow_mut()
            .handle_tcp_peer_accepted(now, id, peer);
        if let Some(cid) = cid {
            park(&st, cid, stream);
        }
        st.drain_commands(now);
    }
}

fn park(st: &WorkerState, cid: ConnectionId, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if let Ok(s) = stream.into_std() {
        lock(&st.tcp_peers).insert(cid, PeerConn::Parked(s));
    }
}

/// Connect from the relayed address `from` to `peer` (RFC 6062 §5.2); the engine hears the
/// outcome, and its 30 s timer ends an attempt that hangs.
pub(crate) fn connect(st: &Rc<WorkerState>, cid: ConnectionId, from: SocketAddr, peer: SocketAddr) {
    let st2 = st.clone();
    let task = tokio::task::spawn_local(async move {
        let r = connect_from(from, peer).await;
        st2.connecting.borrow_mut().remove(&cid);
        let ok = match r {
            Ok(s) => {
                park(&st2, cid, s);
                true
            }
            Err(e) => {
                tracing::debug!("tcp relay connect {from} -> {peer}: {e}");
                false
            }
        };
        let now = Instant::now();
        st2.engine
            .borrow_mut()
            .handle_tcp_peer_connected(now, cid, ok);
        st2.drain_commands(now);
    });
    st.connecting.borrow_mut().insert(cid, task);
}

async fn connect_from(from: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let s = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(from)?;
    s.connect(peer).await
}

/// Close peer connection `cid`: stop connecting, drop it parked, or end its pipe.
pub(crate) fn close(st: &WorkerState, cid: ConnectionId) {
    if let Some(t) = st.connecting.borrow_mut().remove(&cid) {
        t.abort();
    }
    match lock(&st.tcp_peers).remove(&cid) {
        Some(PeerConn::Bound(stop)) => stop.notify_one(),
        Some(PeerConn::Parked(_)) | None => {}
    }
}

/// The ConnectionBind on `client` succeeded: hand the parked peer socket to that connection's
/// task, which switches to raw bytes after the frame it is handling.
pub(crate) fn bind(st: &WorkerState, cid: ConnectionId, client: FiveTuple) {
    let parked = {
        let mut t = lock(&st.tcp_peers);
        match t.remove(&cid) {
            Some(PeerConn::Parked(s)) => Some(s),
            other => {
                if let Some(o) = other {
                    t.insert(cid, o);
                }
                None
            }
        }
    };
    match parked {
        Some(s) => {
            st.raw_binds.borrow_mut().insert(client, (cid, s));
        }
        // The peer went away in the meantime.
        None => st.engine.borrow_mut().handle_tcp_connection_closed(cid),
    }
}

/// Copy bytes between a data connection and its peer until either side closes or the engine
/// closes the connection. `leftover`: bytes the client sent after its ConnectionBind, read
/// already. Peer bytes go to the client through `tx`, the connection's writer queue. Each chunk
/// read is counted, one packet, into the connection's
/// [`TcpTraffic`](crate::engine::stats::TcpTraffic), which the engine owning
/// the allocation (perhaps on another worker) folds into the allocation's counters.
/// What a pipe reads at once (less when its budget is smaller: see [`PipeBudget::chunk`]).
const PIPE_CHUNK: usize = 16 * 1024;

/// Wait until `n` bytes may pass `dir` under the allocation's `--max-bps` and the server's
/// `--bps-capacity`: a TCP pipe cannot drop bytes as a UDP relay does, so it slows down, and TCP
/// flow control slows the sender in turn.
async fn pace(budget: Option<&PipeBudget>, dir: PipeDir, n: usize) {
    let Some(b) = budget else {
        return;
    };
    // In pieces no larger than a bucket holds, so each can pass.
    let mut left = n;
    while left > 0 {
        let piece = b.chunk(left);
        while let Some(wait) = b.take(std::time::Instant::now(), dir, piece) {
            tokio::time::sleep(wait).await;
        }
        left -= piece;
    }
}

pub(crate) async fn pipe<R>(
    st: &Rc<WorkerState>,
    cid: ConnectionId,
    peer: std::net::TcpStream,
    mut client_rd: R,
    tx: Rc<super::stream::StreamTx>,
    leftover: Vec<u8>,
) where
    R: AsyncRead + Unpin,
{
    let stop = Arc::new(Notify::new());
    lock(&st.tcp_peers).insert(cid, PeerConn::Bound(stop.clone()));
    // Gone only if the allocation ended meanwhile: its close command then ends this pipe.
    let traffic = st.engine.borrow().tcp_traffic(cid).unwrap_or_default();
    let budget = st.engine.borrow().tcp_budget(cid);
    if let Ok(peer) = TcpStream::from_std(peer) {
        let (mut peer_rd, mut peer_wr) = peer.into_split();
        let up = async {
            if !leftover.is_empty() {
                pace(budget.as_deref(), PipeDir::ToPeer, leftover.len()).await;
                peer_wr.write_all(&leftover).await?;
                traffic.add_up(leftover.len());
            }
            let mut buf = vec![0u8; PIPE_CHUNK];
            let chunk = budget.as_ref().map_or(PIPE_CHUNK, |b| b.chunk(PIPE_CHUNK));
            loop {
                let n = client_rd.read(&mut buf[..chunk]).await?;
                if n == 0 {
                    return peer_wr.shutdown().await;
                }
                pace(budget.as_deref(), PipeDir::ToPeer, n).await;
                peer_wr.write_all(&buf[..n]).await?;
                traffic.add_up(n);
            }
        };
        let down = async {
            let mut buf = vec![0u8; PIPE_CHUNK];
            let chunk = budget.as_ref().map_or(PIPE_CHUNK, |b| b.chunk(PIPE_CHUNK));
            loop {
                let n = peer_rd.read(&mut buf[..chunk]).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(());
                }
                pace(budget.as_deref(), PipeDir::ToClient, n).await;
                if tx.send(&buf[..n]).await == super::stream::Sent::Closed {
                    return Ok(());
                }
                traffic.add_down(n);
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = stop.notified() => {}
        }
    }
    lock(&st.tcp_peers).remove(&cid);
    st.engine.borrow_mut().handle_tcp_connection_closed(cid);
}
