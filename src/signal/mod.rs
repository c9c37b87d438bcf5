//! The signaling companion (`--signaling-listen ADDR:PORT`, off unless given): Socket.io call
//! signaling (protocol v5, so `socket.io-client` 4.x connects unchanged) and the TURN REST
//! credential endpoint (draft-uberti-behave-turn-rest-00 §2), served by axum + socketioxide as
//! tasks of the control plane's runtime ([`crate::control`]), so that signaling never delays a
//! relay worker.
//!
//! Handshake: `auth: {userId, token, expiry}`, where `token` = hex HMAC-SHA256(secret,
//! `"{userId}:{expiry}"`) ([`mint_token`]) under `--signaling-secret` and `expiry` is in Unix
//! seconds; `{userId}` alone only with `--signaling-insecure` (an open credential endpoint makes
//! the relay an open relay, so the configuration refuses neither). The same three may ride in
//! the Engine.IO handshake's query string, checked before a session exists (`engine_guard`).
//! Each socket joins room `user_<userId>`.
//!
//! Safe by default: other origins are refused unless `--signaling-cors-origin` names them;
//! new sessions, credentials, calls, rings of one callee and WebRTC messages are rate-limited
//! ([`limit`]) per address or per user (so reconnecting refills nothing); sockets are capped per
//! user, per address and in total; offline and busy look the same (`--signaling-presence` to
//! tell them apart). The HTTP listener's own limits are [`crate::http::serve`]'s.
//!
//! Events (the seed's names and fields): `call_initiate {calleeId, type}` → `incoming_call
//! {callId, callerId, type}` to the callee and `call_initiated {callId}` to the caller (or
//! `call_busy`); `call_answer {callId}` → `call_answered {callId}` to both; `call_reject` /
//! `call_decline {callId}` → `call_rejected {callId}` to the caller; `call_end {callId}` →
//! `call_ended {callId}` to the other party; `webrtc_offer {offer, to}`, `webrtc_answer
//! {answer, to}`, `webrtc_ice_candidate {candidate, to}` → relayed to `user_<to>` with `from`
//! added, only between the two parties of one call once it is answered. Refusals come back as `call_error {code,
//! message}`. The call state itself lives in [`calls`].
//!
//! HTTP: `GET /api/turn-credentials[?userId=&expiry=&token=]` →
//! `{username, password, ttl, uris, iceServers}` minted from the first `--static-auth-secret`,
//! else (with `--use-auth-secret --redis-userdb`) from the REST secret most recently added to
//! the database, as its last snapshot names it (never waiting on Redis; 503 when the snapshot
//! is older than `--redis-max-stale`, as the engine then refuses the database too);
//! `GET /` the demo call page (`demo/`: HTML, CSS and JS compiled in, with our own small
//! Socket.io client), which tests/browser.rs drives in headless Chromium.

pub mod calls;
pub mod cluster;
pub mod limit;
pub mod records;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::engine::auth::{mint_rest_credentials, UserDbCell};
use calls::{CallError, CallKind, Calls, EndReason};

/// The largest event payload accepted (JSON-encoded); larger ones get `call_error
/// payload_too_large`. SDP offers with many codecs stay well below.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The largest Engine.IO packet read at all; larger ones close the connection.
const MAX_PACKET_BYTES: u64 = 256 * 1024;
/// The longest user id accepted.
pub const MAX_USER_ID_LEN: usize = 128;

/// What the signaling companion needs from the configuration.
#[derive(Clone, Debug)]
pub struct SignalConfig {
    pub listen: SocketAddr,
    /// `--signaling-secret`: handshake tokens are required when set.
    pub secret: Option<Vec<u8>>,
    /// `--signaling-cors-origin`s: origins besides the page's own (`*` = any).
    pub cors_origins: Vec<String>,
    /// `--signaling-insecure`: no secret on purpose (logged loudly at start).
    pub insecure: bool,
    /// `--signaling-presence`: `call_initiate` tells offline (`user_offline`) from busy.
    pub presence: bool,
    /// `--signaling-redis`: where call records are kept.
    pub redis: Option<crate::config::RedisConn>,
    /// The first `--static-auth-secret`, which credentials are minted with when given.
    pub rest_secret: Option<Vec<u8>>,
    /// The user database's snapshots (`--use-auth-secret --redis-userdb`): without a static
    /// secret, credentials are minted with the newest REST secret of a fresh snapshot. With
    /// neither, or with a snapshot past `--redis-max-stale`, the endpoint answers 503.
    pub userdb: Option<Arc<UserDbCell>>,
    pub rest_separator: char,
    pub credentials_ttl: u64,
    /// `--turn-uri`s; empty = derived per request from [`SignalConfig::default_host`] or the
    /// request's `Host`.
    pub turn_uris: Vec<String>,
    /// The specific listening IP, if any, for the default URIs.
    pub default_host: Option<IpAddr>,
    pub turn_port: u16,
    pub udp: bool,
    pub tcp: bool,
    /// The fleet's heartbeats (`--redis-statsdb`): when set and no `--turn-uri` is given, the
    /// URIs name the nearest healthy nodes (region from `?region=` or `X-Region`).
    pub fleet: Option<Arc<crate::fleet::Directory>>,
}

impl SignalConfig {
    /// `None` unless `--signaling-listen` is given.
    pub fn from_config(c: &Config) -> Option<Self> {
        Some(SignalConfig {
            listen: c.signaling.signaling_listen?,
            secret: c
                .signaling
                .signaling_secret
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            cors_origins: c.signaling.signaling_cors_origins.clone(),
            insecure: c.signaling.signaling_insecure,
            presence: c.signaling.signaling_presence,
            redis: c.signaling.signaling_redis.clone(),
            rest_secret: c
                .auth
                .static_auth_secrets
                .first()
                .map(|s| s.as_bytes().to_vec()),
            rest_separator: c.auth.rest_api_separator,
            credentials_ttl: c.signaling.turn_credentials_ttl,
            turn_uris: c.signaling.turn_uris.clone(),
            default_host: c
                .listeners
                .listening_ips
                .iter()
                .copied()
                .find(|ip| !ip.is_unspecified()),
            turn_port: c.listeners.listening_port,
            udp: !c.listeners.no_udp,
            tcp: !c.listeners.no_tcp,
            fleet: None,
            userdb: None,
        })
    }
}

/// Why a Socket.io connection was refused (besides authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("too many connections from this address")]
    TooManyFromAddress,
    #[error("too many connections of this user")]
    TooManyOfUser,
    #[error("the server is full")]
    Full,
}

/// Why a handshake or credential request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid userId")]
    BadUser,
    #[error("missing token or expiry")]
    MissingToken,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    BadToken,
}

