//! Typed values of single options: static users (`--user`), peer address ranges
//! (`--allowed-peer-ip`, `--denied-peer-ip`) and NAT mappings (`--external-ip`).
//!
//! Each type parses itself with [`std::str::FromStr`]; the parse error is a short text that clap
//! (or the config file reader) wraps into a message naming the option. Secrets never appear in a
//! `Debug` output or an error message.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Which relay family an Allocate naming none gets (`-A/--allocation-default-address-family`):
/// the engine's own type, parsed here.
pub use crate::engine::server::DefaultFamily;

impl clap::ValueEnum for DefaultFamily {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            DefaultFamily::Ipv4,
            DefaultFamily::Ipv6,
            DefaultFamily::Keep,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            DefaultFamily::Ipv4 => "ipv4",
            DefaultFamily::Ipv6 => "ipv6",
            DefaultFamily::Keep => "keep",
        }))
    }
}

/// How `--xdp-mode` attaches the kernel fast path (issue 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpMode {
    /// Generic on a veth (a container's interface) and on `lo`; elsewhere the kernel picks: the
    /// driver's native hook when it has one, else generic.
    #[default]
    Auto,
    /// The driver's hook only (fails on a driver without XDP support).
    Native,
    /// The generic (skb) hook: any interface, `lo` included, at a higher cost per packet.
    Generic,
}

/// One static user account from `-u`/`--user NAME:PASSWORD` or `--user NAME:0x<32 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub secret: UserSecret,
}

/// The credential of a static user: the engine's own type.
pub use crate::engine::auth::UserSecret;

/// A secret from the command line or the config file (a REST secret, the nonce secret, the
/// admin token, the signaling secret): `Debug` shows only that there is one, so the
/// configuration derives `Debug` and can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// How clap reads a secret option (no check: an empty value is judged by the option).
impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why a `--user` value was rejected. The text never contains the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEntryError {
    MissingColon,
    EmptyName,
    EmptyPassword,
    BadHexKey,
}

impl fmt::Display for UserEntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserEntryError::MissingColon => {
                "expected NAME:PASSWORD or NAME:0x<32 hex digits> (no ':' found)"
            }
            UserEntryError::EmptyName => "the user name before ':' is empty",
            UserEntryError::EmptyPassword => "the password after ':' is empty",
            UserEntryError::BadHexKey => "a key given as 0x... must be exactly 32 hex digits",
        })
    }
}

impl std::error::Error for UserEntryError {}

impl FromStr for UserEntry {
    type Err = UserEntryError;

    /// The name ends at the first `:`, so a password may contain `:` (a name may not).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, secret) = s.split_once(':').ok_or(UserEntryError::MissingColon)?;
        if name.is_empty() {
            return Err(UserEntryError::EmptyName);
        }
        if secret.is_empty() {
            return Err(UserEntryError::EmptyPassword);
        }
        // coturn's convention: a secret starting with 0x is the hex long-term key.
        let secret = match secret
            .strip_prefix("0x")
            .or_else(|| secret.strip_prefix("0X"))
        {
            Some(hex) => UserSecret::Key(parse_hex_key(hex).ok_or(UserEntryError::BadHexKey)?),
            None => UserSecret::Password(secret.to_owned()),
        };
        Ok(UserEntry {
            name: name.to_owned(),
            secret,
        })
    }
}

/// 32 hex digits as a 16-byte key (coturn's stored MD5 keys).
pub fn parse_hex_key(hex: &str) -> Option<[u8; 16]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (out, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *out = (hi * 16 + lo) as u8;
    }
    Some(key)
}

/// An inclusive range of peer addresses of one family, from `A`, `A-B` (coturn) or `A/LEN`
/// (CIDR): the engine's own type, so a flag's value is what the policy judges by.
pub use crate::engine::policy::IpRange;

/// A NAT mapping from `-X`/`--external-ip PUBLIC[/PRIVATE]`: the address reported to clients as
/// the relay address, and optionally the local relay address it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    pub public: IpAddr,
    pub private: Option<IpAddr>,
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("'{}' is not an IP address", t.trim()))
        };
        match s.split_once('/') {
            Some((public, private)) => Ok(ExternalIp {
                public: ip(public)?,
                private: Some(ip(private)?),
            }),
            None => Ok(ExternalIp {
                public: ip(s)?,
                private: None,
            }),
        }
    }
}

