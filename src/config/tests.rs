use super::cli::{Policy, UNSUPPORTED};
use super::*;
use std::net::IpAddr;

const SAMPLE: &str = include_str!("testdata/coturn_sample_options.conf");

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    Config::load(args.iter().copied())
}

fn file(args: &[&str], text: &str) -> Result<Config, ConfigError> {
    Config::load_with_file_text(args, "t.conf", text)
}

fn err(r: Result<Config, ConfigError>) -> String {
    let msg = r.expect_err("expected an error").to_string();
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    msg
}

fn refused(key: &str) -> bool {
    UNSUPPORTED.iter().any(|o| {
        matches!(o.policy, Policy::Refuse(_)) && (o.long == key || o.aliases.contains(&key))
    })
}

/// Option lines of a coturn sample: commented-out `#key[=value]` lines (uncommented) and live
/// ones; prose comments (`# text`, `#Several words here`) are left out.
fn sample_option_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|raw| {
            let l = raw.trim();
            let body = l.strip_prefix('#').unwrap_or(l);
            let key_end = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(body.len());
            let (key, rest) = body.split_at(key_end);
            let starts_alpha = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
            let one_value = rest.is_empty()
                || rest.starts_with('=')
                || (rest.starts_with(char::is_whitespace) && rest.split_whitespace().count() == 1);
            (starts_alpha && one_value).then(|| body.to_owned())
        })
        .collect()
}

/// Each option line alone must load, unless its option is classified as refused, in which case
/// it must fail with `Unsupported` naming file, line and key. A static secret is given so that
/// `use-auth-secret` on its own is complete.
fn check_sample(name: &str, text: &str) -> usize {
    let base = ["vigi-turn", "--static-auth-secret=base"];
    let lines = sample_option_lines(text);
    assert!(
        lines.len() > 50,
        "{name}: only {} option lines",
        lines.len()
    );
    for line in &lines {
        let key = conf_file::lines(line).next().unwrap().key;
        let result = Config::load_with_file_text(&base, name, line);
        if refused(key) {
            match result {
                Err(ConfigError::Unsupported { at, .. }) => {
                    assert_eq!(at, format!("{name}:1: {key}"))
                }
                other => panic!("{name}: `{line}` should be refused, got {other:?}"),
            }
        } else if let Err(e) = result {
            // The sample's Redis connection strings are `<placeholders>`, which a checked
            // connection string refuses (naming the option).
            if placeholder(key, line) {
                assert!(e.to_string().contains(key), "{name}: `{line}`: {e}");
                continue;
            }
            panic!("{name}: `{line}` failed: {e}");
        }
    }
    // All non-refused lines together also tokenize and parse (cross-option validation aside).
    let kept: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| {
            let key = conf_file::lines(l).next().unwrap().key;
            !refused(key) && !placeholder(key, l)
        })
        .collect();
    let mut warnings = Warnings::default();
    let tokens = file_tokens(
        &mut cli::command(),
        &"vigi-turn".into(),
        name,
        &kept.join("\n"),
        &mut warnings,
    )
    .unwrap();
    assert_eq!(tokens.len(), kept.len());
    assert!(
        warnings.list.iter().all(|w| !w.contains("unknown option")),
        "{:?}",
        warnings.list
    );
    lines.len()
}

/// A sample line whose value is a `<placeholder>` for an option that checks its value.
fn placeholder(key: &str, line: &str) -> bool {
    key.starts_with("redis-") && line.contains('<') && line.contains('>')
}

#[test]
fn sample_fixture_accepted_or_refused_by_policy() {
    check_sample("coturn_sample_options.conf", SAMPLE);
}

/// coturn's own sample config (Debian's coturn package installs it; `.ci/run` installs coturn),
/// read as an operator's file. Missing coturn fails, as every test that drives coturn does.
#[test]
fn system_turnserver_conf() {
    let text = std::fs::read_to_string("/etc/turnserver.conf")
        .expect("/etc/turnserver.conf (install coturn: apt-get install coturn)");
    check_sample("/etc/turnserver.conf", &text);
}

#[test]
fn every_option_of_turnserver_help_is_known() {
    let out = std::process::Command::new("turnserver")
        .arg("-h")
        .output()
        .expect("turnserver (install coturn: apt-get install coturn)");
    let help =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut cmd = cli::command();
    cmd.build();
    let mut seen = 0;
    for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[') {
        let Some(name) = word.strip_prefix("--") else {
            continue;
        };
        let name = name.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric()));
        if name.is_empty() || name.contains('<') {
            continue;
        }
        seen += 1;
        let known = cmd.get_arguments().any(|a| {
            a.get_long() == Some(name)
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&name))
        });
        assert!(known, "coturn option --{name} is unknown to vigi-turn");
    }
    assert!(seen > 80, "parsed only {seen} options from turnserver -h");
}

