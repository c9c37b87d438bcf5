//! Several signaling nodes as one (`--signaling-redis`): Socket.io rooms through
//! `socketioxide-redis` (the library's own Redis adapter: an event for `user_<id>` reaches that
//! user's sockets on every node), and presence, busy state and call state as Redis keys with
//! TTLs, changed by Lua scripts so that two nodes never both win a race (bob answering on two
//! devices, carol and alice ringing bob at once).
//!
//! Keys (all under `vigi/signal/`):
//! - `online/<user>`: hash node id → Unix second until which that node vouches for the user
//!   (it holds a socket of theirs), refreshed every [`REFRESH`] for [`PRESENCE_TTL`]. A node that
//!   dies stops vouching within [`PRESENCE_TTL`].
//! - `busy/<user>`: the id of the call the user is in.
//! - `call/<callId>`: hash `caller callee type state initiated answered` (`state` = `ringing`
//!   or `active`; times in Unix seconds). A ringing call lives [`RINGING_TTL`]; an answered one
//!   [`ACTIVE_TTL`], renewed every [`REFRESH`] by each node that placed or answered it, so a
//!   call outlives a node's restart (its users reconnect elsewhere) but not both nodes'. A call
//!   one of whose parties is online nowhere is ended (`call_ended`, reason `disconnected`).
//! - `rate/initiate/<user>`, `rate/ring/<len(caller)>:<caller>/<callee>`: the call limits of
//!   [`calls::INITIATE_RATE`] and [`calls::RING_SAME_CALLEE_RATE`] across nodes (GCRA: the
//!   next arrival time in Unix ms, expiring when the bucket is full again), checked after each
//!   node's own buckets; an answered ring gives its token back.
//!
//! Redis going away (the connection fails, or a command times out) is logged once and counted
//! (`vigi_turn_signaling_redis_up`, `vigi_turn_signaling_redis_outages_total`); each node then
//! serves its own users alone, as a node without `--signaling-redis` does: calls between two
//! users of one node are placed, answered and ended in its memory; a cross-node call in progress
//! keeps its media (the relay does not depend on signaling) but its parties no longer reach
//! each other. The connection is retried every second; when Redis answers again the node says
//! so once, republishes its users' presence, and new calls are shared again. Calls placed
//! while alone stay in the node's memory until they end. So do the calls Redis kept for this
//! node's users when it went away (the node knows them: it placed or answered them): their
//! parties stay busy, and `call_end` is accepted and reaches the parties on this node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, RedisError, Script, Value as RValue};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

use super::calls::{self, CallKind};
use crate::config::RedisConn;

/// How long a node vouches for a user's presence without renewing it.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How long an answered call's state lives without renewing it.
pub const ACTIVE_TTL: Duration = Duration::from_secs(60);
/// How long a ringing call's state lives (the caller's node ends it at the ring timeout).
pub const RINGING_TTL: Duration = Duration::from_secs(45);
/// How often presence and answered calls are renewed.
pub const REFRESH: Duration = Duration::from_secs(15);
/// How long one Redis command may take before Redis is considered gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The Socket.io adapter's channel prefix.
pub const ADAPTER_PREFIX: &str = "vigi-signal";
const PREFIX: &str = "vigi/signal/";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A client for `conn` speaking RESP3 (pub/sub and commands share one connection).
fn client(conn: &RedisConn) -> redis::RedisResult<redis::Client> {
    redis::Client::open(redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(conn.host.clone(), conn.port),
        redis: redis::RedisConnectionInfo {
            db: conn.db,
            username: conn.username.clone(),
            password: conn.password.as_ref().map(|p| p.expose().to_owned()),
            protocol: redis::ProtocolVersion::RESP3,
        },
    })
}

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// One connection to the shared Redis for a node: the Socket.io adapter's pub/sub
/// ([`Driver`]) and the call-state commands. Connecting is retried in the background, so a node
/// starts (alone) while Redis is down; once connected, redis' `ConnectionManager` reconnects and
/// resubscribes by itself.
#[derive(Clone)]
pub struct Link(Arc<LinkInner>);

