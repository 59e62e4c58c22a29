//! libpq-style connection strings (keyword/value and URI forms) and `.pgpass` look-up.
//!
//! Supported keywords: host, port, user, password, passfile, dbname, sslmode, sslrootcert,
//! sslcert, sslkey, application_name, connect_timeout, keepalives, keepalives_idle,
//! keepalives_interval, keepalives_count, tcp_user_timeout, channel_binding. Anything else is
//! refused by name, so a typo never silently falls back to a default.
//!
//! Secrets: the password is redacted in `Debug`, never part of `Display`, and no error message
//! quotes it (nor the whole URI, whose userinfo may hold it): these messages reach logs,
//! `check-config`, and through `wal-get` the PostgreSQL server log.

use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The keywords we accept; the order is the documentation order.
pub const KEYWORDS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "channel_binding",
];

/// TCP keepalive defaults (pgark's, not the kernel's two hours): a half-open connection on an
/// idle link is found within about idle + interval * count = 25 s.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
/// `TCP_USER_TIMEOUT` default: data pgark sent that stays unacknowledged this long closes the
/// connection, so a half-open connection is found even while pgark is the one sending (status
/// updates). Equal to the default `receiver_timeout`.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// TCP keepalive settings (libpq's `keepalives_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Keepalives {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// libpq's `channel_binding`: whether SCRAM binds the authentication to the TLS channel
/// (`tls-server-end-point`), so that a man in the middle holding another certificate cannot relay
/// a password exchange.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelBindingMode {
    Disable,
    /// Bind when the connection is encrypted and the server offers SCRAM-SHA-256-PLUS (default).
    Prefer,
    /// Refuse to authenticate without channel binding (so: only over TLS, only with SCRAM).
    Require,
}

/// The application_name pgark sends unless the connection string names another; it is the name
/// to list in `synchronous_standby_names`.
pub const DEFAULT_APPLICATION_NAME: &str = "pgark";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

/// Where to connect: a TCP host or a Unix-socket directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Host {
    Tcp(String),
    Unix(PathBuf),
}

/// A parsed connection string.
#[derive(Clone)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub passfile: Option<PathBuf>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Option<Duration>,
    /// `None` when `keepalives=0`.
    pub keepalives: Option<Keepalives>,
    /// `None` when `tcp_user_timeout=0` (the kernel's default then applies).
    pub tcp_user_timeout: Option<Duration>,
    pub channel_binding: ChannelBindingMode,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("application_name", &self.application_name)
            .field("keepalives", &self.keepalives)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("channel_binding", &self.channel_binding)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ConnInfo {
    /// A human description without secrets, for logs: `user@host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) => write!(f, "{}@{}:{}", self.user, h, self.port),
            Host::Unix(d) => write!(f, "{}@{}/.s.PGSQL.{}", self.user, d.display(), self.port),
        }
    }
}

impl ConnInfo {
    /// Parses either form: `postgres[ql]://…` URIs or `key=value …` strings.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        let pairs = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
            parse_uri(text)?
        } else {
            parse_keyword_value(text)?
        };
        Self::from_pairs(pairs)
    }

    fn from_pairs(pairs: BTreeMap<String, String>) -> Result<ConnInfo, String> {
        for k in pairs.keys() {
            if !KEYWORDS.contains(&k.as_str()) {
                return Err(format!("unknown connection keyword {k:?}; supported: {}", KEYWORDS.join(", ")));
            }
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let get = |k: &str, env_name: &str| pairs.get(k).cloned().or_else(|| env(env_name));
        let host_text = get("host", "PGHOST").unwrap_or_else(default_host);
        if host_text.contains(',') {
            return Err(format!(
                "host {host_text:?}: several hosts in one connection string are not supported"
            ));
        }
        let host = if host_text.starts_with('/') {
            Host::Unix(PathBuf::from(&host_text))
        } else {
            Host::Tcp(host_text)
        };
        let port = match get("port", "PGPORT") {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("port {p:?}: expected a number from 1 to 65535"))?,
            None => 5432,
        };
        let user = get("user", "PGUSER").unwrap_or_else(current_os_user);
        let sslmode = match get("sslmode", "PGSSLMODE") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => {
                let secs: i64 = t.parse().map_err(|_| format!("connect_timeout {t:?}: expected whole seconds"))?;
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
            None => None,
        };
        let keepalives = parse_keepalives(&get)?;
        let tcp_user_timeout = match get("tcp_user_timeout", "PGTCPUSERTIMEOUT") {
            Some(t) => {
                let ms: u64 = t
                    .parse()
                    .map_err(|_| format!("tcp_user_timeout {t:?}: expected milliseconds (0 for the system default)"))?;
                (ms > 0).then(|| Duration::from_millis(ms))
            }
            None => Some(DEFAULT_TCP_USER_TIMEOUT),
        };
        let channel_binding = match get("channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBindingMode::Prefer,
            Some("disable") => ChannelBindingMode::Disable,
            Some("require") => ChannelBindingMode::Require,
            Some(other) => return Err(format!("channel_binding {other:?}: expected disable, prefer or require")),
        };
        let application_name = pairs
            .get("application_name")
            .cloned()
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());
        validate_application_name(&application_name)?;
        let home_file = |name: &str| home_dir().map(|h| h.join(".postgresql").join(name));
        Ok(ConnInfo {
            host,
            port,
            user,
            password: get("password", "PGPASSWORD"),
            passfile: get("passfile", "PGPASSFILE").map(PathBuf::from),
            dbname: pairs.get("dbname").cloned(),
            sslmode,
            sslrootcert: get("sslrootcert", "PGSSLROOTCERT")
                .map(PathBuf::from)
                .or_else(|| home_file("root.crt")),
            sslcert: get("sslcert", "PGSSLCERT")
                .map(PathBuf::from)
                .or_else(|| home_file("postgresql.crt")),
            sslkey: get("sslkey", "PGSSLKEY").map(PathBuf::from).or_else(|| home_file("postgresql.key")),
            application_name,
            connect_timeout,
            keepalives,
            tcp_user_timeout,
            channel_binding,
        })
    }

    /// The password to send: the connection string's, else `PGPASSWORD`, else the first matching
    /// `.pgpass` line (`passfile`, `PGPASSFILE` or `~/.pgpass`). `database` is what libpq matches
    /// against: `replication` for physical replication connections.
    pub fn resolve_password(&self, database: &str) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = self.passfile.clone().or_else(|| home_dir().map(|h| h.join(".pgpass")))?;
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => "localhost".to_string(),
        };
        pgpass_lookup(&file, &host, self.port, database, &self.user)
    }
}

