//! STUN Binding (RFC 8489 §6.3.1.1, RFC 5780 §7.2, RFC 3489 clients).

use super::*;

impl Server {
    /// Binding request (RFC 8489 §6.3.1.1; RFC 5389 §15.1 MAPPED-ADDRESS for RFC 3489 clients).
    /// Binding answers are never kept for retransmissions: they change nothing.
    pub(super) fn handle_binding(&mut self, five: FiveTuple, m: &Message) -> Handled {
        self.counters.binding_requests += 1;
        // RFC 5780 §7.2: CHANGE-REQUEST picks the address the answer comes from; OTHER-ADDRESS
        // and RESPONSE-ORIGIN tell the client what it can test against.
        let mut from = five.server;
        let discovery = self
            .config
            .rfc5780
            .as_ref()
            .and_then(|rfc| rfc.other_address(five.server));
        if let Some(value) = m.get(attr::CHANGE_REQUEST) {
            let Some(other) = discovery else {
                // No alternate address here (RFC 5780 off, or a listener without a partner):
                // 420 as for any unknown attribute; a classic RFC 3489 client is answered as
                // before RFC 5780 (from the address it used).
                if m.is_classic() {
                    return Ok(self.answer_binding(five, m, from, None));
                }
                self.counters.binding_errors += 1;
                let reply = Reply::error(five, m, 420, &self.plain_sign(m)).uncached();
                return Err(reply
                    .with(|b| {
                        b.attr(
                            attr::UNKNOWN_ATTRIBUTES,
                            &attr::CHANGE_REQUEST.to_be_bytes(),
                        );
                    })
                    .into());
            };
            if value.len() != 4 || five.transport != Transport::Udp {
                // Malformed, or over a stream where another source address cannot answer.
                self.counters.binding_errors += 1;
                return Err(Reply::error(five, m, 400, &self.plain_sign(m))
                    .uncached()
                    .into());
            }
            let (change_ip, change_port) = (value[3] & 0x04 != 0, value[3] & 0x02 != 0);
            let rfc = self.config.rfc5780.as_ref();
            from = rfc
                .and_then(|r| r.source(five.server, change_ip, change_port))
                .unwrap_or(other);
        }
        Ok(self.answer_binding(five, m, from, discovery))
    }

    /// The Binding success response, sent from `from`; with `other` (RFC 5780 in use) it
    /// carries RESPONSE-ORIGIN and OTHER-ADDRESS (SOURCE-ADDRESS and CHANGED-ADDRESS for an
    /// RFC 3489 client). SOFTWARE goes only while the answer stays within
    /// [`AMPLIFICATION_SLACK`] of the request (a long `--software-attribute` must not turn
    /// Binding into a reflector): [`Server::send`] sheds it.
    fn answer_binding(
        &mut self,
        five: FiveTuple,
        m: &Message,
        from: SocketAddr,
        other: Option<SocketAddr>,
    ) -> Reply {
        self.counters.binding_responses += 1;
        let reply = Reply::success(five, m, &self.plain_sign(m)).uncached();
        let reply = if m.is_classic() {
            reply.with(|b| {
                b.address(attr::MAPPED_ADDRESS, &five.client.addr());
                if let Some(other) = other {
                    b.address(attr::SOURCE_ADDRESS, &from);
                    b.address(attr::CHANGED_ADDRESS, &other);
                }
            })
        } else {
            reply.with(|b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, &five.client.addr());
                if let Some(other) = other {
                    // MAPPED-ADDRESS too, as coturn sends it to RFC 5780 clients (their tools
                    // print it).
                    b.address(attr::MAPPED_ADDRESS, &five.client.addr());
                    b.address(attr::RESPONSE_ORIGIN, &from);
                    b.address(attr::OTHER_ADDRESS, &other);
                }
            })
        };
        if from == five.server {
            reply
        } else {
            reply.sent_from(from)
        }
    }
}
