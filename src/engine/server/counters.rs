//! Event counters an engine keeps for metrics.

use super::*;

/// Error codes an Allocate can be refused with, counted one by one (the last slot: any other).
pub const REFUSAL_CODES: [u16; 9] = [300, 400, 403, 437, 440, 442, 486, 508, 0];

/// Refused Allocates by error code ([`REFUSAL_CODES`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefusedByCode(pub [u64; REFUSAL_CODES.len()]);

impl RefusedByCode {
    pub fn add(&mut self, code: u16) {
        let i = REFUSAL_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(REFUSAL_CODES.len() - 1);
        self.0[i] += 1;
    }

    /// (code, count); code 0 stands for "other".
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        REFUSAL_CODES.iter().copied().zip(self.0.iter().copied())
    }

    pub fn merge(&mut self, o: &RefusedByCode) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// Failed credentials by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailures {
    /// No such user (or a realm that is not ours, or an unreadable username).
    pub unknown_user: u64,
    /// The user exists, MESSAGE-INTEGRITY did not match: wrong password or secret.
    pub wrong_credentials: u64,
    /// A REST username whose expiry has passed.
    pub expired: u64,
    /// SHA-256 asked for a user known only by an MD5 key.
    pub algorithm: u64,
}

impl AuthFailures {
    pub fn merge(&mut self, o: &AuthFailures) {
        self.unknown_user += o.unknown_user;
        self.wrong_credentials += o.wrong_credentials;
        self.expired += o.expired;
        self.algorithm += o.algorithm;
    }
}

/// Upper bounds (seconds) of the `turn_allocations_duration` buckets; one more bucket holds
/// the longer ones.
pub const DURATION_BUCKETS: [u64; 4] = [10, 60, 600, 3600];

/// How long ended allocations lived, per transport ([`super::TRANSPORTS`] order): a histogram
/// with non-cumulative counts per bucket (the last one +Inf) and the sum in seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    pub buckets: [[u64; DURATION_BUCKETS.len() + 1]; 4],
    pub sum: [u64; 4],
}

impl Durations {
    /// Count an allocation of transport `t` ([`super::transport_index`]) that lived `secs`.
    pub fn observe(&mut self, t: usize, secs: u64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[t][i] += 1;
        self.sum[t] += secs;
    }

    pub fn merge(&mut self, o: &Durations) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            *a += b;
        }
    }
}

/// One plain counter of [`Counters`]: where it lives, what Prometheus calls it (a family name
/// and, for a family of several counters, the labels of this one) and what `/api/stats` calls
/// it. [`COUNTERS`] lists every one once; the merge across workers, the Prometheus rendering and
/// `/api/stats` all walk it, so a new counter is one line in [`counters!`].
#[derive(Debug, Clone, Copy)]
pub struct CounterSpec {
    /// The field's name: the key in `/api/stats`.
    pub field: &'static str,
    pub get: fn(&Counters) -> u64,
    pub get_mut: fn(&mut Counters) -> &mut u64,
    /// Prometheus family name; entries of one family are adjacent in [`COUNTERS`].
    pub prometheus: &'static str,
    /// The labels of this counter within its family (empty: none).
    pub labels: &'static str,
    pub help: &'static str,
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident => $prom:literal [$labels:literal] $help:literal; )*) => {
        /// Event counts since start, for metrics (summed across workers at scrape time).
        #[derive(Debug, Default, Clone, Copy)]
        pub struct Counters {
            $( $(#[$doc])* pub $field: u64, )*
            /// Refused Allocates by error code.
            pub refused_by_code: RefusedByCode,
            /// Failed credentials by reason (their sum is `auth_failures`).
            pub auth_failures_by_reason: AuthFailures,
            /// Traffic of allocations that have ended.
            pub closed_traffic: AllocationStats,
            /// How long the allocations that have ended lived.
            pub durations: Durations,
        }

        /// Every plain counter, in rendering order.
        pub const COUNTERS: &[CounterSpec] = &[
            $( CounterSpec {
                field: stringify!($field),
                get: |c| c.$field,
                get_mut: |c| &mut c.$field,
                prometheus: $prom,
                labels: $labels,
                help: $help,
            }, )*
        ];
    };
}

counters! {
    binding_requests => "stun_binding_request" [""] "Incoming STUN Binding requests";
    binding_responses => "stun_binding_response" [""] "Outgoing STUN Binding responses";
    /// Binding requests answered with an error (CHANGE-REQUEST this server cannot honour).
    binding_errors => "stun_binding_error" [""] "STUN Binding errors";
    allocations_created => "vigi_turn_allocations_created_total" [""] "Allocations created";
    allocations_expired => "vigi_turn_allocations_expired_total" [""]
        "Allocations ended because their lifetime ran out";
    allocations_deleted => "vigi_turn_allocations_deleted_total" [""]
        "Allocations ended by the client (Refresh 0, connection closed) or an operator";
    allocations_refused => "vigi_turn_allocations_refused_total" [""]
        "Allocate requests refused (quota, capacity, draining, no port)";
    unauthorized => "vigi_turn_unauthorized_total" [""]
        "401 answers (challenges and failed credentials)";
    auth_failures => "vigi_turn_auth_failures_total" [""] "Requests whose credentials were wrong";
    stale_nonces => "vigi_turn_stale_nonces_total" [""] "438 Stale Nonce answers";
    malformed => "vigi_turn_malformed_total" [""] "Packets that did not parse";
    /// Challenges and Allocate attempts not answered: the source was over
    /// `--unauthorized-ratelimit`.
    rate_limited => "vigi_turn_rate_limited_total" [""]
        "Challenges and Allocate attempts not answered: the source IP was over --unauthorized-ratelimit";
    /// Responses to unauthenticated requests not sent because they would have exceeded the
    /// request by more than [`AMPLIFICATION_SLACK`].
    amplification_dropped => "vigi_turn_amplification_dropped_total" [""]
        "Answers to unauthenticated requests not sent: they would exceed the request by more than the amplification bound";
    dropped_no_permission => "vigi_turn_dropped_packets_total" ["reason=\"no_permission\""]
        "Relayed packets dropped, by reason";
    dropped_bandwidth => "vigi_turn_dropped_packets_total" ["reason=\"bandwidth\""]
        "Relayed packets dropped, by reason";
    /// Send indications forwarded to a peer (RFC 8656 §11): relayed without a channel, as
    /// Firefox relays everything.
    send_indications => "vigi_turn_relayed_indications_total" ["kind=\"send\""]
        "Packets relayed without a channel: Send indications to peers, Data indications to clients";
    /// Peer data sent to a client as a Data indication: no channel bound to that peer.
    data_indications => "vigi_turn_relayed_indications_total" ["kind=\"data\""]
        "Packets relayed without a channel: Send indications to peers, Data indications to clients";
}

impl Counters {
    /// Add `o` into `self`: every counter of [`COUNTERS`], the per-code and per-reason counts
    /// and the traffic of ended allocations.
    pub fn merge(&mut self, o: &Counters) {
        for spec in COUNTERS {
            *(spec.get_mut)(self) += (spec.get)(o);
        }
        self.refused_by_code.merge(&o.refused_by_code);
        self.auth_failures_by_reason
            .merge(&o.auth_failures_by_reason);
        self.closed_traffic.merge(&o.closed_traffic);
        self.durations.merge(&o.durations);
    }
}
