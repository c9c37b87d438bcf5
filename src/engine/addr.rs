//! The transport addresses of RFC 8656's roles (§2), one type each so that a peer's address is
//! never handed where the client's or a relayed address belongs: [`ClientAddr`] (the client's
//! side of its 5-tuple), [`PeerAddr`] (a peer's transport address, as XOR-PEER-ADDRESS names it or
//! a relayed datagram comes from) and [`RelayAddr`] (a relayed transport address: the address a
//! relay socket is bound to). Each wraps a [`SocketAddr`] with no cost (`repr(transparent)`,
//! `Copy`); `new` names the role where an address enters the engine and `addr` leaves it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

macro_rules! role {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name(SocketAddr);

        impl $name {
            /// The address `addr` in this role.
            #[inline]
            pub const fn new(addr: SocketAddr) -> Self {
                $name(addr)
            }

            /// The plain address.
            #[inline]
            pub const fn addr(self) -> SocketAddr {
                self.0
            }

            /// The plain address, borrowed (no copy, for functions that take `&SocketAddr`).
            #[inline]
            pub const fn as_addr(&self) -> &SocketAddr {
                &self.0
            }

            #[inline]
            pub const fn ip(self) -> IpAddr {
                self.0.ip()
            }

            #[inline]
            pub const fn port(self) -> u16 {
                self.0.port()
            }

            #[inline]
            pub const fn is_ipv4(self) -> bool {
                self.0.is_ipv4()
            }

            #[inline]
            pub const fn is_ipv6(self) -> bool {
                self.0.is_ipv6()
            }
        }

        impl From<$name> for SocketAddr {
            #[inline]
            fn from(a: $name) -> SocketAddr {
                a.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

role!(
    /// The client's transport address on its 5-tuple (RFC 8656 §2): where answers and relayed
    /// data for the client go.
    ClientAddr
);
role!(
    /// A peer's transport address (RFC 8656 §2): what XOR-PEER-ADDRESS names, what a channel is
    /// bound to, where a relayed datagram comes from or goes.
    PeerAddr
);
role!(
    /// A relayed transport address (RFC 8656 §2): the address a relay socket is bound to (not
    /// what XOR-RELAYED-ADDRESS reports, which `--external-ip` may map).
    RelayAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_costs_nothing() {
        assert_eq!(size_of::<PeerAddr>(), size_of::<SocketAddr>());
        assert_eq!(
            size_of::<Option<RelayAddr>>(),
            size_of::<Option<SocketAddr>>()
        );
        let a: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let c = ClientAddr::new(a);
        assert_eq!((c.addr(), c.ip(), c.port()), (a, a.ip(), 3478));
        assert!(c.is_ipv6() && !c.is_ipv4());
        assert_eq!(c.to_string(), a.to_string());
    }
}