struct LinkInner {
    conn: RedisConn,
    manager: ArcSwapOption<ConnectionManager>,
    handlers: Arc<RwLock<Handlers>>,
    /// Channels subscribed before the first connection, subscribed once it exists.
    pending: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    outages: AtomicU64,
    /// Set once the first connection was made (so its health change is logged).
    ever_connected: AtomicBool,
}

fn not_connected() -> RedisError {
    RedisError::from((
        redis::ErrorKind::IoError,
        "signaling Redis not connected yet",
    ))
}

fn on_push(msg: PushInfo, handlers: &RwLock<Handlers>) {
    if !matches!(msg.kind, PushKind::Message | PushKind::SMessage) || msg.data.len() < 2 {
        return;
    }
    let mut it = msg.data.into_iter();
    let (Some(chan), Some(body)) = (it.next(), it.next()) else {
        return;
    };
    let (Ok(chan), Ok(body)) = (
        redis::from_owned_redis_value::<String>(chan),
        redis::from_owned_redis_value::<Vec<u8>>(body),
    ) else {
        return;
    };
    let handlers = handlers.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(tx) = handlers.get(&chan) {
        if tx.try_send((chan, body)).is_err() {
            tracing::debug!("signaling: adapter channel full, message dropped");
        }
    }
}

impl Link {
    pub fn new(conn: RedisConn) -> Self {
        Link(Arc::new(LinkInner {
            conn,
            manager: ArcSwapOption::empty(),
            handlers: Arc::new(RwLock::new(HashMap::new())),
            pending: Mutex::new(HashSet::new()),
            healthy: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            ever_connected: AtomicBool::new(false),
        }))
    }

    fn label(&self) -> String {
        format!("{}:{}", self.0.conn.host, self.0.conn.port)
    }

    /// Is Redis answering, as the last command or ping said?
    pub fn healthy(&self) -> bool {
        self.0.healthy.load(Relaxed)
    }

    /// How many times Redis went away.
    pub fn outages(&self) -> u64 {
        self.0.outages.load(Relaxed)
    }

    /// Record how a command went: a change of health is logged once. `true` when it became
    /// healthy just now.
    fn note(&self, ok: bool, why: &dyn std::fmt::Display) -> bool {
        let was = self.0.healthy.swap(ok, Relaxed);
        if ok && !was {
            let first = !self.0.ever_connected.swap(true, Relaxed);
            if first {
                tracing::info!("signaling: sharing calls through Redis {}", self.label());
            } else {
                tracing::warn!(
                    "signaling: Redis {} reachable again; calls are shared across nodes again",
                    self.label()
                );
            }
            return true;
        }
        if !ok && was {
            self.0.outages.fetch_add(1, Relaxed);
            tracing::warn!(
                "signaling: Redis {} unreachable ({why}); this node serves its own users alone \
                 until it returns",
                self.label()
            );
        }
        false
    }

    fn manager(&self) -> Result<ConnectionManager, RedisError> {
        self.0
            .manager
            .load_full()
            .map(|m| (*m).clone())
            .ok_or_else(not_connected)
    }

    /// Connect once (or check the connection): `true` when Redis just became healthy.
    pub async fn probe(&self) -> bool {
        if self.0.manager.load().is_none() {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_number_of_retries(1)
                .set_factor(100)
                .set_max_delay(500)
                .set_automatic_resubscription()
                .set_push_sender({
                    let handlers = self.0.handlers.clone();
                    move |msg: PushInfo| {
                        on_push(msg, &handlers);
                        Ok::<(), std::convert::Infallible>(())
                    }
                });
            let made = match client(&self.0.conn) {
                Ok(c) => ConnectionManager::new_with_config(c, cfg).await,
                Err(e) => Err(e),
            };
            let mut m = match made {
                Ok(m) => m,
                Err(e) => {
                    // Not connected yet: first failures are logged as the first outage.
                    if !self.0.ever_connected.load(Relaxed) && self.0.outages.load(Relaxed) == 0 {
                        self.0.outages.fetch_add(1, Relaxed);
                        tracing::warn!(
                            "signaling: Redis {} unreachable ({e}); this node serves its own \
                             users alone until it answers",
                            self.label()
                        );
                    }
                    return false;
                }
            };
            let pending: Vec<String> = self
                .0
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            for chan in pending {
                if let Err(e) = m.subscribe(chan.as_str()).await {
                    self.note(false, &e);
                    return false;
                }
            }
            self.0.manager.store(Some(Arc::new(m)));
        }
        let ping: Result<String, RedisError> = match self.manager() {
            Ok(mut m) => redis::cmd("PING").query_async(&mut m).await,
            Err(e) => Err(e),
        };
        match ping {
            Ok(_) => self.note(true, &""),
            Err(e) => {
                self.note(false, &e);
                false
            }
        }
    }

