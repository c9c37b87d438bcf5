//! Long-term credentials (RFC 8489 §9.2), the TURN REST API scheme (draft-uberti-behave-turn-rest,
//! coturn's `use-auth-secret`), and stateless nonces.
//!
//! Keys: MD5(username:realm:password) for PASSWORD-ALGORITHM MD5 (the default) and
//! SHA-256(username:realm:password) for SHA-256 (RFC 8489 §9.2.2). REST usernames are
//! `expiry[sep]user` or a bare `expiry` (Unix seconds); their password is
//! base64(HMAC-SHA1(secret, username)). Several secrets may be configured: any of them is accepted,
//! so a secret can be rotated without refusing credentials minted with the previous one.
//!
//! Nonces carry their own issue time and a MAC over it and the client's IP, so any worker (and any
//! restart that keeps the key) can check one without shared state. They begin with the RFC 8489
//! §9.2 nonce cookie `obMatJos2` and the security-feature bits for PASSWORD-ALGORITHMS and USERHASH.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The RFC 8489 §9.2 nonce cookie and the feature set (password algorithms + username anonymity).
pub const NONCE_PREFIX: &str = "obMatJos2wAAA";

/// A message-integrity key, as derived by the password algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl Key {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Which password algorithm a request uses (RFC 8489 §18.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAlgorithm {
    Md5,
    Sha256,
}

/// MD5(username:realm:password), the classic long-term key.
pub fn key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// SHA-256(username:realm:password) (RFC 8489 §9.2.2).
pub fn key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// USERHASH: SHA-256(username:realm) (RFC 8489 §14.4).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// The TURN REST password for a username: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Credentials minted by the REST scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct RestCredentials {
    pub username: String,
    pub password: String,
    /// Unix time at which they stop being accepted.
    pub expires: u64,
}

impl fmt::Debug for RestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestCredentials")
            .field("username", &self.username)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Mint REST credentials valid for `ttl` seconds from `unix_now`: username `expiry[sep]user`
/// (or the bare expiry when `user` is empty), as coturn and the draft define.
pub fn mint_rest_credentials(
    secret: &[u8],
    user: &str,
    ttl: u64,
    unix_now: u64,
    sep: char,
) -> RestCredentials {
    let expires = unix_now.saturating_add(ttl);
    let username = if user.is_empty() {
        expires.to_string()
    } else {
        format!("{expires}{sep}{user}")
    };
    let password = rest_password(secret, &username);
    RestCredentials {
        username,
        password,
        expires,
    }
}

/// The expiry of a REST username: the digits before the first separator (or the whole name).
/// coturn also accepts the timestamp after the separator (`user:expiry`); so do we.
pub fn rest_expiry(username: &str, sep: char) -> Option<u64> {
    let mut parts = username.splitn(2, sep);
    let first = parts.next()?;
    if let Ok(t) = first.parse::<u64>() {
        return Some(t);
    }
    parts.next()?.parse::<u64>().ok()
}

/// The user a quota counts an allocation against: a REST username's user part (`expiry:user`
/// or `user:expiry` -> `user`), so fetching a fresh credential does not give a user a fresh
/// quota; any other name as it is.
pub fn quota_user(username: &str, sep: char) -> &str {
    match username.split_once(sep) {
        Some((t, user)) if t.parse::<u64>().is_ok() => user,
        Some((user, t)) if t.parse::<u64>().is_ok() => user,
        _ => username,
    }
}

/// A static user's secret: the password (the long-term key is derived with the realm at run
/// time) or coturn's precomputed key, MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum UserSecret {
    Password(String),
    Key([u8; 16]),
}

impl std::fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserSecret::Password(_) => f.write_str("Password(<redacted>)"),
            UserSecret::Key(_) => f.write_str("Key(<redacted>)"),
        }
    }
}

#[derive(Clone)]
struct UserKeys {
    md5: [u8; 16],
    sha256: Option<[u8; 32]>,
}

