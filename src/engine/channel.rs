//! Channel bindings (RFC 8656 §12): a channel number stands for a peer transport address, so data
//! travels as 4-byte-header ChannelData instead of Send/Data indications. A binding lasts 10 minutes
//! unless refreshed; after it expires neither the number nor the peer address may be bound to
//! anything else for 5 more minutes (§12, "quarantine"). Bounded per allocation.

use std::time::{Duration, Instant};

use super::PeerAddr;
use crate::proto::ChannelNumber;

/// How long an expired binding keeps its number and peer from being rebound (RFC 8656 §12).
pub const QUARANTINE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    pub expires: Instant,
}

/// Why a ChannelBind cannot be honoured (all are 400 Bad Request, RFC 8656 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindConflict {
    NumberTaken,
    PeerTaken,
    TooMany,
}

#[derive(Debug, Default)]
pub struct Channels {
    list: Vec<Channel>,
}

impl Channels {
    /// The peer bound to `number` and live at `now`.
    #[inline]
    pub fn peer(&self, number: ChannelNumber, now: Instant) -> Option<PeerAddr> {
        self.list
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel number bound to `peer`.
    #[inline]
    pub fn number(&self, peer: PeerAddr, now: Instant) -> Option<ChannelNumber> {
        self.list
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }

    /// Whether `number` may be bound to `peer` (RFC 8656 §11.2 steps on rebinding): a fresh pair,
    /// or the same pair again (a refresh). Entries past their quarantine are forgotten first.
    pub fn check(
        &mut self,
        number: ChannelNumber,
        peer: PeerAddr,
        now: Instant,
        max: usize,
    ) -> Result<(), BindConflict> {
        self.list.retain(|c| c.expires + QUARANTINE > now);
        for c in &self.list {
            if c.number == number && c.peer != peer {
                return Err(BindConflict::NumberTaken);
            }
            if c.peer == peer && c.number != number {
                return Err(BindConflict::PeerTaken);
            }
        }
        let exists = self.list.iter().any(|c| c.number == number);
        if !exists && self.list.len() >= max {
            return Err(BindConflict::TooMany);
        }
        Ok(())
    }

    /// Bind or refresh (after [`Channels::check`] said yes).
    pub fn bind(&mut self, number: ChannelNumber, peer: PeerAddr, expires: Instant) {
        match self.list.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = expires,
            None => self.list.push(Channel {
                number,
                peer,
                expires,
            }),
        }
    }

    /// Every binding, live, expired or quarantined (for the fast path, which checks expiry).
    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.list.iter()
    }

    pub fn len(&self, now: Instant) -> usize {
        self.list.iter().filter(|c| c.expires > now).count()
    }

    pub fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebinding_rules_and_quarantine() {
        let t0 = Instant::now();
        let a = PeerAddr::new("192.0.2.1:1000".parse().unwrap());
        let b = PeerAddr::new("192.0.2.1:1001".parse().unwrap());
        let n = |n| ChannelNumber::new(n).unwrap();
        let mut ch = Channels::default();
        assert_eq!(ch.check(n(0x4000), a, t0, 8), Ok(()));
        ch.bind(n(0x4000), a, t0 + Duration::from_secs(600));
        assert_eq!(ch.peer(n(0x4000), t0), Some(a));
        assert_eq!(ch.number(a, t0), Some(n(0x4000)));
        assert_eq!(ch.check(n(0x4000), a, t0, 8), Ok(()));
        assert_eq!(
            ch.check(n(0x4000), b, t0, 8),
            Err(BindConflict::NumberTaken)
        );
        assert_eq!(ch.check(n(0x4001), a, t0, 8), Err(BindConflict::PeerTaken));
        let expired = t0 + Duration::from_secs(601);
        assert_eq!(ch.peer(n(0x4000), expired), None);
        // Still quarantined five minutes after expiry...
        assert_eq!(
            ch.check(n(0x4000), b, expired, 8),
            Err(BindConflict::NumberTaken)
        );
        // ...and free after.
        let later = t0 + Duration::from_secs(901);
        assert_eq!(ch.check(n(0x4000), b, later, 8), Ok(()));
        assert_eq!(ch.check(n(0x4002), b, later, 0), Err(BindConflict::TooMany));
    }
}
