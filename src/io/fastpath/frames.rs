//! Ethernet/IP/UDP frames for checking the fast path from outside: [`frame`] builds one with valid
//! checksums, [`parse`] reads one back and recomputes the IPv4 header and UDP checksums from
//! scratch (RFC 791, RFC 768, RFC 8200 §8.1). The unit tests, the micro-benchmark and the
//! integration tests' capture check use them; the relay never does.

use std::net::{IpAddr, SocketAddr};

/// One UDP datagram of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Why [`parse`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short")]
    Short,
    #[error("not IPv4 or IPv6 (ethertype {0:#06x})")]
    Ethertype(u16),
    #[error("IPv4 options or a bad version")]
    Ipv4Header,
    #[error("bad IPv4 header checksum")]
    Ipv4Checksum,
    #[error("IP length does not match the frame")]
    IpLength,
    #[error("not UDP")]
    NotUdp,
    #[error("UDP length does not match the IP length")]
    UdpLength,
    #[error("bad UDP checksum")]
    UdpChecksum,
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, udp_len: usize) -> u32 {
    let addr = |a: IpAddr| match a {
        IpAddr::V4(a) => sum16(&a.octets()),
        IpAddr::V6(a) => sum16(&a.octets()),
    };
    addr(src) + addr(dst) + 17 + udp_len as u32
}

/// The UDP checksum of `udp` (header with a zero checksum field, then payload).
fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let c = !fold(pseudo_sum(src, dst, udp.len()) + sum16(udp));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Ethernet + IP + UDP with valid checksums. Both addresses of `u` must be of one family.
/// `zero_csum`: an IPv4 datagram sent without a UDP checksum (ignored for IPv6).
pub fn frame(u: &Udp, zero_csum: bool) -> Vec<u8> {
    let udp_len = 8 + u.payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&u.src.port().to_be_bytes());
    udp.extend_from_slice(&u.dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&u.payload);
    if !zero_csum || u.src.is_ipv6() {
        let c = udp_checksum(u.src.ip(), u.dst.ip(), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    match (u.src.ip(), u.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 33, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = !fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp_len as u16).to_be_bytes());
            f.extend_from_slice(&[17, 33]);
            f.extend_from_slice(&v6(s));
            f.extend_from_slice(&v6(d));
        }
    }
    f.extend_from_slice(&udp);
    f
}

/// Reads a frame back, checking every length and checksum. Returns the datagram and its UDP
/// checksum field (0: an IPv4 datagram without one).
pub fn parse(f: &[u8]) -> Result<(Udp, u16), FrameError> {
    let ethertype = u16::from_be_bytes([
        *f.get(12).ok_or(FrameError::Short)?,
        *f.get(13).ok_or(FrameError::Short)?,
    ]);
    let (src, dst, udp) = match ethertype {
        0x0800 => {
            let ip = f.get(14..34).ok_or(FrameError::Short)?;
            if ip[0] != 0x45 {
                return Err(FrameError::Ipv4Header);
            }
            if fold(sum16(ip)) != 0xffff {
                return Err(FrameError::Ipv4Checksum);
            }
            if usize::from(u16::from_be_bytes([ip[2], ip[3]])) != f.len() - 14 {
                return Err(FrameError::IpLength);
            }
            if ip[9] != 17 {
                return Err(FrameError::NotUdp);
            }
            let s: [u8; 4] = ip[12..16].try_into().map_err(|_| FrameError::Short)?;
            let d: [u8; 4] = ip[16..20].try_into().map_err(|_| FrameError::Short)?;
            (IpAddr::from(s), IpAddr::from(d), &f[34..])
        }
        0x86dd => {
            let ip = f.get(14..54).ok_or(FrameError::Short)?;
            if usize::from(u16::from_be_bytes([ip[4], ip[5]])) != f.len() - 54 {
                return Err(FrameError::IpLength);
            }
            if ip[6] != 17 {
                return Err(FrameError::NotUdp);
            }
            let s: [u8; 16] = ip[8..24].try_into().map_err(|_| FrameError::Short)?;
            let d: [u8; 16] = ip[24..40].try_into().map_err(|_| FrameError::Short)?;
            (IpAddr::from(s), IpAddr::from(d), &f[54..])
        }
        other => return Err(FrameError::Ethertype(other)),
    };
    if udp.len() < 8 {
        return Err(FrameError::Short);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len != udp.len() {
        return Err(FrameError::UdpLength);
    }
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    if (check != 0 || src.is_ipv6()) && fold(pseudo_sum(src, dst, udp_len) + sum16(udp)) != 0xffff {
        return Err(FrameError::UdpChecksum);
    }
    let u = Udp {
        src: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
    };
    Ok((u, check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_frame_parses_back_and_any_flipped_bit_of_its_datagram_is_caught() {
        for (src, dst) in [("10.0.0.1:1", "10.0.0.2:2"), ("[fd00::1]:1", "[fd00::2]:2")] {
            let u = Udp {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                payload: b"abc".to_vec(),
            };
            let f = frame(&u, false);
            assert_eq!(parse(&f).unwrap().0, u);
            let udp_start = f.len() - 11;
            for i in udp_start..f.len() {
                let mut g = f.clone();
                g[i] ^= 0x01;
                assert!(parse(&g).is_err(), "byte {i}");
            }
            for cut in 0..f.len() {
                assert!(parse(&f[..cut]).is_err());
            }
        }
    }
}
