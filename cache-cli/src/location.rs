//! Where a cache lives: `--cache` and `--remote` values, and the credentials that go
//! with remote ones.
//!
//! | form | meaning | this build |
//! |---|---|---|
//! | `PATH`, `file:///abs/path` | a local cache directory | supported |
//! | `s3://bucket[/prefix]` | an object store bucket | parsed, validated, refused |
//! | `grpc://host:port[/instance]`, `grpcs://host[:port][/instance]` | a REAPI server | parsed, validated, refused |
//!
//! Values are taken as strings and parsed here rather than by clap, so that an error
//! message never echoes credentials someone put in a URL: [`redact`] removes the user
//! info and the query before any URL is shown. Secrets read from the environment are
//! held in [`Secret`], whose `Debug` and `Display` never show the value.

use std::fmt;
use std::path::PathBuf;

/// A parsed `--cache` / `--remote` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local cache directory.
    Local(PathBuf),
    /// An S3 (or S3-compatible) bucket and key prefix.
    S3 {
        /// Bucket name (validated against S3's naming rules).
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// A Remote Execution API v2 server.
    Grpc {
        /// `grpcs://`: TLS.
        tls: bool,
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
        /// REAPI instance name (may be empty; may contain `/`).
        instance: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Grpc {
                tls,
                host,
                port,
                instance,
            } => {
                let scheme = if *tls { "grpcs" } else { "grpc" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}/{instance}")
                } else {
                    write!(f, "{scheme}://{host}:{port}/{instance}")
                }
            }
        }
    }
}

const FORMS: &str = "use a directory path, file:///abs/path, s3://bucket/prefix, \
                     grpc://host:port[/instance] or grpcs://host[:port][/instance]";

impl Location {
    /// Parses a location. Errors name the problem and the accepted forms, and show
    /// the value only through [`redact`].
    pub fn parse(raw: &str) -> Result<Location, String> {
        let shown = redact(raw);
        if raw.trim().is_empty() {
            return Err(format!("the cache location is empty: {FORMS}"));
        }
        if raw.contains('\0') {
            return Err(format!("{shown:?} contains a NUL byte"));
        }
        let Some((scheme, rest)) = split_scheme(raw) else {
            return Ok(Location::Local(PathBuf::from(raw)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => parse_file(rest, &shown),
            "s3" => parse_s3(rest, &shown),
            "grpc" => parse_grpc(rest, false, &shown),
            "grpcs" => parse_grpc(rest, true, &shown),
            other => Err(format!(
                "{shown:?}: the URL scheme {other:?} is not a cache location: {FORMS}"
            )),
        }
    }

    /// The kind of backend, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local(_) => "local",
            Location::S3 { .. } => "s3",
            Location::Grpc { .. } => "grpc",
        }
    }
}

/// `scheme://rest` if `raw` starts with a URL scheme (letters, digits, `+-.`).
fn split_scheme(raw: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = raw.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// Shows a location without credentials: user info becomes `***`, a query or
/// fragment is cut. Plain paths are returned as they are.
pub fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = split_scheme(raw) else {
        return raw.to_owned();
    };
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let (rest, tail) = (&rest[..cut], if cut < rest.len() { "?***" } else { "" });
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}{tail}")
}

fn refuse_extras(rest: &str, shown: &str) -> Result<(), String> {
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{shown:?}: query strings and fragments are not understood here; remove them"
        ));
    }
    Ok(())
}

fn refuse_userinfo(authority: &str, shown: &str, what: &str) -> Result<(), String> {
    if authority.contains('@') {
        return Err(format!(
            "{shown:?}: do not put credentials in the URL (they would end up in logs); {what}"
        ));
    }
    Ok(())
}