/// The handshake token of `user` valid until `expiry` (Unix seconds): hex HMAC-SHA256 of
/// `"{user}:{expiry}"` under the signaling secret. An app's backend mints it the same way.
pub fn mint_token(secret: &[u8], user: &str, expiry: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{user}:{expiry}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Check a handshake token; compared in constant time.
pub fn verify_token(
    secret: &[u8],
    user: &str,
    expiry: u64,
    token: &str,
    unix_now: u64,
) -> Result<(), AuthError> {
    if expiry <= unix_now {
        return Err(AuthError::Expired);
    }
    let want = mint_token(secret, user, expiry);
    if want.as_bytes().ct_eq(token.as_bytes()).into() {
        Ok(())
    } else {
        Err(AuthError::BadToken)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A user id from JSON: a non-empty string without control characters, or a number (the seed's
/// ids may be either).
fn user_id(v: Option<&Value>) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let ok = !s.is_empty() && s.len() <= MAX_USER_ID_LEN && !s.chars().any(char::is_control);
    ok.then_some(s)
}

fn unix_secs(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Check the identity a client claims (handshake `auth` or query string).
fn authenticate(secret: Option<&[u8]>, auth: &Value, now: u64) -> Result<String, AuthError> {
    let user = user_id(auth.get("userId")).ok_or(AuthError::BadUser)?;
    if let Some(secret) = secret {
        let expiry = unix_secs(auth.get("expiry")).ok_or(AuthError::MissingToken)?;
        let token = auth
            .get("token")
            .and_then(Value::as_str)
            .ok_or(AuthError::MissingToken)?;
        verify_token(secret, &user, expiry, token, now)?;
    }
    Ok(user)
}

/// The authenticated user of a socket, kept in its extensions.
#[derive(Clone)]
struct UserId(Arc<str>);

/// The client address a socket counts against, kept in its extensions.
#[derive(Clone, Copy)]
struct PeerIp(IpAddr);

/// New Engine.IO sessions (handshakes without `sid`) per client address ...
pub const HANDSHAKES_PER_IP: limit::Rate = limit::Rate {
    burst: 60,
    refill: Duration::from_millis(100),
    max_keys: 100_000,
};
/// ... and in total for handshakes that carry no valid token in their query string. With
/// [`CONNECT_TIMEOUT`] this bounds the sessions that exist before anyone authenticated.
pub const ANONYMOUS_HANDSHAKES: limit::Rate = limit::Rate {
    burst: 500,
    refill: Duration::from_millis(10),
    max_keys: 1,
};
/// A session that has not joined the namespace (authenticated) by then is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connected sockets per client address, per user and in total.
pub const MAX_SOCKETS_PER_IP: u32 = 256;
pub const MAX_SOCKETS_PER_USER: usize = 16;
pub const MAX_SOCKETS: u32 = 50_000;

/// Who holds how many connected sockets, for the caps above.
#[derive(Default)]
struct SocketCount {
    by_ip: HashMap<IpAddr, u32>,
    total: u32,
}

/// Handshake limits: the per-address and anonymous buckets.
struct Handshakes {
    by_ip: limit::Limiter<IpAddr>,
    anonymous: limit::Limiter<()>,
}

struct Hub<A: Adapter> {
    io: SocketIo<A>,
    calls: Mutex<Calls>,
    sockets: Mutex<SocketCount>,
    handshakes: Mutex<Handshakes>,
    secret: Option<Vec<u8>>,
    /// `--signaling-presence`.
    presence: bool,
    stats: Arc<calls::CallStats>,
    records: Option<Arc<records::RecordStore>>,
    /// `--signaling-redis`: presence, busy and call state shared with the other nodes.
    shared: Option<Arc<cluster::Shared>>,
    /// Calls this node placed through Redis that may still ring: their callers and callees,
    /// and when they started ringing (this node ends them at [`calls::RING_TIMEOUT`]).
    ringing_here: Mutex<HashMap<String, (Instant, String, String)>>,
    /// What this node knows of the calls Redis keeps for its users: renewed while Redis
    /// answers, and adopted into [`Calls`] when it goes away.
    mirror: Mutex<HashMap<String, Mirrored>>,
    /// Calls adopted from the mirror: when one ends here, Redis is told too (if it answers).
    adopted: Mutex<std::collections::HashSet<String>>,
}

/// A call Redis keeps, as a node with one of its parties knows it.
#[derive(Debug, Clone)]
struct Mirrored {
    caller: String,
    callee: String,
    kind: CallKind,
    answered: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<A: Adapter> Hub<A> {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ringing_here(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, String, String)>> {
        self.ringing_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Redis went away: the calls it kept for this node's users are kept here from now on.
    fn adopt_mirror(&self) {
        let mirrored = std::mem::take(&mut *lock(&self.mirror));
        if mirrored.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut calls = self.calls();
        let mut adopted = lock(&self.adopted);
        let mut ringing = self.ringing_here();
        for (id, c) in mirrored {
            ringing.remove(&id);
            if calls.adopt(now, &id, &c.caller, &c.callee, c.kind, c.answered) {
                adopted.insert(id);
            }
        }
    }

    /// The shared state, while Redis answers.
    fn shared_up(&self) -> Option<&cluster::Shared> {
        self.shared.as_deref().filter(|s| s.link.healthy())
    }

    /// Count what happened to calls since the last time.
    fn drain_events(&self) {
        let mut ended = Vec::new();
        let mut calls = self.calls();
        while let Some(e) = calls.poll_event() {
            self.stats.observe(&e);
            if let calls::CallEvent::Ended(r) = e {
                tracing::debug!(
                    call = %r.call_id,
                    kind = r.kind.as_str(),
                    reason = r.reason.as_str(),
                    talked_ms = r.talked_for.map_or(0, |d| d.as_millis()),
                    "call ended"
                );
                ended.push(r);
            }
        }
        drop(calls);
        // An adopted call that ended here may still be in Redis (if it kept its data): end
        // it there too, so that nobody stays busy.
        let gone: Vec<String> = {
            let mut adopted = lock(&self.adopted);
            ended
                .iter()
                .filter(|r| adopted.remove(&r.call_id))
                .map(|r| r.call_id.clone())
                .collect()
        };
        let shared = self.shared.clone().filter(|s| s.link.healthy());
        if let (Some(shared), false) = (shared, gone.is_empty()) {
            tokio::spawn(async move {
                for id in gone {
                    let _ = shared.end(&id, "", "end").await;
                }
            });
        }
        if let (Some(store), false) = (&self.records, ended.is_empty()) {
            let store = store.clone();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            tokio::spawn(async move { store.store(&ended, now).await });
        }
    }

    /// Record a call that Redis kept, ended `as` a reason.
    fn record_shared_end(&self, call_id: &str, e: &cluster::SharedEnded, reason: EndReason) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let (rang_for, talked_for) = match e.answered_at {
            Some(at) if e.answered => (secs(at - e.initiated), Some(secs(now - at))),
            _ => (secs(now - e.initiated), None),
        };
        self.calls()
            .record(calls::CallEvent::Ended(calls::CallRecord {
                call_id: call_id.to_owned(),
                caller: e.caller.clone(),
                callee: e.callee.clone(),
                kind: e.kind,
                rang_for,
                talked_for,
                reason,
            }));
        self.ringing_here().remove(call_id);
        lock(&self.mirror).remove(call_id);
        self.drain_events();
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, SocketCount> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May one more socket of `user` from `ip` connect?
    fn check_caps(&self, ip: IpAddr, user: &str) -> Result<(), ConnectError> {
        {
            let n = self.sockets();
            if n.total >= MAX_SOCKETS {
                return Err(ConnectError::Full);
            }
            if n.by_ip.get(&ip).copied().unwrap_or(0) >= MAX_SOCKETS_PER_IP {
                return Err(ConnectError::TooManyFromAddress);
            }
        }
        if self.calls().sockets_of(user) >= MAX_SOCKETS_PER_USER {
            return Err(ConnectError::TooManyOfUser);
        }
        Ok(())
    }

    fn count_socket(&self, ip: IpAddr, up: bool) {
        let mut n = self.sockets();
        if up {
            *n.by_ip.entry(ip).or_default() += 1;
            n.total += 1;
        } else {
            n.total = n.total.saturating_sub(1);
            if let Some(c) = n.by_ip.get_mut(&ip) {
                *c -= 1;
                if *c == 0 {
                    n.by_ip.remove(&ip);
                }
            }
        }
    }

    /// Emit to every socket of `user`: on every node while Redis answers, else on this one.
    async fn to_user(&self, user: &str, event: &str, data: &Value) {
        if self.shared_up().is_some() && self.io.to(room(user)).emit(event, data).await.is_ok() {
            return;
        }
        let _ = self.io.local().to(room(user)).emit(event, data).await;
    }
}

/// Seconds as a duration; nothing negative, infinite or NaN.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

fn room(user: &str) -> String {
    format!("user_{user}")
}

fn call_error<A: Adapter>(s: &SocketRef<A>, code: &str, message: &str) {
    let _ = s.emit("call_error", &json!({ "code": code, "message": message }));
}

fn refuse<A: Adapter>(s: &SocketRef<A>, e: CallError) {
    call_error(s, e.code(), &e.to_string());
}

/// The payload of an event if it is a JSON object within [`MAX_EVENT_BYTES`]; otherwise the
/// client is told why and `None` is returned.
fn payload<A: Adapter>(
    s: &SocketRef<A>,
    data: Result<Value, impl std::fmt::Display>,
) -> Option<Map<String, Value>> {
    let v = match data {
        Ok(v) => v,
        Err(_) => {
            call_error(s, "invalid_payload", "payload is not JSON");
            return None;
        }
    };
    let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len());
    if size > MAX_EVENT_BYTES {
        call_error(
            s,
            "payload_too_large",
            &format!("payload of {size} bytes exceeds {MAX_EVENT_BYTES}"),
        );
        return None;
    }
    match v {
        Value::Object(m) => Some(m),
        _ => {
            call_error(s, "invalid_payload", "payload must be an object");
            None
        }
    }
}

fn call_id_of<A: Adapter>(s: &SocketRef<A>, m: &Map<String, Value>) -> Option<String> {
    match m.get("callId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= 64 => Some(id.to_owned()),
        _ => {
            call_error(s, "invalid_payload", "callId (string) is required");
            None
        }
    }
}

fn user_of<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<str>> {
    s.extensions.get::<UserId>().map(|u| u.0)
}

fn new_call_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

async fn on_initiate<A: Adapter>(
    hub: Arc<Hub<A>>,
    s: SocketRef<A>,
    data: Result<Value, impl std::fmt::Display>,
) {
    let (Some(me), Some(m)) = (user_of(&s), payload(&s, data)) else {
        return;
    };
    let Some(callee) = user_id(m.get("calleeId")) else {
        return call_error(&s, "invalid_payload", "calleeId is required");
    };
    let Some(kind) = m
        .get("type")
        .and_then(Value::as_str)
        .and_then(CallKind::parse)
    else {
        return call_error(&s, "invalid_payload", "type must be \"voice\" or \"video\"");
    };
    let now = Instant::now();
    let call_id = new_call_id();
    let taken = hub.calls().take_initiate(now, &me, &callee);
    if let Err(e) = taken {
        return refuse(&s, e);
    }
    let mut r = None;
    if let Some(shared) = hub.shared_up() {
        // A callee in a call this node keeps (placed while Redis was away) is busy too.
        let local_busy = hub.calls().in_call(&callee);
        let placed = if local_busy {
            Ok(cluster::Initiated::Busy)
        } else {
            shared.initiate(&call_id, &me, &callee, kind).await
        };
        r = match placed {
            Ok(cluster::Initiated::Ringing) => {
                hub.calls().record(calls::CallEvent::Started(kind));
                hub.ringing_here()
                    .insert(call_id.clone(), (now, me.to_string(), callee.clone()));
                let m = Mirrored {
                    caller: me.to_string(),
                    callee: callee.clone(),
                    kind,
                    answered: false,
                };
                lock(&hub.mirror).insert(call_id.clone(), m);
                Some(Ok(call_id.clone()))
            }
            Ok(cluster::Initiated::AlreadyInCall) => Some(Err(CallError::AlreadyInCall)),
            Ok(cluster::Initiated::RateLimited) => Some(Err(CallError::RateLimited)),
            Ok(unavailable) => {
                let mut calls = hub.calls();
                calls.record(calls::CallEvent::Started(kind));
                calls.record(calls::CallEvent::Ended(calls::CallRecord {
                    call_id: call_id.clone(),
                    caller: me.to_string(),
                    callee: callee.clone(),
                    kind,
                    rang_for: Duration::ZERO,
                    talked_for: None,
                    reason: EndReason::Busy,
                }));
                Some(Err(if unavailable == cluster::Initiated::Offline {
                    CallError::CalleeOffline
                } else {
                    CallError::CalleeBusy
                }))
            }
            // Redis went away just now: this node alone, below.
            Err(_) => None,
        };
    }
    let r = match r {
        Some(r) => r,
        None => hub.calls().place(now, &me, &callee, kind, call_id),
    };
    hub.drain_events();
    match r {
        Ok(call_id) => {
            let incoming = json!({ "callId": call_id, "callerId": &*me, "type": kind.as_str() });
            hub.to_user(&callee, "incoming_call", &incoming).await;
            let _ = s.emit("call_initiated", &json!({ "callId": call_id }));
        }
        // Offline answers as busy does unless --signaling-presence: a caller cannot probe who
        // is online.
        Err(CallError::CalleeBusy) | Err(CallError::CalleeOffline) if !hub.presence => {
            let _ = s.emit("call_busy", &json!({ "calleeId": callee }));
        }
        Err(CallError::CalleeBusy) => {
            let _ = s.emit("call_busy", &json!({ "calleeId": callee }));
        }
        Err(e) => refuse(&s, e),
    }
}

/// `call_answer`, `call_reject`/`call_decline`, `call_end`.
#[derive(Clone, Copy)]
enum Step {
    Answer,
    Reject,
    End,
}

/// `step` on a call Redis keeps: the other party, or why not. `None` when Redis did not
/// answer.
async fn shared_step<A: Adapter>(
    hub: &Hub<A>,
    shared: &cluster::Shared,
    me: &str,
    call_id: &str,
    step: Step,
) -> Option<Result<String, CallError>> {
    let refused = |code: cluster::Refusal| match code {
        "wrong_state" => CallError::WrongState,
        _ => CallError::UnknownCall,
    };
    match step {
        Step::Answer => {
            let (caller, kind, _) = match shared.answer(call_id, me).await.ok()? {
                Ok(v) => v,
                Err(code) => return Some(Err(refused(code))),
            };
            let now = Instant::now();
            let m = Mirrored {
                caller: caller.clone(),
                callee: me.to_owned(),
                kind,
                answered: true,
            };
            lock(&hub.mirror).insert(call_id.to_owned(), m);
            let mut calls = hub.calls();
            calls.record(calls::CallEvent::Answered(kind));
            if hub.ringing_here().remove(call_id).is_some() {
                calls.refund_ring(now, &caller, me);
            }
            drop(calls);
            hub.drain_events();
            Some(Ok(caller))
        }
        Step::Reject | Step::End => {
            let mode = if matches!(step, Step::Reject) {
                "reject"
            } else {
                "end"
            };
            let e = match shared.end(call_id, me, mode).await.ok()? {
                Ok(e) => e,
                Err(code) => return Some(Err(refused(code))),
            };
            let reason = match (step, e.answered) {
                (Step::Reject, _) => EndReason::Rejected,
                (_, true) => EndReason::Answered,
                (_, false) => EndReason::Missed,
            };
            hub.record_shared_end(call_id, &e, reason);
            let other = if e.caller == me { e.callee } else { e.caller };
            Some(Ok(other))
        }
    }
}

async fn on_step<A: Adapter>(
    hub: Arc<Hub<A>>,
    s: SocketRef<A>,
    data: Result<Value, impl std::fmt::Display>,
    step: Step,
) {
    let (Some(me), Some(m)) = (user_of(&s), payload(&s, data)) else {
        return;
    };
    let Some(call_id) = call_id_of(&s, &m) else {
        return;
    };
    let now = Instant::now();
    let taken = hub.calls().take_step(now, &me);
    if let Err(e) = taken {
        return refuse(&s, e);
    }
    let mut r = None;
    // A call lives where it was placed: in Redis, or (placed while Redis was away) here.
    if !hub.calls().has_call(&call_id) {
        if let Some(shared) = hub.shared_up() {
            r = shared_step(&hub, shared, &me, &call_id, step).await;
        }
    }
    let r = match r {
        Some(r) => r,
        None => {
            let mut calls = hub.calls();
            match step {
                Step::Answer => calls.handle_answer(now, &me, &call_id),
                Step::Reject => calls.handle_reject(now, &me, &call_id),
                Step::End => calls.handle_end(now, &me, &call_id),
            }
        }
    };
    hub.drain_events();
    let other = match r {
        Ok(other) => other,
        Err(e) => return refuse(&s, e),
    };
    let msg = json!({ "callId": call_id });
    match step {
        Step::Answer => {
            hub.to_user(&other, "call_answered", &msg).await;
            hub.to_user(&me, "call_answered", &msg).await;
        }
        Step::Reject => hub.to_user(&other, "call_rejected", &msg).await,
        Step::End => {
            let msg = json!({ "callId": call_id, "endedBy": &*me });
            hub.to_user(&other, "call_ended", &msg).await;
        }
    }
}

/// `webrtc_offer`/`webrtc_answer`/`webrtc_ice_candidate`: relay `field` to `to` with `from`.
async fn on_relay<A: Adapter>(
    hub: Arc<Hub<A>>,
    s: SocketRef<A>,
    data: Result<Value, impl std::fmt::Display>,
    event: &'static str,
    field: &'static str,
) {
    let (Some(me), Some(mut m)) = (user_of(&s), payload(&s, data)) else {
        return;
    };
    let Some(to) = user_id(m.get("to")) else {
        return call_error(&s, "invalid_payload", "to is required");
    };
    let Some(body) = m.remove(field).filter(|v| !v.is_null()) else {
        return call_error(&s, "invalid_payload", &format!("{field} is required"));
    };
    let now = Instant::now();
    let local = hub.calls().are_peers(&me, &to);
    let allowed = match hub.shared_up() {
        // The token first: a flood is refused before it costs Redis anything.
        Some(shared) if !local => {
            let taken = hub.calls().take_webrtc(now, &me);
            match taken {
                Err(e) => Err(e),
                Ok(()) => match shared.peers(&me, &to).await {
                    Ok(Some(state)) if state == "active" => Ok(()),
                    Ok(Some(_)) => Err(CallError::NotAnswered),
                    Ok(None) | Err(_) => Err(CallError::NotInCall),
                },
            }
        }
        _ => hub.calls().handle_webrtc(now, &me, &to),
    };
    if let Err(e) = allowed {
        return refuse(&s, e);
    }
    let mut out = Map::new();
    out.insert(field.to_owned(), body);
    out.insert("from".to_owned(), Value::String(me.to_string()));
    hub.to_user(&to, event, &Value::Object(out)).await;
}

fn on_connect<A: Adapter>(hub: Arc<Hub<A>>, s: SocketRef<A>) {
    let Some(me) = user_of(&s) else {
        let _ = s.disconnect();
        return;
    };
    hub.calls().handle_connect(&me);
    if let Some(PeerIp(ip)) = s.extensions.get::<PeerIp>() {
        hub.count_socket(ip, true);
    }
    s.join(room(&me));
    tracing::debug!(user = %me, "signaling socket connected");

    let h = hub.clone();
    s.on(
        "call_initiate",
        move |s: SocketRef<A>, TryData(d): TryData<Value>| on_initiate(h.clone(), s, d),
    );
    for (event, step) in [
        ("call_answer", Step::Answer),
        ("call_reject", Step::Reject),
        ("call_decline", Step::Reject),
        ("call_end", Step::End),
    ] {
        let h = hub.clone();
        s.on(event, move |s: SocketRef<A>, TryData(d): TryData<Value>| {
            on_step(h.clone(), s, d, step)
        });
    }
    for (event, field) in [
        ("webrtc_offer", "offer"),
        ("webrtc_answer", "answer"),
        ("webrtc_ice_candidate", "candidate"),
    ] {
        let h = hub.clone();
        s.on(event, move |s: SocketRef<A>, TryData(d): TryData<Value>| {
            on_relay(h.clone(), s, d, event, field)
        });
    }
    let h = hub;
    s.on_disconnect(move |s: SocketRef<A>| {
        let h = h.clone();
        async move {
            if let Some(PeerIp(ip)) = s.extensions.get::<PeerIp>() {
                h.count_socket(ip, false);
            }
            let Some(me) = user_of(&s) else { return };
            let (ended, last) = {
                let mut calls = h.calls();
                let ended = calls.handle_disconnect(Instant::now(), &me);
                (ended, !calls.is_online(&me))
            };
            h.drain_events();
            if let Some(e) = ended {
                let other = if *me == *e.caller { e.callee } else { e.caller };
                let msg = json!({ "callId": e.call_id, "endedBy": &*me, "reason": "disconnected" });
                h.to_user(&other, "call_ended", &msg).await;
            }
            // The user's last socket here: if no other node holds one, their shared call ends.
            if let (true, Some(shared)) = (last, h.shared_up()) {
                if let Ok(Some(call_id)) = shared.went_offline(&me).await {
                    end_shared_disconnected(&h, shared, &call_id, &me).await;
                }
            }
        }
    });
}

/// End a shared call because `who` (or, when empty, one of its parties) is online nowhere;
/// the parties still reachable are told `call_ended` with reason `disconnected`.
async fn end_shared_disconnected<A: Adapter>(
    hub: &Hub<A>,
    shared: &cluster::Shared,
    call_id: &str,
    who: &str,
) {
    let Ok(Ok(e)) = shared.end(call_id, "", "disconnect").await else {
        return;
    };
    let reason = if e.answered {
        EndReason::Answered
    } else {
        EndReason::Failed
    };
    hub.record_shared_end(call_id, &e, reason);
    let mut msg = json!({ "callId": call_id, "reason": "disconnected" });
    if !who.is_empty() {
        msg["endedBy"] = Value::String(who.to_owned());
    }
    for u in [&e.caller, &e.callee] {
        if u != who {
            hub.to_user(u, "call_ended", &msg).await;
        }
    }
}

/// Once a second: end calls that rang unanswered for [`calls::RING_TIMEOUT`]. With
/// `--signaling-redis` also: check Redis (logging a change of health once), republish this
/// node's users when it comes back, and every [`cluster::REFRESH`] renew their presence and
/// answered calls.
async fn ring_timer<A: Adapter>(hub: Arc<Hub<A>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh = Instant::now();
    loop {
        tick.tick().await;
        let ended = hub.calls().handle_timeout(Instant::now());
        hub.drain_events();
        for e in ended {
            let msg = json!({ "callId": e.call_id, "reason": "timeout" });
            hub.to_user(&e.caller, "call_ended", &msg).await;
            hub.to_user(&e.callee, "call_ended", &msg).await;
        }
        if let Some(shared) = hub.shared.clone() {
            shared_tick(&hub, &shared, &mut last_refresh).await;
        }
    }
}

async fn shared_tick<A: Adapter>(
    hub: &Hub<A>,
    shared: &cluster::Shared,
    last_refresh: &mut Instant,
) {
    let back = shared.link.probe().await;
    if !shared.link.healthy() {
        hub.adopt_mirror();
        hub.stats.set_redis(false, shared.link.outages());
        return;
    }
    let now = Instant::now();
    if back || now.saturating_duration_since(*last_refresh) >= cluster::REFRESH {
        *last_refresh = now;
        let users = hub.calls().local_users();
        let _ = shared.publish_presence(&users).await;
        let known: Vec<String> = lock(&hub.mirror).keys().cloned().collect();
        if let Ok((gone, ended)) = shared.renew(&known).await {
            {
                let mut mirror = lock(&hub.mirror);
                for call_id in &ended {
                    mirror.remove(call_id);
                }
            }
            for call_id in gone {
                end_shared_disconnected(hub, shared, &call_id, "").await;
            }
        }
    }
    // Up once this node's users are visible to the others again.
    hub.stats
        .set_redis(shared.link.healthy(), shared.link.outages());
    let ringing: Vec<(String, Instant, String, String)> = hub
        .ringing_here()
        .iter()
        .map(|(id, (at, a, b))| (id.clone(), *at, a.clone(), b.clone()))
        .collect();
    for (call_id, since, caller, callee) in ringing {
        if now.saturating_duration_since(since) >= calls::RING_TIMEOUT {
            match shared.end(&call_id, "", "timeout").await {
                Ok(Ok(e)) => {
                    hub.record_shared_end(&call_id, &e, EndReason::Missed);
                    let msg = json!({ "callId": call_id, "reason": "timeout" });
                    hub.to_user(&e.caller, "call_ended", &msg).await;
                    hub.to_user(&e.callee, "call_ended", &msg).await;
                }
                Ok(Err("not_ringing")) => {
                    hub.ringing_here().remove(&call_id);
                    hub.calls().refund_ring(now, &caller, &callee);
                }
                Ok(Err(_)) => {
                    hub.ringing_here().remove(&call_id);
                }
                Err(_) => return,
            }
            continue;
        }
        match shared.state(&call_id).await {
            Ok(Some(state)) if state == "ringing" => {}
            Ok(Some(_)) => {
                // Answered on another node: a ring that was wanted gives its token back.
                hub.ringing_here().remove(&call_id);
                if let Some(m) = lock(&hub.mirror).get_mut(&call_id) {
                    m.answered = true;
                }
                hub.calls().refund_ring(now, &caller, &callee);
            }
            Ok(None) => {
                hub.ringing_here().remove(&call_id);
                lock(&hub.mirror).remove(&call_id);
            }
            Err(_) => return,
        }
    }
}

/// Credentials minted per client address (its /64 for IPv6): a NAT of real users fits.
pub const MINT_PER_IP: limit::Rate = limit::Rate {
    burst: 60,
    refill: Duration::from_millis(200),
    max_keys: 100_000,
};
/// Credentials minted per user: a few tabs and reloads fit, a script minting on repeat does not.
pub const MINT_PER_USER: limit::Rate = limit::Rate {
    burst: 10,
    refill: Duration::from_secs(6),
    max_keys: 100_000,
};

/// What a request's `Origin` header says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginCheck {
    /// No `Origin`, or the page's own origin: no CORS headers needed.
    Same,
    /// A `--signaling-cors-origin`: answer with this `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// Any other origin: refused with 403 (a browser on another site, Socket.io's WebSocket
    /// included, which CORS alone would not stop).
    Refused,
}

/// The credential endpoint's view of the configuration, and its rate limits.
struct Http {
    cfg: SignalConfig,
    mint_by_ip: Mutex<limit::Limiter<IpAddr>>,
    mint_by_user: Mutex<limit::Limiter<String>>,
}

impl Http {
    fn new(cfg: SignalConfig) -> Self {
        Http {
            cfg,
            mint_by_ip: Mutex::new(limit::Limiter::new(MINT_PER_IP)),
            mint_by_user: Mutex::new(limit::Limiter::new(MINT_PER_USER)),
        }
    }

    fn check_origin(&self, headers: &HeaderMap) -> OriginCheck {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return OriginCheck::Same;
        };
        let Ok(o) = origin.to_str() else {
            return OriginCheck::Refused;
        };
        for allowed in &self.cfg.cors_origins {
            if allowed == "*" {
                return OriginCheck::Allowed(HeaderValue::from_static("*"));
            }
            if allowed.trim_end_matches('/').eq_ignore_ascii_case(o) {
                return OriginCheck::Allowed(origin.clone());
            }
        }
        let authority = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match (authority, host) {
            (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => OriginCheck::Same,
            _ => OriginCheck::Refused,
        }
    }

    /// Take a minting token for `ip` and `user`; `Err(wait)` when either is out.
    fn try_mint(&self, now: Instant, ip: IpAddr, user: &str) -> Result<(), Duration> {
        // Without a secret the user id is only a claim: the address is all there is to limit.
        if self.cfg.secret.is_some() && !user.is_empty() {
            self.mint_by_user
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_take(now, &user.to_owned())?;
        }
        self.mint_by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(now, &limit::ip_key(ip))?;
        Ok(())
    }

    fn uris(&self, headers: &HeaderMap, region: Option<&str>) -> Vec<String> {
        if !self.cfg.turn_uris.is_empty() {
            return self.cfg.turn_uris.clone();
        }
        if let Some(fleet) = &self.cfg.fleet {
            let region = region.or_else(|| headers.get("x-region")?.to_str().ok());
            let nodes = fleet.nearest(region, unix_now(), FLEET_URI_NODES);
            if !nodes.is_empty() {
                let mut out = Vec::new();
                for n in nodes {
                    if self.cfg.udp {
                        out.push(format!("turn:{}?transport=udp", n.address));
                    }
                    if self.cfg.tcp {
                        out.push(format!("turn:{}?transport=tcp", n.address));
                    }
                }
                return out;
            }
        }
        let host = match self.cfg.default_host {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => request_host(headers).unwrap_or_else(|| "localhost".to_owned()),
        };
        let port = self.cfg.turn_port;
        let mut out = Vec::new();
        if self.cfg.udp {
            out.push(format!("turn:{host}:{port}?transport=udp"));
        }
        if self.cfg.tcp {
            out.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        out
    }

    /// The REST secret to mint with at `unix_now`: the first `--static-auth-secret`, else the
    /// newest secret of the user database's last snapshot while it is fresh (a read of the
    /// snapshot, never a wait on Redis). `Err` says why there is none (answered with 503).
    fn mint_secret(&self, unix_now: u64) -> Result<Cow<'_, [u8]>, String> {
        if let Some(s) = &self.cfg.rest_secret {
            return Ok(Cow::Borrowed(s));
        }
        let Some(cell) = &self.cfg.userdb else {
            return Err(
                "no REST secret: give --static-auth-secret, or --use-auth-secret with \
                 a --redis-userdb holding the secrets"
                    .to_owned(),
            );
        };
        let Some(db) = cell.fresh(unix_now) else {
            return Err(match cell.latest() {
                None => "no REST secret yet: the Redis user database has not been read".to_owned(),
                Some(db) => format!(
                    "no REST secret: the Redis user database was last read {}s ago, beyond \
                     --redis-max-stale",
                    unix_now.saturating_sub(db.fetched_unix)
                ),
            });
        };
        match db.mint_secret() {
            Some(s) => Ok(Cow::Owned(s.to_vec())),
            None => Err("no REST secret in the Redis user database \
                 (turn/realm/<realm>/secret is empty)"
                .to_owned()),
        }
    }
}

/// How many fleet nodes the credential endpoint names.
const FLEET_URI_NODES: usize = 3;

/// The host part of the request's `Host` header (IPv6 literals keep their brackets).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        h.split(':').next()?
    };
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    ok.then(|| host.to_owned())
}

#[derive(Deserialize)]
struct CredQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    expiry: Option<String>,
    token: Option<String>,
    region: Option<String>,
}

async fn turn_credentials(
    State(http): State<Arc<Http>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CredQuery>,
) -> Response {
    let fail =
        |status: StatusCode, msg: String| (status, Json(json!({ "error": msg }))).into_response();
    let mut user = String::new();
    if let Some(secret) = &http.cfg.secret {
        let mut auth = Map::new();
        for (k, v) in [
            ("userId", &q.user_id),
            ("expiry", &q.expiry),
            ("token", &q.token),
        ] {
            if let Some(v) = v {
                auth.insert(k.to_owned(), Value::String(v.clone()));
            }
        }
        match authenticate(Some(secret), &Value::Object(auth), unix_now()) {
            Ok(u) => user = u,
            Err(e) => return fail(StatusCode::UNAUTHORIZED, e.to_string()),
        }
    } else if let Some(u) = &q.user_id {
        match user_id(Some(&Value::String(u.clone()))) {
            Some(u) => user = u,
            None => return fail(StatusCode::BAD_REQUEST, AuthError::BadUser.to_string()),
        }
    }
    if let Err(wait) = http.try_mint(Instant::now(), peer.ip(), &user) {
        let secs = wait.as_secs().max(1).to_string();
        let retry = HeaderValue::from_str(&secs).unwrap_or(HeaderValue::from_static("1"));
        let body = Json(json!({ "error": "too many credentials requested; wait a little" }));
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry)],
            body,
        )
            .into_response();
    }
    let now = unix_now();
    let rest_secret = match http.mint_secret(now) {
        Ok(s) => s,
        Err(msg) => return fail(StatusCode::SERVICE_UNAVAILABLE, msg),
    };
    let ttl = http.cfg.credentials_ttl;
    let c = mint_rest_credentials(&rest_secret, &user, ttl, now, http.cfg.rest_separator);
    let uris = http.uris(&headers, q.region.as_deref());
    let body = json!({
        "username": c.username,
        "password": c.password,
        "ttl": ttl,
        "uris": uris,
        "iceServers": [{ "urls": uris, "username": c.username, "credential": c.password }],
    });
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    (StatusCode::OK, no_store, Json(body)).into_response()
}