/// `keepalives` (0 or 1, default 1) and its three settings, in seconds and a count as libpq takes
/// them; pgark's defaults apply to what is not set.
fn parse_keepalives(get: &dyn Fn(&str, &str) -> Option<String>) -> Result<Option<Keepalives>, String> {
    match get("keepalives", "PGKEEPALIVES").as_deref() {
        None | Some("1") => {}
        Some("0") => return Ok(None),
        Some(other) => return Err(format!("keepalives {other:?}: expected 0 or 1")),
    }
    let secs = |key: &str, env: &str, default: Duration| -> Result<Duration, String> {
        match get(key, env) {
            None => Ok(default),
            Some(t) => match t.parse::<u64>() {
                Ok(s) if (1..=32767).contains(&s) => Ok(Duration::from_secs(s)),
                _ => Err(format!("{key} {t:?}: expected whole seconds from 1 to 32767")),
            },
        }
    };
    let count = match get("keepalives_count", "PGKEEPALIVESCOUNT") {
        None => DEFAULT_KEEPALIVES_COUNT,
        Some(t) => match t.parse::<u32>() {
            Ok(c) if (1..=127).contains(&c) => c,
            _ => return Err(format!("keepalives_count {t:?}: expected a count from 1 to 127")),
        },
    };
    Ok(Some(Keepalives {
        idle: secs("keepalives_idle", "PGKEEPALIVESIDLE", DEFAULT_KEEPALIVES_IDLE)?,
        interval: secs("keepalives_interval", "PGKEEPALIVESINTERVAL", DEFAULT_KEEPALIVES_INTERVAL)?,
        count,
    }))
}

/// `application_name` is what synchronous_standby_names matches; PostgreSQL truncates it at 63
/// bytes and replaces non-printable ASCII, which would silently break matching, so refuse those.
pub fn validate_application_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("application_name {name:?}: expected 1 to 63 printable ASCII characters"));
    }
    Ok(())
}

fn default_host() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "localhost".into()
    }
}

fn current_os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres".into())
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn parse_keyword_value(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?} in connection string"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for {key:?} in connection string")),
                    Some('\\') => value.push(chars.next().ok_or_else(|| format!("dangling backslash in value for {key:?}"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| format!("dangling backslash in value for {key:?}"))?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err("empty keyword in connection string".into());
        }
        out.insert(key, value);
    }
}

/// Percent-decodes one part of a URI. The error names the part (`what`) and quotes its text
/// only when that is not a secret.
fn decode(s: &str, what: &str) -> Result<String, String> {
    percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| {
        if what == "password" {
            "the URI's password is not valid percent-encoded UTF-8".to_string()
        } else {
            format!("the URI's {what} {s:?} is not valid percent-encoded UTF-8")
        }
    })
}

fn parse_uri(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let rest = text.split_once("://").map(|x| x.1).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (u, p) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if !u.is_empty() {
            out.insert("user".into(), decode(u, "user name")?);
        }
        if let Some(p) = p {
            out.insert("password".into(), decode(p, "password")?);
        }
    }
    if !hostport.is_empty() {
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // Not the URI itself in the message: its userinfo may hold the password.
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("unterminated IPv6 address [{h}... in the URI's host part"))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.to_string())),
                None => (hostport.to_string(), None),
            }
        };
        if !host.is_empty() {
            out.insert("host".into(), decode(&host, "host")?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            out.insert("port".into(), p);
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.insert("dbname".into(), decode(db, "database name")?);
    }
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("URI parameter {pair:?} lacks \"=\""))?;
        let key = decode(k, "parameter name")?;
        let value = decode(v, if key == "password" { "password" } else { "parameter value" })?;
        out.insert(key, value);
    }
    Ok(out)
}