impl UserKeys {
    fn derive(name: &str, realm: &str, secret: &UserSecret) -> Self {
        match secret {
            UserSecret::Password(p) => UserKeys {
                md5: key_md5(name, realm, p),
                sha256: Some(key_sha256(name, realm, p)),
            },
            UserSecret::Key(k) => UserKeys {
                md5: *k,
                sha256: None,
            },
        }
    }

    fn keys(&self, alg: PasswordAlgorithm) -> Result<Vec<Key>, AuthFailure> {
        match alg {
            PasswordAlgorithm::Md5 => Ok(vec![Key::Md5(self.md5)]),
            PasswordAlgorithm::Sha256 => self
                .sha256
                .map(|k| vec![Key::Sha256(k)])
                .ok_or(AuthFailure::NoKeyForAlgorithm),
        }
    }
}

/// One realm's users, REST secrets and options as a user database (coturn's `--redis-userdb`)
/// last held them: a snapshot built off the data path and swapped in whole, so that a request's
/// auth reads it without waiting on the database.
#[derive(Clone, Default)]
pub struct UserDb {
    users: HashMap<String, UserKeys>,
    secrets: Vec<Vec<u8>>,
    /// Index in `secrets` of the one to mint credentials with, as [`SecretAges`] chose it.
    mint_secret: Option<usize>,
    /// The realm's `user-quota`, `total-quota` and `max-bps` when the database sets them.
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_bps: Option<u64>,
    /// Unix time of the read this snapshot comes from.
    pub fetched_unix: u64,
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .field("mint_secret", &self.mint_secret)
            .field("user_quota", &self.user_quota)
            .field("total_quota", &self.total_quota)
            .field("max_bps", &self.max_bps)
            .field("fetched_unix", &self.fetched_unix)
            .finish()
    }
}

impl UserDb {
    pub fn new(fetched_unix: u64) -> Self {
        UserDb {
            fetched_unix,
            ..Default::default()
        }
    }

    /// Whether `name` is one of its users.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// A user of `realm`, by password or by its precomputed MD5 key.
    pub fn add_user(&mut self, name: &str, realm: &str, secret: &UserSecret) {
        self.users
            .insert(name.to_owned(), UserKeys::derive(name, realm, secret));
    }

    pub fn add_secret(&mut self, secret: &[u8]) {
        if !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_vec());
        }
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn secrets(&self) -> usize {
        self.secrets.len()
    }

    /// The REST secret to mint new credentials with: the most recently added, as marked by
    /// [`SecretAges::observe`]; `None` when the database holds none or no one marked it.
    pub fn mint_secret(&self) -> Option<&[u8]> {
        self.secrets.get(self.mint_secret?).map(Vec::as_slice)
    }
}

/// Which of a user database's REST secrets new credentials are minted with: the one most
/// recently added, so that a rotation (add the new secret, wait, remove the old one) moves the
/// minting to the new secret as soon as it appears, and removing the old one changes nothing.
///
/// The database keeps its secrets in a set, which has no order, so the reader of the database
/// numbers its successful reads and remembers, for each secret present, the read in which it
/// first appeared; a secret that disappears is forgotten (added again later, it counts as new).
/// The secret first seen in the latest read wins. Several secrets first seen in the same read
/// (every secret of the node's first read, or two added between reads) are ordered by their
/// bytes, the greatest counting as the newest: arbitrary, but the same on every node and after
/// every restart.
#[derive(Default)]
pub struct SecretAges {
    first_read_by_secret: HashMap<Vec<u8>, u64>,
    reads: u64,
}

impl fmt::Debug for SecretAges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretAges")
            .field("secrets", &self.first_read_by_secret.len())
            .field("reads", &self.reads)
            .finish()
    }
}

