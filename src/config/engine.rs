//! The configuration as the engine sees it: [`Config::engine_config`] maps the flags and
//! `turnserver.conf` onto [`ServerConfig`], at start and again on every reload.

use std::net::{IpAddr, SocketAddr};

use super::{AuthMode, Config};
use crate::engine::auth::Credentials;
use crate::engine::policy::PeerPolicy;
use crate::engine::server::Rfc5780;
use crate::engine::ServerConfig;

impl Config {
    /// The realm the engine serves (`--realm`, else `--server-name`, else `vigi-turn`).
    pub fn engine_realm(&self) -> String {
        self.auth
            .realm
            .clone()
            .or_else(|| self.auth.server_name.clone())
            .unwrap_or_else(|| "vigi-turn".to_owned())
    }

    /// The engine's view of the configuration (at start and on every SIGHUP). `relay_ips`: the
    /// addresses relay sockets bind; `interfaces`: this host's interface addresses (its own
    /// addresses when it listens on a wildcard).
    pub fn engine_config(&self, relay_ips: Vec<IpAddr>, interfaces: &[IpAddr]) -> ServerConfig {
        let config = self;
        let realm = config.engine_realm();
        let own = own_addresses(config, &relay_ips, interfaces);
        let mut credentials = Credentials::new(&realm, config.auth.rest_api_separator);
        for u in &config.auth.users {
            credentials.add_user(&u.name, &u.secret);
        }
        if config.auth.mode == AuthMode::RestApi || config.auth.use_auth_secret {
            credentials.set_rest_api(true);
            for s in &config.auth.static_auth_secrets {
                credentials.add_rest_secret(s.as_bytes());
            }
        }
        let software = if config.stun.no_software_attribute {
            None
        } else {
            Some(
                config
                    .stun
                    .software_attribute
                    .clone()
                    .unwrap_or_else(|| format!("vigi-turn {}", env!("CARGO_PKG_VERSION"))),
            )
        };
        ServerConfig {
            realm,
            software,
            fingerprint: config.stun.fingerprint,
            no_auth: config.auth.mode == AuthMode::NoAuth,
            credentials,
            stun: !config.stun.no_stun,
            turn: !config.stun.stun_only,
            classic_stun: config.stun.rfc3489_compatibility,
            relay_ips,
            external_ips: config
                .listeners
                .external_ips
                .iter()
                .map(|e| (e.public, e.private))
                .collect(),
            default_lifetime: config.limits.default_allocate_lifetime,
            max_lifetime: config.limits.max_allocate_lifetime,
            permission_lifetime: config.limits.permission_lifetime,
            channel_lifetime: config.limits.channel_lifetime,
            nonce_lifetime: if config.limits.stale_nonce == 0 {
                u32::MAX
            } else {
                config.limits.stale_nonce
            },
            peer_policy: PeerPolicy {
                allow_loopback: config.relay.allow_loopback_peers,
                no_multicast: config.relay.no_multicast_peers,
                denied: config.relay.denied_peer_ips.clone(),
                allowed: config.relay.allowed_peer_ips.clone(),
                own,
            },
            user_quota: config.limits.user_quota,
            total_quota: config.limits.total_quota,
            max_permissions: config.limits.max_allocation_permissions,
            max_bps: config.limits.max_bps,
            bps_capacity: config.limits.bps_capacity / config.relay.relay_threads.max(1) as u64,
            unauthorized_ratelimit: config.limits.unauthorized_ratelimit,
            udp_relay: !config.listeners.no_udp_relay,
            tcp_relay: !config.listeners.no_tcp_relay,
            default_family: config.listeners.allocation_default_address_family,
            strict_expiry: config.limits.strict_expiry,
            keep_removed_users: config.limits.reload_keeps_removed_users,
            top_allocations: if config.metrics.prometheus {
                config.metrics.prometheus_top_allocations
            } else {
                0
            },
            traffic_by_user: config.metrics.prometheus && config.metrics.prometheus_username_labels,
            rfc5780: config.stun.rfc5780.then(|| {
                Rfc5780::new(
                    &config.listeners.listening_ips,
                    config.listeners.listening_port,
                    config.listeners.alt_listening_port,
                )
            }),
            alternate_servers: config
                .redirect
                .alternate_servers
                .iter()
                .filter_map(|a| parse_alternate(a, 3478))
                .collect(),
            tls_alternate_servers: config
                .redirect
                .tls_alternate_servers
                .iter()
                .filter_map(|a| parse_alternate(a, 5349))
                .collect(),
            redirect_over_allocations: config.redirect.redirect_over_allocations,
            ..ServerConfig::default()
        }
    }
}