// The demo call page (`/`): static files compiled into the binary, no CDN. sio.js is our own
// small Socket.io v5 client over WebSocket.
const DEMO_HTML: &str = include_str!("demo/index.html");
const DEMO_SIO_JS: &str = include_str!("demo/sio.js");
const DEMO_JS: &str = include_str!("demo/demo.js");
const DEMO_CSS: &str = include_str!("demo/demo.css");

/// Everything the page needs comes from its own origin: scripts, styles, fetch and WebSocket
/// (Socket.io). Media streams are not URLs, so `srcObject` needs nothing here.
const DEMO_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn demo_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DEMO_CSP),
            ),
        ],
        body,
    )
        .into_response()
}

async fn demo_page() -> Response {
    demo_file("text/html; charset=utf-8", DEMO_HTML)
}

async fn demo_sio() -> Response {
    demo_file("text/javascript; charset=utf-8", DEMO_SIO_JS)
}

async fn demo_js() -> Response {
    demo_file("text/javascript; charset=utf-8", DEMO_JS)
}

async fn demo_css() -> Response {
    demo_file("text/css; charset=utf-8", DEMO_CSS)
}

/// Origin checks and CORS for every response, Socket.io's long-polling and WebSocket included (a
/// browser app served from another origin polls before it upgrades to WebSocket); preflights
/// are answered here. Same origin by default; `--signaling-cors-origin` names others.
async fn cors(State(http): State<Arc<Http>>, req: Request, next: Next) -> Response {
    let origin = match http.check_origin(req.headers()) {
        OriginCheck::Same => {
            if req.method() == Method::OPTIONS {
                return StatusCode::NO_CONTENT.into_response();
            }
            return next.run(req).await;
        }
        OriginCheck::Refused => {
            let body = Json(json!({ "error": "origin not allowed (--signaling-cors-origin)" }));
            return (StatusCode::FORBIDDEN, body).into_response();
        }
        OriginCheck::Allowed(o) => o,
    };
    if req.method() == Method::OPTIONS {
        return (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, OPTIONS"),
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("content-type, authorization"),
                ),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                ),
                (header::VARY, HeaderValue::from_static("Origin")),
            ],
        )
            .into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Socket.io's path; requests to it without `sid` open an Engine.IO session.
