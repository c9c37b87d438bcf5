//! The STUN message: a zero-copy view over received bytes ([`Message`]) and a builder that writes
//! into a caller's buffer ([`MessageBuilder`]).
//!
//! RFC 8489 §5 (header), §14 (attribute TLVs, 4-byte padding), §14.5 (MESSAGE-INTEGRITY),
//! §14.6 (MESSAGE-INTEGRITY-SHA256), §14.7 (FINGERPRINT). RFC 3489 messages (no magic cookie) are
//! accepted and flagged [`Message::is_classic`], so that a Binding request from an old client can be
//! answered with MAPPED-ADDRESS.

use std::net::SocketAddr;
use std::ops::Range;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::attr;
use super::{HEADER_LEN, MAGIC_COOKIE};

/// The 96-bit transaction id.
pub type TransactionId = [u8; 12];

/// The message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN method (12 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// Encode method and class into the 14-bit message type (RFC 8489 §5, figure 3).
#[inline]
pub fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Split a message type into method and class.
#[inline]
pub fn split_type(ty: u16) -> (Method, Class) {
    let m = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (Method(m), class)
}

/// Why bytes are not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("the two top bits are not zero")]
    NotStun,
    #[error("length field is not a multiple of 4 or does not match the packet")]
    BadLength,
    #[error("an attribute runs past the end of the message")]
    AttributeOverrun,
    #[error("an attribute follows FINGERPRINT")]
    AfterFingerprint,
    #[error(
        "an attribute other than MESSAGE-INTEGRITY-SHA256 or FINGERPRINT follows MESSAGE-INTEGRITY"
    )]
    AfterIntegrity,
    #[error("malformed FINGERPRINT or MESSAGE-INTEGRITY attribute")]
    BadSecurityAttribute,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// A decoded attribute: its type and where its value lies in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttr {
    pub ty: u16,
    /// Offset of the value from the start of the message.
    pub offset: usize,
    pub len: usize,
}

/// A validated, zero-copy view of one STUN message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    method: Method,
    class: Class,
    classic: bool,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if any.
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
    /// Where the attributes that count end: MESSAGE-INTEGRITY(-SHA256)/FINGERPRINT and what
    /// follows them are not returned by [`Message::get`].
    attrs_end: usize,
}

