//! Differential tests of the STUN codec (issue 9) against an independent one, the `stun` crate
//! (webrtc-rs): what either side builds the other decodes to the same type, transaction id and
//! attributes, and whatever our decoder accepts theirs reads the same way.

use proptest::prelude::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// Attribute types both sides treat as plain TLVs (not the trailers; not 0x8020, which the
/// `stun` crate renames to XOR-MAPPED-ADDRESS for old clients).
fn plain_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("special types", |t| {
        ![
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT,
            0x8020,
        ]
        .contains(t)
    })
}

fn attrs() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec(
        (plain_type(), prop::collection::vec(any::<u8>(), 0..64)),
        0..10,
    )
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

fn theirs(raw: &[u8]) -> Result<stun::message::Message, stun::Error> {
    let mut m = stun::message::Message::new();
    m.raw = raw.to_vec();
    m.decode().map(|()| m)
}

fn their_attrs(m: &stun::message::Message) -> Vec<(u16, Vec<u8>)> {
    m.attributes
        .0
        .iter()
        .map(|a| (a.typ.0, a.value.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ours_built_theirs_decoded(method in 0u16..0x1000, class in class(), tid in any::<[u8; 12]>(), attrs in attrs()) {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method(method), class, &tid);
        for (t, v) in &attrs {
            b.attr(*t, v);
        }
        let m = theirs(&out).expect("the stun crate decodes what we build");
        let ours = Message::decode(&out).unwrap();
        prop_assert_eq!(m.typ.value(), ours.message_type());
        prop_assert_eq!(m.transaction_id.0, tid);
        prop_assert_eq!(their_attrs(&m), attrs);
    }

    #[test]
    fn theirs_built_ours_decoded(ty in 0u16..0x3FFF, tid in any::<[u8; 12]>(), attrs in attrs()) {
        let mut m = stun::message::Message::new();
        m.typ.read_value(ty);
        m.transaction_id = stun::agent::TransactionId(tid);
        m.write_header();
        for (t, v) in &attrs {
            m.add(stun::attributes::AttrType(*t), v);
        }
        let ours = Message::decode(&m.raw).expect("we decode what the stun crate builds");
        prop_assert_eq!(ours.message_type(), m.typ.value());
        prop_assert_eq!(ours.transaction_id(), &tid);
        let got: Vec<(u16, Vec<u8>)> = ours
            .attributes()
            .map(|a| (a.ty, m.raw[a.offset..a.offset + a.len].to_vec()))
            .collect();
        prop_assert_eq!(got, attrs);
    }

    /// Attribute lists with a byte flipped, behind a valid header: whenever we accept, they
    /// accept and read the same attributes (ours stop at MESSAGE-INTEGRITY/FINGERPRINT, so theirs
    /// start with ours).
    #[test]
    fn what_we_accept_they_read_alike(ty in 0u16..0x3FFF, attrs in attrs(), flip in prop::option::of((any::<prop::sample::Index>(), 1u8..=255))) {
        let mut raw = Vec::new();
        MessageBuilder::new(&mut raw, Method(0), Class::Request, &[7; 12]);
        raw[..2].copy_from_slice(&ty.to_be_bytes());
        for (t, v) in &attrs {
            raw.extend_from_slice(&t.to_be_bytes());
            raw.extend_from_slice(&(v.len() as u16).to_be_bytes());
            raw.extend_from_slice(v);
            raw.extend(std::iter::repeat(0).take((4 - v.len() % 4) % 4));
        }
        let len = (raw.len() - 20) as u16;
        raw[2..4].copy_from_slice(&len.to_be_bytes());
        if let Some((i, x)) = flip {
            let i = 20 + i.index(raw.len() - 20 + 1);
            if i < raw.len() {
                raw[i] ^= x;
            }
        }
        if let Ok(ours) = Message::decode(&raw) {
            let m = theirs(&raw).expect("they accept what we accept");
            let got: Vec<(u16, Vec<u8>)> = ours
                .attributes()
                .map(|a| (a.ty, raw[a.offset..a.offset + a.len].to_vec()))
                .collect();
            let all = their_attrs(&m);
            prop_assert!(all.len() >= got.len());
            prop_assert_eq!(&all[..got.len()], &got[..]);
        }
    }
}
