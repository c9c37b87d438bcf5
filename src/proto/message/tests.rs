//! RFC 5769 test vectors, round trips and malformed shapes.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let d: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap() as u8)
        .collect();
    d.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1 Sample Request.
const REQUEST: &str = "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2 Sample IPv4 Response.
const IPV4_RESPONSE: &str = "01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3 Sample IPv6 Response.
const IPV6_RESPONSE: &str = "01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication.
const LONG_TERM: &str = "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

#[test]
fn rfc5769_sample_request() {
    let b = hex(REQUEST);
    let m = Message::decode(&b).unwrap();
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert!(!m.is_classic());
    assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.get(attr::PRIORITY), Some(&[0x6e, 0x00, 0x01, 0xff][..]));
    assert!(m.has_fingerprint());
    assert!(m.check_integrity(SHORT_TERM_PASSWORD));
    assert!(!m.check_integrity(b"wrong"));
    assert!(m.unknown_required(8).is_empty());
}

#[test]
fn rfc5769_sample_responses() {
    for (v, addr) in [
        (IPV4_RESPONSE, "192.0.2.1:32853"),
        (
            IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let b = hex(v);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.get(attr::SOFTWARE), Some(&b"test vector"[..]));
        let want: SocketAddr = addr.parse().unwrap();
        assert_eq!(m.get_xor_address(attr::XOR_MAPPED_ADDRESS), Some(want));
        assert!(m.check_integrity(SHORT_TERM_PASSWORD));
        // Built again from its parts it matches byte for byte, except the SOFTWARE padding,
        // which the RFC fills with spaces and we fill with zeros (both are allowed).
        let mut out = Vec::new();
        let mut mb = MessageBuilder::new(
            &mut out,
            Method::BINDING,
            Class::Success,
            m.transaction_id(),
        );
        mb.attr(attr::SOFTWARE, b"test vector")
            .xor_address(attr::XOR_MAPPED_ADDRESS, &want);
        let mut expected = b.clone();
        expected[20 + 4 + 11] = 0;
        // Redo MI and FP on the zero-padded copy to compare like with like.
        let mut e = Vec::new();
        e.extend_from_slice(&expected[..20 + 16 + 4 + attr::address_len(&want)]);
        let n = e.len();
        e[2..4].copy_from_slice(&((n - 20) as u16).to_be_bytes());
        assert_eq!(out, e);
        mb_finish_and_check(&mut out);
    }
}

fn mb_finish_and_check(out: &mut Vec<u8>) {
    let tid = {
        let m = Message::decode(out).unwrap();
        *m.transaction_id()
    };
    let _ = tid;
    let mut mb = MessageBuilder {
        start: 0,
        tid,
        buf: out,
    };
    mb.integrity(SHORT_TERM_PASSWORD).fingerprint();
    let m = Message::decode(out).unwrap();
    assert!(m.check_integrity(SHORT_TERM_PASSWORD));
    assert!(m.has_fingerprint());
}

