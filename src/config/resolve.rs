//! From what was parsed to a [`Config`]: the cross-option checks, the warnings the options
//! call for, and the values that depend on other options, worked out in place.

use std::path::PathBuf;

use super::cli::{self, Cli};
use super::{AuthMode, Config, ConfigError, DefaultFamily, Secret, Warnings};

/// `key=""` and `--key=` read as absent.
fn non_empty(s: &mut Option<String>) {
    if s.as_deref() == Some("") {
        *s = None;
    }
}

fn non_empty_secret(s: &mut Option<Secret>) {
    if s.as_ref().is_some_and(|s| s.expose().is_empty()) {
        *s = None;
    }
}

/// Checks the parsed options, emits the warnings they call for and works out the values that
/// depend on other options, in place.
pub(super) fn resolve(
    cli: Cli,
    conf_file: Option<PathBuf>,
    mut warnings: Warnings,
) -> Result<Config, ConfigError> {
    validate(&cli)?;
    let Cli {
        mut listeners,
        mut relay,
        mut stun,
        mut auth,
        mut fleet,
        mut limits,
        mut tls,
        redirect,
        mut log,
        sockets,
        metrics,
        mut admin,
        mut signaling,
        ..
    } = cli;

    auth.mode = if auth.no_auth {
        AuthMode::NoAuth
    } else if auth.use_auth_secret || !auth.static_auth_secrets.is_empty() {
        AuthMode::RestApi
    } else {
        AuthMode::LongTerm
    };
    if !auth.static_auth_secrets.is_empty() && !auth.use_auth_secret {
        warnings.push(match auth.mode {
            AuthMode::NoAuth => "--static-auth-secret: not used with --no-auth".into(),
            _ => "--static-auth-secret: implies --use-auth-secret (TURN REST API), as in coturn"
                .into(),
        });
    }
    match auth.mode {
        AuthMode::RestApi if !auth.users.is_empty() => warnings.push(
            "--user: static users are not used with --use-auth-secret (TURN REST API)".into(),
        ),
        AuthMode::NoAuth if !auth.users.is_empty() => {
            warnings.push("--user: static users are not used with --no-auth".into())
        }
        AuthMode::LongTerm
            if auth.users.is_empty() && fleet.redis_userdb.is_none() && !stun.stun_only =>
        {
            warnings.push(
                "no --user configured: every TURN Allocate will be rejected \
             (use --user, --use-auth-secret or --no-auth)"
                    .into(),
            )
        }
        _ => {}
    }
    // The redirect is signed, so it answers an Allocate that already carried this node's nonce,
    // and libwebrtc (Chromium, Safari, most native apps) sends the same nonce to the alternate
    // and gives up on its 438 Stale Nonce (seen with Chromium 156, tests/browser.rs).
    let redirects =
        !redirect.alternate_servers.is_empty() || !redirect.tls_alternate_servers.is_empty();
    non_empty_secret(&mut limits.stateless_nonce_secret);
    if redirects && auth.mode != AuthMode::NoAuth && limits.stateless_nonce_secret.is_none() {
        warnings.push(
            "--alternate-server without --stateless-nonce-secret: browsers follow the redirect \
             with this node's nonce, which the alternate refuses (438) unless both have the same \
             --stateless-nonce-secret"
                .into(),
        );
    }
    if let Some(db) = &auth.userdb {
        warnings.push(format!(
            "--userdb {}: the user database is not read; only static --user entries ({}) \
             and --static-auth-secret values are used",
            db.display(),
            auth.users.len()
        ));
    }

    if relay.relay_threads == 0 {
        relay.relay_threads = match relay.cpus {
            Some(cpus) => cpus as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
    }
    if log.syslog && log.log_file.as_deref().is_some_and(|f| f != "syslog") {
        warnings.push("--syslog: log lines go to journald, not to --log-file".into());
    }
    if listeners.alt_tls_listening_port != 0 {
        warnings.push(
            "--alt-tls-listening-port: accepted but ignored: RFC 5780 is served over UDP only, \
             so no alternate TLS/DTLS listener is started"
                .into(),
        );
    }
    if let Some(path) = metrics
        .prometheus_path
        .as_deref()
        .filter(|p| *p != "/metrics")
    {
        warnings.push(format!(
            "--prometheus-path {path}: accepted but ignored: metrics are served at /metrics"
        ));
    }
    if limits.stateless_nonce == Some(false) {
        warnings.push(
            "--stateless-nonce=false: accepted but ignored: nonces are always stateless \
             (HMAC-signed timestamps), which keeps unauthenticated floods from growing memory"
                .into(),
        );
    }
    if listeners.dtls && (listeners.no_dtls || tls.cert.is_none()) {
        warnings.push("--dtls: no DTLS listener starts without --cert or with --no-dtls".into());
    }

    match &stun.software {
        Some(cli::Software::Off) => stun.no_software_attribute = true,
        Some(cli::Software::Text(t)) => stun.software_attribute = Some(t.clone()),
        Some(cli::Software::On) | None => {}
    }
    stun.rfc5780 = stun.rfc5780 && !stun.no_rfc5780;
    stun.rfc3489_compatibility = stun.rfc3489.unwrap_or(!stun.no_stun_backward_compatibility);
    let derived = |explicit: u16, base: u16| {
        if explicit != 0 {
            explicit
        } else {
            base.checked_add(1).unwrap_or(0)
        }
    };
    listeners.alt_listening_port = derived(listeners.alt_listening_port, listeners.listening_port);
    listeners.alt_tls_listening_port = derived(
        listeners.alt_tls_listening_port,
        listeners.tls_listening_port,
    );
    if listeners.keep_address_family {
        listeners.allocation_default_address_family = DefaultFamily::Keep;
    }
    if limits.unauthorized_ratelimit != 0 {
        if let Some(rps) = limits.unauthorized_ratelimit_rps {
            limits.unauthorized_ratelimit = rps;
        }
    }
    log.verbose = if log.extra_verbose {
        2
    } else {
        u8::from(log.moderate_verbose)
    };
    for text in [
        &mut auth.realm,
        &mut auth.server_name,
        &mut fleet.node_name,
        &mut fleet.node_address,
        &mut tls.cipher_list,
        &mut log.log_file,
        &mut log.proc_user,
        &mut log.proc_group,
    ] {
        non_empty(text);
    }
    non_empty_secret(&mut admin.admin_token);
    non_empty_secret(&mut signaling.signaling_secret);
    signaling.signaling_cors_origins.retain(|o| !o.is_empty());

    Ok(Config {
        listeners,
        relay,
        stun,
        auth,
        fleet,
        limits,
        tls,
        redirect,
        log,
        sockets,
        metrics,
        admin,
        signaling,
        conf_file,
        warnings: warnings.list,
    })
}

/// Cross-option checks; each error names the flag to change.
fn validate(cli: &Cli) -> Result<(), ConfigError> {
    let Cli {
        listeners: l,
        relay,
        stun,
        auth,
        fleet,
        limits,
        redirect,
        admin,
        signaling,
        ..
    } = cli;
    let empty = |s: &Option<Secret>| !s.as_ref().is_some_and(|s| !s.expose().is_empty());
    if stun.rfc5780 && !stun.no_rfc5780 {
        let pair = |v6: bool| l.listening_ips.iter().filter(|i| i.is_ipv6() == v6).count() >= 2;
        if !(pair(false) || pair(true)) {
            return Err(ConfigError::invalid(
                "--rfc5780",
                "needs two --listening-ip addresses of one family (the alternate address)",
            ));
        }
        let alt = if l.alt_listening_port != 0 {
            Some(l.alt_listening_port)
        } else {
            l.listening_port.checked_add(1)
        };
        if alt.is_none() || alt == Some(l.listening_port) {
            return Err(ConfigError::invalid(
                "--alt-listening-port",
                "must differ from --listening-port for --rfc5780",
            ));
        }
    }
    if redirect.redirect_over_allocations > 0 && fleet.redis_statsdb.is_none() {
        return Err(ConfigError::invalid(
            "--redirect-over-allocations",
            "needs --redis-statsdb (the fleet's heartbeats say where to redirect)",
        ));
    }
    if admin.admin_listen.is_some() && empty(&admin.admin_token) {
        return Err(ConfigError::invalid(
            "--admin-listen",
            "needs --admin-token (the admin API never runs without authentication)",
        ));
    }
    if signaling.signaling_listen.is_some()
        && empty(&signaling.signaling_secret)
        && !signaling.signaling_insecure
    {
        return Err(ConfigError::invalid(
            "--signaling-listen",
            "needs --signaling-secret (without it anyone could mint TURN credentials: an open \
             relay); --signaling-insecure serves anyone on purpose",
        ));
    }
    if relay.min_port > relay.max_port {
        return Err(ConfigError::invalid(
            "--min-port",
            format!(
                "must not exceed --max-port ({} > {})",
                relay.min_port, relay.max_port
            ),
        ));
    }
    if auth.no_auth && auth.lt_cred_mech {
        return Err(ConfigError::invalid(
            "--no-auth",
            "cannot be combined with --lt-cred-mech",
        ));
    }
    if auth.no_auth && auth.use_auth_secret {
        return Err(ConfigError::invalid(
            "--no-auth",
            "cannot be combined with --use-auth-secret",
        ));
    }
    if auth.use_auth_secret && auth.static_auth_secrets.is_empty() && fleet.redis_userdb.is_none() {
        return Err(ConfigError::invalid(
            "--use-auth-secret",
            "needs at least one --static-auth-secret or a --redis-userdb holding the secrets",
        ));
    }
    if auth
        .static_auth_secrets
        .iter()
        .any(|s| s.expose().is_empty())
    {
        return Err(ConfigError::invalid(
            "--static-auth-secret",
            "must not be empty",
        ));
    }
    if limits.default_allocate_lifetime > limits.max_allocate_lifetime {
        return Err(ConfigError::invalid(
            "--default-allocate-lifetime",
            format!(
                "must not exceed --max-allocate-lifetime ({} > {})",
                limits.default_allocate_lifetime, limits.max_allocate_lifetime
            ),
        ));
    }
    if stun.stun_only && stun.no_stun {
        return Err(ConfigError::invalid(
            "--stun-only",
            "cannot be combined with --no-stun (nothing would be served)",
        ));
    }
    if l.no_udp && l.no_tcp && l.no_tls && l.no_dtls {
        return Err(ConfigError::invalid(
            "--no-udp",
            "with --no-tcp, --no-tls and --no-dtls no listener is left",
        ));
    }
    if l.no_udp_relay && l.no_tcp_relay && !stun.stun_only {
        return Err(ConfigError::invalid(
            "--no-udp-relay",
            "with --no-tcp-relay no relay endpoint is possible (use --stun-only for a STUN server)",
        ));
    }
    if l.external_ips.len() > 1 && l.external_ips.iter().any(|x| x.private.is_none()) {
        return Err(ConfigError::invalid(
            "--external-ip",
            "when given several times, every value must be PUBLIC/PRIVATE",
        ));
    }
    Ok(())
}
