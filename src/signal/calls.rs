//! Call state of the signaling companion: who is online, who is in which call, which calls are
//! ringing, and how often each user may place a call, ring one callee and send WebRTC
//! messages. No sockets and no clock: time is a parameter, and every method says what to tell
//! whom by returning it.
//!
//! Rate limits are kept per user (and per caller and callee), not per socket, so reconnecting
//! does not refill them; buckets that are full again are forgotten in [`Calls::handle_timeout`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::limit::{Limiter, Rate};

/// How long a call may ring before it is ended as unanswered.
pub const RING_TIMEOUT: Duration = Duration::from_secs(30);
/// `call_initiate` budget per user: this many calls ...
pub const INITIATE_BURST: u32 = 5;
/// ... refilled at one call per this interval.
pub const INITIATE_REFILL: Duration = Duration::from_secs(4);
/// `call_initiate` per user.
pub const INITIATE_RATE: Rate = Rate {
    burst: INITIATE_BURST,
    refill: INITIATE_REFILL,
    max_keys: 100_000,
};
/// Rings of one callee by one caller: a few retries, then one per five minutes, so that
/// nobody can keep someone permanently busy by ringing (a ring lasts at most [`RING_TIMEOUT`]).
/// A ring the callee answers gives its token back.
pub const RING_SAME_CALLEE_RATE: Rate = Rate {
    burst: 3,
    refill: Duration::from_secs(300),
    max_keys: 100_000,
};
/// `webrtc_offer`/`webrtc_answer`/`webrtc_ice_candidate` per user: trickle ICE sends tens of
/// candidates at once, renegotiation a few offers.
pub const WEBRTC_RATE: Rate = Rate {
    burst: 200,
    refill: Duration::from_millis(20),
    max_keys: 100_000,
};

/// `call_answer`/`call_reject`/`call_decline`/`call_end` per user: far more than a person
/// clicks, far less than a script looping (each may cost a Redis round trip).
pub const STEP_RATE: Rate = Rate {
    burst: 20,
    refill: Duration::from_millis(100),
    max_keys: 100_000,
};

/// Audio only or audio and video, as the seed's `type` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Voice,
    Video,
}

impl CallKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "voice" => Some(CallKind::Voice),
            "video" => Some(CallKind::Video),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Voice => "voice",
            CallKind::Video => "video",
        }
    }
}

/// Why a call operation was refused; sent to the client as `call_error {code, message}`
/// (except [`CallError::CalleeBusy`], which the seed reports as `call_busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("you cannot call yourself")]
    SelfCall,
    #[error("the callee is not online")]
    CalleeOffline,
    #[error("the callee is in another call")]
    CalleeBusy,
    #[error("you are already in a call")]
    AlreadyInCall,
    #[error("no such call")]
    UnknownCall,
    #[error("not allowed in this state of the call")]
    WrongState,
    #[error("too many calls placed; wait a little")]
    RateLimited,
    #[error("the call has not been answered yet")]
    NotAnswered,
    #[error("relaying only to the other party of your call")]
    NotInCall,
}

impl CallError {
    /// The stable `code` clients switch on.
    pub fn code(self) -> &'static str {
        match self {
            CallError::SelfCall => "self_call",
            CallError::CalleeOffline => "user_offline",
            CallError::CalleeBusy => "busy",
            CallError::AlreadyInCall => "already_in_call",
            CallError::UnknownCall => "unknown_call",
            CallError::WrongState => "wrong_state",
            CallError::RateLimited => "rate_limited",
            CallError::NotAnswered => "not_answered",
            CallError::NotInCall => "not_in_call",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing { since: Instant },
    Active { since: Instant },
}

#[derive(Debug, Clone)]
struct Call {
    caller: String,
    callee: String,
    kind: CallKind,
    initiated: Instant,
    phase: Phase,
}

impl Call {
    fn other(&self, user: &str) -> Option<&str> {
        if user == self.caller {
            Some(&self.callee)
        } else if user == self.callee {
            Some(&self.caller)
        } else {
            None
        }
    }
}

/// A call that ended without either party asking: its id and both parties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
}