fn parse_file(rest: &str, shown: &str) -> Result<Location, String> {
    refuse_extras(rest, shown)?;
    // file:///abs/path or file://localhost/abs/path; nothing else names a local file.
    let path = if let Some(p) = rest.strip_prefix("localhost/") {
        format!("/{p}")
    } else if rest.starts_with('/') {
        rest.to_owned()
    } else {
        return Err(format!(
            "{shown:?}: a file URL needs an absolute path, as in file:///var/cache/taskcache \
             (or give the path itself, which may be relative)"
        ));
    };
    let decoded = percent_decode(&path).ok_or_else(|| {
        format!("{shown:?}: bad %-escape in the path (use %XX with two hex digits)")
    })?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| format!("{shown:?}: the %-escapes do not decode to UTF-8"))?;
    if decoded.contains('\0') {
        return Err(format!("{shown:?}: the path contains a NUL byte"));
    }
    Ok(Location::Local(PathBuf::from(decoded)))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn parse_s3(rest: &str, shown: &str) -> Result<Location, String> {
    refuse_extras(rest, shown)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    refuse_userinfo(
        bucket,
        shown,
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
    )?;
    check_bucket(bucket).map_err(|why| format!("{shown:?}: bad bucket name {bucket:?}: {why}"))?;
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(format!(
            "{shown:?}: the key prefix may not contain `.` or `..` segments"
        ));
    }
    if prefix.contains("//") {
        return Err(format!(
            "{shown:?}: the key prefix has an empty segment (`//`)"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(format!(
            "{shown:?}: the key prefix contains control characters"
        ));
    }
    Ok(Location::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// S3's bucket naming rules (3-63 characters of `a-z0-9.-`, starting and ending with a
/// letter or digit, no `..`, not an IP address).
fn check_bucket(b: &str) -> Result<(), &'static str> {
    if b.is_empty() {
        return Err("it is empty; write s3://bucket/prefix");
    }
    if !(3..=63).contains(&b.len()) {
        return Err("bucket names are 3 to 63 characters long");
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err("only lowercase letters, digits, `.` and `-` are allowed");
    }
    let ends_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !ends_ok(b.as_bytes()[0]) || !ends_ok(b.as_bytes()[b.len() - 1]) {
        return Err("it must start and end with a letter or digit");
    }
    if b.contains("..") {
        return Err("it may not contain `..`");
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("it may not look like an IP address");
    }
    Ok(())
}

fn parse_grpc(rest: &str, tls: bool, shown: &str) -> Result<Location, String> {
    refuse_extras(rest, shown)?;
    let (authority, instance) = rest.split_once('/').unwrap_or((rest, ""));
    refuse_userinfo(
        authority,
        shown,
        "put a bearer token or header in TASKCACHE_REMOTE_HEADERS instead",
    )?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{shown:?}: `[` without `]` in the IPv6 address"))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{shown:?}: {host:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{shown:?}: expected `:port` after the IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "{shown:?}: no host; write grpc://host:port[/instance]"
        ));
    }
    if !authority.starts_with('[') && !valid_host(host) {
        return Err(format!(
            "{shown:?}: {host:?} is not a valid host name (letters, digits, `-` and `.`)"
        ));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{shown:?}: {p:?} is not a port number (1-65535)"))?,
        None if tls => 443,
        None => {
            return Err(format!(
                "{shown:?}: grpc:// needs a port, as in grpc://{host}:8980 (grpcs:// defaults to 443)"
            ));
        }
    };
    let instance = instance.trim_end_matches('/');
    if !instance.is_empty()
        && instance
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "{shown:?}: the instance name has an empty, `.` or `..` segment"
        ));
    }
    if instance
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{shown:?}: the instance name contains spaces or control characters"
        ));
    }
    Ok(Location::Grpc {
        tls,
        host: host.to_owned(),
        port,
        instance: instance.to_owned(),
    })
}