const SOCKET_IO_PATH: &str = "/socket.io/";

/// In front of Socket.io: a request that would open an Engine.IO session (no `sid`) is checked
/// before the session exists. A token in its query string (`userId`, `expiry`, `token`, as in
/// the handshake's `auth`) is verified here, and a bad one refused with 401; every new session
/// takes a token of its address's bucket, and one without a valid token also one of the
/// anonymous bucket; a full bucket or an address at its socket cap answers 429. Sessions that
/// then do not authenticate within [`CONNECT_TIMEOUT`] are closed by Socket.io.
async fn engine_guard<A: Adapter>(
    State(hub): State<Arc<Hub<A>>>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with(SOCKET_IO_PATH) {
        return next.run(req).await;
    }
    let q: HashMap<String, String> = Query::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    if q.contains_key("sid") {
        return next.run(req).await;
    }
    let too_many = |why: &str| (StatusCode::TOO_MANY_REQUESTS, why.to_owned()).into_response();
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    let ip = limit::ip_key(peer.ip());
    let mut authenticated = false;
    if let (Some(secret), Some(_)) = (&hub.secret, q.get("token")) {
        let auth: Map<String, Value> = ["userId", "expiry", "token"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), Value::String(q.get(k)?.clone()))))
            .collect();
        match authenticate(Some(secret), &Value::Object(auth), unix_now()) {
            Ok(_) => authenticated = true,
            Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
        }
    }
    {
        let n = hub.sockets();
        if n.total >= MAX_SOCKETS {
            let msg = "the server is full";
            return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
        }
        if n.by_ip.get(&ip).copied().unwrap_or(0) >= MAX_SOCKETS_PER_IP {
            return too_many("too many connections from this address");
        }
    }
    {
        let now = Instant::now();
        let mut hs = hub
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if hs.by_ip.try_take(now, &ip).is_err() {
            return too_many("too many new sessions from this address; wait a little");
        }
        if !authenticated && hs.anonymous.try_take(now, &()).is_err() {
            return too_many("too many new sessions; wait a little");
        }
    }
    next.run(req).await
}