#[test]
fn rfc5769_long_term_request() {
    use md5::{Digest, Md5};
    let b = hex(LONG_TERM);
    let m = Message::decode(&b).unwrap();
    let user = "マトリックス";
    assert_eq!(m.get(attr::USERNAME), Some(user.as_bytes()));
    assert_eq!(m.get(attr::REALM), Some(&b"example.org"[..]));
    assert_eq!(
        m.get(attr::NONCE),
        Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
    );
    assert!(!m.has_fingerprint());
    // The password "TheM\u{00aa}tr\u{2168}" is "TheMatrIX" after SASLprep.
    let key = Md5::digest(format!("{user}:example.org:TheMatrIX").as_bytes());
    assert!(m.check_integrity(&key));
    let bad = Md5::digest(format!("{user}:example.org:thematrix").as_bytes());
    assert!(!m.check_integrity(&bad));
    // Re-encoded from its parts with the same key, byte for byte.
    let mut out = Vec::new();
    MessageBuilder::new(
        &mut out,
        Method::BINDING,
        Class::Request,
        m.transaction_id(),
    )
    .attr(attr::USERNAME, user.as_bytes())
    .attr(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
    .attr(attr::REALM, b"example.org")
    .integrity(&key);
    assert_eq!(out, b);
}

#[test]
fn type_encoding_round_trips() {
    for (m, c, t) in [
        (Method::BINDING, Class::Request, 0x0001),
        (Method::BINDING, Class::Success, 0x0101),
        (Method::BINDING, Class::Error, 0x0111),
        (Method::ALLOCATE, Class::Request, 0x0003),
        (Method::ALLOCATE, Class::Error, 0x0113),
        (Method::SEND, Class::Indication, 0x0016),
        (Method::DATA, Class::Indication, 0x0017),
        (Method::CHANNEL_BIND, Class::Success, 0x0109),
        (Method::CONNECTION_ATTEMPT, Class::Indication, 0x001C),
        (Method(0xFFF), Class::Error, 0x3FFF),
    ] {
        assert_eq!(message_type(m, c), t);
        assert_eq!(split_type(t), (m, c));
    }
}

#[test]
fn builder_round_trip_with_sha256_and_fingerprint() {
    let tid = [7u8; 12];
    let peer: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    let mut out = vec![0xAA; 3]; // the builder appends after what the caller has
    MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Error, &tid)
        .error_code(438, "")
        .xor_address(attr::XOR_PEER_ADDRESS, &peer)
        .attr(attr::DATA, b"abcde")
        .integrity(b"k1")
        .integrity_sha256(b"k2")
        .fingerprint();
    let m = Message::decode(&out[3..]).unwrap();
    assert_eq!(m.method(), Method::ALLOCATE);
    assert_eq!(m.class(), Class::Error);
    assert_eq!(
        attr::read_error_code(m.get(attr::ERROR_CODE).unwrap()),
        Some((438, "Stale Nonce"))
    );
    assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer));
    assert_eq!(m.get(attr::DATA), Some(&b"abcde"[..]));
    assert!(m.check_integrity(b"k1"));
    assert!(m.check_integrity_sha256(b"k2"));
    assert!(!m.check_integrity_sha256(b"k1"));
    // A flipped bit anywhere before FINGERPRINT is caught by it.
    let mut bad = out[3..].to_vec();
    bad[25] ^= 1;
    assert_eq!(
        Message::decode(&bad).unwrap_err(),
        DecodeError::BadFingerprint
    );
}

fn sample() -> Vec<u8> {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .attr(attr::SOFTWARE, b"abc");
    out
}

#[test]
fn malformed_shapes_are_errors() {
    let good = sample();
    assert!(Message::decode(&good).is_ok());
    assert_eq!(
        Message::decode(&good[..19]).unwrap_err(),
        DecodeError::TooShort
    );
    assert_eq!(Message::decode(&[]).unwrap_err(), DecodeError::TooShort);
    assert_eq!(
        Message::decode(&good[..good.len() - 1]).unwrap_err(),
        DecodeError::BadLength
    );
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(
        Message::decode(&longer).unwrap_err(),
        DecodeError::BadLength
    );
    let mut top = good.clone();
    top[0] |= 0x80;
    assert_eq!(Message::decode(&top).unwrap_err(), DecodeError::NotStun);
    let mut odd = good.clone();
    odd[3] += 2;
    odd.extend_from_slice(&[0, 0]);
    assert_eq!(Message::decode(&odd).unwrap_err(), DecodeError::BadLength);
    // Attribute length running past the end.
    let mut over = good.clone();
    over[22..24].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(
        Message::decode(&over).unwrap_err(),
        DecodeError::AttributeOverrun
    );
    // Bad padding: value length 3 but only 3 bytes (no pad) left.
    let mut nopad = good.clone();
    nopad.truncate(nopad.len() - 1);
    nopad[3] -= 1;
    assert_eq!(Message::decode(&nopad).unwrap_err(), DecodeError::BadLength);
    // A truncated attribute header (length field says 2 bytes of attributes).
    let mut cut = good[..20].to_vec();
    cut[3] = 4;
    cut.extend_from_slice(&[0x80, 0x22, 0x00]);
    cut.push(0);
    cut.truncate(24);
    cut[22] = 0;
    cut[23] = 4;
    assert_eq!(
        Message::decode(&cut).unwrap_err(),
        DecodeError::AttributeOverrun
    );
}