/// How a call ended, as its record and the metrics say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// It was answered (and then ended by either party or a disconnect).
    Answered,
    /// The callee rejected or declined it.
    Rejected,
    /// The callee was busy (or offline: the two are not told apart).
    Busy,
    /// Nobody answered: it rang out, or the caller hung up while it rang.
    Missed,
    /// A party disconnected while it rang.
    Failed,
}

impl EndReason {
    pub const ALL: [EndReason; 5] = [
        EndReason::Answered,
        EndReason::Rejected,
        EndReason::Busy,
        EndReason::Missed,
        EndReason::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Answered => "answered",
            EndReason::Rejected => "rejected",
            EndReason::Busy => "busy",
            EndReason::Missed => "missed",
            EndReason::Failed => "failed",
        }
    }
}

/// What happened to calls, for records and metrics: drained with [`Calls::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A `call_initiate` passed its checks (it rang, or found the callee busy).
    Started(CallKind),
    Answered(CallKind),
    Ended(CallRecord),
}

/// One finished call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub kind: CallKind,
    /// From `call_initiate` to the answer, or to the end when unanswered.
    pub rang_for: Duration,
    /// From the answer to the end; `None` when unanswered.
    pub talked_for: Option<Duration>,
    pub reason: EndReason,
}

/// The most events kept undrained; older ones are dropped first.
const MAX_EVENTS: usize = 10_000;

/// Every call and online user of one signaling server.
#[derive(Debug)]
pub struct Calls {
    events: std::collections::VecDeque<CallEvent>,
    call_by_id: HashMap<String, Call>,
    call_id_by_user: HashMap<String, String>,
    sockets_by_user: HashMap<String, usize>,
    initiate_by_user: Limiter<String>,
    ring_by_pair: Limiter<(String, String)>,
    webrtc_by_user: Limiter<String>,
    step_by_user: Limiter<String>,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            events: std::collections::VecDeque::new(),
            call_by_id: HashMap::new(),
            call_id_by_user: HashMap::new(),
            sockets_by_user: HashMap::new(),
            initiate_by_user: Limiter::new(INITIATE_RATE),
            ring_by_pair: Limiter::new(RING_SAME_CALLEE_RATE),
            webrtc_by_user: Limiter::new(WEBRTC_RATE),
            step_by_user: Limiter::new(STEP_RATE),
        }
    }
}

impl Calls {
    pub fn new() -> Self {
        Self::default()
    }

    /// A socket of `user` connected.
    pub fn handle_connect(&mut self, user: &str) {
        *self.sockets_by_user.entry(user.to_owned()).or_default() += 1;
    }

    /// A socket of `user` disconnected. When it was the user's last one, the user's call ends:
    /// the returned call's other party is to be told `call_ended`.
    pub fn handle_disconnect(&mut self, now: Instant, user: &str) -> Option<Ended> {
        let n = self.sockets_by_user.get_mut(user)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.sockets_by_user.remove(user);
        let call_id = self.call_id_by_user.get(user)?.clone();
        let reason = match self.call_by_id.get(&call_id)?.phase {
            Phase::Active { .. } => EndReason::Answered,
            Phase::Ringing { .. } => EndReason::Failed,
        };
        self.remove(now, &call_id, reason)
    }

    /// How many sockets `user` has connected.
    pub fn sockets_of(&self, user: &str) -> usize {
        self.sockets_by_user.get(user).copied().unwrap_or(0)
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.sockets_by_user.contains_key(user)
    }

    /// `call_initiate`: the new call's id, ringing at `callee`.
    pub fn handle_initiate(
        &mut self,
        now: Instant,
        caller: &str,
        callee: &str,
        kind: CallKind,
        call_id: String,
    ) -> Result<String, CallError> {
        self.take_initiate(now, caller, callee)?;
        self.place(now, caller, callee, kind, call_id)
    }