impl SecretAges {
    /// Note one successful read (`db`, before it is published): forget the secrets it no
    /// longer holds, date the new ones to this read, and mark in `db` the secret to mint with.
    /// True when that secret differs from the previous read's choice.
    pub fn observe(&mut self, db: &mut UserDb) -> bool {
        self.reads = self.reads.saturating_add(1);
        let read = self.reads;
        let before = self.newest().map(<[u8]>::to_vec);
        self.first_read_by_secret
            .retain(|s, _| db.secrets.contains(s));
        for s in &db.secrets {
            self.first_read_by_secret.entry(s.clone()).or_insert(read);
        }
        let newest = self.newest().map(<[u8]>::to_vec);
        db.mint_secret = newest
            .as_deref()
            .and_then(|n| db.secrets.iter().position(|s| s == n));
        before != newest
    }

    /// The secret first seen latest (ties: the greatest bytes).
    fn newest(&self) -> Option<&[u8]> {
        self.first_read_by_secret
            .iter()
            .max_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)))
            .map(|(s, _)| s.as_slice())
    }
}

/// Where the engines find the latest [`UserDb`] snapshot. Empty until the first successful read;
/// a snapshot older than its maximum age is not used (fail closed: its users get 401), so a
/// database that stays away cannot keep revoked credentials alive forever.
#[derive(Debug, Default)]
pub struct UserDbCell {
    current: ArcSwapOption<UserDb>,
    max_age: std::sync::atomic::AtomicU64,
}

impl UserDbCell {
    /// Publish a fresh snapshot, used for up to `max_age` seconds after its read.
    pub fn store(&self, db: UserDb, max_age: u64) {
        self.max_age
            .store(max_age, std::sync::atomic::Ordering::Relaxed);
        self.current.store(Some(Arc::new(db)));
    }

    /// The last snapshot, however old (for metrics).
    pub fn latest(&self) -> Option<Arc<UserDb>> {
        self.current.load_full()
    }

    /// The snapshot, if there is one and it is not too old at `unix_now`. Lock-free.
    pub fn fresh(&self, unix_now: u64) -> Option<Arc<UserDb>> {
        let db = self.current.load_full()?;
        let max_age = self.max_age.load(std::sync::atomic::Ordering::Relaxed);
        (unix_now <= db.fetched_unix.saturating_add(max_age)).then_some(db)
    }
}

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownUser,
    Expired,
    /// Only an MD5 key is known for this user, and SHA-256 was asked for.
    NoKeyForAlgorithm,
    /// The user is known; MESSAGE-INTEGRITY matched none of its keys.
    WrongCredentials,
}

/// Everything needed to check a request's credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, UserKeys>,
    by_userhash: HashMap<[u8; 32], String>,
    rest_secrets: Vec<Vec<u8>>,
    rest_separator: char,
    /// TURN REST mode (`--use-auth-secret`): secrets may also come from a user database.
    rest_api: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest_secrets", &self.rest_secrets.len())
            .finish()
    }
}