    /// Run `f` on the connection; a failure marks Redis unhealthy.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let m = self.manager()?;
        match f(m).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    self.note(false, &e);
                }
                Err(e)
            }
        }
    }
}

impl Driver for Link {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), RedisError> {
        self.run(|mut m| async move {
            redis::cmd("PUBLISH")
                .arg(chan)
                .arg(val)
                .query_async::<RValue>(&mut m)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, RedisError> {
        let (tx, rx) = mpsc::channel(size);
        self.0
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chan.clone(), tx);
        match self.manager() {
            Ok(mut m) => m.subscribe(chan.as_str()).await?,
            Err(_) => {
                self.0
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(chan);
            }
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), RedisError> {
        self.0
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&chan);
        self.0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&chan);
        if let Ok(mut m) = self.manager() {
            m.unsubscribe(chan.as_str()).await?;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, RedisError> {
        let chan = chan.to_owned();
        self.run(|mut m| async move {
            let (_, n): (String, u16) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(chan)
                .query_async(&mut m)
                .await?;
            Ok(n)
        })
        .await
    }
}

/// Does some node vouch for the user of presence hash `key` at `now`? (Lua, shared by the
/// scripts below.)
const ONLINE: &str = r"
local function online(key, now)
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    if tonumber(h[i + 1]) > now then return true end
  end
  return false
end
";

/// Token buckets shared by the nodes, as GCRA: a key holds the theoretical arrival time (Unix
/// ms) of the next request; `burst` requests fit at once, then one per `interval` ms.
const GCRA: &str = r"
local function allowed(key, now, interval, burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  return tat + interval - now <= interval * burst, tat + interval
end
local function charge(key, now, tat)
  redis.call('SET', key, tat, 'PX', math.max(1, tat - now))
end
";

/// KEYS: busy/caller, busy/callee, call/<id>, online/callee, rate/initiate/<caller>,
/// rate/ring/<len(caller)>:<caller>/<callee>.
/// ARGV: call id, caller, callee, type, now, ringing TTL, now (ms), initiate interval (ms) and
/// burst, ring interval (ms) and burst.
const INITIATE: &str = r"
local now_ms = tonumber(ARGV[7])
local ok1, tat1 = allowed(KEYS[5], now_ms, tonumber(ARGV[8]), tonumber(ARGV[9]))
local ok2, tat2 = allowed(KEYS[6], now_ms, tonumber(ARGV[10]), tonumber(ARGV[11]))
if not (ok1 and ok2) then return 'rate_limited' end
charge(KEYS[5], now_ms, tat1)
charge(KEYS[6], now_ms, tat2)
if redis.call('EXISTS', KEYS[1]) == 1 then return 'already_in_call' end
if not online(KEYS[4], tonumber(ARGV[5])) then return 'offline' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[6])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[6])
redis.call('HSET', KEYS[3], 'caller', ARGV[2], 'callee', ARGV[3], 'type', ARGV[4],
  'state', 'ringing', 'initiated', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 'ok'
";

/// ARGV: prefix, call id, user, now, active TTL, now (ms), ring interval (ms). An answered ring
/// gives its token of the shared ring bucket back.
const ANSWER: &str = r"
local k = ARGV[1] .. 'call/' .. ARGV[2]
local c = redis.call('HMGET', k, 'caller', 'callee', 'state', 'type', 'initiated')
if not c[1] then return {'unknown_call'} end
if c[2] ~= ARGV[3] then
  if c[1] == ARGV[3] then return {'wrong_state'} end
  return {'unknown_call'}
end
if c[3] ~= 'ringing' then return {'wrong_state'} end
redis.call('HSET', k, 'state', 'active', 'answered', ARGV[4])
redis.call('EXPIRE', k, ARGV[5])
redis.call('EXPIRE', ARGV[1] .. 'busy/' .. c[1], ARGV[5])
redis.call('EXPIRE', ARGV[1] .. 'busy/' .. c[2], ARGV[5])
local rk = ARGV[1] .. 'rate/ring/' .. string.len(c[1]) .. ':' .. c[1] .. '/' .. c[2]
local tat = tonumber(redis.call('GET', rk))
if tat then
  local now_ms = tonumber(ARGV[6])
  tat = tat - tonumber(ARGV[7])
  if tat > now_ms then charge(rk, now_ms, tat) else redis.call('DEL', rk) end
end
return {'ok', c[1], c[4], c[5]}
";

/// ARGV: prefix, call id, user ('' = whoever), mode (reject, end, timeout, disconnect).
const END: &str = r"
local k = ARGV[1] .. 'call/' .. ARGV[2]
local c = redis.call('HMGET', k, 'caller', 'callee', 'state', 'type', 'initiated', 'answered')
if not c[1] then return {'unknown_call'} end
local user, mode = ARGV[3], ARGV[4]
if user ~= '' and user ~= c[1] and user ~= c[2] then return {'unknown_call'} end
if mode == 'reject' then
  if user ~= c[2] then return {'wrong_state'} end
  if c[3] ~= 'ringing' then return {'wrong_state'} end
end
if mode == 'timeout' and c[3] ~= 'ringing' then return {'not_ringing'} end
redis.call('DEL', k)
for _, u in ipairs({c[1], c[2]}) do
  local b = ARGV[1] .. 'busy/' .. u
  if redis.call('GET', b) == ARGV[2] then redis.call('DEL', b) end
end
return {'ok', c[1], c[2], c[3], c[4], c[5], c[6] or ''}
";

/// ARGV: prefix, from, to. The state of the call `from` is in if `to` is its other party.
const PEERS: &str = r"
local id = redis.call('GET', ARGV[1] .. 'busy/' .. ARGV[2])
if not id then return 'none' end
local c = redis.call('HMGET', ARGV[1] .. 'call/' .. id, 'caller', 'callee', 'state')
if not c[1] then return 'none' end
if (c[1] == ARGV[2] and c[2] == ARGV[3]) or (c[2] == ARGV[2] and c[1] == ARGV[3]) then
  return c[3]
end
return 'none'
";

/// KEYS: online/user. ARGV: prefix, node, user, now. The node stops vouching for the user; if
/// no other node does, the id of the user's call (to be ended as a disconnect), else ''.
const OFFLINE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[2])
if online(KEYS[1], tonumber(ARGV[4])) then return '' end
return redis.call('GET', ARGV[1] .. 'busy/' .. ARGV[3]) or ''
";

/// ARGV: prefix, now, active TTL, call ids... Renew these answered calls (those this node
/// knows). Returns {gone, ended}: the ids of calls one of whose parties is online nowhere
/// (their node died), to be ended as disconnects, and of calls that ended (elsewhere) and are
/// to be forgotten. Calls no node knows any more expire.
const RENEW: &str = r"
local gone, ended = {}, {}
for n = 4, #ARGV do
  local k = ARGV[1] .. 'call/' .. ARGV[n]
  local c = redis.call('HMGET', k, 'caller', 'callee', 'state')
  if not c[1] then
    table.insert(ended, ARGV[n])
  else
    if not (online(ARGV[1] .. 'online/' .. c[1], tonumber(ARGV[2]))
        and online(ARGV[1] .. 'online/' .. c[2], tonumber(ARGV[2]))) then
      table.insert(gone, ARGV[n])
    elseif c[3] == 'active' then
      redis.call('EXPIRE', k, ARGV[3])
      redis.call('EXPIRE', ARGV[1] .. 'busy/' .. c[1], ARGV[3])
      redis.call('EXPIRE', ARGV[1] .. 'busy/' .. c[2], ARGV[3])
    end
  end
end
return {gone, ended}
";

/// ARGV: prefix, node, until, now, TTL, users... This node vouches for these users until
/// `until`; fields of nodes that stopped vouching (a node that died) are dropped.
const PRESENCE: &str = r"
for n = 6, #ARGV do
  local k = ARGV[1] .. 'online/' .. ARGV[n]
  local h = redis.call('HGETALL', k)
  for i = 1, #h, 2 do
    if h[i] ~= ARGV[2] and tonumber(h[i + 1]) <= tonumber(ARGV[4]) then
      redis.call('HDEL', k, h[i])
    end
  end
  redis.call('HSET', k, ARGV[2], ARGV[3])
  redis.call('EXPIRE', k, ARGV[5])
end
return 0
";

fn script(body: &str) -> Script {
    Script::new(&format!("{ONLINE}\n{GCRA}\n{body}"))
}

/// The shared ring bucket of `caller` ringing `callee`; the caller's length first, so that no
/// two pairs share a key whatever their ids hold (ids may contain `/`).
fn ring_key(caller: &str, callee: &str) -> String {
    format!("{PREFIX}rate/ring/{}:{caller}/{callee}", caller.len())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}/{id}")
}

