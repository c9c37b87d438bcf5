//! The refusal log: an error response the engine sends (other than the routine 401/438
//! challenges) is logged at the default level, once per client 5-tuple, method and code, with
//! what usually causes it, so that an operator sees why a client failed (coturn logs its
//! refusals too). Only the response bytes the engine already hands the worker are read.
//!
//! Bounds: at most [`PER_SECOND`] lines per worker and second (the rest are counted and the count
//! logged once the next line may go out), and at most [`MAX_SEEN`] remembered keys (forgotten
//! all at once when full, so a key may be logged again, never more than the rate allows).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::engine::{FiveTuple, Transport};
use crate::proto::{attr, Class, Message, Method};

/// Refusal lines per worker and second.
pub(crate) const PER_SECOND: u32 = 20;
/// Remembered (5-tuple, method, code) keys.
pub(crate) const MAX_SEEN: usize = 4096;

#[derive(Default)]
pub(crate) struct RefusalLog {
    seen: HashSet<(FiveTuple, Method, u16)>,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Look at a message about to be sent to `to`; log it if it is a refusal not yet logged.
    pub(crate) fn observe(&mut self, now: Instant, to: FiveTuple, data: &[u8]) {
        // Cheap test first: a STUN error response has both class bits of its type set.
        if data.len() < 20
            || data[0] & 0xC0 != 0
            || u16::from_be_bytes([data[0], data[1]]) & 0x0110 != 0x0110
        {
            return;
        }
        let Ok(m) = Message::decode(data) else {
            return;
        };
        if m.class() != Class::Error {
            return;
        }
        let Some((code, phrase)) = m.get(attr::ERROR_CODE).and_then(attr::read_error_code) else {
            return;
        };
        // Challenges are how authentication starts, not refusals.
        if matches!(code, 401 | 438) {
            return;
        }
        let method = m.method();
        if !self.seen.insert((to, method, code)) {
            return;
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        let window_open =
            matches!(self.window, Some(w) if now.duration_since(w) < Duration::from_secs(1));
        if !window_open {
            if self.suppressed > 0 {
                tracing::info!(
                    "{} more refusal(s) not logged (at most {PER_SECOND} lines a second per worker)",
                    self.suppressed
                );
                self.suppressed = 0;
            }
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.in_window += 1;
        tracing::info!(
            "refused {} from {} over {}: {code} {phrase}: {}",
            method_name(method),
            to.client,
            transport_name(to.transport),
            cause(method, code)
        );
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::BINDING => "Binding",
        Method::ALLOCATE => "Allocate",
        Method::REFRESH => "Refresh",
        Method::CREATE_PERMISSION => "CreatePermission",
        Method::CHANNEL_BIND => "ChannelBind",
        Method::CONNECT => "Connect",
        Method::CONNECTION_BIND => "ConnectionBind",
        _ => "a request",
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Dtls => "dtls",
    }
}

/// What usually causes `code` for `method`, naming the options that change it.
fn cause(method: Method, code: u16) -> &'static str {
    match (code, method) {
        (300, _) => "redirected to an alternate server (--alternate-server, drain or load)",
        (400, _) => "malformed request",
        (403, Method::ALLOCATE | Method::REFRESH) => {
            "TURN is not served (--stun-only) or the node is draining (SIGUSR1)"
        }
        (403, _) => {
            "peer address refused by the peer policy (loopback, private, special or denied \
             ranges; see --allowed-peer-ip, --allow-loopback-peers)"
        }
        (420, _) => "an unknown comprehension-required attribute",
        (437, _) => "allocation mismatch (none on this 5-tuple, or one exists already)",
        (440, _) => "address family not supported by the relay addresses (--relay-ip)",
        (441, _) => "wrong credentials: the user is not the allocation's owner",
        (442, _) => "relay transport switched off (--no-udp-relay, --no-tcp-relay)",
        (443, _) => "peer address family differs from the relayed address's",
        (446 | 447, _) => "TCP connection to the peer already exists or failed",
        (486, _) => "allocation quota reached (--user-quota, --total-quota)",
        (508, _) => "no relay port left (--min-port..--max-port) or relay address unusable",
        _ => "see the error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MessageBuilder;

    fn error(method: Method, code: u16) -> Vec<u8> {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method, Class::Error, &[7; 12]).error_code(code, "");
        out
    }

    fn five(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: crate::engine::ClientAddr::new(([192, 0, 2, 1], port).into()),
            server: ([192, 0, 2, 2], 3478).into(),
        }
    }

    #[test]
    fn once_per_key_and_rate_limited() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        // The same refusal again is not logged again; challenges are not refusals.
        log.observe(t0, five(1), &error(Method::CREATE_PERMISSION, 403));
        log.observe(t0, five(1), &error(Method::CREATE_PERMISSION, 403));
        log.observe(t0, five(1), &error(Method::ALLOCATE, 401));
        assert_eq!((log.in_window, log.seen.len()), (1, 1));
        // A flood of distinct refusals: PER_SECOND lines, the rest counted.
        for port in 2..102 {
            log.observe(t0, five(port), &error(Method::ALLOCATE, 486));
        }
        assert_eq!(log.in_window, PER_SECOND);
        assert_eq!(log.suppressed, 100 - u64::from(PER_SECOND - 1));
        // The next second reports the count and logs again.
        log.observe(
            t0 + Duration::from_secs(1),
            five(500),
            &error(Method::ALLOCATE, 508),
        );
        assert_eq!((log.in_window, log.suppressed), (1, 0));
        // Memory stays bounded.
        for port in 0..(MAX_SEEN as u16 + 10) {
            log.observe(t0, five(port), &error(Method::REFRESH, 437));
        }
        assert!(log.seen.len() < MAX_SEEN);
    }
}