/// This node's own addresses, refused as peers unless opened (issue 15: no relay-to-self loops,
/// no TURN inside TURN): every listening IP (a wildcard listener stands for every interface
/// address), every relay IP, and both sides of every `--external-ip`.
fn own_addresses(config: &Config, relay_ips: &[IpAddr], interfaces: &[IpAddr]) -> Vec<IpAddr> {
    let mut own: Vec<IpAddr> = relay_ips.to_vec();
    if config.listeners.listening_ips.is_empty()
        || config
            .listeners
            .listening_ips
            .iter()
            .any(IpAddr::is_unspecified)
    {
        own.extend(interfaces);
    }
    own.extend(
        config
            .listeners
            .listening_ips
            .iter()
            .filter(|ip| !ip.is_unspecified()),
    );
    for e in &config.listeners.external_ips {
        own.push(e.public);
        own.extend(e.private);
    }
    own.sort();
    own.dedup();
    own
}

/// `--alternate-server`: `IP`, `IPv4:PORT` or `[IPv6]:PORT` (3478 when absent; 5349 for
/// `--tls-alternate-server`, as coturn).
fn parse_alternate(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["vigi-turn", "-n"];
        all.extend_from_slice(args);
        Config::load(all.iter().copied()).expect("a valid command line")
    }

    const RELAY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn realm_falls_back_to_server_name_then_vigi_turn() {
        assert_eq!(config(&["-r", "a.example"]).engine_realm(), "a.example");
        assert_eq!(
            config(&["--server-name", "b.example"]).engine_realm(),
            "b.example"
        );
        assert_eq!(config(&[]).engine_realm(), "vigi-turn");
        let e = config(&["--server-name", "b.example"]).engine_config(vec![RELAY], &[]);
        assert_eq!(e.realm, "b.example");
    }

    #[test]
    fn lifetimes_nonces_and_capacity_per_worker() {
        let e = config(&[
            "--stale-nonce=0",
            "--relay-threads",
            "4",
            "--bps-capacity",
            "4000",
        ])
        .engine_config(vec![RELAY], &[]);
        assert_eq!(
            e.nonce_lifetime,
            u32::MAX,
            "stale-nonce 0: nonces never go stale"
        );
        assert_eq!(e.bps_capacity, 1000, "each of 4 workers gets a quarter");
        assert_eq!(e.relay_ips, vec![RELAY]);
        let e = config(&[]).engine_config(vec![RELAY], &[]);
        assert_eq!((e.default_lifetime, e.max_lifetime), (600, 3600));
        assert_eq!(e.nonce_lifetime, 600);
        assert!(e.software.as_deref().unwrap().starts_with("vigi-turn "));
        assert_eq!(
            config(&["--no-software-attribute"])
                .engine_config(vec![], &[])
                .software,
            None
        );
    }

    #[test]
    fn credentials_and_auth_modes() {
        let e = config(&["--user", "alice:pw", "-r", "r.example"]).engine_config(vec![], &[]);
        assert!(e.credentials.is_static_user("alice"));
        assert!(!e.credentials.has_rest() && !e.no_auth);
        let e =
            config(&["--use-auth-secret", "--static-auth-secret", "s3"]).engine_config(vec![], &[]);
        assert!(e.credentials.has_rest());
        assert!(config(&["--no-auth"]).engine_config(vec![], &[]).no_auth);
    }

    #[test]
    fn own_addresses_include_interfaces_only_for_a_wildcard_listener() {
        let iface: IpAddr = "198.51.100.7".parse().unwrap();
        let wildcard =
            config(&["--external-ip", "203.0.113.1/10.0.0.1"]).engine_config(vec![RELAY], &[iface]);
        for ip in [
            RELAY,
            iface,
            "203.0.113.1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ] {
            assert!(!wildcard.peer_policy.permits(ip), "{ip} is this node's own");
        }
        let bound = config(&["-L", "192.0.2.1"]).engine_config(vec![RELAY], &[iface]);
        assert!(!bound.peer_policy.permits("192.0.2.1".parse().unwrap()));
        assert!(!bound.peer_policy.own.contains(&iface));
    }

    #[test]
    fn alternate_servers_take_default_ports() {
        assert_eq!(
            parse_alternate("192.0.2.5", 3478),
            Some("192.0.2.5:3478".parse().unwrap())
        );
        assert_eq!(
            parse_alternate("[2001:db8::1]:4000", 3478),
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(
            parse_alternate("2001:db8::1", 5349),
            Some("[2001:db8::1]:5349".parse().unwrap())
        );
        assert_eq!(parse_alternate("not an address", 3478), None);
        let e = config(&[
            "--alternate-server",
            "192.0.2.5",
            "--tls-alternate-server",
            "192.0.2.6",
        ])
        .engine_config(vec![RELAY], &[]);
        assert_eq!(e.alternate_servers, vec!["192.0.2.5:3478".parse().unwrap()]);
        assert_eq!(
            e.tls_alternate_servers,
            vec!["192.0.2.6:5349".parse().unwrap()]
        );
    }
}
