//! Allocate (RFC 8656 §7.2): the request, quotas and reservations, relay binding, the answer.

use super::*;

/// An Allocate's steps 3–7 (RFC 8656 §7.2), read from the request by [`parse_allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AllocateRequest {
    /// REQUESTED-TRANSPORT TCP (RFC 6062): the relay listens for and connects to peers.
    pub tcp: bool,
    /// DONT-FRAGMENT (IP_PMTUDISC_DO on the relay socket).
    pub dont_fragment: bool,
    /// RESERVATION-TOKEN: the port an earlier EVEN-PORT request reserved.
    pub token: Option<u64>,
    /// EVEN-PORT, and whether its R bit asks to reserve the next port too.
    pub even: Option<bool>,
    /// The (first) relayed address is IPv6.
    pub want_v6: bool,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: an IPv6 relayed address beside the IPv4 one.
    pub dual: bool,
    /// The request used the draft code point of ADDITIONAL-ADDRESS-FAMILY (coturn's clients).
    pub draft_codepoints: bool,
}

/// Read an Allocate's steps 3–7 (RFC 8656 §7.2, RFC 6062 §5.1), or the error code it gets:
/// 400 for a malformed or contradictory request, 442 for a relay transport switched off, 440
/// for an unknown address family. `client_v6`: the client's own family (`-A keep`).
pub(super) fn parse_allocate(
    m: &Message,
    transport: Transport,
    client_v6: bool,
    config: &ServerConfig,
) -> Result<AllocateRequest, u16> {
    // Step 3: REQUESTED-TRANSPORT: UDP, or TCP (RFC 6062 §5.1) over a TCP or TLS control
    // connection; 442 for a kind switched off (`--no-udp-relay`, `--no-tcp-relay`).
    let tcp = match m
        .get(attr::REQUESTED_TRANSPORT)
        .map(attr::read_requested_transport)
    {
        None | Some(None) => return Err(400),
        Some(Some(attr::PROTO_UDP)) if config.udp_relay => false,
        Some(Some(attr::PROTO_TCP)) if config.tcp_relay => true,
        Some(Some(_)) => return Err(442),
    };
    // RFC 6062 §5.1: a TCP allocation needs a stream control connection and takes no
    // DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN.
    if tcp
        && (!transport.is_stream()
            || m.get(attr::DONT_FRAGMENT).is_some()
            || m.get(attr::EVEN_PORT).is_some()
            || m.get(attr::RESERVATION_TOKEN).is_some())
    {
        return Err(400);
    }
    // Step 4: DONT-FRAGMENT is supported.
    let dont_fragment = m.get(attr::DONT_FRAGMENT).is_some();
    // Steps 5–7: RESERVATION-TOKEN, EVEN-PORT, address families.
    let token = m.get(attr::RESERVATION_TOKEN);
    let even = m.get(attr::EVEN_PORT).map(attr::read_even_port);
    let req_family = m
        .get(attr::REQUESTED_ADDRESS_FAMILY)
        .map(attr::read_address_family);
    // coturn's clients send the draft's code point; RFC 8656's wins when both are there.
    let draft_codepoints = m.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_none()
        && m.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT).is_some();
    let add_family = m
        .get(attr::ADDITIONAL_ADDRESS_FAMILY)
        .or_else(|| m.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT))
        .map(attr::read_address_family);
    if token.is_some() && (even.is_some() || req_family.is_some() || add_family.is_some()) {
        return Err(400);
    }
    if matches!(even, Some(None))
        || matches!(req_family, Some(None))
        || matches!(add_family, Some(None))
    {
        return Err(400);
    }
    if req_family.is_some() && add_family.is_some() {
        return Err(400);
    }
    let token = match token.map(<[u8; 8]>::try_from) {
        None => None,
        Some(Ok(t)) => Some(u64::from_be_bytes(t)),
        Some(Err(_)) => return Err(400),
    };
    let want_v6 = match req_family.flatten() {
        Some(attr::FAMILY_IPV4) => false,
        Some(attr::FAMILY_IPV6) => true,
        Some(_) => return Err(440),
        // Nothing asked (or a dual allocation, whose first address is IPv4).
        None if add_family.is_some() => false,
        None => match config.default_family {
            DefaultFamily::Ipv4 => false,
            DefaultFamily::Ipv6 => true,
            DefaultFamily::Keep => client_v6,
        },
    };
    // Step 7: ADDITIONAL-ADDRESS-FAMILY asks for an IPv6 address beside the IPv4 one; any
    // other value is 400.
    let dual = match add_family.flatten() {
        None => false,
        Some(attr::FAMILY_IPV6) => true,
        Some(_) => return Err(400),
    };
    Ok(AllocateRequest {
        tcp,
        dont_fragment,
        token,
        even: even.flatten(),
        want_v6,
        dual,
        draft_codepoints,
    })
}

