//! Mutated and random requests never panic, and a good client keeps relaying among them.

use super::*;

/// xorshift64: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A byte-level mutation of a valid message.
fn mutate(rng: &mut Rng, mut m: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(3) {
        match rng.below(9) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => m.truncate(rng.below(m.len() + 1)),
            3 => {
                let n = rng.below(16);
                m.extend(rng.bytes(n));
            }
            4 if m.len() >= 24 => {
                // An attribute length field somewhere in the message.
                let i = 20 + rng.below((m.len() - 20) / 4) * 4 + 2;
                if i + 1 < m.len() {
                    m[i..i + 2].copy_from_slice(&(rng.next() as u16 % 64).to_be_bytes());
                }
            }
            5 if m.len() >= 20 => {
                // Insert a random attribute and fix the header length.
                let ty = [
                    0x0031,
                    0x8031,
                    attr::LIFETIME,
                    attr::DATA,
                    attr::XOR_PEER_ADDRESS,
                    rng.next() as u16,
                ][rng.below(6)];
                let len = rng.below(24);
                let mut tlv = ty.to_be_bytes().to_vec();
                tlv.extend_from_slice(&(len as u16).to_be_bytes());
                tlv.extend(rng.bytes((len + 3) & !3));
                let at = 20 + rng.below((m.len() - 20) / 4 + 1) * 4;
                let at = at.min(m.len());
                m.splice(at..at, tlv);
                let body = (m.len() - 20) as u16;
                m[2..4].copy_from_slice(&body.to_be_bytes());
            }
            6 if m.len() >= 4 => {
                let body = (m.len().saturating_sub(20) as u16)
                    .wrapping_add(rng.below(9) as u16)
                    .wrapping_sub(4);
                m[2..4].copy_from_slice(&body.to_be_bytes());
            }
            7 if !m.is_empty() => m[0] = [0x00, 0x01, 0x40, 0x4F, 0x80, 0x16][rng.below(6)],
            _ => {
                let n = rng.below(m.len() + 1);
                let dup = m[..n].to_vec();
                m.extend(dup);
            }
        }
    }
    m
}

/// A request with random attributes, signed with valid credentials: it passes authentication,
/// so the handlers behind it see the strange values.
fn structured(rng: &mut Rng, c: &mut Client) -> Vec<u8> {
    let methods = [
        Method::ALLOCATE,
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
        Method::BINDING,
        Method::SEND,
        Method(rng.next() as u16 & 0x0FFF),
    ];
    let method = methods[rng.below(methods.len())];
    let class = if method == Method::SEND {
        Class::Indication
    } else {
        Class::Request
    };
    let types = [
        attr::REQUESTED_TRANSPORT,
        attr::LIFETIME,
        attr::XOR_PEER_ADDRESS,
        attr::CHANNEL_NUMBER,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
        attr::DONT_FRAGMENT,
        attr::DATA,
        attr::PASSWORD_ALGORITHM,
        attr::SOFTWARE,
    ];
    let mut picks: Vec<(u16, Vec<u8>, bool)> = Vec::new();
    for _ in 0..rng.below(7) {
        let ty = types[rng.below(types.len())];
        let v = match rng.below(4) {
            0 => {
                let n = rng.below(40);
                rng.bytes(n)
            }
            1 => vec![[17u8, 6, 1, 2, 0x80, 0][rng.below(6)], 0, 0, 0],
            2 => rng.bytes(4),
            _ => rng.bytes(8),
        };
        picks.push((ty, v, rng.below(3) == 0));
    }
    let peers = [
        peer(),
        sa("127.0.0.1:1"),
        sa("[2001:db8::1]:2"),
        sa("203.0.113.9:3"),
    ];
    let peer = peers[rng.below(peers.len())];
    let number = [0x4000u16, 0x4001, 0x3FFF, 0x5000, rng.next() as u16][rng.below(5)];
    let well_formed = rng.below(2) == 0;
    let auth = rng.below(8) != 0;
    c.fingerprint = rng.below(3) == 0;
    c.sha256 = rng.below(4) == 0;
    let tid = c.next_tid();
    c.build(
        method,
        class,
        &tid,
        &|b| {
            if well_formed {
                requested_udp(b);
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
                b.attr(
                    attr::CHANNEL_NUMBER,
                    &[(number >> 8) as u8, number as u8, 0, 0],
                );
            }
            for (ty, v, xor) in &picks {
                if *xor && v.len() == 8 {
                    b.xor_address(*ty, &peer);
                } else {
                    b.attr(*ty, v);
                }
            }
        },
        auth,
    )
}