impl Credentials {
    pub fn new(realm: &str, rest_separator: char) -> Self {
        Credentials {
            realm: realm.to_owned(),
            rest_separator,
            ..Default::default()
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn add_user(&mut self, name: &str, secret: &UserSecret) {
        let keys = UserKeys::derive(name, &self.realm, secret);
        self.by_userhash
            .insert(userhash(name, &self.realm), name.to_owned());
        self.users.insert(name.to_owned(), keys);
    }

    pub fn add_rest_secret(&mut self, secret: &[u8]) {
        self.rest_secrets.push(secret.to_vec());
    }

    /// TURN REST mode even without a static secret (the secrets come from a user database).
    pub fn set_rest_api(&mut self, on: bool) {
        self.rest_api = on;
    }

    pub fn has_rest(&self) -> bool {
        self.rest_api || !self.rest_secrets.is_empty()
    }

    pub fn rest_separator(&self) -> char {
        self.rest_separator
    }

    /// True for a `--user` name (whose key never expires), false for a REST name.
    pub fn is_static_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The username a USERHASH stands for (static users only; a REST name cannot be recovered).
    pub fn user_for_hash(&self, hash: &[u8]) -> Option<&str> {
        let h: [u8; 32] = hash.try_into().ok()?;
        self.by_userhash.get(&h).map(String::as_str)
    }

    /// The candidate keys for `username`: one for a static user, one per REST secret otherwise.
    /// The caller accepts the request if MESSAGE-INTEGRITY matches any of them.
    pub fn keys_for(
        &self,
        username: &str,
        alg: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Vec<Key>, AuthFailure> {
        self.keys_with_db(username, alg, unix_now, None)
    }

    /// As [`Credentials::keys_for`], with the users and (in REST mode) the secrets of a user
    /// database snapshot as well. Static users win over database users of the same name.
    pub fn keys_with_db(
        &self,
        username: &str,
        alg: PasswordAlgorithm,
        unix_now: u64,
        db: Option<&UserDb>,
    ) -> Result<Vec<Key>, AuthFailure> {
        if let Some(u) = self.users.get(username) {
            return u.keys(alg);
        }
        if let Some(u) = db.and_then(|db| db.users.get(username)) {
            return u.keys(alg);
        }
        let db_secrets = match db {
            Some(db) if self.has_rest() => db.secrets.as_slice(),
            _ => &[],
        };
        if self.rest_secrets.is_empty() && db_secrets.is_empty() {
            return Err(AuthFailure::UnknownUser);
        }
        let expiry = rest_expiry(username, self.rest_separator).ok_or(AuthFailure::UnknownUser)?;
        if expiry < unix_now {
            return Err(AuthFailure::Expired);
        }
        Ok(self
            .rest_secrets
            .iter()
            .chain(db_secrets)
            .map(|s| {
                let pw = rest_password(s, username);
                match alg {
                    PasswordAlgorithm::Md5 => Key::Md5(key_md5(username, &self.realm, &pw)),
                    PasswordAlgorithm::Sha256 => {
                        Key::Sha256(key_sha256(username, &self.realm, &pw))
                    }
                }
            })
            .collect())
    }
}

/// The secret behind stateless nonces; shared by all workers.
#[derive(Clone)]
pub struct NonceKey(pub [u8; 32]);

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Expired, forged, or issued to another address: answer 438 with a fresh one.
    Stale,
}

impl NonceKey {
    fn mac(&self, issued: u64, ip: IpAddr) -> u64 {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&issued.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("SHA-256 is 32 bytes"))
    }

    /// A nonce for a client at `ip`, issued at `unix_now`.
    pub fn make(&self, unix_now: u64, ip: IpAddr) -> String {
        format!(
            "{NONCE_PREFIX}{unix_now:016x}{:016x}",
            self.mac(unix_now, ip)
        )
    }

    /// Check a nonce from a client at `ip`: issued by us for this address, at most `lifetime`
    /// seconds ago.
    pub fn check(&self, nonce: &[u8], unix_now: u64, lifetime: u64, ip: IpAddr) -> NonceCheck {
        let Some(rest) = nonce.strip_prefix(NONCE_PREFIX.as_bytes()) else {
            return NonceCheck::Stale;
        };
        if rest.len() != 32 {
            return NonceCheck::Stale;
        }
        let parse = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        let (Some(issued), Some(mac)) = (parse(&rest[..16]), parse(&rest[16..])) else {
            return NonceCheck::Stale;
        };
        let want = self.mac(issued, ip);
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(&want.to_be_bytes()[..], &mac.to_be_bytes()[..]).into();
        if !same
            || issued > unix_now.saturating_add(5)
            || unix_now.saturating_sub(issued) > lifetime
        {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }
}

/// How many allocations each user, and the realm in all, hold on the *other* nodes of the
/// fleet, as last read from the shared database. Used by the user and total quotas only while
/// fresh: when the database is away, each node falls back to its own count.
#[derive(Debug, Default)]
pub struct FleetUsage {
    current: ArcSwapOption<UsageRead>,
}

#[derive(Debug)]
struct UsageRead {
    fetched_unix: u64,
    by_user: HashMap<String, u32>,
    total: u32,
}

/// How old (seconds) a fleet usage read may be and still count.
pub const FLEET_USAGE_MAX_AGE: u64 = 5;

impl FleetUsage {
    /// Publish the other nodes' counts, read at `fetched_unix`.
    pub fn store(&self, fetched_unix: u64, by_user: HashMap<String, u32>) {
        let total = by_user.values().fold(0u32, |t, n| t.saturating_add(*n));
        self.current.store(Some(Arc::new(UsageRead {
            fetched_unix,
            by_user,
            total,
        })));
    }

    fn fresh(&self, unix_now: u64) -> Option<Arc<UsageRead>> {
        self.current
            .load_full()
            .filter(|r| unix_now <= r.fetched_unix.saturating_add(FLEET_USAGE_MAX_AGE))
    }

    /// Allocations `user` holds elsewhere; 0 when the last read is older than
    /// [`FLEET_USAGE_MAX_AGE`] or there is none.
    pub fn elsewhere(&self, user: &str, unix_now: u64) -> u32 {
        self.fresh(unix_now)
            .and_then(|r| r.by_user.get(user).copied())
            .unwrap_or(0)
    }

    /// Allocations of the realm elsewhere, for the total quota; 0 as for [`Self::elsewhere`].
    pub fn elsewhere_total(&self, unix_now: u64) -> u32 {
        self.fresh(unix_now).map_or(0, |r| r.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_counts_the_rest_user_part() {
        assert_eq!(quota_user("1700000000:alice", ':'), "alice");
        assert_eq!(quota_user("alice:1700000000", ':'), "alice");
        assert_eq!(quota_user("1700000000-alice", '-'), "alice");
        assert_eq!(quota_user("alice", ':'), "alice");
        assert_eq!(quota_user("a:b", ':'), "a:b");
        assert_eq!(quota_user("", ':'), "");
    }

    #[test]
    fn rest_credentials_match_coturns_scheme() {
        // The scheme: password = base64(HMAC-SHA1(secret, "expiry:user")). Known answer computed
        // with `printf '1700000000:alice' | openssl dgst -sha1 -hmac north -binary | base64`.
        let c = mint_rest_credentials(b"north", "alice", 100, 1_699_999_900, ':');
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, rest_password(b"north", "1700000000:alice"));
        assert_eq!(c.password, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        assert_eq!(rest_expiry("1700000000:alice", ':'), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000", ':'), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000", ':'), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice", ':'), None);
        assert_eq!(mint_rest_credentials(b"s", "", 1, 1, ':').username, "2");
    }

    #[test]
    fn keys_for_static_and_rest_users() {
        let mut c = Credentials::new("example.org", ':');
        c.add_user("bob", &UserSecret::Password("pw".into()));
        c.add_user("hex", &UserSecret::Key([7; 16]));
        c.add_rest_secret(b"old");
        c.add_rest_secret(b"new");
        let k = c.keys_for("bob", PasswordAlgorithm::Md5, 0).unwrap();
        assert_eq!(k, vec![Key::Md5(key_md5("bob", "example.org", "pw"))]);
        assert!(c.keys_for("bob", PasswordAlgorithm::Sha256, 0).is_ok());
        assert_eq!(
            c.keys_for("hex", PasswordAlgorithm::Md5, 0).unwrap(),
            vec![Key::Md5([7; 16])]
        );
        assert_eq!(
            c.keys_for("hex", PasswordAlgorithm::Sha256, 0),
            Err(AuthFailure::NoKeyForAlgorithm)
        );
        let rest = c
            .keys_for("2000:carol", PasswordAlgorithm::Md5, 1000)
            .unwrap();
        assert_eq!(rest.len(), 2);
        let pw = rest_password(b"new", "2000:carol");
        assert!(rest.contains(&Key::Md5(key_md5("2000:carol", "example.org", &pw))));
        assert_eq!(
            c.keys_for("999:carol", PasswordAlgorithm::Md5, 1000),
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            c.keys_for("carol", PasswordAlgorithm::Md5, 1000),
            Err(AuthFailure::UnknownUser)
        );
        assert_eq!(
            c.user_for_hash(&userhash("bob", "example.org")),
            Some("bob")
        );
        assert_eq!(c.user_for_hash(&[0; 3]), None);
    }

    #[test]
    fn user_db_snapshot_adds_users_and_secrets_until_too_old() {
        let mut c = Credentials::new("example.org", ':');
        c.add_user("bob", &UserSecret::Password("static".into()));
        let mut db = UserDb::new(1000);
        db.add_user("ann", "example.org", &UserSecret::Password("pw".into()));
        db.add_user("bob", "example.org", &UserSecret::Password("other".into()));
        db.add_user("hex", "example.org", &UserSecret::Key([9; 16]));
        db.add_secret(b"rotated");
        db.add_secret(b"rotated");
        assert_eq!((db.users(), db.secrets()), (3, 1));
        let cell = UserDbCell::default();
        assert!(cell.fresh(1000).is_none(), "nothing read yet: fail closed");
        cell.store(db, 60);
        let snap = cell.fresh(1060).expect("within max age");
        assert!(cell.fresh(1061).is_none(), "too old: fail closed");
        let md5 = |u, alg| c.keys_with_db(u, alg, 1000, Some(&snap));
        assert_eq!(
            md5("ann", PasswordAlgorithm::Md5).unwrap(),
            vec![Key::Md5(key_md5("ann", "example.org", "pw"))]
        );
        assert_eq!(
            md5("bob", PasswordAlgorithm::Md5).unwrap(),
            vec![Key::Md5(key_md5("bob", "example.org", "static"))]
        );
        assert_eq!(
            md5("hex", PasswordAlgorithm::Md5).unwrap(),
            vec![Key::Md5([9; 16])]
        );
        assert_eq!(
            c.keys_for("ann", PasswordAlgorithm::Md5, 1000),
            Err(AuthFailure::UnknownUser)
        );
        // Database secrets count only in REST mode.
        assert_eq!(
            md5("2000:carol", PasswordAlgorithm::Md5),
            Err(AuthFailure::UnknownUser)
        );
        c.set_rest_api(true);
        let pw = rest_password(b"rotated", "2000:carol");
        assert_eq!(
            c.keys_with_db("2000:carol", PasswordAlgorithm::Md5, 1000, Some(&snap))
                .unwrap(),
            vec![Key::Md5(key_md5("2000:carol", "example.org", &pw))]
        );
        assert_eq!(
            c.keys_with_db("2000:carol", PasswordAlgorithm::Md5, 1000, None),
            Err(AuthFailure::UnknownUser)
        );
    }

    /// One read of a database holding `secrets` (in the order Redis returned them).
    fn read_of(secrets: &[&str]) -> UserDb {
        let mut db = UserDb::new(0);
        secrets.iter().for_each(|s| db.add_secret(s.as_bytes()));
        db
    }

    fn minted_with(ages: &mut SecretAges, secrets: &[&str]) -> (Option<String>, bool) {
        let mut db = read_of(secrets);
        let changed = ages.observe(&mut db);
        let s = db
            .mint_secret()
            .map(|s| String::from_utf8(s.to_vec()).unwrap());
        (s, changed)
    }

    #[test]
    fn secrets_of_one_read_are_ordered_by_their_bytes_whatever_redis_returns() {
        let some = |s: &str| Some(s.to_owned());
        for order in [["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]] {
            let mut ages = SecretAges::default();
            assert_eq!(minted_with(&mut ages, &order), (some("c"), true));
            // Nothing new: the same choice, whatever order the set comes back in.
            assert_eq!(minted_with(&mut ages, &["a", "c", "b"]), (some("c"), false));
        }
        assert_eq!(
            read_of(&["x"]).mint_secret(),
            None,
            "not observed: no choice"
        );
        let mut ages = SecretAges::default();
        assert_eq!(minted_with(&mut ages, &[]), (None, false));
        assert_eq!(minted_with(&mut ages, &["a"]), (some("a"), true));
    }

    #[test]
    fn rotation_mints_with_the_secret_added_last() {
        let some = |s: &str| Some(s.to_owned());
        let mut ages = SecretAges::default();
        assert_eq!(minted_with(&mut ages, &["zz-old"]), (some("zz-old"), true));
        // A new secret is added (its bytes sort before the old one's: first seen wins).
        assert_eq!(
            minted_with(&mut ages, &["zz-old", "aa-new"]),
            (some("aa-new"), true)
        );
        assert_eq!(
            minted_with(&mut ages, &["aa-new", "zz-old"]),
            (some("aa-new"), false)
        );
        // The old one is removed: nothing changes.
        assert_eq!(minted_with(&mut ages, &["aa-new"]), (some("aa-new"), false));
        // Two added between reads: the greater bytes of the two.
        assert_eq!(
            minted_with(&mut ages, &["aa-new", "m2", "m1"]),
            (some("m2"), true)
        );
        // The newest withdrawn (a rollback): the next newest.
        assert_eq!(
            minted_with(&mut ages, &["aa-new", "m1"]),
            (some("m1"), true)
        );
        // A removed secret added again counts as new.
        assert_eq!(
            minted_with(&mut ages, &["aa-new", "m1", "zz-old"]),
            (some("zz-old"), true)
        );
        // All gone: nothing to mint with; the first that comes back is the newest.
        assert_eq!(minted_with(&mut ages, &[]), (None, true));
        assert_eq!(minted_with(&mut ages, &["m1"]), (some("m1"), true));
        assert!(
            !format!("{ages:?}").contains("m1"),
            "secrets stay out of logs"
        );
    }

    #[test]
    fn fleet_usage_counts_only_while_fresh() {
        let u = FleetUsage::default();
        assert_eq!(u.elsewhere("ann", 100), 0);
        u.store(100, HashMap::from([("ann".to_owned(), 2)]));
        assert_eq!(u.elsewhere("ann", 105), 2);
        assert_eq!(u.elsewhere("bob", 105), 0);
        assert_eq!(u.elsewhere_total(105), 2);
        assert_eq!(u.elsewhere("ann", 106), 0, "stale: local count only");
        assert_eq!(u.elsewhere_total(106), 0);
        u.store(
            200,
            HashMap::from([("ann".to_owned(), u32::MAX), ("bob".to_owned(), 3)]),
        );
        assert_eq!(u.elsewhere_total(200), u32::MAX, "saturates");
    }

    #[test]
    fn nonces_are_stateless_and_expire() {
        let k = NonceKey([3; 32]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let n = k.make(1000, ip);
        assert!(n.starts_with("obMatJos2"));
        assert!(n.len() < 128);
        assert_eq!(k.check(n.as_bytes(), 1000, 600, ip), NonceCheck::Valid);
        assert_eq!(k.check(n.as_bytes(), 1600, 600, ip), NonceCheck::Valid);
        assert_eq!(k.check(n.as_bytes(), 1601, 600, ip), NonceCheck::Stale);
        assert_eq!(
            k.check(n.as_bytes(), 1000, 600, "192.0.2.2".parse().unwrap()),
            NonceCheck::Stale
        );
        assert_eq!(
            NonceKey([4; 32]).check(n.as_bytes(), 1000, 600, ip),
            NonceCheck::Stale
        );
        let mut forged = n.clone().into_bytes();
        forged[20] = if forged[20] == b'0' { b'1' } else { b'0' };
        assert_eq!(k.check(&forged, 1000, 600, ip), NonceCheck::Stale);
        assert_eq!(k.check(b"short", 1000, 600, ip), NonceCheck::Stale);
        assert_eq!(
            k.check("obMatJos2wAAAé".as_bytes(), 1000, 600, ip),
            NonceCheck::Stale
        );
    }
}