impl<'a> Message<'a> {
    /// Decode exactly one message; `buf` must be exactly the message (20 + length bytes), as a UDP
    /// datagram or a frame cut by [`super::framing::frame_len`] is.
    ///
    /// Rules (RFC 8489 §6.3): top two bits zero, length a multiple of 4 matching the packet, every
    /// attribute inside the message; after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
    /// FINGERPRINT, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT, nothing after FINGERPRINT, and
    /// FINGERPRINT (when present) must match.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::TooShort);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(DecodeError::BadLength);
        }
        let classic = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE;
        let (method, class) = split_type(u16::from_be_bytes([buf[0], buf[1]]));
        let mut msg = Message {
            raw: buf,
            method,
            class,
            classic,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
            attrs_end: buf.len(),
        };
        let mut pos = HEADER_LEN;
        while pos < buf.len() {
            if buf.len() - pos < 4 {
                return Err(DecodeError::AttributeOverrun);
            }
            let ty = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let alen = usize::from(u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]));
            let padded = (alen + 3) & !3;
            if buf.len() - pos - 4 < padded {
                return Err(DecodeError::AttributeOverrun);
            }
            if msg.fingerprint.is_some() {
                return Err(DecodeError::AfterFingerprint);
            }
            match ty {
                attr::MESSAGE_INTEGRITY => {
                    if msg.integrity.is_some() || msg.integrity_sha256.is_some() {
                        return Err(DecodeError::AfterIntegrity);
                    }
                    if alen != 20 {
                        return Err(DecodeError::BadSecurityAttribute);
                    }
                    msg.integrity = Some(pos);
                    msg.attrs_end = msg.attrs_end.min(pos);
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    if msg.integrity_sha256.is_some() {
                        return Err(DecodeError::AfterIntegrity);
                    }
                    // RFC 8489 §14.6: at least 16 bytes, a multiple of 4, at most 32.
                    if !(16..=32).contains(&alen) || alen % 4 != 0 {
                        return Err(DecodeError::BadSecurityAttribute);
                    }
                    msg.integrity_sha256 = Some(pos);
                    msg.attrs_end = msg.attrs_end.min(pos);
                }
                attr::FINGERPRINT => {
                    if alen != 4 {
                        return Err(DecodeError::BadSecurityAttribute);
                    }
                    msg.fingerprint = Some(pos);
                    msg.attrs_end = msg.attrs_end.min(pos);
                }
                _ => {
                    if msg.integrity.is_some() || msg.integrity_sha256.is_some() {
                        return Err(DecodeError::AfterIntegrity);
                    }
                }
            }
            pos += 4 + padded;
        }
        if let Some(fp) = msg.fingerprint {
            let want = u32::from_be_bytes([buf[fp + 4], buf[fp + 5], buf[fp + 6], buf[fp + 7]]);
            if fingerprint_of(&buf[..fp]) != want {
                return Err(DecodeError::BadFingerprint);
            }
        }
        Ok(msg)
    }

    #[inline]
    pub fn method(&self) -> Method {
        self.method
    }

    #[inline]
    pub fn class(&self) -> Class {
        self.class
    }

    /// The raw message type field.
    #[inline]
    pub fn message_type(&self) -> u16 {
        u16::from_be_bytes([self.raw[0], self.raw[1]])
    }

    /// True for an RFC 3489 message (no magic cookie).
    #[inline]
    pub fn is_classic(&self) -> bool {
        self.classic
    }

    /// The transaction id. For a classic message this is bytes 8..20 (the cookie bytes are part of
    /// its 128-bit id; [`Message::raw_transaction`] gives all 16).
    #[inline]
    pub fn transaction_id(&self) -> &'a TransactionId {
        self.raw[8..20].try_into().expect("header is 20 bytes")
    }

    /// Bytes 4..20: the magic cookie and transaction id (the 128-bit id of RFC 3489).
    #[inline]
    pub fn raw_transaction(&self) -> &'a [u8] {
        &self.raw[4..20]
    }

    /// The whole message.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Iterate the attributes that precede MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            raw: self.raw,
            pos: HEADER_LEN,
            end: self.attrs_end,
        }
    }

    /// The value of the first attribute of this type (duplicates are ignored, RFC 8489 §14).
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.get_range(ty).map(|r| &self.raw[r])
    }

    /// Where the value of the first attribute of this type lies in the message.
    pub fn get_range(&self, ty: u16) -> Option<Range<usize>> {
        self.attributes()
            .find(|a| a.ty == ty)
            .map(|a| a.offset..a.offset + a.len)
    }

    /// Read an XOR-address attribute (XOR-MAPPED/PEER/RELAYED-ADDRESS).
    pub fn get_xor_address(&self, ty: u16) -> Option<SocketAddr> {
        attr::read_xor_address(self.get(ty)?, self.transaction_id())
    }

    /// Comprehension-required attribute types (< 0x8000) this server does not know, in order, at
    /// most `max` of them (RFC 8489 §6.3.1: answered with 420 and UNKNOWN-ATTRIBUTES).
    pub fn unknown_required(&self, max: usize) -> Vec<u16> {
        self.attributes()
            .map(|a| a.ty)
            .filter(|&t| !attr::is_known(t))
            .take(max)
            .collect()
    }

    /// Check MESSAGE-INTEGRITY (HMAC-SHA1) with `key` in constant time (RFC 8489 §14.5).
    /// False when the message has none.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(pos) = self.integrity else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        self.feed_mac_input(pos, |part| mac.update(part));
        mac.verify_slice(&self.raw[pos + 4..pos + 24]).is_ok()
    }

    /// Check MESSAGE-INTEGRITY-SHA256 with `key` in constant time (RFC 8489 §14.6); a truncated
    /// value is compared on its length.
    pub fn check_integrity_sha256(&self, key: &[u8]) -> bool {
        let Some(pos) = self.integrity_sha256 else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([self.raw[pos + 2], self.raw[pos + 3]]));
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return false;
        };
        self.feed_mac_input(pos, |part| mac.update(part));
        mac.verify_truncated_left(&self.raw[pos + 4..pos + 4 + len])
            .is_ok()
    }

    /// The HMAC input: the message up to the attribute at `pos`, with the header length adjusted
    /// to end just after that attribute. Fed in pieces so nothing is copied.
    fn feed_mac_input(&self, pos: usize, mut feed: impl FnMut(&[u8])) {
        let alen = usize::from(u16::from_be_bytes([self.raw[pos + 2], self.raw[pos + 3]]));
        let adjusted = (pos + 4 + alen - HEADER_LEN) as u16;
        feed(&self.raw[0..2]);
        feed(&adjusted.to_be_bytes());
        feed(&self.raw[4..pos]);
    }
}

