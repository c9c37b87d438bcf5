//! TCP relays (RFC 6062): an allocation made with REQUESTED-TRANSPORT=TCP over a TCP or TLS
//! control connection listens on its relayed address. Each peer connection, made by Connect
//! (§5.2) or accepted from a permitted peer and announced with a ConnectionAttempt indication
//! (§5.3), gets a CONNECTION-ID; a ConnectionBind on a new data connection from the client (§5.4)
//! joins the two, after which the worker copies raw bytes both ways and the engine is no longer
//! asked. A Connect whose peer does not answer within 30 s gets 447; a peer connection not bound
//! within 30 s is closed (§5.2, §5.3). Sockets are the worker's: the engine only decides.
//!
//! The connection table lives in [`Shared`]: the kernel may hand the data connection to any
//! worker, whose engine then checks the ConnectionBind against it.

use super::*;
use crate::engine::policy::PipeBudget;
use crate::engine::stats::TcpTraffic;

/// How long a Connect may take, and how long a peer connection waits for its ConnectionBind
/// (RFC 6062 §5.2, §5.3: 30 seconds).
pub const TCP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Peer connections one TCP allocation may hold (bound or not).
pub const MAX_TCP_CONNECTIONS_PER_ALLOCATION: usize = 64;

/// A peer connection's CONNECTION-ID (RFC 6062 §6.2.1), unique within the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

/// Where a peer connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnState {
    /// Connect asked for it; the worker is connecting. The response waits for
    /// [`Server::handle_tcp_peer_connected`].
    Connecting(Later),
    /// Connected (either way), waiting for a ConnectionBind.
    Pending,
    /// Joined to the client's data connection on this 5-tuple.
    Bound(FiveTuple),
}