impl Server {
    /// The address XOR-RELAYED-ADDRESS reports for a relay bound to `relay`.
    pub(super) fn reported(&self, relay: RelayAddr) -> SocketAddr {
        for (public, private) in &self.config.external_ips {
            match private {
                Some(p) if *p == relay.ip() => return SocketAddr::new(*public, relay.port()),
                None if public.is_ipv4() == relay.is_ipv4() => {
                    return SocketAddr::new(*public, relay.port())
                }
                _ => {}
            }
        }
        relay.addr()
    }

    /// Allocate (RFC 8656 §7.2). Its success answer goes when the relay socket is bound
    /// ([`Server::handle_relay_bound`]); refusals after authentication are counted by code.
    pub(super) fn handle_allocate(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
    ) -> Handled {
        // Every attempt costs the source a token before any hashing (`--unauthorized-ratelimit`):
        // from its own bucket when its NONCE is a fresh one we issued to this address (the
        // source read our challenge), so a flood of unanswerable attempts from the same address
        // cannot lock out clients there that already hold a nonce.
        let class = self.nonce_class(now, five, m);
        if !self.limiter_allows_in(now, five, class) {
            return Err(Stop::Nothing);
        }
        // Step 1: long-term credentials.
        let auth = self.authenticate(now, five, m, None)?;
        // It authenticated with a nonce bound to its IP: this attempt and its challenge are
        // given back, so the limit counts only work that led nowhere.
        let rate = self.config.unauthorized_ratelimit;
        let ip = five.client.ip();
        self.limiter.refund(now, ip, class, rate, 1);
        self.limiter.refund(now, ip, LimitClass::Unproven, rate, 1);
        let sign = self.signed(m, &auth);
        match self.allocate(now, five, m, auth, &sign) {
            Ok(()) => Err(Stop::Nothing),
            Err(refusal) => {
                let code = refusal.code().unwrap_or(0);
                self.counters.allocations_refused += 1;
                self.counters.refused_by_code.add(code);
                Err(refusal.uncached().into())
            }
        }
    }

