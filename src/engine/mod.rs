//! The sans-IO TURN/STUN engine (RFC 8489, RFC 8656): allocations, permissions, channels, ports,
//! auth, nonces, policy and accounting. It never touches a socket or a clock: time and randomness
//! come in as parameters, decisions and commands go out, and the worker in [`crate::io`] does the
//! I/O.
//!
//! Contract (see [`Server`]): feed every input with `handle_*`, then drain [`Server::poll_command`]
//! until it is empty. Time: call [`Server::handle_wall_clock`] and then [`Server::handle_timeout`]
//! at least once a second — the worker does both on a 1 s tick, and that tick is the contract:
//! every deadline the engine keeps (allocation lifetimes, 30 s RFC 6062 connects, reservations,
//! nonce ages) is a whole number of seconds, so an expiry is seen at most a second late, and a
//! request that arrives after its allocation's lifetime but before the tick finds no allocation
//! (the engine checks lifetimes on every request, not only on the tick).
//! [`Server::poll_timeout`] says when the next deadline falls, for a driver that would rather
//! sleep until then (the engine tests do).
//!
//! Layout: [`server`] is the engine's front door, one file per TURN concept under
//! `engine/server/` (binding, authenticate, reply, allocate, refresh, permission, channel_bind,
//! data, tcp, operator; `config`, `shared` and `counters` beside them). The state they act on
//! lives in the files here: [`allocation`], [`permission`], [`channel`], [`ports`], [`auth`]
//! (credentials and nonces), [`limiter`], [`policy`] (peer addresses, token buckets),
//! [`redirect`] and [`stats`]; [`session_log`] writes coturn's session lines.
//!
//! Roles are types: [`addr`] holds [`ClientAddr`], [`PeerAddr`] and [`RelayAddr`], the
//! transport addresses of RFC 8656's roles, and [`ChannelNumber`] (from [`crate::proto`]) is a
//! number already checked to be bindable. The engine's API, its allocations, the channel table
//! and the fast-path view take and give these, so a peer can never be passed for a client or a
//! relayed address, and a channel number is checked once, where it is parsed.

#![forbid(unsafe_code)]
// Time comes in as a parameter (clippy.toml names the clock reads); tests may read the clock.
#![cfg_attr(not(test), deny(clippy::disallowed_methods))]

pub mod addr;
pub mod allocation;
pub mod auth;
pub mod channel;
pub mod limiter;
pub mod permission;
pub mod policy;
pub mod ports;
pub mod redirect;
pub mod server;
pub mod session_log;
pub mod stats;
pub mod testing;

use std::net::SocketAddr;

pub use crate::proto::ChannelNumber;
pub use addr::{ClientAddr, PeerAddr, RelayAddr};
pub use allocation::AllocationId;
pub use server::{
    AllocationInfo, Bind, ClientDecision, Command, ConnectionId, Counters, PeerDecision, RelayKind,
    Server, ServerConfig, Shared,
};

/// The transport between client and server (RFC 8656 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Dtls,
}

impl Transport {
    /// Stream transports pad ChannelData to 4 bytes (RFC 8656 §12.5).
    #[inline]
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }
}

/// The client's 5-tuple (RFC 8656 §2): transport, client address, server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: ClientAddr,
    pub server: SocketAddr,
}