/// A call as Redis kept it, when it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEnded {
    pub caller: String,
    pub callee: String,
    pub kind: CallKind,
    pub answered: bool,
    /// Unix seconds.
    pub initiated: f64,
    pub answered_at: Option<f64>,
}

/// What `call_initiate` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiated {
    Ringing,
    Busy,
    Offline,
    AlreadyInCall,
    /// The caller's shared buckets (calls placed, rings of this callee) are empty.
    RateLimited,
}

/// The shared call state, through a [`Link`].
pub struct Shared {
    pub link: Link,
    /// This node's id in presence hashes.
    pub node: String,
    initiate: Script,
    answer: Script,
    end: Script,
    peers: Script,
    offline: Script,
    renew: Script,
    presence: Script,
}

/// The outcome of a script that can refuse: `Err(code)` carries the refusal.
pub type Refusal = &'static str;

fn refusal(code: &str) -> Refusal {
    match code {
        "wrong_state" => "wrong_state",
        "not_ringing" => "not_ringing",
        _ => "unknown_call",
    }
}

impl Shared {
    pub fn new(link: Link, node: String) -> Self {
        Shared {
            link,
            node,
            initiate: script(INITIATE),
            answer: script(ANSWER),
            end: script(END),
            peers: script(PEERS),
            offline: script(OFFLINE),
            renew: script(RENEW),
            presence: script(PRESENCE),
        }
    }