#[test]
fn security_attribute_order_is_enforced() {
    // Attribute after MESSAGE-INTEGRITY.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .integrity(b"k")
        .attr(attr::SOFTWARE, b"x");
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::AfterIntegrity
    );
    // Duplicate MESSAGE-INTEGRITY.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .integrity(b"k")
        .integrity(b"k");
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::AfterIntegrity
    );
    // MI-SHA256 then MI.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .integrity_sha256(b"k")
        .integrity(b"k");
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::AfterIntegrity
    );
    // Anything after FINGERPRINT, FINGERPRINT twice.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .fingerprint()
        .attr(attr::SOFTWARE, b"x");
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::AfterFingerprint
    );
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .fingerprint()
        .fingerprint();
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::AfterFingerprint
    );
    // MESSAGE-INTEGRITY of the wrong size.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .attr(attr::MESSAGE_INTEGRITY, &[0; 16]);
    assert_eq!(
        Message::decode(&out).unwrap_err(),
        DecodeError::BadSecurityAttribute
    );
    // MI then MI-SHA256 then FINGERPRINT is the allowed order.
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .integrity(b"k")
        .integrity_sha256(b"k")
        .fingerprint();
    let m = Message::decode(&out).unwrap();
    assert!(m.check_integrity(b"k") && m.check_integrity_sha256(b"k"));
}

#[test]
fn duplicates_take_the_first_and_unknowns_are_listed() {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Request, &[1; 12])
        .attr(attr::USERNAME, b"first")
        .attr(attr::USERNAME, b"second")
        .attr(0x0031, b"?")
        .attr(0x7FFF, b"")
        .attr(0xC001, b"optional");
    let m = Message::decode(&out).unwrap();
    assert_eq!(m.get(attr::USERNAME), Some(&b"first"[..]));
    assert_eq!(m.unknown_required(8), vec![0x0031, 0x7FFF]);
    assert_eq!(m.unknown_required(1), vec![0x0031]);
}

#[test]
fn classic_rfc3489_message_is_flagged() {
    let mut b = vec![0x00, 0x01, 0x00, 0x00];
    b.extend_from_slice(&[9u8; 16]);
    let m = Message::decode(&b).unwrap();
    assert!(m.is_classic());
    assert_eq!(m.raw_transaction(), &[9u8; 16][..]);
}

#[test]
fn error_reason_is_cut_on_a_char_boundary() {
    let long = "é".repeat(500);
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::BINDING, Class::Error, &[1; 12]).error_code(400, &long);
    let m = Message::decode(&out).unwrap();
    let (code, reason) = attr::read_error_code(m.get(attr::ERROR_CODE).unwrap()).unwrap();
    assert_eq!(code, 400);
    assert!(reason.len() <= 763);
}

/// A tiny deterministic generator, so the mutation test needs no extra crate.
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn mutated_and_truncated_vectors_never_panic() {
    let seeds: Vec<Vec<u8>> = [REQUEST, IPV4_RESPONSE, IPV6_RESPONSE, LONG_TERM]
        .iter()
        .map(|s| hex(s))
        .collect();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..50_000 {
        let seed = &seeds[i % seeds.len()];
        let mut b = seed.clone();
        match i % 3 {
            0 => b.truncate((xorshift(&mut s) as usize) % (seed.len() + 1)),
            1 => {
                for _ in 0..1 + i % 4 {
                    let at = (xorshift(&mut s) as usize) % b.len();
                    b[at] ^= 1 << (xorshift(&mut s) % 8);
                }
            }
            _ => {
                let n = (xorshift(&mut s) % 200) as usize;
                b = (0..n).map(|_| xorshift(&mut s) as u8).collect();
                if b.len() >= 20 {
                    b[0] &= 0x3F;
                    let l = ((b.len() - 20) & !3) as u16;
                    b.truncate(20 + usize::from(l));
                    b[2..4].copy_from_slice(&l.to_be_bytes());
                }
            }
        }
        if let Ok(m) = Message::decode(&b) {
            for a in m.attributes() {
                assert!(a.offset + a.len <= b.len());
                let v = &b[a.offset..a.offset + a.len];
                let _ = attr::read_xor_address(v, m.transaction_id());
                let _ = attr::read_error_code(v);
            }
            let _ = m.check_integrity(b"k");
            let _ = m.check_integrity_sha256(b"k");
            let _ = m.unknown_required(4);
        }
    }
}