/// The running signaling task's address. Dropping it leaves the task running (it ends with the
/// process).
pub struct SignalHandle {
    pub addr: SocketAddr,
    /// Call counts, for the Prometheus endpoint.
    pub calls: Arc<calls::CallStats>,
}

/// Bind `cfg.listen` and serve signaling on the control plane. Binding happens here, so a busy
/// port is an error at start-up.
pub fn spawn(
    control: &crate::control::ControlPlane,
    cfg: SignalConfig,
) -> io::Result<SignalHandle> {
    let listener = TcpListener::bind(cfg.listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for signaling on {}: {e}", cfg.listen),
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let cfg_secret_missing = cfg.secret.is_none();
    let cfg_insecure = cfg.insecure;
    let stats = Arc::new(calls::CallStats::default());
    let st = stats.clone();
    control.spawn(serve(listener, cfg, st));
    tracing::info!("signaling (Socket.io) on http://{addr}/");
    if cfg_secret_missing {
        // Config validation refuses this without --signaling-insecure.
        debug_assert!(cfg_insecure);
        tracing::warn!(
            "INSECURE: --signaling-insecure: signaling on {addr} has no --signaling-secret; \
             anyone who reaches it can claim any userId and mint TURN credentials (an open \
             relay); never use it outside a test or a closed network"
        );
    }
    Ok(SignalHandle { calls: stats, addr })
}

async fn serve(listener: TcpListener, cfg: SignalConfig, stats: Arc<calls::CallStats>) {
    let builder = SocketIo::builder()
        .max_payload(MAX_PACKET_BYTES)
        .connect_timeout(CONNECT_TIMEOUT);
    let Some(conn) = cfg.redis.clone() else {
        let (layer, io) = builder.build_layer();
        let hub = Hub::new(io.clone(), &cfg, stats, None);
        io.ns("/", connect_handler!(hub, LocalAdapter));
        return run(listener, cfg, hub, layer).await;
    };
    // Several nodes as one: rooms through the library's Redis adapter, over our link (which
    // connects in the background, so the node starts even while Redis is away).
    let link = cluster::Link::new(conn);
    link.probe().await;
    stats.set_redis(link.healthy(), link.outages());
    let adapter = RedisAdapterCtr::new_with_driver(
        link.clone(),
        RedisAdapterConfig::new().with_prefix(cluster::ADAPTER_PREFIX),
    );
    let (layer, io) = builder
        .with_adapter::<CustomRedisAdapter<Emitter, cluster::Link>>(adapter)
        .build_layer();
    let node = hex(&rand::random::<[u8; 8]>());
    let shared = Arc::new(cluster::Shared::new(link, node));
    let hub = Hub::new(io.clone(), &cfg, stats, Some(shared));
    if let Err(e) = io
        .ns(
            "/",
            connect_handler!(hub, CustomRedisAdapter<Emitter, cluster::Link>),
        )
        .await
    {
        tracing::error!("signaling: the Socket.io namespace did not start: {e}");
        return;
    }
    run(listener, cfg, hub, layer).await;
}

/// The namespace's connect handler for `$hub` on adapter `$a`: authentication, caps and (with
/// Redis) presence checked before the client is told it is connected, then [`on_connect`].
macro_rules! connect_handler {
    ($hub:expr, $a:ty) => {{
        let h = $hub.clone();
        let check = move |s: SocketRef<$a>, TryData(auth): TryData<Value>| {
            let h = h.clone();
            async move {
                let auth = auth.unwrap_or(Value::Null);
                let user = authenticate(h.secret.as_deref(), &auth, unix_now())?;
                let ip = s
                    .req_parts()
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| limit::ip_key(c.0.ip()));
                if let Some(ip) = ip {
                    h.check_caps(ip, &user)?;
                    s.extensions.insert(PeerIp(ip));
                }
                // Others may call this user as soon as the client knows it is connected.
                if let Some(shared) = h.shared_up() {
                    let _ = shared.publish_presence(std::slice::from_ref(&user)).await;
                }
                s.extensions.insert(UserId(user.into()));
                Ok::<(), ConnectError>(())
            }
        };
        let h = $hub.clone();
        (move |s: SocketRef<$a>| on_connect(h.clone(), s)).with(check)
    }};
}
use connect_handler;