#[derive(Debug, Clone)]
pub(super) struct TcpConnection {
    /// The engine ([`Server`]'s shard) holding the allocation, and the allocation there.
    pub shard: u32,
    pub alloc: AllocationId,
    /// The allocation's username: only its owner may bind the connection.
    pub username: String,
    pub peer: SocketAddr,
    pub state: ConnState,
    /// When Connecting or Pending ends (RFC 6062's 30 s).
    pub deadline: Instant,
    /// Its bytes, counted by the pipe; the allocation holds the same counters.
    pub traffic: Arc<TcpTraffic>,
    /// Its allocation's pipe budget (`--max-bps`, `--bps-capacity`).
    pub budget: Option<Arc<PipeBudget>>,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, TcpConnection>> {
        self.tcp_conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Server {
    /// Connections of allocation `id` of this engine: (count, whether one goes to `peer`).
    fn connections_of(&self, id: AllocationId, peer: SocketAddr) -> (usize, bool) {
        let conns = self.shared.conns();
        let mine = conns
            .values()
            .filter(|c| c.shard == self.shard && c.alloc == id);
        let n = mine.clone().count();
        (n, mine.into_iter().any(|c| c.peer == peer))
    }

    fn add_connection(
        &mut self,
        now: Instant,
        alloc: AllocationId,
        peer: SocketAddr,
        state: ConnState,
    ) -> ConnectionId {
        let traffic = Arc::new(TcpTraffic::default());
        let (username, budget) = match self.get_mut(alloc) {
            Some(a) => {
                a.settle_tcp_traffic();
                a.add_tcp_traffic(traffic.clone());
                (a.username().to_string(), Some(a.pipe_budget().clone()))
            }
            None => (String::new(), None),
        };
        let deadline = now + TCP_CONNECTION_TIMEOUT;
        let shared = self.shared.clone();
        let mut conns = shared.conns();
        let cid = loop {
            let cid = ConnectionId(self.rng.gen());
            if cid.0 != 0 && !conns.contains_key(&cid) {
                break cid;
            }
        };
        conns.insert(
            cid,
            TcpConnection {
                shard: self.shard,
                alloc,
                username,
                peer,
                state,
                deadline,
                traffic,
                budget,
            },
        );
        self.conn_timers.push(Reverse((deadline, cid)));
        cid
    }

    /// Close every peer connection of allocation `id` (it is ending), wherever it is bound.
    pub(super) fn close_connections_of(&mut self, id: AllocationId) {
        let shard = self.shard;
        let mut conns = self.shared.conns();
        conns.retain(|cid, c| {
            let mine = c.shard == shard && c.alloc == id;
            if mine {
                self.commands
                    .push_back(Command::CloseConnection { cid: *cid });
            }
            !mine
        });
    }

    /// Connections past their 30 s: a Connect still connecting is answered 447, an unbound
    /// peer connection is closed.
    pub(super) fn expire_connections(&mut self, now: Instant) {
        while let Some(Reverse((t, cid))) = self.conn_timers.peek().copied() {
            if t > now {
                break;
            }
            self.conn_timers.pop();
            let c = {
                let mut conns = self.shared.conns();
                match conns.get(&cid) {
                    Some(c) if c.deadline <= now && !matches!(c.state, ConnState::Bound(_)) => {
                        conns.remove(&cid)
                    }
                    _ => None,
                }
            };
            let Some(c) = c else {
                continue;
            };
            self.commands.push_back(Command::CloseConnection { cid });
            if let ConnState::Connecting(later) = c.state {
                self.answer_connect(c.alloc, Class::Error, &later, |b| {
                    b.error_code(447, "");
                });
            }
        }
    }

    /// The answer to a Connect taken in earlier, signed with its allocation's key.
    fn answer_connect(
        &mut self,
        id: AllocationId,
        class: Class,
        later: &Later,
        fill: impl FnOnce(&mut MessageBuilder),
    ) {
        let Some(a) = self.get(id) else {
            return;
        };
        let (to, sign) = (a.five_tuple(), self.later_sign(a.key(), later));
        let reply = Reply::deferred(to, Method::CONNECT, class, &later.tid, sign).with(fill);
        self.send(reply);
    }

    /// Connect (RFC 6062 §5.2): open a TCP connection from the relayed address to the peer; the
    /// answer waits for the worker's [`Server::handle_tcp_peer_connected`].
    pub(super) fn handle_connect(&mut self, now: Instant, five: FiveTuple, m: &Message) -> Handled {
        let (id, auth) = self.allocation_for_request(now, five, m)?;
        let sign = self.signed(m, &auth);
        let refuse = |code| Err(Stop::Error(Reply::error(five, m, code, &sign)));
        let Some(a) = self.get(id) else {
            return Err(Stop::Nothing);
        };
        // Only a TCP allocation connects to peers.
        if !a.is_tcp() {
            return refuse(400);
        }
        let from = a.relay();
        let Some(peer) = m.get_xor_address(attr::XOR_PEER_ADDRESS) else {
            return refuse(400);
        };
        if let Some(code) = self.peer_error(id, &peer) {
            return refuse(code);
        }
        // A connection to this peer being made or made already: 446.
        let (held, to_peer) = self.connections_of(id, peer);
        if to_peer {
            return refuse(446);
        }
        if held >= MAX_TCP_CONNECTIONS_PER_ALLOCATION {
            return refuse(508);
        }
        let state = ConnState::Connecting(Later::of(m, &sign));
        let cid = self.add_connection(now, id, peer, state);
        self.commands.push_back(Command::ConnectPeer {
            cid,
            from,
            peer: PeerAddr::new(peer),
        });
        Err(Stop::Nothing)
    }

    /// The worker's answer to [`Command::ConnectPeer`]: connected (`true`) or not. The Connect
    /// gets CONNECTION-ID, or 447 (RFC 6062 §5.2).
    /// A connection the engine no longer wants (its allocation or deadline is gone) is closed.
    pub fn handle_tcp_peer_connected(&mut self, now: Instant, cid: ConnectionId, ok: bool) {
        let shared = self.shared.clone();
        let mut conns = shared.conns();
        let Some(c) = conns.get_mut(&cid) else {
            drop(conns);
            self.commands.push_back(Command::CloseConnection { cid });
            return;
        };
        let ConnState::Connecting(later) = c.state else {
            return;
        };
        let alloc = c.alloc;
        if ok {
            // The ConnectionBind must now come within 30 s.
            c.state = ConnState::Pending;
            c.deadline = now + TCP_CONNECTION_TIMEOUT;
            self.conn_timers.push(Reverse((c.deadline, cid)));
            drop(conns);
            self.answer_connect(alloc, Class::Success, &later, |b| {
                b.attr_u32(attr::CONNECTION_ID, cid.0);
            });
        } else {
            conns.remove(&cid);
            drop(conns);
            self.commands.push_back(Command::CloseConnection { cid });
            self.answer_connect(alloc, Class::Error, &later, |b| {
                b.error_code(447, "");
            });
        }
    }

    /// A peer connected to the relayed address of TCP allocation `id` (RFC 6062 §5.3). Accepted
    /// (`Some`) when a permission exists for its IP: the client is told with a ConnectionAttempt
    /// indication. `None`: the worker closes the connection.
    #[must_use]
    pub fn handle_tcp_peer_accepted(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
    ) -> Option<ConnectionId> {
        let a = self.get(id)?;
        if !a.is_tcp() || !a.is_live(now) || !a.permissions().allows(peer.ip(), now) {
            self.counters.dropped_no_permission += 1;
            return None;
        }
        let to = a.five_tuple();
        if self.connections_of(id, peer).0 >= MAX_TCP_CONNECTIONS_PER_ALLOCATION {
            return None;
        }
        let cid = self.add_connection(now, id, peer, ConnState::Pending);
        let tid: TransactionId = self.rng.gen();
        let mut out = Vec::with_capacity(64);
        let mut b = MessageBuilder::new(
            &mut out,
            Method::CONNECTION_ATTEMPT,
            Class::Indication,
            &tid,
        );
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        b.attr_u32(attr::CONNECTION_ID, cid.0);
        if self.config.fingerprint {
            b.fingerprint();
        }
        self.commands.push_back(Command::Send { to, data: out });
        Some(cid)
    }

    /// ConnectionBind (RFC 6062 §5.4), on a new TCP or TLS connection of the client: joins it to
    /// a peer connection, after which it carries raw bytes ([`Command::BindConnection`]).
    pub(super) fn handle_connection_bind(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
    ) -> Handled {
        // A data connection is a stream of its own, holding no allocation.
        if !five.transport.is_stream() || self.by_five_tuple.contains_key(&five) {
            return Err(Reply::error(five, m, 400, &self.plain_sign(m)).into());
        }
        let auth = self.authenticate(now, five, m, None)?;
        let sign = self.signed(m, &auth);
        let cid = m
            .get(attr::CONNECTION_ID)
            .and_then(attr::read_u32)
            .map(ConnectionId);
        // Unknown, still connecting or bound already: 400. Only the allocation's owner may take
        // its connections: 441.
        let code = {
            let mut conns = self.shared.conns();
            match cid.and_then(|cid| conns.get_mut(&cid)) {
                Some(c) if c.state == ConnState::Pending => {
                    if c.username == auth.username {
                        c.state = ConnState::Bound(five);
                        None
                    } else {
                        Some(441)
                    }
                }
                _ => Some(400),
            }
        };
        let (Some(cid), None) = (cid, code) else {
            return Err(Reply::error(five, m, code.unwrap_or(400), &sign).into());
        };
        // The success answer goes before the connection starts carrying raw bytes.
        self.send(Reply::success(five, m, &sign).uncached());
        self.commands
            .push_back(Command::BindConnection { cid, client: five });
        Err(Stop::Nothing)
    }

    /// A peer connection, or the data connection bound to it, closed: forget it.
    pub fn handle_tcp_connection_closed(&mut self, cid: ConnectionId) {
        self.shared.conns().remove(&cid);
    }

    /// The counters of bound connection `cid`, for the pipe that copies its bytes.
    pub fn tcp_traffic(&self, cid: ConnectionId) -> Option<Arc<TcpTraffic>> {
        let conns = self.shared.conns();
        conns.get(&cid).map(|c| c.traffic.clone())
    }

    /// The byte budget connection `cid`'s pipe draws from (None: unknown connection).
    pub fn tcp_budget(&self, cid: ConnectionId) -> Option<Arc<PipeBudget>> {
        let conns = self.shared.conns();
        conns.get(&cid).and_then(|c| c.budget.clone())
    }

    /// Peer connections held now, all engines (for tests and metrics).
    pub fn tcp_connections(&self) -> usize {
        self.shared.conns().len()
    }
}
