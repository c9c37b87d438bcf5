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

/// Event counts since start, for metrics (summed across workers at scrape time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub binding_requests: u64,
    pub binding_responses: u64,
    pub binding_errors: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub allocations_refused: u64,
    pub unauthorized: u64,
    pub auth_failures: u64,
    pub stale_nonces: u64,
    pub malformed: u64,
    pub dropped_no_permission: u64,
    pub dropped_bandwidth: u64,
    /// Refused Allocates by error code.
    pub refused_by_code: RefusedByCode,
    /// Failed credentials by reason (their sum is `auth_failures`).
    pub auth_failures_by_reason: AuthFailures,
    /// Challenges and Allocate attempts not answered: the source was over
    /// `--unauthorized-ratelimit`.
    pub rate_limited: u64,
    /// Responses to unauthenticated requests not sent because they would have exceeded the
    /// request by more than [`AMPLIFICATION_SLACK`].
    pub amplification_dropped: u64,
    /// Traffic of allocations that have ended.
    pub closed_traffic: AllocationStats,
}