impl<A: Adapter> Hub<A> {
    fn new(
        io: SocketIo<A>,
        cfg: &SignalConfig,
        stats: Arc<calls::CallStats>,
        shared: Option<Arc<cluster::Shared>>,
    ) -> Arc<Self> {
        Arc::new(Hub {
            io,
            calls: Mutex::new(Calls::new()),
            sockets: Mutex::new(SocketCount::default()),
            handshakes: Mutex::new(Handshakes {
                by_ip: limit::Limiter::new(HANDSHAKES_PER_IP),
                anonymous: limit::Limiter::new(ANONYMOUS_HANDSHAKES),
            }),
            secret: cfg.secret.clone(),
            presence: cfg.presence,
            stats,
            records: cfg
                .redis
                .clone()
                .map(|c| Arc::new(records::RecordStore::new(c))),
            shared,
            ringing_here: Mutex::new(HashMap::new()),
            mirror: Mutex::new(HashMap::new()),
            adopted: Mutex::new(std::collections::HashSet::new()),
        })
    }
}

async fn run<A: Adapter>(
    listener: TcpListener,
    cfg: SignalConfig,
    hub: Arc<Hub<A>>,
    layer: socketioxide::layer::SocketIoLayer<A>,
) {
    tokio::spawn(ring_timer(hub.clone()));
    let http = Arc::new(Http::new(cfg));
    let app = Router::new()
        .route("/", get(demo_page))
        .route("/index.html", get(demo_page))
        .route("/sio.js", get(demo_sio))
        .route("/demo.js", get(demo_js))
        .route("/demo.css", get(demo_css))
        .route("/api/turn-credentials", get(turn_credentials))
        .with_state(http.clone())
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(hub, engine_guard::<A>))
        .layer(axum::middleware::from_fn_with_state(http, cors));
    let l = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("signaling listener: {e}");
            return;
        }
    };
    crate::http::serve::serve(l, app, crate::http::serve::Limits::SIGNALING, "signaling").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = mint_token(b"k", "alice", 2_000);
        assert_eq!(t.len(), 64);
        assert_eq!(verify_token(b"k", "alice", 2_000, &t, 1_000), Ok(()));
        assert_eq!(
            verify_token(b"k", "alice", 2_000, &t, 2_000),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify_token(b"k", "bob", 2_000, &t, 1_000),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            verify_token(b"x", "alice", 2_000, &t, 1_000),
            Err(AuthError::BadToken)
        );
        let auth = json!({ "userId": "alice", "expiry": 2_000, "token": t });
        assert_eq!(
            authenticate(Some(b"k"), &auth, 1_000).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            authenticate(Some(b"k"), &json!({ "userId": "alice" }), 1_000),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            authenticate(None, &json!({ "userId": 42 }), 0).as_deref(),
            Ok("42")
        );
        assert_eq!(authenticate(None, &json!({}), 0), Err(AuthError::BadUser));
        assert_eq!(
            authenticate(None, &json!({ "userId": "a\nb" }), 0),
            Err(AuthError::BadUser)
        );
    }

    #[test]
    fn credentials_are_minted_with_the_static_secret_else_a_fresh_snapshots_newest() {
        use crate::engine::auth::{SecretAges, UserDb};
        let cfg = |rest_secret: Option<&[u8]>, userdb: Option<Arc<UserDbCell>>| {
            Http::new(SignalConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                secret: None,
                cors_origins: Vec::new(),
                insecure: false,
                presence: false,
                redis: None,
                rest_secret: rest_secret.map(<[u8]>::to_vec),
                userdb,
                rest_separator: ':',
                credentials_ttl: 60,
                turn_uris: Vec::new(),
                default_host: None,
                turn_port: 3478,
                udp: true,
                tcp: true,
                fleet: None,
            })
        };
        let unavailable = |h: &Http, now| h.mint_secret(now).unwrap_err();
        assert!(unavailable(&cfg(None, None), 0).contains("--static-auth-secret"));
        let cell = Arc::new(UserDbCell::default());
        let from_db = cfg(None, Some(cell.clone()));
        assert!(unavailable(&from_db, 1000).contains("not been read"));
        let mut ages = SecretAges::default();
        let mut read = |at: u64, secrets: &[&[u8]]| {
            let mut db = UserDb::new(at);
            secrets.iter().for_each(|s| db.add_secret(s));
            ages.observe(&mut db);
            cell.store(db, 30);
        };
        read(1000, &[]);
        assert!(unavailable(&from_db, 1000).contains("is empty"));
        read(1001, &[b"old"]);
        assert_eq!(from_db.mint_secret(1001).unwrap().as_ref(), b"old");
        read(1002, &[b"old", b"new"]);
        assert_eq!(from_db.mint_secret(1002).unwrap().as_ref(), b"new");
        read(1003, &[b"new"]);
        assert_eq!(from_db.mint_secret(1033).unwrap().as_ref(), b"new");
        // Past --redis-max-stale the engine refuses the database's secrets: so do we.
        let msg = unavailable(&from_db, 1034);
        assert!(
            msg.contains("31s ago") && msg.contains("--redis-max-stale"),
            "{msg}"
        );
        // A static secret wins, stale database or not.
        let both = cfg(Some(b"static"), Some(cell));
        assert_eq!(both.mint_secret(1034).unwrap().as_ref(), b"static");
    }

    #[test]
    fn host_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("turn.example.org:8080"),
        );
        assert_eq!(request_host(&h).as_deref(), Some("turn.example.org"));
        h.insert(header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert_eq!(request_host(&h).as_deref(), Some("[::1]"));
        h.insert(header::HOST, HeaderValue::from_static("a/b"));
        assert_eq!(request_host(&h), None);
    }
}