    /// Allocate's steps 2–8 for an authenticated request: the allocation is made and its relay
    /// socket asked for, or the refusal (an error answer) is returned.
    fn allocate(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        auth: Auth,
        sign: &Sign,
    ) -> Result<(), Reply> {
        let refuse = |code| Reply::error(five, m, code, sign);
        // Step 2: one allocation per 5-tuple (retransmissions were answered from the cache).
        if self.by_five_tuple.contains_key(&five) {
            return Err(refuse(437));
        }
        // coturn's alternate servers: new Allocates go elsewhere (300 Try Alternate, signed so
        // that the client can trust it, RFC 8489 §10). Without them, a draining node (SIGUSR1),
        // or one holding `--redirect-over-allocations` or more, sends UDP/TCP clients to a
        // healthy peer of its region if it knows one; `crate::engine::redirect` says which and
        // why no client can loop.
        if let Some(alt) = self.redirect(now, five) {
            return Err(refuse(300).reason("Try Alternate").with(|b| {
                b.address(attr::ALTERNATE_SERVER, &alt);
            }));
        }
        // A draining node takes no new allocations (SIGUSR1); live ones keep relaying.
        if self.draining {
            return Err(refuse(403));
        }
        let req = parse_allocate(m, five.transport, five.client.is_ipv6(), &self.config)
            .map_err(refuse)?;
        // Step 8: quotas; a user database's realm options win over the flags, as in coturn. With
        // a fleet, both count the other nodes' allocations too (while that count is fresh).
        let unix = self.unix(now);
        let db = self.shared.userdb.fresh(unix);
        let db = db.as_deref();
        let user_quota = db.and_then(|d| d.user_quota);
        let total_quota = db.and_then(|d| d.total_quota);
        let max_bps = db.and_then(|d| d.max_bps).unwrap_or(self.config.max_bps);
        let sep = self.config.credentials.rest_separator();
        let quota_user = crate::engine::auth::quota_user(&auth.username, sep).to_owned();
        let quotas = (
            user_quota.unwrap_or(self.config.user_quota),
            total_quota.unwrap_or(self.config.total_quota),
        );
        let elsewhere = (
            self.shared.fleet_usage.elsewhere(&auth.username, unix),
            self.shared.fleet_usage.elsewhere_total(unix),
        );
        // A RESERVATION-TOKEN's reservation is taken out here: it counted against its user
        // until now, and if that user is this one its count passes to this allocation.
        let reserved = req.token.and_then(|t| self.shared.take_reservation(t));
        let shared = self.shared.clone();
        let quota = match reserved {
            Some(ref r) if r.user == quota_user => shared.adopt_count(&quota_user),
            _ => {
                let Some(guard) = shared.count_guard(&quota_user, quotas.0, quotas.1, elsewhere)
                else {
                    if let (Some(r), Some(t)) = (reserved, req.token) {
                        shared.put_reservation(t, r); // still the reserver's
                    }
                    return Err(refuse(486));
                };
                if let Some(r) = &reserved {
                    shared.uncount(&r.user);
                }
                guard
            }
        };
        // Pick the relayed transport address.
        let mut reservation_token = None;
        let relay = if req.token.is_some() {
            match reserved {
                Some(r) if r.expires_unix >= unix => Some(r.addr),
                Some(r) => {
                    shared.ports.release(r.addr.ip(), r.addr.port());
                    None
                }
                None => None,
            }
        } else {
            let Some(ip) = self.pick_relay_ip(req.want_v6) else {
                return Err(refuse(440));
            };
            let (is_even, reserve) = match req.even {
                Some(r) => (true, r),
                None => (false, false),
            };
            let port = shared.ports.take(ip, self.rng.gen(), is_even, reserve);
            if let (Some(p), true) = (port, reserve) {
                // The reserved port counts against the reserving user's quota (and the total)
                // until it is used or its 30 s are up: reservations are no way around a quota.
                let Some(held) = shared.count_guard(&quota_user, quotas.0, quotas.1, elsewhere)
                else {
                    shared.ports.release(ip, p);
                    shared.ports.release(ip, p + 1);
                    return Err(refuse(486));
                };
                held.keep(); // the reservation holds this count until claimed or swept
                let t: u64 = self.rng.gen();
                reservation_token = Some(t);
                shared.put_reservation(
                    t,
                    Reservation {
                        addr: SocketAddr::new(ip, p + 1),
                        expires_unix: unix + RESERVATION_SECS,
                        user: quota_user.clone(),
                    },
                );
            }
            port.map(|p| SocketAddr::new(ip, p))
        };
        let Some(relay) = relay.map(RelayAddr::new) else {
            return Err(refuse(508));
        };
        let AllocateRequest {
            tcp,
            dont_fragment,
            dual,
            draft_codepoints,
            ..
        } = req;
        let token = req.token;
        let even = req.even;
        // The IPv6 half of a dual allocation. Without it the IPv4 one is still granted, and
        // ADDRESS-ERROR-CODE says why not (RFC 8656 §7.2 step 7): 440 when this server relays
        // no IPv6 at all, 508 when it has no IPv6 port left.
        let mut address_error = None;
        let mut second_relay = None;
        if dual && tcp {
            // One listening address per TCP allocation.
            address_error = Some(440);
        } else if dual {
            match self.pick_relay_ip(true) {
                None => address_error = Some(440),
                Some(ip) => match self.shared.ports.take(ip, self.rng.gen(), false, false) {
                    Some(p) => second_relay = Some(RelayAddr::new(SocketAddr::new(ip, p))),
                    None => address_error = Some(508),
                },
            }
        }
        let lifetime = self.lifetime(m);
        let pending = PendingAllocate {
            tid: *m.transaction_id(),
            lifetime,
            fixed_port: token.is_some(),
            even: even.is_some(),
            reservation_token,
            address_error,
            draft_codepoints,
            fingerprint: sign.fingerprint,
            sha256: auth.sha256,
        };
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    alloc: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = AllocationId {
            index,
            generation: self.slots[index as usize].generation,
        };
        // `--strict-expiry`: a REST credential's allocation ends with the credential.
        let credential_expiry = if self.config.strict_expiry && self.config.credentials.has_rest() {
            let sep = self.config.credentials.rest_separator();
            crate::engine::auth::rest_expiry(&auth.username, sep)
                .filter(|_| !self.config.credentials.is_static_user(&auth.username))
                .map(|t| now + Duration::from_secs(t.saturating_sub(self.unix(now))))
        } else {
            None
        };
        let kind = match second_relay {
            _ if tcp => AllocationKind::Tcp {
                traffic: Vec::new(),
            },
            Some(r) => AllocationKind::UdpDual(SecondRelay::boxed(r, self.reported(r))),
            None => AllocationKind::Udp,
        };
        let alloc = Allocation::new(Grant {
            id,
            five_tuple: five,
            relay,
            reported_relay: self.reported(relay),
            kind,
            now,
            lifetime: Duration::from_secs(u64::from(lifetime)),
            username: auth.username.into(),
            key: auth.key,
            max_bps,
            pipe_budget: Arc::new(crate::engine::policy::PipeBudget::new(
                max_bps,
                self.shared.pipe_capacity.clone(),
                now,
            )),
            dont_fragment,
            reservation: reservation_token,
            tid: *m.transaction_id(),
            pending,
            credential_expiry,
        });
        self.slots[index as usize].alloc = Some(alloc);
        self.by_five_tuple.insert(five, id);
        quota.keep(); // given back in `free`
        self.commands.push_back(Command::BindRelay {
            id,
            addr: relay,
            dont_fragment,
            kind: if tcp { RelayKind::Tcp } else { RelayKind::Udp },
        });
        Ok(())
    }

