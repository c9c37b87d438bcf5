//! What an engine is configured with: [`ServerConfig`], RFC 5780 addresses, the default family.

use super::*;

/// What the engine is configured with; built by the caller from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute in responses; None = none (`--no-software-attribute`).
    pub software: Option<String>,
    /// FINGERPRINT on every response (`--fingerprint`); otherwise only when the request had one.
    pub fingerprint: bool,
    /// No authentication at all (`--no-auth`).
    pub no_auth: bool,
    pub credentials: Credentials,
    /// Answer Binding requests (not `--no-stun`).
    pub stun: bool,
    /// Serve TURN (not `--stun-only`).
    pub turn: bool,
    /// Answer RFC 3489 Binding requests (no magic cookie) with MAPPED-ADDRESS (not
    /// `--no-stun-backward-compatibility`).
    pub classic_stun: bool,
    /// Addresses relay sockets bind to; the first of a family is preferred, others are chosen at random.
    pub relay_ips: Vec<IpAddr>,
    /// `--external-ip` mappings: (public, private); without private the mapping applies to every
    /// relay address of the public one's family.
    pub external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    pub nonce_lifetime: u32,
    pub peer_policy: PeerPolicy,
    /// Allocations per username, 0 = unlimited.
    pub user_quota: u32,
    /// Allocations per server, 0 = unlimited.
    pub total_quota: u32,
    /// Bytes/s per allocation and direction, 0 = unlimited.
    pub max_bps: u64,
    /// Bytes/s this engine relays in all, both directions, 0 = unlimited (`--bps-capacity`
    /// divided among the workers by the caller, so no bucket is shared between threads).
    pub bps_capacity: u64,
    pub udp_relay: bool,
    /// TCP relays (RFC 6062; not `--no-tcp-relay`).
    pub tcp_relay: bool,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// End an allocation when the expiry in its REST username passes (`--strict-expiry`).
    pub strict_expiry: bool,
    /// coturn's `--alternate-server`: every new Allocate over UDP or TCP is redirected (300 Try
    /// Alternate with ALTERNATE-SERVER, RFC 8489 §10), round robin over this list.
    pub alternate_servers: Vec<SocketAddr>,
    /// `--tls-alternate-server`: the same for Allocates over TLS and DTLS.
    pub tls_alternate_servers: Vec<SocketAddr>,
    /// `--redirect-over-allocations`: holding this many allocations or more, the node sends new
    /// UDP/TCP Allocates to a less loaded fleet peer under its own threshold (see
    /// [`super::redirect`]), 0 = never.
    pub redirect_over_allocations: u32,
    /// Challenges and Allocate attempts per client IP per second (`--unauthorized-ratelimit`),
    /// 0 = no limit; see [`super::limiter`].
    pub unauthorized_ratelimit: u32,
    /// The relay family of an Allocate that names none (`-A/--allocation-default-address-family`).
    pub default_family: DefaultFamily,
    /// RFC 5780 NAT behaviour discovery (`--rfc5780`); None: CHANGE-REQUEST is answered 420.
    pub rfc5780: Option<Rfc5780>,
    /// `--reload-keeps-removed-users`: a user removed from the config (SIGHUP) or the user
    /// database keeps its live allocations until they expire. Off by default: removing a user
    /// is how an operator revokes it, and its calls end at once.
    pub keep_removed_users: bool,
    /// How many of its busiest allocations a worker publishes each second
    /// (`--prometheus-top-allocations`; 0: none).
    pub top_allocations: usize,
    /// Publish traffic per user (`--prometheus-username-labels`): ended allocations' traffic is
    /// kept per user for it.
    pub traffic_by_user: bool,
}

/// The alternate addresses of RFC 5780 (§6, §7.2): each listening IP has a partner of its family,
/// and the listening port has the alternate port (`--alt-listening-port`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rfc5780 {
    /// (listening IP, its alternate IP).
    pub other_ip: Vec<(IpAddr, IpAddr)>,
    pub port: u16,
    pub alt_port: u16,
}

impl Rfc5780 {
    /// Pair every address of `ips` with the next one of its family (cyclically), so that two
    /// addresses of one family are each other's alternate. Addresses alone in their family get
    /// no partner.
    pub fn new(ips: &[IpAddr], port: u16, alt_port: u16) -> Rfc5780 {
        let mut other_ip = Vec::new();
        for v6 in [false, true] {
            let fam: Vec<IpAddr> = ips.iter().copied().filter(|i| i.is_ipv6() == v6).collect();
            if fam.len() < 2 {
                continue;
            }
            for (i, ip) in fam.iter().enumerate() {
                other_ip.push((*ip, fam[(i + 1) % fam.len()]));
            }
        }
        Rfc5780 {
            other_ip,
            port,
            alt_port,
        }
    }

    fn partner_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        self.other_ip
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, b)| *b)
    }

    fn partner_port(&self, port: u16) -> Option<u16> {
        if port == self.port {
            Some(self.alt_port)
        } else if port == self.alt_port {
            Some(self.port)
        } else {
            None
        }
    }

    /// OTHER-ADDRESS for a request that arrived at `local`: alternate IP and alternate port.
    pub fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.partner_ip(local.ip())?,
            self.partner_port(local.port())?,
        ))
    }

    /// Where the answer to a request that arrived at `local` is sent from, given its
    /// CHANGE-REQUEST flags (RFC 5780 §7.2).
    pub fn source(
        &self,
        local: SocketAddr,
        change_ip: bool,
        change_port: bool,
    ) -> Option<SocketAddr> {
        self.other_address(local)?;
        let ip = if change_ip {
            self.partner_ip(local.ip())?
        } else {
            local.ip()
        };
        let port = if change_port {
            self.partner_port(local.port())?
        } else {
            local.port()
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// Which family an Allocate without REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY gets
/// (coturn's `-A/--allocation-default-address-family`: ipv4, ipv6 or keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultFamily {
    /// IPv4, whatever the client's own family (what browsers on IPv6 expect).
    #[default]
    Ipv4,
    Ipv6,
    /// The family of the address the client came from.
    Keep,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "vigi-turn".into(),
            software: Some(format!("vigi-turn {}", env!("CARGO_PKG_VERSION"))),
            fingerprint: false,
            no_auth: false,
            credentials: Credentials::new("vigi-turn", ':'),
            stun: true,
            turn: true,
            classic_stun: true,
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            nonce_lifetime: 600,
            peer_policy: PeerPolicy::default(),
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            bps_capacity: 0,
            udp_relay: true,
            tcp_relay: true,
            max_permissions: 256,
            max_channels: 256,
            strict_expiry: false,
            alternate_servers: Vec::new(),
            tls_alternate_servers: Vec::new(),
            redirect_over_allocations: 0,
            unauthorized_ratelimit: 100,
            default_family: DefaultFamily::Ipv4,
            rfc5780: None,
            keep_removed_users: false,
            top_allocations: 0,
            traffic_by_user: false,
        }
    }
}
