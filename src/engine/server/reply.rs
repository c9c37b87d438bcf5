//! The one reply path. A handler builds a [`Reply`] (or stops with a [`Stop`]); [`Server::send`]
//! finishes every answer the engine gives, whether it answers a request now or later (an
//! Allocate after its relay socket is bound, an RFC 6062 Connect after the peer answers):
//! SOFTWARE, MESSAGE-INTEGRITY and, when the request used it, MESSAGE-INTEGRITY-SHA256,
//! FINGERPRINT, the amplification budget of unauthenticated answers and the retransmission cache.

use super::*;

/// How an answer is signed: with the key the request authenticated with (and SHA-256 as well
/// when the request used MESSAGE-INTEGRITY-SHA256), or not at all; FINGERPRINT when the request
/// had one or `--fingerprint` is set.
#[derive(Debug, Clone)]
pub(super) struct Sign {
    pub(super) key: Option<Key>,
    pub(super) sha256: bool,
    pub(super) fingerprint: bool,
}

/// What an answer given later (an Allocate after its relay bind, a Connect after the peer
/// answers) needs from its request: the transaction and how the request was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Later {
    pub tid: TransactionId,
    pub sha256: bool,
    pub fingerprint: bool,
}

impl Later {
    pub(super) fn of(m: &Message, sign: &Sign) -> Later {
        Later {
            tid: *m.transaction_id(),
            sha256: sign.sha256,
            fingerprint: sign.fingerprint,
        }
    }
}

/// One answer, built by a handler and finished by [`Server::send`] (boxed: handlers pass it
/// around in their `Result`s).
#[derive(Debug)]
pub(super) struct Reply(Box<ReplyParts>);

impl std::ops::Deref for Reply {
    type Target = ReplyParts;
    fn deref(&self) -> &ReplyParts {
        &self.0
    }
}

impl std::ops::DerefMut for Reply {
    fn deref_mut(&mut self) -> &mut ReplyParts {
        &mut self.0
    }
}

#[derive(Debug)]
pub(super) struct ReplyParts {
    to: FiveTuple,
    method: Method,
    class: Class,
    /// Bytes 4..20 of the request: cookie and transaction id (an RFC 3489 id has no cookie).
    raw_tid: [u8; 16],
    /// ERROR-CODE of an error answer, and a reason phrase other than the RFC's.
    error: Option<(u16, &'static str)>,
    /// Attributes after ERROR-CODE, encoded for this transaction id.
    attrs: Vec<u8>,
    sign: Sign,
    /// The most bytes an unauthenticated answer may have: the request plus
    /// [`AMPLIFICATION_SLACK`] (RFC 8489 §16.1.3). None for signed and deferred answers.
    budget: Option<usize>,
    /// Kept as the allocation's answer to a retransmission of this request (RFC 8489 §6.3.1).
    cache: bool,
    /// The server address it leaves from, when not the one the request came to (RFC 5780).
    from: Option<SocketAddr>,
}

/// Why a handler gives no success answer.
#[derive(Debug)]
pub(super) enum Stop {
    /// An error answer.
    Error(Reply),
    /// Nothing to send now: dropped (rate limit, a probe without an allocation, a request still
    /// being answered) or answered later (an Allocate waiting for its relay socket).
    Nothing,
}

impl From<Reply> for Stop {
    fn from(r: Reply) -> Stop {
        Stop::Error(r)
    }
}

/// What a request handler returns.
pub(super) type Handled = Result<Reply, Stop>;

impl Reply {
    /// An answer to request `m` from `to`, signed as `sign` says.
    pub(super) fn to(to: FiveTuple, m: &Message, class: Class, sign: &Sign) -> Reply {
        let mut raw_tid = [0u8; 16];
        let raw = m.raw_transaction();
        let n = raw.len().min(16);
        raw_tid[..n].copy_from_slice(&raw[..n]);
        let mut sign = sign.clone();
        sign.fingerprint &= !m.is_classic();
        let budget = sign
            .key
            .is_none()
            .then(|| m.as_bytes().len() + AMPLIFICATION_SLACK);
        Reply::parts(to, m.method(), class, raw_tid, sign, budget)
    }

    fn parts(
        to: FiveTuple,
        method: Method,
        class: Class,
        raw_tid: [u8; 16],
        sign: Sign,
        budget: Option<usize>,
    ) -> Reply {
        Reply(Box::new(ReplyParts {
            to,
            method,
            class,
            raw_tid,
            error: None,
            attrs: Vec::new(),
            sign,
            budget,
            cache: true,
            from: None,
        }))
    }

    /// A success answer to `m`.
    pub(super) fn success(to: FiveTuple, m: &Message, sign: &Sign) -> Reply {
        Reply::to(to, m, Class::Success, sign)
    }

    /// An error answer to `m` with the RFC's reason phrase.
    pub(super) fn error(to: FiveTuple, m: &Message, code: u16, sign: &Sign) -> Reply {
        let mut r = Reply::to(to, m, Class::Error, sign);
        r.error = Some((code, ""));
        r
    }