    /// The checks of `call_initiate` that do not depend on the callee: not oneself, within the
    /// caller's and the pair's rate limits, not already in a call here. Takes the tokens.
    pub fn take_initiate(
        &mut self,
        now: Instant,
        caller: &str,
        callee: &str,
    ) -> Result<(), CallError> {
        if caller == callee {
            return Err(CallError::SelfCall);
        }
        self.initiate_by_user
            .try_take(now, &caller.to_owned())
            .map_err(|_| CallError::RateLimited)?;
        if self.call_id_by_user.contains_key(caller) {
            return Err(CallError::AlreadyInCall);
        }
        // Counted whether the callee is there or not, so the limit says nothing about them.
        self.ring_by_pair
            .try_take(now, &(caller.to_owned(), callee.to_owned()))
            .map_err(|_| CallError::RateLimited)
    }

    /// Ring `callee` from here (after [`Calls::take_initiate`]).
    pub fn place(
        &mut self,
        now: Instant,
        caller: &str,
        callee: &str,
        kind: CallKind,
        call_id: String,
    ) -> Result<String, CallError> {
        self.push(CallEvent::Started(kind));
        let unavailable = if !self.is_online(callee) {
            Some(CallError::CalleeOffline)
        } else if self.call_id_by_user.contains_key(callee) {
            Some(CallError::CalleeBusy)
        } else {
            None
        };
        if let Some(e) = unavailable {
            self.push(CallEvent::Ended(CallRecord {
                call_id,
                caller: caller.to_owned(),
                callee: callee.to_owned(),
                kind,
                rang_for: Duration::ZERO,
                talked_for: None,
                reason: EndReason::Busy,
            }));
            return Err(e);
        }
        self.call_id_by_user
            .insert(caller.to_owned(), call_id.clone());
        self.call_id_by_user
            .insert(callee.to_owned(), call_id.clone());
        self.call_by_id.insert(
            call_id.clone(),
            Call {
                caller: caller.to_owned(),
                callee: callee.to_owned(),
                kind,
                initiated: now,
                phase: Phase::Ringing { since: now },
            },
        );
        Ok(call_id)
    }

    /// Keep here a call Redis kept until now (Redis went away): its parties are busy, and it
    /// is answered, ended and timed out here from now on. `false` (and nothing kept) when
    /// either party is already in a call kept here.
    pub fn adopt(
        &mut self,
        now: Instant,
        call_id: &str,
        caller: &str,
        callee: &str,
        kind: CallKind,
        answered: bool,
    ) -> bool {
        if self.in_call(caller) || self.in_call(callee) || self.has_call(call_id) {
            return false;
        }
        self.call_id_by_user
            .insert(caller.to_owned(), call_id.to_owned());
        self.call_id_by_user
            .insert(callee.to_owned(), call_id.to_owned());
        let phase = if answered {
            Phase::Active { since: now }
        } else {
            Phase::Ringing { since: now }
        };
        self.call_by_id.insert(
            call_id.to_owned(),
            Call {
                caller: caller.to_owned(),
                callee: callee.to_owned(),
                kind,
                initiated: now,
                phase,
            },
        );
        true
    }

    /// Is `user` in a call kept here?
    pub fn in_call(&self, user: &str) -> bool {
        self.call_id_by_user.contains_key(user)
    }

    /// Is `call_id` kept here?
    pub fn has_call(&self, call_id: &str) -> bool {
        self.call_by_id.contains_key(call_id)
    }

    /// The users with a socket here.
    pub fn local_users(&self) -> Vec<String> {
        self.sockets_by_user.keys().cloned().collect()
    }

    /// A ring of `callee` by `caller` was answered (elsewhere): its token comes back.
    pub fn refund_ring(&mut self, now: Instant, caller: &str, callee: &str) {
        self.ring_by_pair
            .refund(now, &(caller.to_owned(), callee.to_owned()));
    }

