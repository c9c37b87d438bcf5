//! Relay sockets (RFC 8656 §7.2 step 6): one UDP socket per allocation, owned and polled by the
//! worker that made the allocation. Peer datagrams are read behind a headroom so the engine writes
//! the ChannelData or Data-indication header in place.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;

use super::udp::BATCH;

use super::worker::{read_batches, Relay, WorkerState};
use crate::engine::{AllocationId, FiveTuple, PeerDecision};

/// Bind the relay socket of allocation `id` and start reading it. `second`: the IPv6 socket of a
/// dual allocation, kept beside the first one (RFC 8656 §7.2).
pub(crate) fn bind(
    st: &Rc<WorkerState>,
    id: AllocationId,
    addr: SocketAddr,
    dont_fragment: bool,
    second: bool,
) -> io::Result<()> {
    let s = super::udp::bind_relay(addr, dont_fragment, st.sock_buf_size)?;
    // SAFETY: the AsyncFd owns the std socket, whose fd stays open and unchanged until the
    // AsyncFd is dropped.
    let socket = Rc::new(unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?);
    let task = tokio::task::spawn_local(read_loop(st.clone(), id, socket.clone()));
    let mut relays = st.relays.borrow_mut();
    if relays.len() <= id.index() {
        relays.resize_with(id.index() + 1, || None);
    }
    if second {
        match relays[id.index()].as_mut() {
            Some(r) if r.id == id => {
                if let Some((_, old)) = r.second.replace((socket, task)) {
                    old.abort();
                }
            }
            _ => task.abort(),
        }
        return Ok(());
    }
    let relay = Relay {
        id,
        socket,
        task,
        second: None,
    };
    if let Some(old) = relays[id.index()].replace(relay) {
        old.abort();
    }
    Ok(())
}

async fn read_loop(st: Rc<WorkerState>, id: AllocationId, sock: Rc<AsyncFd<UdpSocket>>) {
    read_batches(st, sock, move |st, batch, now| {
        // Every datagram of one relay goes to the same client: collect the framed ones and send
        // them with one sendmmsg.
        let mut out: [(Range<usize>, Option<FiveTuple>); BATCH] =
            std::array::from_fn(|_| (0..0, None));
        let mut count = 0;
        for i in 0..batch.len() {
            let Some(peer) = batch.addr(i) else {
                continue;
            };
            let base = batch.slot_start(i);
            let (slot, range) = batch.slot_mut(i);
            let decision = st
                .engine
                .borrow_mut()
                .handle_peer_input(now, id, peer, slot, range);
            if let PeerDecision::Forward { to, frame } = decision {
                out[count] = (base + frame.start..base + frame.end, Some(to));
                count += 1;
            }
        }
        st.send_frames_to_client(batch, &out[..count]);
    })
    .await
}