/// coturn's Redis connection string (`--redis-userdb`, `--redis-statsdb`): space-separated
/// `key=value` pairs, all optional: `ip` (or `host`, `addr`, `ipaddr`, `hostaddr`; default
/// 127.0.0.1), `port` (or `p`; 6379), `dbname` (or `db`, `database`; 0), `password` (or `pwd`,
/// `passwd`, `secret`), `user` (or `uname`, `name`, `username`: a Redis 6 ACL user, which coturn
/// ignores) and `connect_timeout` (or `timeout`, seconds). An unknown key is an error, as in coturn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConn {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Seconds; 0 = the default (10 s).
    pub connect_timeout: u64,
}

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (after the scheme), onto defaults `c`.
fn parse_redis_url(url: &str, mut c: RedisConn) -> Result<RedisConn, String> {
    let (auth, rest) = match url.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, url),
    };
    if let Some(a) = auth {
        let (user, pass) = a.split_once(':').unwrap_or(("", a));
        c.username = Some(user.to_owned()).filter(|u| !u.is_empty());
        c.password = Some(Secret::new(pass)).filter(|p| !p.expose().is_empty());
    }
    let (hostport, db) = match rest.split_once('/') {
        Some((h, d)) => (h, Some(d)),
        None => (rest, None),
    };
    if let Some(d) = db.filter(|d| !d.is_empty()) {
        c.db = d
            .parse()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("redis:// database: expected a number, got '{d}'"))?;
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "redis:// host: unclosed '['".to_owned())?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if let Some(p) = port {
        c.port = p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("redis:// port: expected 1-65535, got '{p}'"))?;
    }
    if host.is_empty() {
        return Err("redis:// host must not be empty".into());
    }
    c.host = host.to_owned();
    Ok(c)
}

impl FromStr for RedisConn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = RedisConn {
            host: "127.0.0.1".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            connect_timeout: 0,
        };
        if let Some(url) = s.strip_prefix("redis://") {
            return parse_redis_url(url, c);
        }
        for pair in s.split(' ').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(format!("expected key=value, got '{pair}'"));
            };
            let number = |what: &str| format!("{k}: {what}, got '{v}'");
            match k {
                "ip" | "host" | "addr" | "ipaddr" | "hostaddr" => c.host = v.to_owned(),
                "port" | "p" => {
                    c.port = v
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| number("expected a port 1-65535"))?
                }
                "dbname" | "db" | "database" => {
                    c.db = v
                        .parse()
                        .ok()
                        .filter(|d| *d >= 0)
                        .ok_or_else(|| number("expected a database number"))?
                }
                "user" | "uname" | "name" | "username" => {
                    c.username = Some(v.to_owned()).filter(|v| !v.is_empty())
                }
                "password" | "pwd" | "passwd" | "secret" => {
                    c.password = Some(Secret::new(v)).filter(|v| !v.expose().is_empty())
                }
                "connect_timeout" | "timeout" => {
                    c.connect_timeout = v.parse().map_err(|_| number("expected seconds"))?
                }
                _ => return Err(format!("unknown key '{k}'")),
            }
        }
        if c.host.is_empty() {
            return Err("ip: must not be empty".into());
        }
        Ok(c)
    }
}