/// Iterator over attributes; built by [`Message::attributes`] on a validated message.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    raw: &'a [u8],
    pos: usize,
    end: usize,
}

impl Iterator for AttrIter<'_> {
    type Item = RawAttr;

    fn next(&mut self) -> Option<RawAttr> {
        if self.pos + 4 > self.end {
            return None;
        }
        let p = self.pos;
        let ty = u16::from_be_bytes([self.raw[p], self.raw[p + 1]]);
        let len = usize::from(u16::from_be_bytes([self.raw[p + 2], self.raw[p + 3]]));
        if p + 4 + len > self.raw.len() {
            return None;
        }
        self.pos = p + 4 + ((len + 3) & !3);
        Some(RawAttr {
            ty,
            offset: p + 4,
            len,
        })
    }
}

/// FINGERPRINT value of `prefix` (everything before the FINGERPRINT attribute, with the header
/// length already counting it): CRC-32 xor 0x5354554e (RFC 8489 §14.7).
pub fn fingerprint_of(prefix: &[u8]) -> u32 {
    crc32fast::hash(prefix) ^ 0x5354_554E
}

/// Bytes of a Data indication's header in front of its payload: the STUN header,
/// XOR-PEER-ADDRESS and the DATA attribute's type and length (RFC 8656 §11.3).
pub fn data_indication_header_len(peer: &SocketAddr) -> usize {
    HEADER_LEN + 4 + attr::address_len(peer) + 4
}

/// Write a Data indication header for a `len`-byte payload from `peer` into `h`, which is exactly
/// [`data_indication_header_len`] bytes; the payload follows it, padded by the caller to 4 bytes.
pub fn write_data_indication_header(
    h: &mut [u8],
    peer: &SocketAddr,
    tid: &TransactionId,
    len: usize,
) {
    let alen = attr::address_len(peer);
    let pad = (4 - len % 4) % 4;
    let body = 4 + alen + 4 + len + pad;
    h[0..2].copy_from_slice(&message_type(Method::DATA, Class::Indication).to_be_bytes());
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(tid);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    attr::write_xor_address(&mut h[24..24 + alen], peer, tid);
    h[24 + alen..26 + alen].copy_from_slice(&attr::DATA.to_be_bytes());
    h[26 + alen..28 + alen].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Writes one STUN message at the end of a caller's buffer. Attributes are appended in call order;
/// the header length is kept current so MESSAGE-INTEGRITY and FINGERPRINT can be computed at any
/// point. Values longer than 65535 bytes are truncated rather than producing a broken message.
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
}

impl<'b> MessageBuilder<'b> {
    /// Start a message with the magic cookie.
    pub fn new(buf: &'b mut Vec<u8>, method: Method, class: Class, tid: &TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(tid);
        MessageBuilder {
            buf,
            start,
            tid: *tid,
        }
    }

    /// Start a message whose bytes 4..20 are copied from a request (RFC 3489 responses echo the
    /// 128-bit transaction id, which has no magic cookie).
    pub fn new_raw(buf: &'b mut Vec<u8>, method: Method, class: Class, raw_tid: &[u8]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        let mut id = [0u8; 16];
        let n = raw_tid.len().min(16);
        id[..n].copy_from_slice(&raw_tid[..n]);
        buf.extend_from_slice(&id);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&id[4..]);
        MessageBuilder { buf, start, tid }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Append an attribute whose value is written by `write` into `len` zeroed bytes.
    pub fn attr_with(&mut self, ty: u16, len: usize, write: impl FnOnce(&mut [u8])) -> &mut Self {
        let len = len.min(0xFFFF);
        let padded = (len + 3) & !3;
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        let at = self.buf.len();
        self.buf.resize(at + padded, 0);
        write(&mut self.buf[at..at + len]);
        self.set_len();
        self
    }