#[test]
fn defaults() {
    let c = load(&["vigi-turn", "-n"]).unwrap();
    assert_eq!(c.listeners.listening_port, 3478);
    assert_eq!(c.listeners.tls_listening_port, 5349);
    assert_eq!(c.listeners.alt_listening_port, 3479);
    assert_eq!(c.listeners.alt_tls_listening_port, 5350);
    assert_eq!((c.relay.min_port, c.relay.max_port), (49152, 65535));
    assert!(c.relay.relay_threads >= 1);
    assert_eq!(c.limits.stale_nonce, 600);
    assert_eq!(c.limits.max_allocate_lifetime, 3600);
    assert_eq!(c.limits.default_allocate_lifetime, 600);
    assert_eq!(c.limits.permission_lifetime, 300);
    assert_eq!(c.limits.channel_lifetime, 600);
    assert_eq!(c.metrics.prometheus_port, 9641);
    assert_eq!(c.auth.rest_api_separator, ':');
    assert_eq!(c.auth.mode, AuthMode::LongTerm);
    assert_eq!(c.auth.realm, None);
    assert_eq!(c.log.verbose, 0);
    assert_eq!(c.conf_file, None);
    assert!(!c.listeners.no_udp && !c.stun.fingerprint && !c.relay.allow_loopback_peers);
}

#[test]
fn docker_compose_command() {
    let args = [
        "turnserver",
        "--listening-port=3478",
        "--min-port=49152",
        "--max-port=65535",
        "--user=vigiturn:vigisecret123",
        "--realm=vigi.local",
    ];
    let c = file(&args, "").unwrap();
    assert_eq!(c.listeners.listening_port, 3478);
    assert_eq!(c.auth.realm.as_deref(), Some("vigi.local"));
    assert_eq!(c.auth.mode, AuthMode::LongTerm);
    assert_eq!(c.auth.users.len(), 1);
    assert_eq!(c.auth.users[0].name, "vigiturn");
    assert_eq!(
        c.auth.users[0].secret,
        UserSecret::Password("vigisecret123".into())
    );
    let mut with_n = args.to_vec();
    with_n.insert(1, "-n");
    load(&with_n).unwrap();
}

const BENCH: &[&str] = &[
    "turnserver",
    "-n",
    "-L",
    "127.0.0.1",
    "-E",
    "127.0.0.1",
    "-p",
    "37478",
    "--min-port",
    "61000",
    "--max-port",
    "65535",
    "--allow-loopback-peers",
    "--no-cli",
    "--no-tls",
    "--no-dtls",
    "--realm",
    "bench.local",
    "--userdb",
    "/tmp/x/turndb",
    "--pidfile",
    "/tmp/x/turnserver.pid",
    "--log-file",
    "/tmp/x/turnserver.log",
    "--simple-log",
    "--no-stdout-log",
    "-m",
    "2",
];

#[test]
fn benchmark_command_long_term() {
    let mut args = BENCH.to_vec();
    args.extend(["--lt-cred-mech", "--user", "bench:benchpw"]);
    let c = load(&args).unwrap();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(c.listeners.listening_ips, vec![lo]);
    assert_eq!(c.listeners.relay_ips, vec![lo]);
    assert_eq!(c.listeners.listening_port, 37478);
    assert_eq!((c.relay.min_port, c.relay.max_port), (61000, 65535));
    assert!(
        c.relay.allow_loopback_peers && c.log.no_cli && c.listeners.no_tls && c.listeners.no_dtls
    );
    assert!(c.log.simple_log && c.log.no_stdout_log);
    assert_eq!(c.relay.relay_threads, 2);
    assert_eq!(c.auth.mode, AuthMode::LongTerm);
    assert_eq!(c.auth.userdb, Some(PathBuf::from("/tmp/x/turndb")));
    assert_eq!(c.log.pidfile, Some(PathBuf::from("/tmp/x/turnserver.pid")));
    assert_eq!(c.log.log_file.as_deref(), Some("/tmp/x/turnserver.log"));
    assert_eq!(c.conf_file, None);
    assert!(c.warnings.iter().any(|w| w.starts_with("--userdb")));
}

#[test]
fn benchmark_command_rest_api() {
    let mut args = BENCH.to_vec();
    args.extend(["--use-auth-secret", "--static-auth-secret", "benchsecret"]);
    let c = load(&args).unwrap();
    assert_eq!(c.auth.mode, AuthMode::RestApi);
    assert_eq!(c.auth.static_auth_secrets, vec!["benchsecret"]);
    assert!(c.auth.users.is_empty());
    // A static secret alone selects the REST API too, with a warning.
    let c = load(&["vigi-turn", "-n", "--static-auth-secret=s"]).unwrap();
    assert_eq!(c.auth.mode, AuthMode::RestApi);
    assert!(c
        .warnings
        .iter()
        .any(|w| w.starts_with("--static-auth-secret")));
    let c = load(&["vigi-turn", "-n", "-z", "--static-auth-secret=s"]).unwrap();
    assert_eq!(c.auth.mode, AuthMode::NoAuth);
}

