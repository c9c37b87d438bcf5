//! Relay sockets (RFC 8656 §7.2 step 6): one UDP socket per allocation, owned and polled by the
//! worker that made the allocation. Peer datagrams are read behind a headroom so the engine writes
//! the ChannelData or Data-indication header in place.
//!
//! A worker's relay sockets sit in one epoll set of its own ([`RelayPoll`]), which is the only
//! thing tokio watches for them: one task reads every relay socket the set reports ready. An
//! allocation so costs a socket and 16 bytes in the worker's table — no task, no tokio
//! registration — and a burst over many allocations is one wake-up, not one task poll each.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::unix::AsyncFd;

use super::worker::{Relay, WorkerState, READ_BUDGET};
use crate::engine::{AllocationId, FiveTuple, PeerAddr, PeerDecision};
use crate::sys::{Epoll, Events, RecvBatch, Trigger, BATCH};

/// Ready relay sockets taken from the epoll set per system call.
const MAX_EVENTS: usize = 256;

/// The epoll set holding a worker's relay sockets, itself registered with the worker's runtime.
/// Sockets are added edge-triggered, keyed by allocation id (and which of a dual allocation's two
/// sockets), and leave the set when they are closed.
pub(crate) struct RelayPoll {
    epoll: AsyncFd<Epoll>,
}

impl RelayPoll {
    pub(crate) fn new() -> io::Result<Self> {
        let epoll = crate::sys::register(Epoll::new()?, tokio::io::Interest::READABLE)?;
        Ok(RelayPoll { epoll })
    }

    fn add(&self, socket: &UdpSocket, key: u64) -> io::Result<()> {
        self.epoll.get_ref().add(socket, key, Trigger::Edge)
    }
}

/// The epoll key of relay socket `second` of allocation `id`: its index, which half, and the low
/// 31 bits of its generation (a slot would have to be reused 2^31 times between an event and its
/// reading for a stale key to pass).
fn key(id: AllocationId, second: bool) -> u64 {
    (u64::from(id.generation & GEN_MASK) << 33) | (u64::from(second) << 32) | u64::from(id.index)
}

const GEN_MASK: u32 = 0x7fff_ffff;

/// The relay socket an epoll key names, if its allocation still has it.
fn socket_of(relays: &[Option<Relay>], key: u64) -> Option<(AllocationId, &UdpSocket)> {
    let index = (key & 0xffff_ffff) as usize;
    let r = relays.get(index)?.as_ref()?;
    if u64::from(r.id.generation & GEN_MASK) != key >> 33 {
        return None;
    }
    let socket = if key & (1 << 32) != 0 {
        r.second.as_ref()?
    } else {
        &r.socket
    };
    Some((r.id, socket))
}

/// Bind the relay socket of allocation `id` and start reading it. `second`: the IPv6 socket of a
/// dual allocation, kept beside the first one (RFC 8656 §7.2).
pub(crate) fn bind(
    st: &Rc<WorkerState>,
    id: AllocationId,
    addr: SocketAddr,
    dont_fragment: bool,
    second: bool,
) -> io::Result<()> {
    let socket = super::udp::bind_relay(addr, dont_fragment, st.sock_buf_size)?;
    let mut relays = st.relays.borrow_mut();
    if second {
        // The first socket is there unless the allocation ended meanwhile.
        return match relays.get_mut(id.index()).and_then(Option::as_mut) {
            Some(r) if r.id == id => {
                st.relay_poll.add(&socket, key(id, true))?;
                // A replaced socket leaves the epoll set as it closes.
                r.second = Some(socket);
                Ok(())
            }
            _ => Ok(()),
        };
    }
    st.relay_poll.add(&socket, key(id, false))?;
    if relays.len() <= id.index() {
        relays.resize_with(id.index() + 1, || None);
    }
    relays[id.index()] = Some(Relay {
        id,
        socket,
        second: None,
    });
    Ok(())
}