    /// Append an attribute with this value (padded with zeros).
    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let n = value.len().min(0xFFFF);
        self.attr_with(ty, n, |out| out.copy_from_slice(&value[..n]))
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// MAPPED-ADDRESS-style attribute.
    pub fn address(&mut self, ty: u16, addr: &SocketAddr) -> &mut Self {
        self.attr_with(ty, attr::address_len(addr), |out| {
            attr::write_address(out, addr)
        })
    }

    /// XOR-MAPPED-ADDRESS-style attribute.
    pub fn xor_address(&mut self, ty: u16, addr: &SocketAddr) -> &mut Self {
        let tid = self.tid;
        self.attr_with(ty, attr::address_len(addr), |out| {
            attr::write_xor_address(out, addr, &tid)
        })
    }

    /// ERROR-CODE with the RFC's reason phrase when `reason` is empty.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let reason = if reason.is_empty() {
            attr::reason_phrase(code)
        } else {
            reason
        };
        // RFC 8489 §14.8: the reason phrase is at most 763 bytes; cut on a char boundary.
        let mut n = reason.len().min(763);
        while !reason.is_char_boundary(n) {
            n -= 1;
        }
        let r = &reason.as_bytes()[..n];
        self.attr_with(attr::ERROR_CODE, 4 + r.len(), |out| {
            out[2] = (code / 100) as u8;
            out[3] = (code % 100) as u8;
            out[4..].copy_from_slice(r);
        })
    }

    /// ERROR-CODE without a reason phrase (an answer that must stay small).
    pub fn error_code_bare(&mut self, code: u16) -> &mut Self {
        self.attr_with(attr::ERROR_CODE, 4, |out| {
            out[2] = (code / 100) as u8;
            out[3] = (code % 100) as u8;
        })
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.8) of type `ty` (RFC 8656's or the draft's code point):
    /// the family, then an ERROR-CODE-style code and reason phrase.
    pub fn address_error_code(&mut self, ty: u16, family: u8, code: u16) -> &mut Self {
        let reason = attr::reason_phrase(code).as_bytes();
        self.attr_with(ty, 4 + reason.len(), |out| {
            out[0] = family;
            out[2] = (code / 100) as u8;
            out[3] = (code % 100) as u8;
            out[4..].copy_from_slice(reason);
        })
    }

    /// Append attributes already encoded (whole TLVs, padded) for this transaction id.
    pub fn encoded(&mut self, attrs: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(attrs);
        self.set_len();
        self
    }

    /// MESSAGE-INTEGRITY over everything so far (RFC 8489 §14.5).
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let mac_start = self.buf.len();
        // The length must count the attribute before the HMAC is computed.
        self.attr_with(attr::MESSAGE_INTEGRITY, 20, |_| {});
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&self.buf[self.start..mac_start]);
        let tag = mac.finalize().into_bytes();
        self.buf[mac_start + 4..mac_start + 24].copy_from_slice(&tag);
        self
    }

    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything so far (RFC 8489 §14.6).
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let mac_start = self.buf.len();
        self.attr_with(attr::MESSAGE_INTEGRITY_SHA256, 32, |_| {});
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&self.buf[self.start..mac_start]);
        let tag = mac.finalize().into_bytes();
        self.buf[mac_start + 4..mac_start + 36].copy_from_slice(&tag);
        self
    }

    /// FINGERPRINT; must be the last attribute (RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> &mut Self {
        let at = self.buf.len();
        self.attr_with(attr::FINGERPRINT, 4, |_| {});
        let fp = fingerprint_of(&self.buf[self.start..at]);
        self.buf[at + 4..at + 8].copy_from_slice(&fp.to_be_bytes());
        self
    }

    /// Bytes written so far for this message.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
