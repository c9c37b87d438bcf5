//! Wire formats only: the STUN message view and builder (RFC 8489 §5, §14), the STUN and TURN
//! attributes (RFC 8489 §14, RFC 8656 §18, RFC 6062 §6.2, RFC 8656 §18.x), MESSAGE-INTEGRITY(-SHA256)
//! and FINGERPRINT, ChannelData (RFC 8656 §12.4), first-byte demultiplexing (RFC 7983) and the
//! framing of STUN and ChannelData on a byte stream (RFC 8656 §12.5).
//!
//! Nothing here owns a socket, a clock or a task: every function takes bytes and gives back a view
//! or writes into a buffer the caller owns. Every decoder returns an error for malformed input and
//! never panics.

#![forbid(unsafe_code)]
// Time comes in as a parameter (clippy.toml names the clock reads); tests may read the clock.
#![cfg_attr(not(test), deny(clippy::disallowed_methods))]

pub mod attr;
pub mod channel_data;
pub mod framing;
pub mod message;

pub use channel_data::{ChannelData, ChannelNumber};
pub use message::{Class, DecodeError, Message, MessageBuilder, Method, TransactionId};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;

/// What the first byte of a packet says it is (RFC 7983 §7, RFC 8656 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// 0..=3: a STUN message.
    Stun,
    /// 64..=127 (0x40..=0x7F): a TURN ChannelData message (RFC 7983 gives TURN 64..=79; RFC 5766
    /// channel numbers reach 0x7FFF and coturn's clients use them).
    ChannelData,
    /// 20..=63: DTLS (a later transport).
    Dtls,
    /// Anything else: dropped.
    Other,
}

/// Classify a packet by its first byte. An empty packet is [`PacketKind::Other`].
#[inline]
pub fn demux(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(0x40..=0x7F) => PacketKind::ChannelData,
        Some(20..=63) => PacketKind::Dtls,
        _ => PacketKind::Other,
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_by_first_byte() {
        assert_eq!(demux(&[]), PacketKind::Other);
        assert_eq!(demux(&[0x00, 1]), PacketKind::Stun);
        assert_eq!(demux(&[0x01]), PacketKind::Stun);
        assert_eq!(demux(&[0x40]), PacketKind::ChannelData);
        assert_eq!(demux(&[0x4F]), PacketKind::ChannelData);
        assert_eq!(demux(&[0x7F]), PacketKind::ChannelData);
        assert_eq!(demux(&[22]), PacketKind::Dtls);
        assert_eq!(demux(&[0x80]), PacketKind::Other);
    }
}