    /// Where a new Allocate on `five` goes instead, if anywhere: the next `--alternate-server`;
    /// without those, for UDP and TCP clients, a fresh fleet peer when this node drains or holds
    /// `--redirect-over-allocations` or more.
    fn redirect(&mut self, now: Instant, five: FiveTuple) -> Option<SocketAddr> {
        if let Some(alt) = self.next_alternate(five) {
            return Some(alt);
        }
        if !matches!(five.transport, Transport::Udp | Transport::Tcp) {
            return None;
        }
        let held = self.shared.total_allocations.load(Ordering::Relaxed);
        let over = self.config.redirect_over_allocations;
        let unix = self.unix(now);
        let peers = &self.shared.fleet_peers;
        if self.draining {
            peers.for_draining(five.server, unix)
        } else if over > 0 && held >= over {
            peers.for_load(five.client.ip(), u64::from(held), five.server, unix)
        } else {
            None
        }
    }

    /// The next alternate server for an Allocate on `five`, round robin, never the address the
    /// request came in on (a node listed among its own alternates does not redirect to itself).
    pub(super) fn next_alternate(&mut self, five: FiveTuple) -> Option<SocketAddr> {
        let list = match five.transport {
            Transport::Tls | Transport::Dtls => &self.config.tls_alternate_servers,
            Transport::Udp | Transport::Tcp => &self.config.alternate_servers,
        };
        for _ in 0..list.len() {
            let alt = list[self.alternate_turn % list.len()];
            self.alternate_turn = self.alternate_turn.wrapping_add(1);
            if alt != five.server {
                return Some(alt);
            }
        }
        None
    }

    pub(super) fn pick_relay_ip(&mut self, v6: bool) -> Option<IpAddr> {
        let n = self
            .config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .count();
        if n == 0 {
            return None;
        }
        let k = self.rng.gen_range(0..n);
        self.config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .nth(k)
            .copied()
    }