    /// A WebRTC message from `from` within [`WEBRTC_RATE`] (for calls kept elsewhere).
    pub fn take_webrtc(&mut self, now: Instant, from: &str) -> Result<(), CallError> {
        self.webrtc_by_user
            .try_take(now, &from.to_owned())
            .map_err(|_| CallError::RateLimited)
    }

    /// An answer, rejection or end from `user` within [`STEP_RATE`].
    pub fn take_step(&mut self, now: Instant, user: &str) -> Result<(), CallError> {
        self.step_by_user
            .try_take(now, &user.to_owned())
            .map_err(|_| CallError::RateLimited)
    }

    /// Something that happened to a call kept elsewhere, for the records and metrics.
    pub fn record(&mut self, e: CallEvent) {
        self.push(e);
    }

    /// `call_answer` by the callee of a ringing call: the caller, to be told `call_answered`.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        user: &str,
        call_id: &str,
    ) -> Result<String, CallError> {
        let call = self
            .call_by_id
            .get_mut(call_id)
            .ok_or(CallError::UnknownCall)?;
        if call.callee != user {
            return Err(if call.caller == user {
                CallError::WrongState
            } else {
                CallError::UnknownCall
            });
        }
        if matches!(call.phase, Phase::Active { .. }) {
            return Err(CallError::WrongState);
        }
        call.phase = Phase::Active { since: now };
        let (kind, caller) = (call.kind, call.caller.clone());
        // An answered ring was wanted: it does not count towards the limit on ringing one
        // callee again and again (which is for rings nobody takes).
        let pair = (caller.clone(), user.to_owned());
        self.ring_by_pair.refund(now, &pair);
        self.push(CallEvent::Answered(kind));
        Ok(caller)
    }

    /// `call_reject`/`call_decline` by the callee of a ringing call: the caller, to be told
    /// `call_rejected`.
    pub fn handle_reject(
        &mut self,
        now: Instant,
        user: &str,
        call_id: &str,
    ) -> Result<String, CallError> {
        let call = self.call_by_id.get(call_id).ok_or(CallError::UnknownCall)?;
        if call.callee != user {
            return Err(if call.caller == user {
                CallError::WrongState
            } else {
                CallError::UnknownCall
            });
        }
        if matches!(call.phase, Phase::Active { .. }) {
            return Err(CallError::WrongState);
        }
        let caller = call.caller.clone();
        self.remove(now, call_id, EndReason::Rejected);
        Ok(caller)
    }

    /// `call_end` by either party, ringing or not: the other party, to be told `call_ended`.
    pub fn handle_end(
        &mut self,
        now: Instant,
        user: &str,
        call_id: &str,
    ) -> Result<String, CallError> {
        let call = self.call_by_id.get(call_id).ok_or(CallError::UnknownCall)?;
        let other = call.other(user).ok_or(CallError::UnknownCall)?.to_owned();
        let reason = match call.phase {
            Phase::Active { .. } => EndReason::Answered,
            Phase::Ringing { .. } => EndReason::Missed,
        };
        self.remove(now, call_id, reason);
        Ok(other)
    }

    /// Are `from` and `to` the two parties of one call (ringing or answered)?
    pub fn are_peers(&self, from: &str, to: &str) -> bool {
        self.call_of(from).and_then(|c| c.other(from)) == Some(to)
    }

    fn call_of(&self, user: &str) -> Option<&Call> {
        self.call_id_by_user
            .get(user)
            .and_then(|id| self.call_by_id.get(id))
    }

    /// A WebRTC message (`webrtc_offer`/`_answer`/`_ice_candidate`) from `from` to `to`: only
    /// between the two parties of one call, once it is answered (the seed's order:
    /// `call_answered` precedes `webrtc_offer`), and within [`WEBRTC_RATE`].
    pub fn handle_webrtc(&mut self, now: Instant, from: &str, to: &str) -> Result<(), CallError> {
        let call = self.call_of(from).ok_or(CallError::NotInCall)?;
        if call.other(from) != Some(to) {
            return Err(CallError::NotInCall);
        }
        if !matches!(call.phase, Phase::Active { .. }) {
            return Err(CallError::NotAnswered);
        }
        self.take_webrtc(now, from)
    }

    /// End every call that has rung for longer than [`RING_TIMEOUT`], and forget rate buckets
    /// that are full again. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Ended> {
        self.initiate_by_user.forget_full(now);
        self.ring_by_pair.forget_full(now);
        self.webrtc_by_user.forget_full(now);
        self.step_by_user.forget_full(now);
        let expired: Vec<String> = self
            .call_by_id
            .iter()
            .filter(|(_, c)| match c.phase {
                Phase::Ringing { since } => now.saturating_duration_since(since) >= RING_TIMEOUT,
                Phase::Active { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| self.remove(now, id, EndReason::Missed))
            .collect()
    }

    /// The next thing that happened to a call, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    fn push(&mut self, e: CallEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn remove(&mut self, now: Instant, call_id: &str, reason: EndReason) -> Option<Ended> {
        let call = self.call_by_id.remove(call_id)?;
        self.call_id_by_user.remove(&call.caller);
        self.call_id_by_user.remove(&call.callee);
        let (rang_for, talked_for) = match call.phase {
            Phase::Ringing { .. } => (now.saturating_duration_since(call.initiated), None),
            Phase::Active { since } => (
                since.saturating_duration_since(call.initiated),
                Some(now.saturating_duration_since(since)),
            ),
        };
        self.push(CallEvent::Ended(CallRecord {
            call_id: call_id.to_owned(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            kind: call.kind,
            rang_for,
            talked_for,
            reason,
        }));
        Some(Ended {
            call_id: call_id.to_owned(),
            caller: call.caller,
            callee: call.callee,
        })
    }
}