fn valid_host(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A secret value: usable through [`Secret::expose`], never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the code that sends it (never for logs).
    #[allow(dead_code, reason = "read by the s3 and grpc backends of later issues")]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Headers sent with every call to a grpc(s) remote, from `TASKCACHE_REMOTE_HEADERS`
/// (`name=value,name=value`), e.g. `authorization=Bearer abc123`.
///
/// Names are lowercased (gRPC metadata keys are lowercase) and must be HTTP header
/// tokens; values must be printable ASCII without commas. `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RemoteHeaders(Vec<(String, Secret)>);

impl fmt::Debug for RemoteHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// The environment variable [`RemoteHeaders`] are read from.
pub const REMOTE_HEADERS_VAR: &str = "TASKCACHE_REMOTE_HEADERS";

impl RemoteHeaders {
    /// Parses `name=value,...`. Errors name the entry by position and never include a value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut headers = Vec::new();
        for (i, item) in raw.split(',').enumerate() {
            let n = i + 1;
            if item.trim().is_empty() {
                if raw.trim().is_empty() {
                    break;
                }
                return Err(format!(
                    "{REMOTE_HEADERS_VAR}: entry {n} is empty; write name=value,name=value"
                ));
            }
            let Some((name, value)) = item.split_once('=') else {
                return Err(format!(
                    "{REMOTE_HEADERS_VAR}: entry {n} has no `=`; write name=value,name=value"
                ));
            };
            let name = name.trim();
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                return Err(format!(
                    "{REMOTE_HEADERS_VAR}: entry {n} has a bad header name (use letters, digits and `-`)"
                ));
            }
            let value = value.trim();
            if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return Err(format!(
                    "{REMOTE_HEADERS_VAR}: the value of header {name:?} (entry {n}) has characters other than printable ASCII"
                ));
            }
            headers.push((name.to_ascii_lowercase(), Secret::new(value)));
        }
        Ok(RemoteHeaders(headers))
    }

    /// Reads [`REMOTE_HEADERS_VAR`] through `get`; `Ok(empty)` when unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        get(REMOTE_HEADERS_VAR).map_or_else(|| Ok(RemoteHeaders::default()), |v| Self::parse(&v))
    }

    /// The header names and values (values are for sending only).
    #[allow(dead_code, reason = "read by the grpc backend of a later issue")]
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// S3 settings from the usual AWS variables. `Debug` never shows the keys.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<Secret>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<Secret>,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL`, for S3-compatible servers.
    pub endpoint: Option<String>,
    /// `AWS_ALLOW_HTTP`: allow a plain-http endpoint.
    pub allow_http: bool,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Settings {
    /// Reads and checks the AWS variables through `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let access_key_id = non_empty("AWS_ACCESS_KEY_ID").map(Secret::new);
        let secret_access_key = non_empty("AWS_SECRET_ACCESS_KEY").map(Secret::new);
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".to_owned(),
            );
        }
        let allow_http = match non_empty("AWS_ALLOW_HTTP").as_deref() {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => return Err("AWS_ALLOW_HTTP must be true or false".to_owned()),
            },
        };
        let endpoint = non_empty("AWS_ENDPOINT_URL");
        if let Some(e) = &endpoint {
            let shown = redact(e);
            match split_scheme(e).map(|(s, r)| (s.to_ascii_lowercase(), r)) {
                Some((s, r)) if (s == "http" || s == "https") && !r.is_empty() => {
                    if s == "http" && !allow_http {
                        return Err(format!(
                            "AWS_ENDPOINT_URL {shown:?} is plain http: set AWS_ALLOW_HTTP=true to allow it"
                        ));
                    }
                }
                _ => {
                    return Err(format!("AWS_ENDPOINT_URL {shown:?} is not an http(s) URL"));
                }
            }
        }
        Ok(S3Settings {
            access_key_id,
            secret_access_key,
            session_token: non_empty("AWS_SESSION_TOKEN").map(Secret::new),
            region: non_empty("AWS_REGION").or_else(|| non_empty("AWS_DEFAULT_REGION")),
            endpoint,
            allow_http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ok(s: &str) -> Location {
        Location::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn local_forms() {
        assert_eq!(ok("/var/cache/tc"), Location::Local("/var/cache/tc".into()));
        assert_eq!(ok("rel/dir"), Location::Local("rel/dir".into()));
        assert_eq!(ok("c:weird"), Location::Local("c:weird".into()));
        assert_eq!(ok("file:///a/b"), Location::Local("/a/b".into()));
        assert_eq!(ok("FILE:///a%20b"), Location::Local("/a b".into()));
        assert_eq!(ok("file://localhost/x"), Location::Local("/x".into()));
        for bad in [
            "file://host/x",
            "file://rel",
            "file:///a%2",
            "file:///a%zz",
            "file:///a?x=1",
            "",
            "file:///a%00",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_forms() {
        assert_eq!(
            ok("s3://my-bucket/ci/cache/"),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "ci/cache".into()
            }
        );
        assert_eq!(
            ok("s3://b.example"),
            Location::S3 {
                bucket: "b.example".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-x-y",
            "s3://a..b",
            "s3://192.168.1.1",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://key:secret@bucket/p",
            &format!("s3://{}", "a".repeat(64)),
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grpc_forms() {
        assert_eq!(
            ok("grpc://cache.internal:8980/projects/x/instances/default"),
            Location::Grpc {
                tls: false,
                host: "cache.internal".into(),
                port: 8980,
                instance: "projects/x/instances/default".into()
            }
        );
        assert_eq!(
            ok("grpcs://remote.example"),
            Location::Grpc {
                tls: true,
                host: "remote.example".into(),
                port: 443,
                instance: String::new()
            }
        );
        assert_eq!(ok("grpc://[::1]:9092").to_string(), "grpc://[::1]:9092/");
        for bad in [
            "grpc://host",
            "grpc://:80",
            "grpc://host:0",
            "grpc://host:99999",
            "grpc://host:x",
            "grpc://ho_st:80",
            "grpc://[::1",
            "grpc://[nope]:80",
            "grpc://h:80/a//b",
            "grpc://user:pw@h:80",
            "http://example.com",
            "ftp://x/y",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_never_show_credentials() {
        for raw in [
            "grpc://user:hunter2@h:80",
            "s3://AKIA:hunter2@bucket/x",
            "grpcs://h/x?token=hunter2",
            "gopher://u:hunter2@h/",
        ] {
            let err = Location::parse(raw).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert_eq!(redact("grpcs://a:b@h:1/i?t=x"), "grpcs://***@h:1/i?***");
        assert_eq!(redact("/plain/path"), "/plain/path");
    }

    #[test]
    fn headers_parse_and_redact() {
        let h = RemoteHeaders::parse("Authorization=Bearer s3cr3t, x-tenant = acme").unwrap();
        let v: Vec<_> = h.iter().map(|(k, v)| (k, v.expose())).collect();
        assert_eq!(
            v,
            [("authorization", "Bearer s3cr3t"), ("x-tenant", "acme")]
        );
        let dbg = format!("{h:?}");
        assert!(
            dbg.contains("authorization") && !dbg.contains("s3cr3t") && !dbg.contains("acme"),
            "{dbg}"
        );
        assert_eq!(RemoteHeaders::parse("").unwrap(), RemoteHeaders::default());
        for bad in [
            "novalue",
            "a=1,,b=2",
            "=x",
            "bad name=1",
            "a=tab\there",
            "a=caf\u{e9}",
        ] {
            let err = RemoteHeaders::parse(bad).unwrap_err();
            assert!(err.contains(REMOTE_HEADERS_VAR), "{err}");
            assert!(!err.contains("tab\there") && !err.contains("caf"), "{err}");
        }
        let env: HashMap<&str, String> = HashMap::from([(REMOTE_HEADERS_VAR, "a=b".to_owned())]);
        assert_eq!(
            RemoteHeaders::from_env(|k| env.get(k).cloned())
                .unwrap()
                .iter()
                .count(),
            1
        );
    }

    #[test]
    fn aws_settings() {
        let from = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            S3Settings::from_env(|k| m.get(k).cloned())
        };
        let s = from(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert!(s.allow_http);
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            s.secret_access_key.as_ref().map(Secret::expose),
            Some("wJalrXUtnFEMI")
        );
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("wJalrXUtnFEMI") && !dbg.contains("AKIDEXAMPLE"),
            "{dbg}"
        );
        assert!(from(&[("AWS_ACCESS_KEY_ID", "x")]).is_err());
        assert!(
            from(&[("AWS_ENDPOINT_URL", "http://h:1")])
                .unwrap_err()
                .contains("AWS_ALLOW_HTTP")
        );
        assert!(from(&[("AWS_ENDPOINT_URL", "h:1")]).is_err());
        assert!(from(&[("AWS_ALLOW_HTTP", "maybe")]).is_err());
        assert_eq!(from(&[]).unwrap(), S3Settings::default());
    }
}
