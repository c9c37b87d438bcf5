//! The sans-IO TURN/STUN engine (RFC 8489, RFC 8656): allocations, permissions, channels, ports,
//! auth, nonces, policy and accounting. It never touches a socket or a clock: time and randomness
//! come in as parameters, decisions and commands go out, and the worker in [`crate::io`] does the
//! I/O.
//!
//! Contract (see [`Server`]): feed every input with `handle_*`, then drain [`Server::poll_command`]
//! until it is empty, and call [`Server::handle_timeout`] by [`Server::poll_timeout`].

pub mod allocation;
pub mod auth;
pub mod channel;
pub mod limiter;
pub mod permission;
pub mod policy;
pub mod ports;
pub mod redirect;
pub mod server;
pub mod stats;

use std::net::SocketAddr;

pub use allocation::AllocationId;
pub use server::{
    AllocationInfo, ClientDecision, Command, ConnectionId, Counters, PeerDecision, Server,
    ServerConfig, Shared,
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
    pub client: SocketAddr,
    pub server: SocketAddr,
}