    /// This node vouches for `users` (all at once: one round trip).
    pub async fn publish_presence(&self, users: &[String]) -> Result<(), RedisError> {
        if users.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let until = (now + PRESENCE_TTL.as_secs_f64()).floor() as u64;
        let inv = {
            let mut i = self.presence.arg(PREFIX);
            i.arg(&self.node)
                .arg(until)
                .arg(now)
                .arg(PRESENCE_TTL.as_secs())
                .arg(users);
            i
        };
        self.link
            .run(|mut m| async move { inv.invoke_async::<()>(&mut m).await })
            .await
    }

    /// This node holds no socket of `user` any more: the call to end, if no other node does.
    pub async fn went_offline(&self, user: &str) -> Result<Option<String>, RedisError> {
        let inv = {
            let mut i = self.offline.key(key("online", user));
            i.arg(PREFIX).arg(&self.node).arg(user).arg(unix_now());
            i
        };
        let id: String = self
            .link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await?;
        Ok((!id.is_empty()).then_some(id))
    }

    pub async fn initiate(
        &self,
        call_id: &str,
        caller: &str,
        callee: &str,
        kind: CallKind,
    ) -> Result<Initiated, RedisError> {
        let inv = {
            let (init, ring) = (calls::INITIATE_RATE, calls::RING_SAME_CALLEE_RATE);
            let mut i = self.initiate.key(key("busy", caller));
            i.key(key("busy", callee))
                .key(key("call", call_id))
                .key(key("online", callee))
                .key(key("rate/initiate", caller))
                .key(ring_key(caller, callee))
                .arg(call_id)
                .arg(caller)
                .arg(callee)
                .arg(kind.as_str())
                .arg(unix_now())
                .arg(RINGING_TTL.as_secs())
                .arg(unix_ms())
                .arg(millis(init.refill))
                .arg(init.burst)
                .arg(millis(ring.refill))
                .arg(ring.burst);
            i
        };
        let r: String = self
            .link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await?;
        Ok(match r.as_str() {
            "ok" => Initiated::Ringing,
            "offline" => Initiated::Offline,
            "already_in_call" => Initiated::AlreadyInCall,
            "rate_limited" => Initiated::RateLimited,
            _ => Initiated::Busy,
        })
    }

