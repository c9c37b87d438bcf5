//! STUN and TURN attribute types and the codecs of their values.
//!
//! Types from RFC 8489 §18.3 (STUN), RFC 8656 §18 (TURN), RFC 6062 §6.2 (CONNECTION-ID),
//! RFC 5780 §7 (NAT behaviour discovery) and RFC 8445 §16.1 (ICE, only so that they count as known).
//! Values are read from and written to byte slices; no attribute is copied to be read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::MAGIC_COOKIE;

pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const CHANGE_REQUEST: u16 = 0x0003;
/// RFC 3489 (classic STUN) forms of RESPONSE-ORIGIN and OTHER-ADDRESS.
pub const SOURCE_ADDRESS: u16 = 0x0004;
pub const CHANGED_ADDRESS: u16 = 0x0005;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;
pub const PADDING: u16 = 0x0026;
pub const RESPONSE_PORT: u16 = 0x0027;
pub const CONNECTION_ID: u16 = 0x002A;
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// The code points of the draft before RFC 8656 that coturn and its `turnutils_uclient -Z` still
/// use for ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE.
pub const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
pub const ADDRESS_ERROR_CODE_DRAFT: u16 = 0x8033;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
pub const ICMP: u16 = 0x8004;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const TRANSACTION_TRANSMIT_COUNTER: u16 = 0x8025;
pub const CACHE_TIMEOUT: u16 = 0x8027;
pub const FINGERPRINT: u16 = 0x8028;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;
pub const RESPONSE_ORIGIN: u16 = 0x802B;
pub const OTHER_ADDRESS: u16 = 0x802C;

/// REQUESTED-TRANSPORT protocol numbers (RFC 8656 §18.11, RFC 6062 §6.1).
pub const PROTO_UDP: u8 = 17;
pub const PROTO_TCP: u8 = 6;

/// Address family codes used in addresses and REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.8).
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// PASSWORD-ALGORITHM values (RFC 8489 §18.5).
pub const PASSWORD_ALGORITHM_MD5: u16 = 0x0001;
pub const PASSWORD_ALGORITHM_SHA256: u16 = 0x0002;

/// Whether a comprehension-required attribute type (0x0000..=0x7FFF) is one this server knows.
/// Unknown comprehension-required attributes in a request are answered with 420 (RFC 8489 §6.3.1).
pub fn is_known(ty: u16) -> bool {
    matches!(
        ty,
        MAPPED_ADDRESS
            | CHANGE_REQUEST
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | PRIORITY
            | USE_CANDIDATE
            | PADDING
            | RESPONSE_PORT
            | CONNECTION_ID
    ) || ty >= 0x8000
}