/// Read every relay socket the worker's epoll set reports, for as long as the worker runs.
pub(crate) async fn poll_loop(st: Rc<WorkerState>) {
    let mut events = Events::with_capacity(MAX_EVENTS);
    // Sockets left readable when their read budget ran out: edge-triggered, the set will not
    // report them again until more arrives, so they are read again next round.
    let mut pending: Vec<u64> = Vec::new();
    let mut keys: Vec<u64> = Vec::with_capacity(MAX_EVENTS);
    let mut round = Round {
        used: 0,
        out: Vec::with_capacity(BATCH),
    };
    loop {
        let mut guard = None;
        if pending.is_empty() {
            match st.relay_poll.epoll.readable().await {
                Ok(g) => guard = Some(g),
                Err(e) => {
                    tracing::error!("relay epoll: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let _ = st.relay_poll.epoll.get_ref().wait(&mut events, 0);
        keys.clear();
        keys.append(&mut pending);
        keys.extend(events.tokens());
        // The sockets' datagrams are read into successive slots of the worker's receive batch,
        // so that the frames for clients of several allocations leave in one sendmmsg.
        {
            let mut batch = st.batch.borrow_mut();
            // Held through the round: relay sockets are bound and freed only by
            // `drain_commands`, which a round never calls, so no socket closes while read.
            let relays = st.relays.borrow();
            for &k in &keys {
                let Some((id, socket)) = socket_of(&relays, k) else {
                    continue;
                };
                if round.drain(&st, &mut batch, id, socket) {
                    pending.push(k);
                }
            }
            round.flush(&st, &batch);
        }
        if !events.is_full() {
            // Every socket reported has been read to a short batch (or is pending). A datagram
            // arriving since raised a new event on the set, which clear_ready keeps.
            if let Some(mut g) = guard {
                g.clear_ready();
            }
        }
        tokio::task::yield_now().await;
    }
}

/// One round of relay reads: how many receive slots hold datagrams, and the frames built in
/// them for clients, not yet sent.
struct Round {
    used: usize,
    out: Vec<(Range<usize>, Option<FiveTuple>)>,
}

impl Round {
    /// Read relay socket `socket` of allocation `id` into the free slots (sending what the round
    /// holds whenever they run out) and frame each datagram for its client, up to the read
    /// budget. True when the budget ran out with datagrams perhaps still queued.
    fn drain(
        &mut self,
        st: &Rc<WorkerState>,
        batch: &mut RecvBatch,
        id: AllocationId,
        socket: &UdpSocket,
    ) -> bool {
        let mut read = 0;
        let mut errors = 0;
        loop {
            if self.used == BATCH {
                self.flush(st, batch);
            }
            let free = BATCH - self.used;
            let n = match batch.recv_at(socket, self.used) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // ICMP errors surface as recv errors on Linux; they concern one peer, not us.
                Err(_) => {
                    errors += 1;
                    if errors >= READ_BUDGET {
                        return true;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            for i in self.used..self.used + n {
                let Some(peer) = batch.addr(i) else {
                    continue;
                };
                let base = batch.slot_start(i);
                let (slot, range) = batch.slot_mut(i);
                let decision = st.engine.borrow_mut().handle_peer_input(
                    now,
                    id,
                    PeerAddr::new(peer),
                    slot,
                    range,
                );
                if let PeerDecision::Forward { to, frame } = decision {
                    self.out
                        .push((base + frame.start..base + frame.end, Some(to)));
                }
            }
            self.used += n;
            let us = now.elapsed().as_micros() as u64;
            st.io_stats.borrow_mut().record(n, us);
            read += n;
            if n < free {
                // The queue was empty when recvmmsg returned (see `read_socket`).
                return false;
            }
            if read >= READ_BUDGET * BATCH {
                return true;
            }
        }
    }

    /// Send the round's frames and free every slot.
    fn flush(&mut self, st: &Rc<WorkerState>, batch: &RecvBatch) {
        st.send_frames_to_client(batch, &self.out);
        self.out.clear();
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn keys_name_index_generation_and_half() {
        let id = AllocationId {
            index: 7,
            generation: u32::MAX,
        };
        let a = key(id, false);
        let b = key(id, true);
        assert_ne!(a, b);
        assert_eq!(a & 0xffff_ffff, 7);
        assert_eq!(b >> 33, u64::from(GEN_MASK));
        assert_eq!(b & (1 << 32), 1 << 32);
    }

    #[test]
    fn a_stale_key_finds_nothing() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let id = AllocationId {
            index: 1,
            generation: 3,
        };
        let relays = vec![
            None,
            Some(Relay {
                id,
                socket: sock,
                second: None,
            }),
        ];
        assert!(socket_of(&relays, key(id, false)).is_some());
        // The second half of a single-stack allocation, an older generation, an unknown index.
        assert!(socket_of(&relays, key(id, true)).is_none());
        let old = AllocationId {
            index: 1,
            generation: 2,
        };
        assert!(socket_of(&relays, key(old, false)).is_none());
        let far = AllocationId {
            index: 9,
            generation: 3,
        };
        assert!(socket_of(&relays, key(far, false)).is_none());
    }
}
