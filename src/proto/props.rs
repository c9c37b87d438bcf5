//! Property tests of the wire code (issue 9): what the builder writes decodes to the same
//! attributes, integrity and FINGERPRINT verify, and no decoder panics on any bytes.

use proptest::prelude::*;

use super::channel_data::{self, ChannelData};
use super::framing::{frame_len, MAX_FRAME};
use super::{attr, demux, Class, Message, MessageBuilder, Method, PacketKind};

/// Attribute types the builder may append freely: not the integrity/fingerprint trailers.
fn plain_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("trailer types", |t| {
        ![
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT,
        ]
        .contains(t)
    })
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn builder_then_decode_gives_back_the_attributes(
        method in 0u16..0x1000,
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec((plain_type(), prop::collection::vec(any::<u8>(), 0..80)), 0..12),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
        sha256 in any::<bool>(),
        fingerprint in any::<bool>(),
    ) {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method(method), class, &tid);
        for (ty, v) in &attrs {
            b.attr(*ty, v);
        }
        if let Some(k) = &key {
            b.integrity(k);
            if sha256 {
                b.integrity_sha256(k);
            }
        }
        if fingerprint {
            b.fingerprint();
        }
        let m = Message::decode(&out).expect("what we build decodes");
        prop_assert_eq!(m.method(), Method(method));
        prop_assert_eq!(m.class(), class);
        prop_assert_eq!(m.transaction_id(), &tid);
        prop_assert_eq!(m.as_bytes().len(), out.len());
        prop_assert_eq!(out.len() % 4, 0);
        let got: Vec<(u16, Vec<u8>)> = m
            .attributes()
            .map(|a| (a.ty, out[a.offset..a.offset + a.len].to_vec()))
            .collect();
        prop_assert_eq!(&got, &attrs);
        prop_assert_eq!(m.has_fingerprint(), fingerprint);
        prop_assert_eq!(m.has_integrity(), key.is_some());
        if let Some(k) = &key {
            prop_assert!(m.check_integrity(k));
            let mut wrong = k.clone();
            wrong[0] ^= 1;
            prop_assert!(!m.check_integrity(&wrong));
            prop_assert_eq!(m.has_integrity_sha256(), sha256);
            if sha256 {
                prop_assert!(m.check_integrity_sha256(k));
            }
        }
        // Every attribute's first copy is what get() finds.
        for (ty, v) in &attrs {
            let first = attrs.iter().find(|(t, _)| t == ty).map(|(_, v)| v.as_slice());
            prop_assert_eq!(m.get(*ty), first);
            let _ = v;
        }
    }

    #[test]
    fn addresses_round_trip(ip in any::<[u8; 16]>(), v6 in any::<bool>(), port in any::<u16>(), tid in any::<[u8; 12]>()) {
        let addr: std::net::SocketAddr = if v6 {
            (std::net::Ipv6Addr::from(ip), port).into()
        } else {
            (std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port).into()
        };
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method::BINDING, Class::Success, &tid);
        b.xor_address(attr::XOR_MAPPED_ADDRESS, &addr);
        b.address(attr::MAPPED_ADDRESS, &addr);
        let m = Message::decode(&out).unwrap();
        prop_assert_eq!(m.get_xor_address(attr::XOR_MAPPED_ADDRESS), Some(addr));
        prop_assert_eq!(m.get(attr::MAPPED_ADDRESS).and_then(attr::read_address), Some(addr));
    }

    #[test]
    fn decoders_never_panic_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = demux(&bytes);
        if let Ok(m) = Message::decode(&bytes) {
            // A view that decoded is safe to use all the way.
            for a in m.attributes() {
                prop_assert!(a.offset + a.len <= bytes.len());
                let v = &bytes[a.offset..a.offset + a.len];
                let _ = attr::read_address(v);
                let _ = attr::read_xor_address(v, m.transaction_id());
                let _ = attr::read_error_code(v);
                let _ = attr::read_u32(v);
                let _ = attr::read_channel_number(v);
                let _ = attr::read_requested_transport(v);
                let _ = attr::read_address_family(v);
                let _ = attr::read_even_port(v);
                let _ = attr::read_password_algorithms(v).count();
            }
            let _ = m.unknown_required(16);
            let _ = m.check_integrity(b"k");
            let _ = m.check_integrity_sha256(b"k");
        }
        if let Ok(cd) = ChannelData::decode(&bytes) {
            prop_assert_eq!(demux(&bytes), PacketKind::ChannelData);
            prop_assert!(cd.data.len() + channel_data::HEADER_LEN <= bytes.len());
        }
        if let Ok(Some(n)) = frame_len(&bytes) {
            prop_assert!(n <= bytes.len() && (4..=MAX_FRAME).contains(&n));
        }
    }

    /// Valid messages with a few bytes changed or cut: decode either rejects them or gives a view
    /// whose attributes stay inside the buffer.
    #[test]
    fn mutated_messages_decode_safely(
        attrs in prop::collection::vec((plain_type(), prop::collection::vec(any::<u8>(), 0..40)), 0..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Request, &[9; 12]);
        for (ty, v) in &attrs {
            b.attr(*ty, v);
        }
        b.integrity(b"key");
        b.fingerprint();
        for (i, x) in flips {
            let i = i.index(out.len());
            out[i] ^= x;
        }
        if truncate {
            out.truncate(cut.index(out.len() + 1));
        }
        if let Ok(m) = Message::decode(&out) {
            for a in m.attributes() {
                prop_assert!(a.offset + a.len <= out.len());
            }
        }
    }

    #[test]
    fn channel_data_round_trip_and_stream_framing(channel in 0x4000u16..=0x7FFF, data in prop::collection::vec(any::<u8>(), 0..300), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut out = vec![0u8; channel_data::HEADER_LEN];
        channel_data::write_header(&mut out, channel_data::ChannelNumber::new(channel).unwrap(), data.len());
        out.extend_from_slice(&data);
        let pad = channel_data::stream_padding(data.len());
        out.extend(std::iter::repeat(0).take(pad));
        let frame = out.len();
        prop_assert_eq!(frame % 4, 0);
        out.extend_from_slice(&tail);
        let cd = ChannelData::decode(&out).unwrap();
        prop_assert_eq!(cd.channel.get(), channel);
        prop_assert_eq!(cd.data, &data[..]);
        prop_assert_eq!(frame_len(&out), Ok(Some(frame)));
        // Every prefix short of the frame asks for more.
        for n in 0..frame {
            prop_assert_eq!(frame_len(&out[..n]), Ok(None));
        }
    }
}