    /// An answer to a request that was taken in earlier (transaction `tid`), finished now.
    pub(super) fn deferred(
        to: FiveTuple,
        method: Method,
        class: Class,
        tid: &TransactionId,
        sign: Sign,
    ) -> Reply {
        let mut raw_tid = [0u8; 16];
        raw_tid[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        raw_tid[4..].copy_from_slice(tid);
        Reply::parts(to, method, class, raw_tid, sign, None)
    }

    /// Add attributes (written after ERROR-CODE, before SOFTWARE and the integrity attributes).
    pub(super) fn with(mut self, fill: impl FnOnce(&mut MessageBuilder)) -> Reply {
        let mut out = Vec::with_capacity(64);
        let mut b = MessageBuilder::new_raw(&mut out, self.method, self.class, &self.raw_tid);
        fill(&mut b);
        self.attrs
            .extend_from_slice(&out[crate::proto::HEADER_LEN..]);
        self
    }

    /// Make it an error answer with `code` (a deferred answer's refusal).
    pub(super) fn set_error(&mut self, code: u16) {
        self.class = Class::Error;
        self.error = Some((code, ""));
    }

    /// The error code of an error answer.
    pub(super) fn code(&self) -> Option<u16> {
        self.error.map(|(c, _)| c)
    }

    /// Use this reason phrase instead of the RFC's.
    pub(super) fn reason(mut self, reason: &'static str) -> Reply {
        if let Some((_, r)) = self.error.as_mut() {
            *r = reason;
        }
        self
    }

    /// Not kept for retransmissions (an answer that must not replace the allocation's own).
    pub(super) fn uncached(mut self) -> Reply {
        self.cache = false;
        self
    }

    /// Sent from `from` (RFC 5780 CHANGE-REQUEST) rather than the address the request came to.
    pub(super) fn sent_from(mut self, from: SocketAddr) -> Reply {
        self.from = Some(from);
        self
    }

    /// The answer's bytes, with or without SOFTWARE and the reason phrase.
    fn encode(&self, software: Option<&str>, reason: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.attrs.len());
        let mut b = MessageBuilder::new_raw(&mut out, self.method, self.class, &self.raw_tid);
        match self.error {
            Some((code, phrase)) if reason => b.error_code(code, phrase),
            Some((code, _)) => b.error_code_bare(code),
            None => &mut b,
        };
        b.encoded(&self.attrs);
        if let Some(s) = software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        if let Some(k) = &self.sign.key {
            b.integrity(k.as_bytes());
            if self.sign.sha256 {
                b.integrity_sha256(k.as_bytes());
            }
        }
        if self.sign.fingerprint {
            b.fingerprint();
        }
        out
    }
}

impl Server {
    /// Unsigned: the answer to a request that is not (or not yet) authenticated.
    pub(super) fn plain_sign(&self, m: &Message) -> Sign {
        Sign {
            key: None,
            sha256: false,
            fingerprint: m.has_fingerprint() || self.config.fingerprint,
        }
    }

    /// Signed with the key `auth` proved (unsigned under `--no-auth`).
    pub(super) fn signed(&self, m: &Message, auth: &Auth) -> Sign {
        Sign {
            key: auth.key.clone(),
            sha256: auth.sha256,
            fingerprint: m.has_fingerprint() || self.config.fingerprint,
        }
    }

    /// How an answer given later is signed: with the allocation's key (none under `--no-auth`).
    pub(super) fn later_sign(&self, key: Option<&Key>, later: &Later) -> Sign {
        Sign {
            key: key.cloned(),
            sha256: later.sha256,
            fingerprint: later.fingerprint,
        }
    }

    /// Finish `reply` and queue it: SOFTWARE, integrity and FINGERPRINT as its [`Sign`] says. An
    /// unsigned answer stays within its budget by shedding SOFTWARE, then the reason phrase, and
    /// is not sent at all if it still does not fit. A cached answer is kept on the allocation of
    /// its 5-tuple so that a retransmitted request gets the same bytes.
    pub(super) fn send(&mut self, reply: Reply) {
        if let Some((code, _)) = reply.error {
            tracing::debug!(client = %reply.to.client, method = reply.method.0, code, "error response");
        }
        let software = self.config.software.as_deref();
        let data = match reply.budget {
            None => reply.encode(software, true),
            Some(budget) => {
                let tries = [(software, true), (None, true), (None, false)];
                let fits = tries
                    .into_iter()
                    .map(|(s, reason)| reply.encode(s, reason))
                    .find(|d| d.len() <= budget);
                let Some(data) = fits else {
                    self.counters.amplification_dropped += 1;
                    return;
                };
                data
            }
        };
        let to = FiveTuple {
            server: reply.from.unwrap_or(reply.to.server),
            ..reply.to
        };
        if reply.cache && reply.from.is_none() {
            if let Some(&id) = self.by_five_tuple.get(&reply.to) {
                if let Some(a) = self.get_mut(id) {
                    a.remember_response(&reply.raw_tid[4..], &data);
                }
            }
        }
        self.commands.push_back(Command::Send { to, data });
    }

    /// Send whatever a handler decided.
    pub(super) fn send_handled(&mut self, handled: Handled) {
        match handled {
            Ok(reply) | Err(Stop::Error(reply)) => self.send(reply),
            Err(Stop::Nothing) => {}
        }
    }
}