    /// The worker's answer to [`Command::BindRelay`]: the socket is bound (`Ok`) or the bind
    /// failed (`Err`, e.g. the port is held by another process). On failure another port is tried
    /// a few times before the client gets 508.
    pub fn handle_relay_bound(&mut self, now: Instant, id: AllocationId, result: Bind) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        let attempts = match a.state() {
            State::Binding { attempts } => attempts,
            State::BindingSecond { attempts } => {
                self.handle_second_relay_bound(now, id, attempts, result);
                return;
            }
            State::Active => return,
        };
        let five = a.five_tuple();
        if result == Bind::Failed {
            let old = a.relay();
            let fixed = a.pending().is_some_and(|p| p.fixed_port);
            let even = a.pending().is_some_and(|p| p.even);
            let token = a.reservation();
            // Pick the next port while the failed one is still held, so it is not picked again.
            // EVEN-PORT asks for a parity, not a port: another even port (and its successor,
            // with the R bit) will do.
            let retry = if attempts < BIND_ATTEMPTS && !fixed {
                self.shared
                    .ports
                    .take(old.ip(), self.rng.gen(), even, token.is_some())
            } else {
                None
            };
            self.shared.ports.release(old.ip(), old.port());
            if let (Some(port), Some(t)) = (retry, token) {
                // The reservation moves along to the new port's successor.
                self.shared
                    .move_reservation(t, SocketAddr::new(old.ip(), port + 1));
            }
            if let Some(port) = retry {
                let relay = RelayAddr::new(SocketAddr::new(old.ip(), port));
                let reported = self.reported(relay);
                let Some(a) = self.get_mut(id) else {
                    return;
                };
                a.rebind(relay, reported, attempts + 1);
                let (dont_fragment, tcp) = (a.dont_fragment(), a.is_tcp());
                self.commands.push_back(Command::BindRelay {
                    id,
                    addr: relay,
                    dont_fragment,
                    kind: if tcp { RelayKind::Tcp } else { RelayKind::Udp },
                });
                return;
            }
            // Out of ports (or the one asked for is held elsewhere): 508, and the allocation goes.
            let Some(a) = self.get_mut(id) else {
                return;
            };
            a.lose_relay_port();
            let pending = a.take_pending();
            let key = a.key().cloned();
            if let Some(t) = a.take_reservation() {
                self.shared.cancel_reservation(t);
            }
            self.counters.allocations_refused += 1;
            self.counters.refused_by_code.add(508);
            self.free(id, "no relay port");
            if let Some(p) = pending {
                let sign = self.later_sign(key.as_ref(), &p.later());
                let reply = Reply::deferred(five, Method::ALLOCATE, Class::Error, &p.tid, sign);
                let mut reply = reply;
                reply.set_error(508);
                self.send(reply);
            }
            return;
        }
        // A dual allocation binds its IPv6 socket next.
        if let Some(addr) = a.second_relay() {
            self.bind_second_relay(id, addr, 1);
            return;
        }
        self.finish_allocate(now, id);
    }

    /// Ask the worker to bind the IPv6 socket of dual allocation `id` on `addr` (try `attempts`).
    pub(super) fn bind_second_relay(&mut self, id: AllocationId, addr: RelayAddr, attempts: u8) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        a.bind_second(attempts);
        let dont_fragment = a.dont_fragment();
        self.commands.push_back(Command::BindRelay {
            id,
            addr,
            dont_fragment,
            kind: RelayKind::UdpSecond,
        });
    }

    /// The second (IPv6) socket of a dual allocation is bound or not. A few other ports are
    /// tried; if none binds, the allocation goes on with IPv4 only and ADDRESS-ERROR-CODE 508
    /// for IPv6 (RFC 8656 §7.2 step 7).
    pub(super) fn handle_second_relay_bound(
        &mut self,
        now: Instant,
        id: AllocationId,
        attempts: u8,
        result: Bind,
    ) {
        if result == Bind::Failed {
            let Some(old) = self.get(id).and_then(|a| a.second_relay()) else {
                return;
            };
            let retry = if attempts < BIND_ATTEMPTS {
                self.shared
                    .ports
                    .take(old.ip(), self.rng.gen(), false, false)
            } else {
                None
            };
            self.shared.ports.release(old.ip(), old.port());
            let next = retry.map(|p| RelayAddr::new(SocketAddr::new(old.ip(), p)));
            let second = next.map(|r| SecondRelay::boxed(r, self.reported(r)));
            let Some(a) = self.get_mut(id) else {
                return;
            };
            a.set_second(second);
            if let Some(addr) = next {
                self.bind_second_relay(id, addr, attempts + 1);
                return;
            }
            if let Some(p) = a.pending_mut() {
                p.address_error = Some(508);
            }
        }
        self.finish_allocate(now, id);
    }

    /// Every socket of the allocation is bound: it becomes active and the client gets the
    /// success response (RFC 8656 §7.2).
    pub(super) fn finish_allocate(&mut self, now: Instant, id: AllocationId) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        let five = a.five_tuple();
        let Some(p) = a.activate(now) else {
            return;
        };
        let relay = a.reported_relay();
        let second = a.reported_second();
        let key = a.key().cloned();
        let sign = self.later_sign(key.as_ref(), &p.later());
        let reply = Reply::deferred(five, Method::ALLOCATE, Class::Success, &p.tid, sign);
        let reply = reply.with(|b| {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, &relay);
            if let Some(second) = second {
                b.xor_address(attr::XOR_RELAYED_ADDRESS, &second);
            }
            b.attr_u32(attr::LIFETIME, p.lifetime);
            if let Some(t) = p.reservation_token {
                b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
            }
            b.xor_address(attr::XOR_MAPPED_ADDRESS, &five.client.addr());
            if let Some(code) = p.address_error {
                let ty = if p.draft_codepoints {
                    attr::ADDRESS_ERROR_CODE_DRAFT
                } else {
                    attr::ADDRESS_ERROR_CODE
                };
                b.address_error_code(ty, attr::FAMILY_IPV6, code);
            }
        });
        self.counters.allocations_created += 1;
        if let Some(a) = self.get(id) {
            crate::engine::session_log::log_allocation_started(&self.config.realm, a, p.lifetime);
        }
        self.schedule(id);
        self.send(reply);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn request(fill: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Request, &[7; 12]);
        fill(&mut b);
        out
    }

    fn parse(
        fill: impl FnOnce(&mut MessageBuilder),
        transport: Transport,
    ) -> Result<AllocateRequest, u16> {
        let bytes = request(fill);
        let m = Message::decode(&bytes).unwrap();
        parse_allocate(&m, transport, false, &ServerConfig::default())
    }

    fn udp(b: &mut MessageBuilder) {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    }

    #[test]
    fn plain_udp_request() {
        let r = parse(udp, Transport::Udp).unwrap();
        assert_eq!(
            r,
            AllocateRequest {
                tcp: false,
                dont_fragment: false,
                token: None,
                even: None,
                want_v6: false,
                dual: false,
                draft_codepoints: false,
            }
        );
    }

    #[test]
    fn transport_errors() {
        assert_eq!(parse(|_| {}, Transport::Udp), Err(400));
        let other = |b: &mut MessageBuilder| {
            b.attr(attr::REQUESTED_TRANSPORT, &[99, 0, 0, 0]);
        };
        assert_eq!(parse(other, Transport::Udp), Err(442));
        let tcp = |b: &mut MessageBuilder| {
            b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_TCP, 0, 0, 0]);
        };
        // RFC 6062 needs a stream control connection.
        assert_eq!(parse(tcp, Transport::Udp), Err(400));
        assert!(parse(tcp, Transport::Tcp).unwrap().tcp);
        let tcp_df = |b: &mut MessageBuilder| {
            tcp(b);
            b.attr(attr::DONT_FRAGMENT, &[]);
        };
        assert_eq!(parse(tcp_df, Transport::Tcp), Err(400));
    }

    #[test]
    fn families_tokens_and_even_port() {
        let v6 = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(
                attr::REQUESTED_ADDRESS_FAMILY,
                &[attr::FAMILY_IPV6, 0, 0, 0],
            );
        };
        assert!(parse(v6, Transport::Udp).unwrap().want_v6);
        let unknown = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0]);
        };
        assert!(matches!(parse(unknown, Transport::Udp), Err(400 | 440)));
        let dual = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(
                attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT,
                &[attr::FAMILY_IPV6, 0, 0, 0],
            );
        };
        let r = parse(dual, Transport::Udp).unwrap();
        assert!(r.dual && r.draft_codepoints && !r.want_v6);
        let both = |b: &mut MessageBuilder| {
            v6(b);
            b.attr(
                attr::ADDITIONAL_ADDRESS_FAMILY,
                &[attr::FAMILY_IPV6, 0, 0, 0],
            );
        };
        assert_eq!(parse(both, Transport::Udp), Err(400));
        let token = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(attr::RESERVATION_TOKEN, &42u64.to_be_bytes());
        };
        assert_eq!(parse(token, Transport::Udp).unwrap().token, Some(42));
        let short_token = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(attr::RESERVATION_TOKEN, &[1, 2, 3]);
        };
        assert_eq!(parse(short_token, Transport::Udp), Err(400));
        let token_and_even = |b: &mut MessageBuilder| {
            token(b);
            b.attr(attr::EVEN_PORT, &[0x80]);
        };
        assert_eq!(parse(token_and_even, Transport::Udp), Err(400));
        let even_reserve = |b: &mut MessageBuilder| {
            udp(b);
            b.attr(attr::EVEN_PORT, &[0x80]);
        };
        assert_eq!(
            parse(even_reserve, Transport::Udp).unwrap().even,
            Some(true)
        );
    }
}