#[test]
fn bad_values_name_the_flag() {
    let m = err(load(&["vigi-turn", "-n", "--min-port=70000"]));
    assert!(m.contains("--min-port"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--listening-ip=not-an-ip"]));
    assert!(m.contains("--listening-ip"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--user=nocolon"]));
    assert!(m.contains("--user") && !m.contains("nocolon"), "{m}");
    let m = err(load(&[
        "vigi-turn",
        "-n",
        "--min-port",
        "5000",
        "--max-port",
        "4000",
    ]));
    assert!(m.starts_with("--min-port: "), "{m}");
    let m = err(load(&["vigi-turn", "-n", "-u", "bob:0x1234"]));
    assert!(m.contains("--user") && m.contains("bob:<redacted>") && !m.contains("1234"));
    let m = err(load(&["vigi-turn", "-n", "--listening-port=0"]));
    assert!(m.contains("--listening-port"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--denied-peer-ip=10.0.0.1-::1"]));
    assert!(m.contains("--denied-peer-ip"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--bogus"]));
    assert!(m.contains("--bogus"), "{m}");
}

#[test]
fn cross_option_validation() {
    let m = err(load(&["vigi-turn", "-n", "--use-auth-secret"]));
    assert!(m.starts_with("--use-auth-secret: "), "{m}");
    let m = err(load(&["vigi-turn", "-n", "-a", "-z"]));
    assert!(m.starts_with("--no-auth: "), "{m}");
    let m = err(load(&[
        "vigi-turn",
        "-n",
        "--default-allocate-lifetime=4000",
    ]));
    assert!(m.starts_with("--default-allocate-lifetime: "), "{m}");
    let m = err(load(&[
        "vigi-turn",
        "-n",
        "--no-udp",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
    ]));
    assert!(m.starts_with("--no-udp: "), "{m}");
    let m = err(load(&[
        "vigi-turn",
        "-n",
        "-X",
        "1.2.3.4",
        "-X",
        "5.6.7.8/10.0.0.1",
    ]));
    assert!(m.starts_with("--external-ip: "), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--static-auth-secret="]));
    assert!(m.starts_with("--static-auth-secret: "), "{m}");
    // Equal bounds are a one-port range.
    load(&["vigi-turn", "-n", "--min-port=5000", "--max-port=5000"]).unwrap();
}

#[test]
fn grammar_through_the_parser() {
    let text = "\
# a comment
   # an indented comment
listening-port=4000
realm \"example.org\"
fingerprint
no-udp=off
static-auth-secret=abc#def
  use-auth-secret  
--verbose
";
    let c = file(&["vigi-turn"], text).unwrap();
    assert_eq!(c.listeners.listening_port, 4000);
    assert_eq!(c.auth.realm.as_deref(), Some("example.org"));
    assert!(c.stun.fingerprint);
    assert!(!c.listeners.no_udp);
    assert_eq!(c.auth.static_auth_secrets, vec!["abc#def"]);
    assert!(c.auth.use_auth_secret);
    assert_eq!(c.log.verbose, 1);
    assert_eq!(c.conf_file, Some(PathBuf::from("t.conf")));
}

#[test]
fn cli_beats_file_and_lists_accumulate() {
    let text = "min-port=50000\nrealm=file.org\nuser=a:1\nuser=b:2\nlistening-ip=10.0.0.1\n\
                no-tcp\nstale-nonce=100\n";
    let c = file(
        &[
            "vigi-turn",
            "--realm=cli.org",
            "-u",
            "c:3",
            "--no-tcp=0",
            "--stale-nonce",
        ],
        text,
    )
    .unwrap();
    assert_eq!(c.relay.min_port, 50000);
    assert_eq!(c.auth.realm.as_deref(), Some("cli.org"));
    let names: Vec<_> = c.auth.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(c.listeners.listening_ips.len(), 1);
    assert!(!c.listeners.no_tcp);
    assert_eq!(c.limits.stale_nonce, 600);
    // The last occurrence wins within the file too.
    let c = file(&["vigi-turn"], "realm=one\nrealm=two\n").unwrap();
    assert_eq!(c.auth.realm.as_deref(), Some("two"));
}

#[test]
fn unknown_key_warns_and_continues() {
    let c = file(&["vigi-turn"], "realm=x\nno-such-option=1\nconf-file=/x\n").unwrap();
    assert_eq!(c.auth.realm.as_deref(), Some("x"));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("t.conf:2: ") && w.contains("no-such-option")),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings.iter().any(|w| w.starts_with("t.conf:3: ")));
}

#[test]
fn bad_file_value_names_file_and_line() {
    let m = err(file(&["vigi-turn"], "realm=x\n\nmin-port=70000\n"));
    assert!(
        m.starts_with("t.conf:3: ") && m.contains("--min-port"),
        "{m}"
    );
    let m = err(file(&["vigi-turn"], "fingerprint=maybe\n"));
    assert!(
        m.starts_with("t.conf:1: ") && m.contains("--fingerprint"),
        "{m}"
    );
    let m = err(file(&["vigi-turn"], "min-port\n"));
    assert!(
        m.starts_with("t.conf:1: ") && m.contains("--min-port"),
        "{m}"
    );
    let m = err(file(&["vigi-turn"], "user=alice:0xnothex\n"));
    assert!(m.starts_with("t.conf:1: ") && !m.contains("nothex"), "{m}");
    // A command-line error is reported before the file is looked at.
    let m = err(file(&["vigi-turn", "--min-port=x"], "min-port=70000\n"));
    assert!(m.contains("--min-port") && !m.starts_with("t.conf"), "{m}");
}

#[test]
fn boolean_flags_take_coturn_values() {
    let c = load(&["vigi-turn", "-n", "--no-udp=yes", "-f", "--syslog=0"]).unwrap();
    assert!(c.listeners.no_udp && c.stun.fingerprint && !c.log.syslog);
    let c = file(
        &["vigi-turn"],
        "no-tcp=1\nno-tls=on\nno-dtls=t\nsyslog=false\n",
    )
    .unwrap();
    assert!(c.listeners.no_tcp && c.listeners.no_tls && c.listeners.no_dtls && !c.log.syslog);
}

#[test]
fn verbosity_help_and_version() {
    assert_eq!(load(&["vigi-turn", "-n", "-v"]).unwrap().log.verbose, 1);
    assert_eq!(load(&["vigi-turn", "-n", "-V"]).unwrap().log.verbose, 2);
    assert_eq!(
        load(&["vigi-turn", "-n", "--Verbose"]).unwrap().log.verbose,
        2
    );
    for flag in ["--help", "-h", "--version"] {
        let e = load(&["vigi-turn", flag]).unwrap_err();
        assert!(e.is_help_or_version(), "{flag}: {e}");
    }
    assert!(!load(&["vigi-turn", "--bogus"])
        .unwrap_err()
        .is_help_or_version());
}

#[test]
fn unsupported_options() {
    let m = err(load(&["vigi-turn", "-n", "--oauth"]));
    assert!(m.starts_with("--oauth: not supported yet"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "-e", "host=db"]));
    assert!(m.starts_with("--psql-userdb: "), "{m}");
    let m = err(file(&["vigi-turn"], "realm=x\nsecure-stun\n"));
    assert!(
        m.starts_with("t.conf:2: secure-stun: not supported yet"),
        "{m}"
    );
    // Switched off or empty is not "set".
    load(&["vigi-turn", "-n", "--oauth=0", "--psql-userdb="]).unwrap();
    // Ignored ones warn once.
    let c = load(&["vigi-turn", "-n", "--cli-port=1", "--cli-port=2", "--dh566"]).unwrap();
    assert_eq!(
        c.warnings.iter().filter(|w| w.contains("cli-port")).count(),
        1
    );
    assert!(c.warnings.iter().any(|w| w.starts_with("--dh566: ")));
}

#[test]
fn alt_ports_and_threads() {
    let c = load(&[
        "vigi-turn",
        "-n",
        "-p",
        "65535",
        "--tls-listening-port=6000",
        "--alt-tls-listening-port=7000",
        "-m",
        "0",
    ])
    .unwrap();
    assert_eq!(c.listeners.alt_listening_port, 0);
    assert_eq!(c.listeners.alt_tls_listening_port, 7000);
    assert!(c.relay.relay_threads >= 1);
}

#[test]
fn debug_hides_secrets() {
    let c = load(&[
        "vigi-turn",
        "-n",
        "--user=bob:hunter2",
        "--static-auth-secret=sesame",
    ])
    .unwrap();
    let s = format!("{c:?}");
    assert!(
        s.contains("bob") && !s.contains("hunter2") && !s.contains("sesame"),
        "{s}"
    );
}

/// Every option that holds a password, secret, key or token, from the command line and from
/// the file: none of them appears in the configuration's `Debug`.
#[test]
fn debug_hides_every_secret() {
    let secrets = [
        "pw-user-1",
        "bc807ee29df3c9ffa736523fb2c4e8ee",
        "rest-secret-2",
        "nonce-secret-3",
        "admin-token-4",
        "signal-secret-5",
        "redis-user-pw-6",
        "redis-stats-pw-7",
        "redis-signal-pw-8",
        "rest-file-secret-9",
    ];
    let c = file(
        &[
            "vigi-turn",
            "--user=bob:pw-user-1",
            "--user=carol:0xbc807ee29df3c9ffa736523fb2c4e8ee",
            "--static-auth-secret=rest-secret-2",
            "--stateless-nonce-secret=nonce-secret-3",
            "--admin-listen=127.0.0.1:9",
            "--admin-token=admin-token-4",
            "--signaling-listen=127.0.0.1:10",
            "--signaling-secret=signal-secret-5",
            "--redis-userdb=ip=127.0.0.1 password=redis-user-pw-6",
            "--signaling-redis=redis://:redis-signal-pw-8@127.0.0.1",
        ],
        "redis-statsdb=\"host=127.0.0.1 password=redis-stats-pw-7\"\n\
         static-auth-secret=rest-file-secret-9\n",
    )
    .unwrap();
    assert_eq!(c.auth.static_auth_secrets.len(), 2);
    assert!(c.fleet.redis_statsdb.as_ref().unwrap().password.is_some());
    let s = format!("{c:?}");
    assert!(s.contains("bob") && s.contains("carol"), "{s}");
    for secret in secrets {
        assert!(!s.contains(secret), "{secret} in {s}");
    }
    assert!(
        !s.contains("0xbc") && !s.contains("188, 128"),
        "hex key bytes in {s}"
    );
}

#[test]
fn conf_file_option() {
    let dir = std::env::temp_dir().join(format!("vigi-turn-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("my.conf");
    std::fs::write(&path, "realm=from.file\nlistening-port=4444\n").unwrap();
    let p = path.to_str().unwrap();
    let c = load(&["vigi-turn", "-c", p, "-p", "5555"]).unwrap();
    assert_eq!(c.auth.realm.as_deref(), Some("from.file"));
    assert_eq!(c.listeners.listening_port, 5555);
    assert_eq!(c.conf_file.as_deref(), Some(path.as_path()));
    // -n wins over -c.
    let c = load(&["vigi-turn", "-n", "-c", p]).unwrap();
    assert_eq!(c.auth.realm, None);
    let missing = dir.join("missing.conf");
    let m = err(load(&["vigi-turn", "-c", missing.to_str().unwrap()]));
    assert!(
        m.contains("missing.conf") && m.contains("cannot read"),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unauthorized_ratelimit_flag_and_file_key() {
    assert_eq!(
        load(&["vigi-turn"]).unwrap().limits.unauthorized_ratelimit,
        1000
    );
    let c = load(&["vigi-turn", "--unauthorized-ratelimit=0"]).unwrap();
    assert_eq!(c.limits.unauthorized_ratelimit, 0);
    let c = file(&["vigi-turn"], "unauthorized-ratelimit=7\n").unwrap();
    assert_eq!(c.limits.unauthorized_ratelimit, 7);
    let c = file(
        &["vigi-turn", "--unauthorized-ratelimit", "3"],
        "unauthorized-ratelimit 7\n",
    );
    assert_eq!(c.unwrap().limits.unauthorized_ratelimit, 3);
    let e = err(file(&["vigi-turn"], "unauthorized-ratelimit=lots\n"));
    assert!(e.contains("unauthorized-ratelimit"), "{e}");
}

#[test]
fn observability_flags() {
    let c = load(&[
        "vigi-turn",
        "-n",
        "--prometheus-top-allocations",
        "10",
        "--admin-listen",
        "127.0.0.1:9000",
        "--admin-token",
        "tok-s3cret",
        "--log-json",
    ])
    .unwrap();
    assert_eq!(c.metrics.prometheus_top_allocations, 10);
    assert_eq!(
        c.admin.admin_listen,
        Some("127.0.0.1:9000".parse().unwrap())
    );
    assert_eq!(
        c.admin.admin_token.as_ref().map(Secret::expose),
        Some("tok-s3cret")
    );
    assert!(c.admin.log_json);
    assert!(!format!("{c:?}").contains("tok-s3cret"), "token redacted");
    let d = load(&["vigi-turn", "-n"]).unwrap();
    assert_eq!(d.metrics.prometheus_top_allocations, 0);
    assert_eq!(d.admin.admin_listen, None);
    // The file form works too.
    let f = file(
        &["vigi-turn"],
        "admin-listen=127.0.0.1:9001\nadmin-token=t\n",
    )
    .unwrap();
    assert_eq!(
        f.admin.admin_listen,
        Some("127.0.0.1:9001".parse().unwrap())
    );
}

#[test]
fn admin_listen_needs_a_token() {
    let e = err(load(&[
        "vigi-turn",
        "-n",
        "--admin-listen",
        "127.0.0.1:9000",
    ]));
    assert!(e.starts_with("--admin-listen:"), "{e}");
}

#[test]
fn redirect_over_allocations_needs_the_statsdb() {
    let e = err(load(&[
        "vigi-turn",
        "-n",
        "--redirect-over-allocations",
        "5",
    ]));
    assert!(e.starts_with("--redirect-over-allocations:"), "{e}");
    let c = load(&[
        "vigi-turn",
        "-n",
        "--redis-statsdb=port=6380",
        "--redirect-over-allocations",
        "5",
    ])
    .unwrap();
    assert_eq!(c.redirect.redirect_over_allocations, 5);
    let c = file(
        &["vigi-turn", "-n", "-O", "port=6380"],
        "redirect-over-allocations=7\n",
    )
    .unwrap();
    assert_eq!(c.redirect.redirect_over_allocations, 7);
    assert_eq!(
        load(&["vigi-turn", "-n"])
            .unwrap()
            .redirect
            .redirect_over_allocations,
        0
    );
}

#[test]
fn allocation_default_address_family_values() {
    let base = ["vigi-turn", "--static-auth-secret=s"];
    let fam = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        load(&args).map(|c| c.listeners.allocation_default_address_family)
    };
    assert_eq!(fam(&[]).unwrap(), DefaultFamily::Ipv4);
    assert_eq!(fam(&["-A", "ipv6"]).unwrap(), DefaultFamily::Ipv6);
    assert_eq!(
        fam(&["--allocation-default-address-family=KEEP"]).unwrap(),
        DefaultFamily::Keep
    );
    assert_eq!(fam(&["-K"]).unwrap(), DefaultFamily::Keep);
    let e = err(fam(&["-A", "ipv5"]).map(|_| unreachable!()));
    assert!(e.contains("allocation-default-address-family"), "{e}");
    // In turnserver.conf, quoted as coturn's sample has it.
    let c = file(&base, "allocation-default-address-family=\"ipv6\"\n").unwrap();
    assert_eq!(
        c.listeners.allocation_default_address_family,
        DefaultFamily::Ipv6
    );
}

#[test]
fn redis_databases_and_fleet_options() {
    // The REST secrets may all live in Redis.
    let c = load(&[
        "vigi-turn",
        "-n",
        "--use-auth-secret",
        "-N",
        "ip=10.0.0.5 dbname=2 password=pw",
        "--redis-statsdb=port=6380",
        "--node-region",
        "eu",
    ])
    .unwrap();
    assert_eq!(c.auth.mode, AuthMode::RestApi);
    let u = c.fleet.redis_userdb.as_ref().unwrap();
    assert_eq!((u.host.as_str(), u.db), ("10.0.0.5", 2));
    assert_eq!(c.fleet.redis_statsdb.as_ref().unwrap().port, 6380);
    assert_eq!((c.fleet.redis_refresh, c.fleet.redis_max_stale), (2, 300));
    assert_eq!(c.fleet.node_region, "eu");
    assert!(
        !format!("{c:?}").contains("pw\""),
        "no Redis password in Debug"
    );
    // coturn's file syntax, quoted.
    let c = file(&["vigi-turn"], "redis-userdb=\"ip=127.0.0.1 port=7000\"\n").unwrap();
    assert_eq!(c.fleet.redis_userdb.unwrap().port, 7000);
    let m = err(file(
        &["vigi-turn"],
        "redis-userdb=\"ip=127.0.0.1 nope=1\"\n",
    ));
    assert!(m.starts_with("t.conf:1: ") && m.contains("nope"), "{m}");
    let m = err(load(&["vigi-turn", "-n", "--redis-refresh", "0"]));
    assert!(m.contains("--redis-refresh"), "{m}");
    // RFC 5780 needs two addresses of one family.
    let m = err(load(&[
        "vigi-turn",
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "::1",
        "--rfc5780",
    ]));
    assert!(m.starts_with("--rfc5780: "), "{m}");
    let c = load(&[
        "vigi-turn",
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
    ])
    .unwrap();
    assert!(c.stun.rfc5780);
}

const COTURN_OPTIONS: &str = include_str!("testdata/coturn_options.txt");

/// (name, takes a value as coturn declares it, sample value) for every coturn option.
fn coturn_options() -> Vec<(&'static str, bool, Option<&'static str>)> {
    COTURN_OPTIONS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(' ');
            let name = f.next().unwrap();
            let required = f.next().unwrap() == "required_argument";
            let sample = f.collect::<Vec<_>>().join(" ");
            (name, required, (sample != "-").then(|| &*sample.leak()))
        })
        .collect()
}

fn ignored(key: &str) -> bool {
    UNSUPPORTED.iter().any(|o| {
        !matches!(o.policy, Policy::Refuse(_)) && (o.long == key || o.aliases.contains(&key))
    })
}

/// What a loaded option must look like: refused ones fail naming the option, ignored ones
/// warn naming it, everything else loads.
fn check_option(name: &str, at: &str, result: Result<Config, ConfigError>) {
    if refused(name) {
        match result {
            Err(e @ ConfigError::Unsupported { .. }) => {
                // An alias on the command line is reported under the option's own name.
                let canonical = UNSUPPORTED.iter().find(|o| o.aliases.contains(&name));
                let at = match canonical {
                    Some(o) if at.starts_with("--") => format!("--{}", o.long),
                    _ => at.to_owned(),
                };
                assert!(e.to_string().starts_with(&at), "{at}: {e}")
            }
            other => panic!("{at}: should be refused, got {other:?}"),
        }
        return;
    }
    let c = result.unwrap_or_else(|e| panic!("{at}: {e}"));
    if ignored(name) {
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(name) && w.contains("ignored")),
            "{at}: ignored without a warning naming it: {:?}",
            c.warnings
        );
    }
    assert!(
        c.warnings.iter().all(|w| !w.contains("unknown option")),
        "{at}: {:?}",
        c.warnings
    );
}

#[test]
fn every_coturn_option_is_known_on_the_command_line_and_in_a_file() {
    let options = coturn_options();
    assert!(options.len() > 140, "{} options", options.len());
    let base = ["vigi-turn", "-n", "--static-auth-secret=base"];
    for &(name, required, sample) in &options {
        // --rfc5780 needs the alternate address (two listening IPs of one family).
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        if name == "rfc5780" {
            args.extend(["-L", "127.0.0.1", "-L", "127.0.0.2"].map(String::from));
        }
        if name == "version" {
            let e = load(&["vigi-turn", "--version"]).unwrap_err();
            assert!(e.is_help_or_version());
            let c = file(&base, "version\n").unwrap();
            assert!(c.warnings[0].contains("only valid on the command line"));
            continue;
        }
        assert!(
            required == sample.is_some() || sample.is_some(),
            "{name}: needs a sample"
        );
        // The command line: `--name=value`, `--name value` (for a required value), and the
        // bare flag and `--name=1` for a boolean.
        let mut forms = Vec::new();
        match sample {
            Some(v) => {
                forms.push(vec![format!("--{name}={v}")]);
                // getopt gives an optional argument only with `=`, so coturn does too.
                if required {
                    forms.push(vec![format!("--{name}"), v.to_owned()]);
                }
            }
            None => {
                forms.push(vec![format!("--{name}")]);
                forms.push(vec![format!("--{name}=1")]);
            }
        }
        for form in forms {
            let mut argv = args.clone();
            argv.extend(form.iter().cloned());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            check_option(name, &format!("--{name}"), load(&argv));
        }
        // turnserver.conf: `name=value`, `name value` and the bare key.
        let lines = match sample {
            Some(v) => vec![format!("{name}={v}"), format!("{name} {v}")],
            None => vec![name.to_owned(), format!("{name}=true")],
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        for line in lines {
            let r = Config::load_with_file_text(&argv, "turnserver.conf", &line);
            check_option(name, &format!("turnserver.conf:1: {name}"), r);
        }
    }
    // One file with every option line: each tokenizes, none is unknown.
    let text: String = options
        .iter()
        .filter(|(n, ..)| *n != "version")
        .map(|(n, _, v)| match v {
            Some(v) => format!("{n}={v}\n"),
            None => format!("{n}\n"),
        })
        .collect();
    let mut warnings = Warnings::default();
    let tokens = file_tokens(
        &mut cli::command(),
        &"vigi-turn".into(),
        "turnserver.conf",
        &text
            .lines()
            .filter(|l| !refused(l.split('=').next().unwrap()))
            .collect::<Vec<_>>()
            .join("\n"),
        &mut warnings,
    )
    .unwrap();
    assert!(tokens.len() > 130);
    assert!(
        warnings.list.iter().all(|w| !w.contains("unknown")),
        "{:?}",
        warnings.list
    );
}

#[test]
fn coturn_4_7_names_behave() {
    // software-attribute: a bare flag (4.7+), a boolean, or our text.
    let c = load(&["vigi-turn", "-n", "--software-attribute"]).unwrap();
    assert!(!c.stun.no_software_attribute && c.stun.software_attribute.is_none());
    let c = load(&["vigi-turn", "-n", "--software-attribute=false"]).unwrap();
    assert!(c.stun.no_software_attribute);
    let c = load(&["vigi-turn", "-n", "--software-attribute", "acme relay"]).unwrap();
    assert_eq!(c.stun.software_attribute.as_deref(), Some("acme relay"));
    let c = file(&["vigi-turn"], "software-attribute\nfingerprint\n").unwrap();
    assert!(!c.stun.no_software_attribute && c.stun.fingerprint);
    // rfc3489-compatibility beats the 4.6 name; the default answers classic clients.
    assert!(
        load(&["vigi-turn", "-n"])
            .unwrap()
            .stun
            .rfc3489_compatibility
    );
    let c = load(&["vigi-turn", "-n", "--no-stun-backward-compatibility"]).unwrap();
    assert!(!c.stun.rfc3489_compatibility);
    let c = load(&["vigi-turn", "-n", "--rfc3489-compatibility=off"]).unwrap();
    assert!(!c.stun.rfc3489_compatibility);
    // unauthorized-ratelimit is a boolean in 4.17, with the rate in -rps.
    let c = load(&["vigi-turn", "-n", "--unauthorized-ratelimit"]).unwrap();
    assert_eq!(c.limits.unauthorized_ratelimit, 1000);
    let c = load(&["vigi-turn", "-n", "--unauthorized-ratelimit=false"]).unwrap();
    assert_eq!(c.limits.unauthorized_ratelimit, 0);
    let c = file(
        &["vigi-turn"],
        "unauthorized-ratelimit\nunauthorized-ratelimit-rps=10\n",
    )
    .unwrap();
    assert_eq!(c.limits.unauthorized_ratelimit, 10);
    // cpus sets the default worker count; -m wins.
    assert_eq!(
        load(&["vigi-turn", "-n", "--cpus=3"])
            .unwrap()
            .relay
            .relay_threads,
        3
    );
    assert_eq!(
        load(&["vigi-turn", "-n", "--cpus=3", "-m", "2"])
            .unwrap()
            .relay
            .relay_threads,
        2
    );
    let c = load(&[
        "vigi-turn",
        "-n",
        "--log-min-level=WARNING",
        "--drain-min-allocations=4",
    ]);
    let c = c.unwrap();
    assert_eq!(c.log.log_min_level, Some(cli::LogLevel::Warning));
    assert_eq!(c.log.drain_min_allocations, 4);
    let c = load(&["vigi-turn", "-n", "--stateless-nonce-secret=k"]).unwrap();
    assert!(!format!("{c:?}").contains("\"k\""));
    // Options that are only partly honoured say so.
    for (flag, needle) in [
        ("--prometheus-path=/m", "served at /metrics"),
        ("--alt-tls-listening-port=5350", "UDP only"),
        ("--stateless-nonce=false", "always stateless"),
        ("--mobility", "MICE"),
        ("--no-sslv3", "never offered"),
    ] {
        let c = load(&["vigi-turn", "-n", flag]).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains(needle)),
            "{flag}: {:?}",
            c.warnings
        );
    }
    // Unchanged defaults are not warned about.
    let c = load(&[
        "vigi-turn",
        "-n",
        "--prometheus-path=/metrics",
        "--stateless-nonce",
    ])
    .unwrap();
    assert!(c
        .warnings
        .iter()
        .all(|w| !w.contains("prometheus") && !w.contains("nonce")));
}

#[test]
fn errors_keep_clap_tips_and_file_keys_get_suggestions() {
    let m = err(load(&["vigi-turn", "-n", "--listen-port", "3"]));
    assert!(
        m.contains("tip: a similar argument exists: '--listening-port'"),
        "{m}"
    );
    let m = err(load(&["vigi-turn", "-n", "-A", "ipv5"]));
    assert!(m.contains("[possible values: ipv4, ipv6, keep]"), "{m}");
    let c = file(&["vigi-turn"], "listen-port=3478\nrelay-treads=2\nxyzzy\n").unwrap();
    assert!(
        c.warnings[0].contains("(did you mean 'listening-port'?)"),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[1].contains("(did you mean 'relay-threads'?)"),
        "{:?}",
        c.warnings
    );
    assert!(!c.warnings[2].contains("did you mean"), "{:?}", c.warnings);
}

#[test]
fn help_is_grouped_and_honest() {
    let help = cli::command().render_help().to_string();
    for heading in [
        "Listeners:",
        "Authentication and user databases:",
        "Logging and process:",
    ] {
        assert!(help.contains(heading), "{heading}");
    }
    assert!(help.contains("coturn options not implemented"));
    assert!(help.contains("Refused: vigi-turn never forks"));
    let oauth = help.lines().position(|l| l.contains("--oauth")).unwrap();
    assert!(
        help.lines().nth(oauth).unwrap().contains("Refused")
            || help.lines().nth(oauth + 1).unwrap().contains("Refused")
    );
}

#[test]
fn alternate_server_without_a_shared_nonce_key_warns() {
    let warned = |extra: &[&str]| {
        let mut args = vec![
            "vigi-turn",
            "-n",
            "--user=a:b",
            "--alternate-server=192.0.2.7",
        ];
        args.extend(extra);
        load(&args)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.starts_with("--alternate-server without --stateless-nonce-secret"))
    };
    assert!(warned(&[]));
    assert!(!warned(&["--stateless-nonce-secret=k"]));
    assert!(!warned(&["--no-auth"]));
}

#[test]
fn debug_shows_no_secret() {
    let c = load(&[
        "vigi-turn",
        "-n",
        "--use-auth-secret",
        "--static-auth-secret",
        "rest-s3cret",
        "--stateless-nonce-secret",
        "nonce-s3cret",
        "--user",
        "alice:pw-s3cret",
        "--signaling-listen",
        "127.0.0.1:0",
        "--signaling-secret",
        "sig-s3cret",
    ])
    .unwrap();
    let text = format!("{c:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("alice"), "names are not secrets");
}
