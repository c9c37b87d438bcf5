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
    Connecting {
        tid: TransactionId,
        sha256: bool,
        fingerprint: bool,
    },
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
                a.tcp_traffic.push(traffic.clone());
                (a.username.clone(), Some(a.pipe_budget.clone()))
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
            if let ConnState::Connecting {
                tid,
                sha256,
                fingerprint,
            } = c.state
            {
                let (method, class) = (Method::CONNECT, Class::Error);
                self.deferred_response(c.alloc, method, class, &tid, sha256, fingerprint, |b| {
                    b.error_code(447, "");
                });
            }
        }
    }

    /// A response to a request answered later (Connect), signed with the allocation's key.
    #[allow(clippy::too_many_arguments)]
    fn deferred_response(
        &mut self,
        id: AllocationId,
        method: Method,
        class: Class,
        tid: &TransactionId,
        sha256: bool,
        fingerprint: bool,
        fill: impl FnOnce(&mut MessageBuilder),
    ) {
        let Some(a) = self.get(id) else {
            return;
        };
        let (to, key) = (a.five_tuple, a.key.clone());
        let mut out = Vec::with_capacity(96);
        let mut b = MessageBuilder::new(&mut out, method, class, tid);
        fill(&mut b);
        let sign = super::Sign {
            key: (!self.config.no_auth).then_some(&key),
            sha256,
            fingerprint,
        };
        self.seal(&mut b, sign, true);
        self.commands.push_back(Command::Send { to, data: out });
    }

    /// Connect (RFC 6062 §5.2): open a TCP connection from the relayed address to the peer.
    pub(super) fn handle_connect(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        let Some((id, auth)) = self.allocation_for_request(now, five, m) else {
            return;
        };
        let sign = self.signed(m, &auth);
        let Some(a) = self.get(id) else {
            return;
        };
        // Only a TCP allocation connects to peers.
        if !a.tcp {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        }
        let from = a.relay;
        let Some(peer) = m.get_xor_address(attr::XOR_PEER_ADDRESS) else {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        };
        if let Some(code) = self.peer_error(id, &peer) {
            self.respond_error(five, m, code, sign, |_| {});
            return;
        }
        // A connection to this peer being made or made already: 446.
        let (held, to_peer) = self.connections_of(id, peer);
        if to_peer {
            self.respond_error(five, m, 446, sign, |_| {});
            return;
        }
        if held >= MAX_TCP_CONNECTIONS_PER_ALLOCATION {
            self.respond_error(five, m, 508, sign, |_| {});
            return;
        }
        let state = ConnState::Connecting {
            tid: *m.transaction_id(),
            sha256: auth.sha256,
            fingerprint: sign.fingerprint,
        };
        let cid = self.add_connection(now, id, peer, state);
        self.commands
            .push_back(Command::ConnectPeer { cid, from, peer });
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
        let ConnState::Connecting {
            tid,
            sha256,
            fingerprint,
        } = c.state
        else {
            return;
        };
        let alloc = c.alloc;
        if ok {
            // The ConnectionBind must now come within 30 s.
            c.state = ConnState::Pending;
            c.deadline = now + TCP_CONNECTION_TIMEOUT;
            self.conn_timers.push(Reverse((c.deadline, cid)));
            drop(conns);
            let (method, class) = (Method::CONNECT, Class::Success);
            self.deferred_response(alloc, method, class, &tid, sha256, fingerprint, |b| {
                b.attr_u32(attr::CONNECTION_ID, cid.0);
            });
        } else {
            conns.remove(&cid);
            drop(conns);
            self.commands.push_back(Command::CloseConnection { cid });
            let (method, class) = (Method::CONNECT, Class::Error);
            self.deferred_response(alloc, method, class, &tid, sha256, fingerprint, |b| {
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
        if !a.tcp
            || a.state != State::Active
            || a.expires <= now
            || !a.permissions.allows(peer.ip(), now)
        {
            self.counters.dropped_no_permission += 1;
            return None;
        }
        let to = a.five_tuple;
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
    pub(super) fn handle_connection_bind(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        // A data connection is a stream of its own, holding no allocation.
        if !five.transport.is_stream() || self.by_five_tuple.contains_key(&five) {
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        }
        let Some(auth) = self.authenticate(now, five, m, None) else {
            return;
        };
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
            self.respond_error(five, m, code.unwrap_or(400), sign, |_| {});
            return;
        };
        let data = self.build_response(m, Class::Success, sign, |_| {});
        self.commands.push_back(Command::Send { to: five, data });
        self.commands
            .push_back(Command::BindConnection { cid, client: five });
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