/// Call metrics, shared between the signaling tasks (which count [`CallEvent`]s) and the
/// Prometheus scrape (which reads them).
#[derive(Debug, Default)]
pub struct CallStats {
    started: [AtomicU64; 2],
    answered: [AtomicU64; 2],
    ended: [[AtomicU64; 5]; 2],
    /// Talk time of answered calls: counts per [`CALL_DURATION_BUCKETS`] bound (not
    /// cumulative; the last is +Inf), and the sum in milliseconds.
    duration_buckets: [AtomicU64; CALL_DURATION_BUCKETS.len() + 1],
    duration_sum_ms: AtomicU64,
    /// `--signaling-redis` given; then whether it answers, and how often it went away.
    redis_configured: AtomicBool,
    redis_up: AtomicBool,
    redis_outages: AtomicU64,
}

/// Upper bounds, in seconds, of the call duration histogram.
pub const CALL_DURATION_BUCKETS: [u64; 7] = [10, 30, 60, 300, 900, 1800, 3600];

fn kind_index(k: CallKind) -> usize {
    match k {
        CallKind::Voice => 0,
        CallKind::Video => 1,
    }
}

impl CallStats {
    pub fn observe(&self, e: &CallEvent) {
        match e {
            CallEvent::Started(k) => self.started[kind_index(*k)].fetch_add(1, Relaxed),
            CallEvent::Answered(k) => self.answered[kind_index(*k)].fetch_add(1, Relaxed),
            CallEvent::Ended(r) => {
                let reason = EndReason::ALL.iter().position(|x| *x == r.reason);
                if let Some(talk) = r.talked_for {
                    let secs = talk.as_secs();
                    let b = CALL_DURATION_BUCKETS
                        .iter()
                        .position(|&le| secs < le)
                        .unwrap_or(CALL_DURATION_BUCKETS.len());
                    self.duration_buckets[b].fetch_add(1, Relaxed);
                    let ms = u64::try_from(talk.as_millis()).unwrap_or(u64::MAX);
                    self.duration_sum_ms.fetch_add(ms, Relaxed);
                }
                self.ended[kind_index(r.kind)][reason.unwrap_or(0)].fetch_add(1, Relaxed)
            }
        };
    }