    /// `call_answer` by `user`: the caller, the kind and when it was placed (Unix seconds).
    pub async fn answer(
        &self,
        call_id: &str,
        user: &str,
    ) -> Result<Result<(String, CallKind, f64), Refusal>, RedisError> {
        let inv = {
            let mut i = self.answer.arg(PREFIX);
            i.arg(call_id)
                .arg(user)
                .arg(unix_now())
                .arg(ACTIVE_TTL.as_secs())
                .arg(unix_ms())
                .arg(millis(calls::RING_SAME_CALLEE_RATE.refill));
            i
        };
        let r: Vec<String> = self
            .link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await?;
        Ok(match r.as_slice() {
            [ok, caller, kind, initiated] if ok == "ok" => Ok((
                caller.clone(),
                CallKind::parse(kind).unwrap_or(CallKind::Voice),
                initiated.parse().unwrap_or(0.0),
            )),
            [code, ..] => Err(refusal(code)),
            [] => Err("unknown_call"),
        })
    }

    /// End `call_id` as `mode` says (`reject`, `end`, `timeout`, `disconnect`) on behalf of
    /// `user` (`""`: whoever).
    pub async fn end(
        &self,
        call_id: &str,
        user: &str,
        mode: &str,
    ) -> Result<Result<SharedEnded, Refusal>, RedisError> {
        let inv = {
            let mut i = self.end.arg(PREFIX);
            i.arg(call_id).arg(user).arg(mode);
            i
        };
        let r: Vec<String> = self
            .link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await?;
        Ok(match r.as_slice() {
            [ok, caller, callee, state, kind, initiated, answered] if ok == "ok" => {
                Ok(SharedEnded {
                    caller: caller.clone(),
                    callee: callee.clone(),
                    kind: CallKind::parse(kind).unwrap_or(CallKind::Voice),
                    answered: state == "active",
                    initiated: initiated.parse().unwrap_or(0.0),
                    answered_at: answered.parse().ok(),
                })
            }
            [code, ..] => Err(refusal(code)),
            [] => Err("unknown_call"),
        })
    }

    /// The state (`ringing`, `active`) of the call between `from` and `to`, `None` if they
    /// are not the two parties of one call.
    pub async fn peers(&self, from: &str, to: &str) -> Result<Option<String>, RedisError> {
        let inv = {
            let mut i = self.peers.arg(PREFIX);
            i.arg(from).arg(to);
            i
        };
        let r: String = self
            .link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await?;
        Ok((r != "none").then_some(r))
    }

    /// The state of `call_id` (`ringing`, `active`), `None` once it is gone.
    pub async fn state(&self, call_id: &str) -> Result<Option<String>, RedisError> {
        let k = key("call", call_id);
        self.link
            .run(|mut m| async move {
                redis::cmd("HGET")
                    .arg(k)
                    .arg("state")
                    .query_async(&mut m)
                    .await
            })
            .await
    }

    /// Renew the answered calls `call_ids` (those this node knows): (the ids of those one of
    /// whose parties is online nowhere, those that ended).
    pub async fn renew(
        &self,
        call_ids: &[String],
    ) -> Result<(Vec<String>, Vec<String>), RedisError> {
        if call_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let inv = {
            let mut i = self.renew.arg(PREFIX);
            i.arg(unix_now()).arg(ACTIVE_TTL.as_secs()).arg(call_ids);
            i
        };
        self.link
            .run(|mut m| async move { inv.invoke_async(&mut m).await })
            .await
    }
}