#[test]
fn mutated_requests_never_panic_and_a_good_client_keeps_relaying() {
    let mut h = H::with_ports(config(), 50000, 50063);
    let mut good = Client::alice(udp(40000));
    good.allocate_with(&mut h, &|b| {
        b.attr_u32(attr::LIFETIME, 3600);
    })
    .assert_ok();
    good.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    good.permit(&mut h, peer()).assert_ok();
    let nonce = good.nonce.clone();

    // Valid requests of every kind, from the good client's credentials, to mutate.
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut proto = Client::alice(udp(41000));
    proto.nonce = nonce.clone();
    for fp in [false, true] {
        proto.fingerprint = fp;
        let fills: [Fill; 6] = [
            &requested_udp,
            &|b| {
                requested_udp(b);
                b.attr(attr::EVEN_PORT, &[0x80]);
                b.attr_u32(attr::LIFETIME, 1200);
                b.attr(attr::DONT_FRAGMENT, &[]);
            },
            &|b| {
                b.attr_u32(attr::LIFETIME, 0);
            },
            &|b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
            },
            &|b| {
                b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
                b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
            },
            &|b| {
                b.attr(attr::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8]);
                requested_udp(b);
            },
        ];
        let methods = [
            Method::ALLOCATE,
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
            Method::ALLOCATE,
        ];
        for (m, f) in methods.into_iter().zip(fills) {
            let tid = proto.next_tid();
            seeds.push(proto.build(m, Class::Request, &tid, f, true));
            seeds.push(proto.build(m, Class::Request, &tid, f, false));
        }
        seeds.push(binding_request(&[1; 12], &|b| {
            b.fingerprint();
        }));
        seeds.push(proto.send_indication(peer(), b"payload"));
        seeds.push(channel_data(0x4000, b"channel payload"));
    }
    let mut classic = vec![0x00, 0x01, 0x00, 0x00];
    classic.extend_from_slice(&[0x55; 16]);
    seeds.push(classic);

    // Clients the noise comes from (never the good one's 5-tuple).
    let tuples: Vec<FiveTuple> = (0..6)
        .map(|i| {
            let t = if i % 2 == 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            five(t, CLIENT_IP, 42000 + i)
        })
        .collect();
    let mut noisy: Vec<Client> = tuples
        .iter()
        .map(|&t| {
            let mut c = Client::alice(t);
            c.nonce = nonce.clone();
            c
        })
        .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ms = 0u64;
    let mut responses = 0usize;
    for _ in 0..6000 {
        h.fail_binds = u32::from(rng.below(10) == 0);
        match rng.below(10) {
            0..=5 => {
                let seed = seeds[rng.below(seeds.len())].clone();
                let m = mutate(&mut rng, seed);
                let t = tuples[rng.below(tuples.len())];
                let _ = h.input(t, &m);
            }
            6 | 7 => {
                let i = rng.below(noisy.len());
                let m = structured(&mut rng, &mut noisy[i]);
                let _ = h.input(noisy[i].five, &m);
            }
            8 => {
                if let Some(&(id, _)) = h.binds.get(rng.below(h.binds.len())) {
                    let len = rng.below(300);
                    let mut buf = rng.bytes(len);
                    let a = rng.below(len + 8);
                    let b = rng.below(len + 8);
                    let peers = [peer(), sa("203.0.113.9:3"), sa("[2001:db8::1]:2")];
                    let p = peers[rng.below(peers.len())];
                    let d = h.s.handle_peer_input(
                        h.now,
                        id,
                        PeerAddr::new(p),
                        &mut buf,
                        a.min(b)..a.max(b),
                    );
                    if let PeerDecision::Forward { frame, .. } = d {
                        assert!(frame.end <= buf.len());
                    }
                }
            }
            _ => {
                ms += rng.below(100) as u64;
                h.at_ms(ms);
                if rng.below(20) == 0 {
                    let t = tuples[rng.below(tuples.len())];
                    h.s.handle_transport_closed(t);
                    h.drain();
                }
            }
        }
        // Everything the engine says decodes.
        for (_, data) in h.sent.drain(..) {
            Resp::parse(data);
            responses += 1;
        }
    }
    assert!(
        responses > 500,
        "the noise should reach the handlers ({responses} responses)"
    );
    assert!(
        h.binds.len() > 10,
        "some noise should allocate ({} binds)",
        h.binds.len()
    );

    // The good client is unharmed.
    let id = h.alloc_id(good.five);
    let ind = good.send_indication(peer(), b"still here");
    assert!(
        matches!(h.input(good.five, &ind), ClientDecision::Forward { relay, .. } if relay == id)
    );
    assert_eq!(
        h.input(good.five, &channel_data(0x4000, b"abc")),
        ClientDecision::Forward {
            relay: id,
            peer: PeerAddr::new(peer()),
            payload: 4..7
        }
    );
    let (d, buf) = h.peer_sends(good.five, peer(), b"back");
    let PeerDecision::Forward { to, frame } = d else {
        panic!("{d:?}");
    };
    assert_eq!(to, good.five);
    assert_eq!(ChannelData::decode(&buf[frame]).unwrap().data, b"back");
    good.refresh(&mut h, None).assert_ok();
    good.permit(&mut h, sa("203.0.113.9:3")).assert_ok();
}
