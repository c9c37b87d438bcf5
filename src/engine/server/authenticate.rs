//! Long-term credentials (RFC 8489 §9.2): challenges, nonces, the limiter, the key check.

use super::*;

/// The PASSWORD-ALGORITHMS every challenge advertises: MD5, then SHA-256, neither with
/// parameters (RFC 8489 §14.11).
pub(super) const PASSWORD_ALGORITHMS: [u8; 8] = [
    0,
    attr::PASSWORD_ALGORITHM_MD5 as u8,
    0,
    0,
    0,
    attr::PASSWORD_ALGORITHM_SHA256 as u8,
    0,
    0,
];

/// The password algorithm of a signed request (RFC 8489 §9.2.4): MD5 when it names neither
/// PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS; otherwise both must be there, the list must be
/// exactly the one our challenge sent (so a man in the middle who struck SHA-256 from it is
/// caught: no downgrade to MD5) and the algorithm one of its entries. None: 400.
pub(super) fn password_algorithm(m: &Message) -> Option<PasswordAlgorithm> {
    match (
        m.get(attr::PASSWORD_ALGORITHM),
        m.get(attr::PASSWORD_ALGORITHMS),
    ) {
        (None, None) => Some(PasswordAlgorithm::Md5),
        (Some(alg), Some(list)) if list == PASSWORD_ALGORITHMS && alg.len() == 4 => {
            if !list.chunks_exact(4).any(|entry| entry == alg) {
                return None;
            }
            match u16::from_be_bytes([alg[0], alg[1]]) {
                attr::PASSWORD_ALGORITHM_MD5 => Some(PasswordAlgorithm::Md5),
                attr::PASSWORD_ALGORITHM_SHA256 => Some(PasswordAlgorithm::Sha256),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Who a request authenticated as, and how to sign the answer.
pub(super) struct Auth {
    pub(super) username: String,
    pub(super) key: Option<Key>,
    pub(super) sha256: bool,
}

impl Server {
    /// Which limiter bucket a request draws from: [`LimitClass::Proven`] when it carries a
    /// NONCE we issued to this very address and that is still fresh (one HMAC, no password
    /// hashing), else [`LimitClass::Unproven`].
    pub(super) fn nonce_class(&self, now: Instant, five: FiveTuple, m: &Message) -> LimitClass {
        let Some(nonce) = m.get(attr::NONCE) else {
            return LimitClass::Unproven;
        };
        let lifetime = u64::from(self.config.nonce_lifetime);
        match self
            .shared
            .nonce_key
            .check(nonce, self.unix(now), lifetime, five.client.ip())
        {
            NonceCheck::Valid => LimitClass::Proven,
            NonceCheck::Stale => LimitClass::Unproven,
        }
    }

    /// Whether this source may have one more challenge or Allocate attempt now
    /// (`--unauthorized-ratelimit`); counts the refusals.
    pub(super) fn limiter_allows(&mut self, now: Instant, five: FiveTuple) -> bool {
        self.limiter_allows_in(now, five, LimitClass::Unproven)
    }

    /// [`Server::limiter_allows`] from the bucket of `class`.
    pub(super) fn limiter_allows_in(
        &mut self,
        now: Instant,
        five: FiveTuple,
        class: LimitClass,
    ) -> bool {
        let rate = self.config.unauthorized_ratelimit;
        let ok = self.limiter.try_take_in(now, five.client.ip(), class, rate);
        if !ok {
            self.counters.rate_limited += 1;
        }
        ok
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4); nothing
    /// when the source is over `--unauthorized-ratelimit` (an Allocate paid already).
    pub(super) fn challenge(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        code: u16,
    ) -> Stop {
        if m.method() != Method::ALLOCATE && !self.limiter_allows(now, five) {
            return Stop::Nothing;
        }
        let nonce = self.shared.nonce_key.make(self.unix(now), five.client.ip());
        let sign = self.plain_sign(m);
        let realm = self.config.realm.as_bytes();
        Stop::Error(Reply::error(five, m, code, &sign).with(|b| {
            b.attr(attr::REALM, realm);
            b.attr(attr::NONCE, nonce.as_bytes());
            b.attr(attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS);
        }))
    }

    /// Long-term credential check (RFC 8489 §9.2.4): who the request is from, or the answer
    /// (400, a challenge, 441) or silence it gets instead. `owner` is the username of the
    /// allocation the request acts on (441 on mismatch, RFC 8656 §5).
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        owner: Option<&str>,
    ) -> Result<Auth, Stop> {
        self.authenticate_or(now, five, m, owner, true)
    }

    /// [`Server::authenticate`], answering nothing where it would challenge (401/438) unless
    /// `challenge`: a Refresh, CreatePermission or ChannelBind from a 5-tuple that holds no
    /// allocation has nothing to gain from a NONCE, so it never gets one (no reflection of a
    /// challenge towards a spoofed source, nothing learned by a probe).
    pub(super) fn authenticate_or(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        owner: Option<&str>,
        challenge: bool,
    ) -> Result<Auth, Stop> {
        if self.config.no_auth {
            return Ok(Auth {
                username: String::new(),
                key: None,
                sha256: false,
            });
        }
        let bad_request = |s: &Server| Stop::Error(Reply::error(five, m, 400, &s.plain_sign(m)));
        if !m.has_integrity() && !m.has_integrity_sha256() {
            self.counters.unauthorized += 1;
            return Err(match challenge {
                true => self.challenge(now, five, m, 401),
                false => Stop::Nothing,
            });
        }
        let user_attr = m.get(attr::USERNAME);
        let hash_attr = m.get(attr::USERHASH);
        let (Some(realm), Some(nonce)) = (m.get(attr::REALM), m.get(attr::NONCE)) else {
            return Err(bad_request(self));
        };
        if user_attr.is_none() && hash_attr.is_none() {
            return Err(bad_request(self));
        }
        let unix = self.unix(now);
        if self.shared.nonce_key.check(
            nonce,
            unix,
            u64::from(self.config.nonce_lifetime),
            five.client.ip(),
        ) == NonceCheck::Stale
        {
            self.counters.stale_nonces += 1;
            return Err(match challenge {
                true => self.challenge(now, five, m, 438),
                false => Stop::Nothing,
            });
        }
        let Some(alg) = password_algorithm(m) else {
            return Err(bad_request(self));
        };
        let username = match (user_attr, hash_attr) {
            (Some(u), _) => std::str::from_utf8(u).ok().map(str::to_owned),
            (None, Some(h)) => self.config.credentials.user_for_hash(h).map(str::to_owned),
            _ => None,
        };
        let creds = &self.config.credentials;
        let db = self.shared.userdb.fresh(unix);
        let keys = match username.as_deref() {
            Some(u) if realm == creds.realm().as_bytes() => {
                creds.keys_with_db(u, alg, unix, db.as_deref())
            }
            _ => Err(AuthFailure::UnknownUser),
        };
        // An allocation keeps the key it was made with, so a reload (SIGHUP) that changes a
        // secret, password or realm never cuts a live call; an expired REST name still fails.
        let lookup_failure = keys.as_ref().err().copied();
        let mut keys = match keys {
            Ok(k) => Some(k),
            Err(AuthFailure::Expired) => None,
            Err(_) => Some(Vec::new()),
        };
        if let (Some(list), Some(owner), Some(u)) = (keys.as_mut(), owner, username.as_deref()) {
            if owner == u {
                let held = self.by_five_tuple.get(&five).and_then(|id| self.get(*id));
                list.extend(held.and_then(|a| a.key().cloned()));
            }
        }
        let failure = match (&keys, &username) {
            (None, _) => AuthFailure::Expired,
            (Some(_), None) => AuthFailure::UnknownUser,
            (Some(_), Some(_)) => lookup_failure.unwrap_or(AuthFailure::WrongCredentials),
        };
        let use_sha256 = m.has_integrity_sha256();
        let matched = keys.and_then(|keys| {
            keys.into_iter().find(|k| {
                if use_sha256 {
                    m.check_integrity_sha256(k.as_bytes())
                } else {
                    m.check_integrity(k.as_bytes())
                }
            })
        });
        let (Some(key), Some(username)) = (matched, username) else {
            self.counters.auth_failures += 1;
            let r = &mut self.counters.auth_failures_by_reason;
            match failure {
                AuthFailure::UnknownUser => r.unknown_user += 1,
                AuthFailure::Expired => r.expired += 1,
                AuthFailure::NoKeyForAlgorithm => r.algorithm += 1,
                AuthFailure::WrongCredentials => r.wrong_credentials += 1,
            }
            return Err(match challenge {
                true => self.challenge(now, five, m, 401),
                false => Stop::Nothing,
            });
        };
        let auth = Auth {
            username,
            key: Some(key),
            sha256: use_sha256,
        };
        if owner.is_some_and(|owner| owner != auth.username) {
            let sign = self.signed(m, &auth);
            return Err(Reply::error(five, m, 441, &sign).uncached().into());
        }
        Ok(auth)
    }
}