/// Looks a password up in a `.pgpass` file. Like libpq, a file readable by group or others is
/// ignored (with a warning), and `*` matches anything.
pub fn pgpass_lookup(file: &Path, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "password file has group or world access; ignoring it (chmod 0600 it)");
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    pgpass_find(&text, host, port, database, user)
}

/// The password of the first line of a `.pgpass` text matching the connection (`*` matches
/// anything; `\:` and `\\` escape).
pub fn pgpass_find(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], host) && matches(&fields[1], &port) && matches(&fields[2], database) && matches(&fields[3], user) {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("fields is never empty").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("fields is never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_value_form() {
        let c = ConnInfo::parse(
            "host=db.example port=6543 user=rep password='a b\\'c' sslmode=verify-full application_name=pgark_x connect_timeout=5",
        )
        .unwrap();
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "rep");
        assert_eq!(c.password.as_deref(), Some("a b'c"));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name, "pgark_x");
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));
        assert!(!format!("{c:?}").contains("a b'c"), "password must be redacted");
    }

    #[test]
    fn uri_form() {
        let c = ConnInfo::parse("postgresql://rep:s%40cret@[::1]:5433/postgres?sslmode=require&application_name=x").unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.sslmode, SslMode::Require);
        let c = ConnInfo::parse("postgres://u@%2Ftmp%2Fsock:5999").unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/sock".into()));
        let c = ConnInfo::parse("postgresql:///db?host=/run/pg&port=7000&user=me").unwrap();
        assert_eq!(c.host, Host::Unix("/run/pg".into()));
        assert_eq!(c.port, 7000);
    }

    #[test]
    fn refuses_bad_strings() {
        for bad in [
            "hots=x",
            "host",
            "port=0",
            "port=abc",
            "sslmode=maybe",
            "password='open",
            "host=a,b",
            "application_name=",
            "postgresql://h?nokey",
        ] {
            assert!(ConnInfo::parse(bad).is_err(), "{bad:?}");
        }
        let e = ConnInfo::parse("hots=x").unwrap_err();
        assert!(e.contains("\"hots\""), "{e}");
    }

    #[test]
    fn keepalives_user_timeout_and_channel_binding() {
        let c = ConnInfo::parse("host=h").unwrap();
        assert_eq!(
            c.keepalives,
            Some(Keepalives {
                idle: DEFAULT_KEEPALIVES_IDLE,
                interval: DEFAULT_KEEPALIVES_INTERVAL,
                count: DEFAULT_KEEPALIVES_COUNT
            })
        );
        assert_eq!(c.tcp_user_timeout, Some(DEFAULT_TCP_USER_TIMEOUT));
        assert_eq!(c.channel_binding, ChannelBindingMode::Prefer);
        let c = ConnInfo::parse(
            "host=h keepalives_idle=30 keepalives_interval=2 keepalives_count=9 tcp_user_timeout=1500 channel_binding=require",
        )
        .unwrap();
        let k = c.keepalives.unwrap();
        assert_eq!((k.idle.as_secs(), k.interval.as_secs(), k.count), (30, 2, 9));
        assert_eq!(c.tcp_user_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.channel_binding, ChannelBindingMode::Require);
        let c = ConnInfo::parse("host=h keepalives=0 tcp_user_timeout=0 channel_binding=disable").unwrap();
        assert_eq!(
            (c.keepalives, c.tcp_user_timeout, c.channel_binding),
            (None, None, ChannelBindingMode::Disable)
        );
        for bad in [
            "keepalives=2",
            "keepalives_idle=0",
            "keepalives_count=x",
            "tcp_user_timeout=-1",
            "channel_binding=maybe",
        ] {
            let e = ConnInfo::parse(bad).unwrap_err();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }

    /// Audit finding 10: no error message may carry the password (nor the URI holding it).
    #[test]
    fn errors_never_quote_the_password() {
        let secret = "Sup3r-S3cret";
        for bad in [
            format!("postgresql://rep:{secret}@[::1:5432/db"),
            format!("postgresql://rep:{secret}%FF@host/db"),
            format!("postgresql://rep@host/db?password={secret}%C3%28"),
            format!("postgresql://rep:{secret}@host/db?sslmode=maybe"),
            format!("host=h password={secret} sslmode=maybe"),
            format!("host=h password='{secret}"),
            format!("host=h password={secret} port=99999"),
            format!("host=h password={secret} hots=x"),
        ] {
            let e = ConnInfo::parse(&bad).unwrap_err();
            assert!(!e.contains(secret), "{bad:?} gave {e:?}");
        }
    }

    #[test]
    fn pgpass_matching_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:*:*:*:no\nlocalhost:5432:replication:rep:pa\\:ss\n*:*:*:*:fallback:with:colons\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pgpass_lookup(&f, "localhost", 5432, "replication", "rep").as_deref(), Some("pa:ss"));
        assert_eq!(pgpass_lookup(&f, "h2", 1, "d", "u").as_deref(), Some("fallback:with:colons"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup(&f, "localhost", 5432, "replication", "rep"), None);
    }
}