/// Length of an encoded (XOR-)address value for this address.
#[inline]
pub fn address_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Read a MAPPED-ADDRESS-style value (RFC 8489 §14.1).
pub fn read_address(value: &[u8]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]);
    match (value[1], value.len()) {
        (FAMILY_IPV4, 8) => {
            let ip = Ipv4Addr::new(value[4], value[5], value[6], value[7]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (FAMILY_IPV6, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&value[4..20]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// Write a MAPPED-ADDRESS-style value into `out`, which must be [`address_len`] bytes.
pub fn write_address(out: &mut [u8], addr: &SocketAddr) {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&ip.octets());
        }
    }
}

/// The 16 bytes an XOR-address is xored with: the magic cookie then the transaction id.
#[inline]
fn xor_key(tid: &[u8; 12]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    k[4..].copy_from_slice(tid);
    k
}

/// Read an XOR-MAPPED-ADDRESS-style value (RFC 8489 §14.2).
pub fn read_xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let plain = read_address(value)?;
    let key = xor_key(tid);
    let port = plain.port() ^ u16::from_be_bytes([key[0], key[1]]);
    let ip = match plain.ip() {
        IpAddr::V4(ip) => {
            let mut o = ip.octets();
            for (b, k) in o.iter_mut().zip(&key[..4]) {
                *b ^= k;
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            for (b, k) in o.iter_mut().zip(&key) {
                *b ^= k;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    Some(SocketAddr::new(ip, port))
}

/// Write an XOR-MAPPED-ADDRESS-style value into `out`, which must be [`address_len`] bytes.
pub fn write_xor_address(out: &mut [u8], addr: &SocketAddr, tid: &[u8; 12]) {
    write_address(out, addr);
    let key = xor_key(tid);
    out[2] ^= key[0];
    out[3] ^= key[1];
    let n = address_len(addr) - 4;
    for (b, k) in out[4..4 + n].iter_mut().zip(&key) {
        *b ^= k;
    }
}

/// Read an ERROR-CODE value (RFC 8489 §14.8): the code (300..=699) and the reason phrase.
pub fn read_error_code(value: &[u8]) -> Option<(u16, &str)> {
    if value.len() < 4 {
        return None;
    }
    let class = u16::from(value[2] & 0x07);
    let number = u16::from(value[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return None;
    }
    let reason = std::str::from_utf8(&value[4..]).ok()?;
    Some((class * 100 + number, reason))
}

/// Read a 32-bit big-endian value (LIFETIME, PRIORITY...).
#[inline]
pub fn read_u32(value: &[u8]) -> Option<u32> {
    let b: [u8; 4] = value.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Read CHANNEL-NUMBER (RFC 8656 §18.1): the number followed by two reserved bytes.
#[inline]
pub fn read_channel_number(value: &[u8]) -> Option<u16> {
    if value.len() != 4 {
        return None;
    }
    Some(u16::from_be_bytes([value[0], value[1]]))
}

/// Read REQUESTED-TRANSPORT (RFC 8656 §18.11): the protocol number then three reserved bytes.
#[inline]
pub fn read_requested_transport(value: &[u8]) -> Option<u8> {
    if value.len() != 4 {
        return None;
    }
    Some(value[0])
}

/// Read REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.8, §18.13).
#[inline]
pub fn read_address_family(value: &[u8]) -> Option<u8> {
    if value.len() != 4 {
        return None;
    }
    Some(value[0])
}

/// Read EVEN-PORT (RFC 8656 §18.9): the R bit (reserve the next port as well).
#[inline]
pub fn read_even_port(value: &[u8]) -> Option<bool> {
    if value.len() != 1 && value.len() != 4 {
        return None;
    }
    Some(value[0] & 0x80 != 0)
}

/// Iterate the (algorithm, parameters) pairs of PASSWORD-ALGORITHMS (RFC 8489 §14.11).
pub fn read_password_algorithms(value: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let alg = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = (len + 3) & !3;
        if rest.len() < 4 + len {
            return None;
        }
        let params = &rest[4..4 + len];
        rest = &rest[(4 + padded).min(rest.len())..];
        Some((alg, params))
    })
}

/// The reason phrase RFC 8489 §14.8 and RFC 8656 §19 give an error code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Mobility Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        487 => "Role Conflict",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn xor_address_rfc5769_values() {
        // RFC 5769 §2.2 and §2.3.
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let a: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        assert_eq!(read_xor_address(&v4, &TID), Some(a));
        let mut out = [0u8; 8];
        write_xor_address(&mut out, &a, &TID);
        assert_eq!(out, v4);
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let a6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        assert_eq!(read_xor_address(&v6, &TID), Some(a6));
        let mut out6 = [0u8; 20];
        write_xor_address(&mut out6, &a6, &TID);
        assert_eq!(out6, v6);
    }

    #[test]
    fn malformed_addresses_are_none() {
        assert_eq!(read_address(&[]), None);
        assert_eq!(read_address(&[0, 1, 0, 0, 1, 2, 3]), None);
        assert_eq!(read_address(&[0, 3, 0, 0, 1, 2, 3, 4]), None);
        assert_eq!(read_address(&[0, 2, 0, 0, 1, 2, 3, 4]), None);
        assert_eq!(read_xor_address(&[0, 1, 0], &TID), None);
    }

    #[test]
    fn error_code_and_small_values() {
        assert_eq!(read_error_code(&[0, 0, 4, 38, b'x']), Some((438, "x")));
        assert_eq!(read_error_code(&[0, 0, 2, 0]), None);
        assert_eq!(read_error_code(&[0, 0, 4, 100]), None);
        assert_eq!(read_u32(&[0, 0, 2, 88]), Some(600));
        assert_eq!(read_u32(&[0, 0, 2]), None);
        assert_eq!(read_channel_number(&[0x40, 0x01, 0, 0]), Some(0x4001));
        assert_eq!(read_channel_number(&[0x40, 0x01]), None);
        assert_eq!(read_requested_transport(&[17, 0, 0, 0]), Some(17));
        assert_eq!(read_even_port(&[0x80]), Some(true));
        assert_eq!(read_even_port(&[]), None);
        let algs: Vec<_> = read_password_algorithms(&[0, 2, 0, 0, 0, 1, 0, 0]).collect();
        assert_eq!(algs, vec![(2, &[][..]), (1, &[][..])]);
        assert_eq!(read_password_algorithms(&[0, 2, 0, 9]).count(), 0);
    }

    #[test]
    fn known_attributes() {
        assert!(is_known(XOR_PEER_ADDRESS));
        assert!(is_known(0x8999));
        assert!(!is_known(0x0031));
    }
}
