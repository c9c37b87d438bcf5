//! Relay sockets (RFC 8656 §7.2 step 6): one UDP socket per allocation, owned and polled by the
//! worker that made the allocation. Peer datagrams are read behind a headroom so the engine writes
//! the ChannelData or Data-indication header in place.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::worker::{Relay, WorkerState, MAX_DATAGRAM, READ_BUDGET};
use crate::engine::server::PEER_HEADROOM;
use crate::engine::{AllocationId, PeerDecision};

/// Bind the relay socket of allocation `id` and start reading it.
pub(crate) fn bind(
    st: &Rc<WorkerState>,
    id: AllocationId,
    addr: SocketAddr,
    dont_fragment: bool,
) -> io::Result<()> {
    let s = super::udp::bind_relay(addr, dont_fragment, st.sock_buf_size)?;
    let socket = Rc::new(UdpSocket::from_std(s)?);
    let task = tokio::task::spawn_local(read_loop(st.clone(), id, socket.clone()));
    let mut relays = st.relays.borrow_mut();
    if relays.len() <= id.index() {
        relays.resize_with(id.index() + 1, || None);
    }
    if let Some(old) = relays[id.index()].replace(Relay { id, socket, task }) {
        old.task.abort();
    }
    Ok(())
}

async fn read_loop(st: Rc<WorkerState>, id: AllocationId, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        for _ in 0..READ_BUDGET {
            let mut buf = st.buf.borrow_mut();
            let end = PEER_HEADROOM + MAX_DATAGRAM;
            let (n, peer) = match sock.try_recv_from(&mut buf[PEER_HEADROOM..end]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let now = Instant::now();
            let payload = PEER_HEADROOM..PEER_HEADROOM + n;
            let decision = st
                .engine
                .borrow_mut()
                .handle_peer_input(now, id, peer, &mut buf, payload);
            if let PeerDecision::Forward { to, frame } = decision {
                st.send_to_client(to, &buf[frame]);
            }
        }
        tokio::task::yield_now().await;
    }
}