    /// The shared Redis's health as signaling last saw it.
    pub fn set_redis(&self, up: bool, outages: u64) {
        self.redis_configured.store(true, Relaxed);
        self.redis_up.store(up, Relaxed);
        self.redis_outages.store(outages, Relaxed);
    }

    /// `None` without `--signaling-redis`; else (answering, outages so far).
    pub fn redis(&self) -> Option<(bool, u64)> {
        self.redis_configured.load(Relaxed).then(|| {
            (
                self.redis_up.load(Relaxed),
                self.redis_outages.load(Relaxed),
            )
        })
    }

    /// Calls started, by kind.
    pub fn started(&self, k: CallKind) -> u64 {
        self.started[kind_index(k)].load(Relaxed)
    }

    pub fn answered(&self, k: CallKind) -> u64 {
        self.answered[kind_index(k)].load(Relaxed)
    }

    pub fn ended(&self, k: CallKind, r: EndReason) -> u64 {
        let i = EndReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.ended[kind_index(k)][i].load(Relaxed)
    }

    /// Cumulative histogram counts per bound of [`CALL_DURATION_BUCKETS`] then +Inf, and the
    /// sum in seconds.
    pub fn durations(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let counts = self
            .duration_buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (counts, self.duration_sum_ms.load(Relaxed) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_leaves_a_record_and_counts() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut c = online(&["a", "b", "c", "d"]);
        let id = c
            .handle_initiate(t, "a", "b", CallKind::Video, "c1".into())
            .unwrap();
        assert_eq!(
            c.handle_initiate(t, "c", "b", CallKind::Voice, "c2".into()),
            Err(CallError::CalleeBusy)
        );
        c.handle_answer(t + s(3), "b", &id).unwrap();
        c.handle_end(t + s(63), "b", &id).unwrap();
        let ringing = c
            .handle_initiate(t, "c", "d", CallKind::Voice, "c3".into())
            .unwrap();
        c.handle_disconnect(t + s(1), "d").unwrap();
        let stats = CallStats::default();
        let mut records = Vec::new();
        while let Some(e) = c.poll_event() {
            stats.observe(&e);
            if let CallEvent::Ended(r) = e {
                records.push(r);
            }
        }
        let reasons: Vec<_> = records
            .iter()
            .map(|r| (r.call_id.as_str(), r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("c2", EndReason::Busy),
                ("c1", EndReason::Answered),
                (ringing.as_str(), EndReason::Failed)
            ]
        );
        assert_eq!(records[1].rang_for, s(3));
        assert_eq!(records[1].talked_for, Some(s(60)));
        assert_eq!(stats.started(CallKind::Video), 1);
        assert_eq!(stats.started(CallKind::Voice), 2);
        assert_eq!(stats.answered(CallKind::Video), 1);
        assert_eq!(stats.ended(CallKind::Voice, EndReason::Failed), 1);
        let (counts, sum) = stats.durations();
        assert_eq!(counts, [0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(sum, 60.0);
    }

    fn online(users: &[&str]) -> Calls {
        let mut c = Calls::new();
        for u in users {
            c.handle_connect(u);
        }
        c
    }

    #[test]
    fn initiate_answer_end() {
        let t = Instant::now();
        let mut c = online(&["a", "b"]);
        let id = c
            .handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        assert!(c.are_peers("a", "b") && c.are_peers("b", "a"));
        assert_eq!(c.handle_answer(t, "a", &id), Err(CallError::WrongState));
        assert_eq!(c.handle_answer(t, "b", &id).unwrap(), "a");
        assert_eq!(c.handle_answer(t, "b", &id), Err(CallError::WrongState));
        assert_eq!(c.handle_end(t, "x", &id), Err(CallError::UnknownCall));
        assert_eq!(c.handle_end(t, "b", &id).unwrap(), "a");
        assert!(!c.are_peers("a", "b"));
    }

    #[test]
    fn busy_offline_self() {
        let t = Instant::now();
        let mut c = online(&["a", "b", "c"]);
        assert_eq!(
            c.handle_initiate(t, "a", "a", CallKind::Voice, "x".into()),
            Err(CallError::SelfCall)
        );
        assert_eq!(
            c.handle_initiate(t, "a", "z", CallKind::Voice, "x".into()),
            Err(CallError::CalleeOffline)
        );
        c.handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        assert_eq!(
            c.handle_initiate(t, "c", "b", CallKind::Voice, "c2".into()),
            Err(CallError::CalleeBusy)
        );
        assert_eq!(
            c.handle_initiate(t, "a", "c", CallKind::Voice, "c3".into()),
            Err(CallError::AlreadyInCall)
        );
        assert!(!c.are_peers("c", "b"));
        assert_eq!(c.handle_reject(t, "b", "c1").unwrap(), "a");
        c.handle_initiate(t, "c", "b", CallKind::Voice, "c4".into())
            .unwrap();
    }

    #[test]
    fn last_socket_ends_the_call() {
        let t = Instant::now();
        let mut c = online(&["a", "b", "b"]);
        c.handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        assert_eq!(c.handle_disconnect(t, "b"), None);
        let e = c.handle_disconnect(t, "b").unwrap();
        assert_eq!((e.caller.as_str(), e.callee.as_str()), ("a", "b"));
        assert!(!c.is_online("b"));
        assert_eq!(c.handle_disconnect(t, "zz"), None);
    }

    #[test]
    fn ringing_times_out_and_active_does_not() {
        let t = Instant::now();
        let mut c = online(&["a", "b", "c", "d"]);
        c.handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        c.handle_initiate(t, "c", "d", CallKind::Voice, "c2".into())
            .unwrap();
        c.handle_answer(t, "d", "c2").unwrap();
        assert!(c.handle_timeout(t + RING_TIMEOUT / 2).is_empty());
        let ended = c.handle_timeout(t + RING_TIMEOUT);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].call_id, "c1");
        assert!(c.are_peers("c", "d"));
    }

    #[test]
    fn initiate_is_rate_limited_and_reconnecting_does_not_refill() {
        let t = Instant::now();
        let callees = ["b", "c", "d", "e", "f", "g"];
        let mut c = online(&callees);
        c.handle_connect("a");
        for (i, callee) in callees.iter().take(INITIATE_BURST as usize).enumerate() {
            c.handle_initiate(t, "a", callee, CallKind::Voice, format!("c{i}"))
                .unwrap();
            c.handle_end(t, "a", &format!("c{i}")).unwrap();
        }
        assert_eq!(
            c.handle_initiate(t, "a", "g", CallKind::Voice, "x".into()),
            Err(CallError::RateLimited)
        );
        assert_eq!(c.handle_disconnect(t, "a"), None);
        c.handle_connect("a");
        assert_eq!(
            c.handle_initiate(t, "a", "g", CallKind::Voice, "x".into()),
            Err(CallError::RateLimited)
        );
        c.handle_initiate(t + INITIATE_REFILL, "a", "g", CallKind::Voice, "y".into())
            .unwrap();
    }

    #[test]
    fn ringing_one_callee_again_and_again_is_limited() {
        let t = Instant::now();
        let mut c = online(&["a", "b", "c"]);
        let mut at = t;
        for i in 0..RING_SAME_CALLEE_RATE.burst {
            at += INITIATE_REFILL;
            let id = c
                .handle_initiate(at, "a", "b", CallKind::Voice, format!("c{i}"))
                .unwrap();
            c.handle_reject(t, "b", &id).unwrap();
        }
        at += INITIATE_REFILL;
        assert_eq!(
            c.handle_initiate(at, "a", "b", CallKind::Voice, "x".into()),
            Err(CallError::RateLimited)
        );
        // Others may still call b, and a may call others.
        c.handle_initiate(at, "c", "b", CallKind::Voice, "y".into())
            .unwrap();
        c.handle_end(t, "c", "y").unwrap();
        c.handle_initiate(at + INITIATE_REFILL, "a", "c", CallKind::Voice, "z".into())
            .unwrap();
        c.handle_end(t, "a", "z").unwrap();
        at += RING_SAME_CALLEE_RATE.refill;
        c.handle_initiate(at, "a", "b", CallKind::Voice, "w".into())
            .unwrap();
    }

    /// Answered calls are wanted: calling a contact who picks up again and again is no abuse.
    #[test]
    fn answered_rings_do_not_count_towards_the_ring_limit() {
        let t = Instant::now();
        let mut c = online(&["a", "b"]);
        let mut at = t;
        for i in 0..2 * RING_SAME_CALLEE_RATE.burst {
            at += INITIATE_REFILL;
            let id = c
                .handle_initiate(at, "a", "b", CallKind::Video, format!("c{i}"))
                .unwrap();
            c.handle_answer(at, "b", &id).unwrap();
            c.handle_end(at, "a", &id).unwrap();
        }
    }

    #[test]
    fn webrtc_flows_only_once_answered_and_is_rate_limited() {
        let t = Instant::now();
        let mut c = online(&["a", "b", "m"]);
        let id = c
            .handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        assert_eq!(c.handle_webrtc(t, "a", "b"), Err(CallError::NotAnswered));
        assert_eq!(c.handle_webrtc(t, "b", "a"), Err(CallError::NotAnswered));
        assert_eq!(c.handle_webrtc(t, "m", "b"), Err(CallError::NotInCall));
        c.handle_answer(t, "b", &id).unwrap();
        assert_eq!(c.handle_webrtc(t, "a", "m"), Err(CallError::NotInCall));
        for _ in 0..WEBRTC_RATE.burst {
            c.handle_webrtc(t, "a", "b").unwrap();
        }
        assert_eq!(c.handle_webrtc(t, "a", "b"), Err(CallError::RateLimited));
        c.handle_webrtc(t, "b", "a").unwrap();
        c.handle_webrtc(t + WEBRTC_RATE.refill, "a", "b").unwrap();
    }

    #[test]
    fn steps_are_rate_limited() {
        let t = Instant::now();
        let mut c = online(&["a"]);
        for _ in 0..STEP_RATE.burst {
            c.take_step(t, "a").unwrap();
        }
        assert_eq!(c.take_step(t, "a"), Err(CallError::RateLimited));
        c.take_step(t + STEP_RATE.refill, "a").unwrap();
    }

    #[test]
    fn adopted_calls_are_kept_here() {
        let t = Instant::now();
        let mut c = online(&["a", "c"]);
        assert!(c.adopt(t, "x1", "a", "remote", CallKind::Video, true));
        assert!(!c.adopt(t, "x2", "remote", "c", CallKind::Voice, false));
        assert!(c.in_call("a") && c.in_call("remote") && !c.in_call("c"));
        assert_eq!(
            c.handle_initiate(t, "c", "a", CallKind::Voice, "c1".into()),
            Err(CallError::CalleeBusy)
        );
        c.handle_webrtc(t, "a", "remote").unwrap();
        assert_eq!(c.handle_end(t, "a", "x1").unwrap(), "remote");
        assert!(!c.in_call("a"));
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let t = Instant::now();
        let mut c = online(&["a", "b"]);
        let id = c
            .handle_initiate(t, "a", "b", CallKind::Voice, "c1".into())
            .unwrap();
        c.handle_end(t, "a", &id).unwrap();
        assert!(!c.initiate_by_user.is_empty() && !c.ring_by_pair.is_empty());
        c.handle_timeout(t + RING_SAME_CALLEE_RATE.refill);
        assert!(c.initiate_by_user.is_empty() && c.ring_by_pair.is_empty());
    }
}