/// Checks an `--alternate-server` value: `IP`, `IPv4:PORT` or `[IPv6]:PORT`.
pub(crate) fn check_server_address(s: &str) -> Result<String, String> {
    let ok = s.parse::<IpAddr>().is_ok() || s.parse::<std::net::SocketAddr>().is_ok();
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected IP, IPv4:PORT or [IPv6]:PORT".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_connection_strings_as_coturn() {
        let c: RedisConn = "ip=10.0.0.2 dbname=2 password=turn port=6380 connect_timeout=30"
            .parse()
            .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.db, c.connect_timeout),
            ("10.0.0.2", 6380, 2, 30)
        );
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("turn"));
        assert!(!format!("{c:?}").contains("turn\""), "no password in Debug");
        let d: RedisConn = "".parse().unwrap();
        assert_eq!((d.host.as_str(), d.port, d.db), ("127.0.0.1", 6379, 0));
        let h: RedisConn = "  host=redis.local  db=3 ".parse().unwrap();
        assert_eq!((h.host.as_str(), h.db), ("redis.local", 3));
        assert!("ip=1.2.3.4 bogus=1".parse::<RedisConn>().is_err());
        assert!("port=0".parse::<RedisConn>().is_err());
        let u: RedisConn = "redis://app:pw@redis.internal:6380/3".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.username.as_deref()),
            ("redis.internal", 6380, 3, Some("app"))
        );
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("pw"));
        let u: RedisConn = "redis://:pw@[::1]".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.username), ("::1", 6379, None));
        let u: RedisConn = "redis://10.0.0.5".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("10.0.0.5", 6379, 0));
        for bad in [
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h/x",
            "redis://[::1",
        ] {
            assert!(bad.parse::<RedisConn>().is_err(), "{bad}");
        }
        assert!("port=99999".parse::<RedisConn>().is_err());
        assert!("dbname=x".parse::<RedisConn>().is_err());
        assert!("ip".parse::<RedisConn>().is_err());
    }

    #[test]
    fn user_password_and_key() {
        let u: UserEntry = "bob:pa:ss".parse().unwrap();
        assert_eq!(u.name, "bob");
        assert_eq!(u.secret, UserSecret::Password("pa:ss".into()));
        let u: UserEntry = "ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee"
            .parse()
            .unwrap();
        let UserSecret::Key(k) = u.secret else {
            panic!("not a key")
        };
        assert_eq!(k[0], 0xbc);
        assert_eq!(k[15], 0xee);
        assert_eq!(
            "a:0xbc80".parse::<UserEntry>(),
            Err(UserEntryError::BadHexKey)
        );
        assert_eq!(
            "a:0xzz807ee29df3c9ffa736523fb2c4e8ee".parse::<UserEntry>(),
            Err(UserEntryError::BadHexKey)
        );
        assert_eq!(
            "nocolon".parse::<UserEntry>(),
            Err(UserEntryError::MissingColon)
        );
        assert_eq!(":pw".parse::<UserEntry>(), Err(UserEntryError::EmptyName));
        assert_eq!(
            "a:".parse::<UserEntry>(),
            Err(UserEntryError::EmptyPassword)
        );
    }

    #[test]
    fn user_debug_hides_secret() {
        let u: UserEntry = "bob:hunter2".parse().unwrap();
        let s = format!("{u:?}");
        assert!(s.contains("bob") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn ranges() {
        let r: IpRange = "10.0.0.0-10.0.0.255".parse().unwrap();
        assert!(r.contains(&"10.0.0.7".parse().unwrap()));
        assert!(!r.contains(&"10.0.1.0".parse().unwrap()));
        assert!(r.contains(&"::ffff:10.0.0.9".parse().unwrap()));
        let r: IpRange = "192.168.1.77/24".parse().unwrap();
        assert_eq!(r.start, "192.168.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(r.end, "192.168.1.255".parse::<IpAddr>().unwrap());
        let r: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(r.contains(&"255.255.255.255".parse().unwrap()));
        assert!(!r.contains(&"::1".parse().unwrap()));
        let r: IpRange = "fe80::/10".parse().unwrap();
        assert!(r.contains(&"fe80::1".parse().unwrap()));
        let r: IpRange = "::1".parse().unwrap();
        assert!(r.contains(&"::1".parse().unwrap()));
        assert!("10.0.0.1-::1".parse::<IpRange>().is_err());
        assert!("10.0.0.9-10.0.0.1".parse::<IpRange>().is_err());
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nope".parse::<IpRange>().is_err());
    }

    #[test]
    fn external_ip() {
        let x: ExternalIp = "60.70.80.91/172.17.19.101".parse().unwrap();
        assert_eq!(x.private, Some("172.17.19.101".parse().unwrap()));
        let x: ExternalIp = "60.70.80.91".parse().unwrap();
        assert_eq!(x.private, None);
        assert!("60.70.80.91/x".parse::<ExternalIp>().is_err());
    }

    #[test]
    fn server_addresses() {
        for ok in [
            "1.2.3.4:5678",
            "5.6.7.8",
            "[2001:db8::1]:3478",
            "2001:db8::1",
        ] {
            assert!(check_server_address(ok).is_ok(), "{ok}");
        }
        assert!(check_server_address("host:1").is_err());
    }
}
