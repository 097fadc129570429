//! Where a cache lives: `--cache` and `--remote` values.
//!
//! | form | meaning | this build |
//! |---|---|---|
//! | `PATH`, `file:///abs/path` | a local cache directory | supported |
//! | `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` | an object store (`cache-s3`), configured by the environment (`AWS_*`) | supported |
//! | `grpc://...`, `grpcs://...` | REAPI servers | recognised and refused (their backend is the next crate) |
//!
//! A value that starts with a URL scheme of two letters or more (`s3:`, `http:`, after
//! any leading spaces) is a URL, whether or not `//` follows; anything else is a path
//! (a one-letter "scheme" is a drive letter). A directory whose name looks like a
//! scheme is written `./name:x`. So a mistyped URL is never taken for a directory, never
//! created in the workspace, never shown as a path.
//!
//! Values are taken as strings and parsed here rather than by clap, so that an error
//! message never echoes credentials someone put in a URL: [`redact`] removes the user
//! info, the query and the fragment before any URL is shown, and [`RawLocation`] (the
//! flag's value before parsing) shows only that in its `Debug`.

use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use url::Url;

/// A parsed `--cache` / `--remote` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local cache directory.
    Local(PathBuf),
    /// An object store bucket (and prefix): `s3://`, `gs://`, `az://`.
    ObjectStore {
        /// The URL (without user info, query or fragment: they are refused).
        url: Url,
        /// The value as it may be shown ([`redact`]ed).
        shown: String,
    },
    /// A kind of cache this build has no backend for yet.
    Planned {
        /// `s3`, `grpc`, ...
        kind: &'static str,
        /// The value as it may be shown ([`redact`]ed).
        shown: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Planned { shown, .. } | Location::ObjectStore { shown, .. } => {
                f.write_str(shown)
            }
        }
    }
}

/// A `--cache` / `--remote` value as given (flag or environment), before [`Location::parse`].
/// Its `Debug` is [`redact`]ed, so that printing the parsed command line never shows a
/// credential.
#[derive(Clone, PartialEq, Eq)]
pub struct RawLocation(String);

impl RawLocation {
    /// For clap: takes any value (a refusal would make clap echo it).
    #[allow(clippy::unnecessary_wraps)]
    pub fn from_arg(raw: &str) -> Result<RawLocation, std::convert::Infallible> {
        Ok(RawLocation(raw.to_owned()))
    }

    /// The value as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawLocation({:?})", redact(&self.0))
    }
}

const FORMS: &str = "use a directory path or file:///abs/path";

/// URL schemes of the shared caches that are being added (REAPI).
const PLANNED: &[&str] = &["grpc", "grpcs"];

/// Object store URL schemes (`cache-s3`).
const OBJECT_STORES: &[&str] = &["s3", "gs", "az"];

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
        let Some((scheme, _)) = url_scheme(raw) else {
            if raw.contains("://") {
                return Err(format!(
                    "{shown:?} is neither a path nor a URL (a URL starts with its scheme, \
                     as in s3://bucket): {FORMS}"
                ));
            }
            return Ok(Location::Local(PathBuf::from(raw)));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            return parse_file(raw, &shown);
        }
        if OBJECT_STORES.contains(&scheme.as_str()) {
            return parse_object_store(raw, shown);
        }
        match PLANNED.iter().find(|p| **p == scheme) {
            Some(kind) => Ok(Location::Planned { kind, shown }),
            None => Err(format!(
                "{shown:?}: the URL scheme {scheme:?} is not a cache location: {FORMS} \
                 (for a directory whose name holds a `:`, write ./{scheme}:...)"
            )),
        }
    }

    /// The kind of backend, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local(_) => "local",
            Location::Planned { kind, .. } => kind,
            Location::ObjectStore { url, .. } => match url.scheme() {
                "gs" => "gs",
                "az" => "az",
                _ => "s3",
            },
        }
    }
}

/// The URL scheme `raw` starts with (after leading spaces and control characters, as
/// the URL standard skips them), and what follows its `:`. A scheme is a letter, then
/// letters, digits and `+-.`; one letter alone is a drive letter, not a scheme.
fn url_scheme(raw: &str) -> Option<(&str, &str)> {
    let raw = raw.trim_start_matches(|c: char| c <= ' ');
    let (scheme, rest) = raw.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (scheme.len() > 1
        && first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// Shows a location without credentials. Plain paths are returned as they are.
///
/// A URL is read by a URL parser and shown as scheme, host, port and path: user info
/// becomes `***@`, a query `?***`, a fragment `#***`. Two cases show less, because a
/// secret pasted raw (unescaped) may hold `/`, `?`, `#` or `@` and be split by the parser:
///
/// * an `@` that the parser did not take as the end of the user info (in the path,
///   query or fragment): only the scheme is shown, `s3://***`; a URL without a host
///   (`s3:user:secret@bucket`) shows `s3:***`;
/// * a value the parser refuses (`s3://KEY:se/cret@bucket` has a bad port): everything
///   up to the last `@` becomes `***@` and a query or fragment after it is cut.
pub fn redact(raw: &str) -> String {
    if url_scheme(raw).is_none() && !raw.contains("://") {
        return raw.to_owned();
    }
    match Url::parse(raw) {
        Ok(url) => redact_url(&url),
        Err(_) => redact_unparsed(raw),
    }
}

fn redact_url(url: &Url) -> String {
    let scheme = url.scheme();
    let stray_at = [
        url.path(),
        url.query().unwrap_or(""),
        url.fragment().unwrap_or(""),
    ]
    .iter()
    .any(|part| part.contains('@'));
    if url.cannot_be_a_base() {
        return format!("{scheme}:***");
    }
    if stray_at {
        return format!("{scheme}://***");
    }
    let mut shown = format!("{scheme}://");
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str("***@");
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        let _ = write!(shown, ":{port}");
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?***");
    }
    if url.fragment().is_some() {
        shown.push_str("#***");
    }
    shown
}

/// The fallback for what the URL parser refuses (see [`redact`]).
fn redact_unparsed(raw: &str) -> String {
    let Some((before, rest)) = raw.split_once("://") else {
        return match url_scheme(raw) {
            Some((scheme, _)) => format!("{scheme}:***"),
            None => raw.to_owned(),
        };
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let tail = if cut < rest.len() { "?***" } else { "" };
    format!("{}://{userinfo}{}{tail}", before.trim(), &rest[..cut])
}

/// `s3://bucket/prefix` and its kin. Credentials come from the environment only: a
/// URL carrying user info, a query or a fragment is refused (and never echoed).
fn parse_object_store(raw: &str, shown: String) -> Result<Location, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{shown:?}: not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?}: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (or the provider's variables) in the environment"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{shown:?}: query strings and fragments are not understood here; remove them"
        ));
    }
    if url.path().contains('@') {
        // A stray `@`: most likely credentials pasted raw, which the parser split.
        return Err(format!(
            "{shown:?}: an `@` in the path looks like credentials; they do not belong in the \
             URL (set them in the environment)"
        ));
    }
    if url.port().is_some() {
        return Err(format!(
            "{shown:?}: an object store URL names a bucket, not a server; give the server in \
             AWS_ENDPOINT_URL"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{shown:?}: no bucket (write {}://BUCKET/PREFIX)",
            url.scheme()
        ));
    }
    Ok(Location::ObjectStore { url, shown })
}

/// `file:///abs/path`, `file:/abs/path` or `file://localhost/abs/path`; nothing else
/// names a local file.
fn parse_file(raw: &str, shown: &str) -> Result<Location, String> {
    let needs_path = || {
        format!(
            "{shown:?}: a file URL needs an absolute path, as in file:///var/cache/taskcache \
             (or give the path itself, which may be relative)"
        )
    };
    let (_, rest) = url_scheme(raw).ok_or_else(needs_path)?;
    if !rest.starts_with('/') {
        return Err(needs_path());
    }
    let url = Url::parse(raw).map_err(|e| format!("{shown:?}: not a valid file URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{shown:?}: query strings and fragments are not understood here; remove them"
        ));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.host_str().is_some_and(|h| !h.is_empty())
    {
        return Err(needs_path());
    }
    let decoded = percent_decode(url.path()).ok_or_else(|| {
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
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "http://example.com",
            "ftp://x/y",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn planned_kinds_are_recognised() {
        for (raw, kind) in [
            ("grpc://cache.internal:8980/main", "grpc"),
            ("grpcs://h", "grpcs"),
        ] {
            assert_eq!(ok(raw).kind(), kind, "{raw}");
        }
    }

    #[test]
    fn object_store_urls_are_parsed_and_credentials_refused() {
        for (raw, kind) in [
            ("s3://my-bucket/ci", "s3"),
            ("S3://b", "s3"),
            ("gs://b/p", "gs"),
            ("az://c/p", "az"),
        ] {
            let loc = ok(raw);
            assert!(matches!(loc, Location::ObjectStore { .. }), "{raw}");
            assert_eq!(loc.kind(), kind, "{raw}");
        }
        for bad in [
            "s3://K:hunter2@b/p",
            "s3://b/p?x=hunter2",
            "s3:///p",
            "s3://b/p#hunter2",
            "s3://AKIA:12/hunter2@b/p",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn errors_and_displays_never_show_credentials() {
        for raw in [
            "grpc://user:hunter2@h:80",
            "s3://AKIA:hunter2@bucket/x",
            "s3://AKIA:hun/ter2@bucket/x",
            "s3://AKIA:hu?nt#er2@bucket/x",
            "grpcs://h/x?token=hunter2",
            "gopher://u:hunter2@h/",
            "gopher://u:hun/ter2@h/",
        ] {
            let shown = match Location::parse(raw) {
                Ok(loc) => loc.to_string(),
                Err(e) => e,
            };
            assert!(
                !shown.contains("hunter2") && !shown.contains("ter2"),
                "{shown}"
            );
        }
        assert_eq!(redact("grpcs://a:b@h:1/i?t=x"), "grpcs://***@h:1/i?***");
        assert_eq!(redact("s3://K:se/cr?et#x@bucket/p"), "s3://***@bucket/p");
        assert_eq!(redact("/plain/path"), "/plain/path");
        assert_eq!(redact("rel/dir:x@y"), "rel/dir:x@y");
        assert_eq!(redact("c:weird"), "c:weird");
    }

    /// A password `Qz1<sep>Qz2`: no half of it in any message, `Display` or `Debug`,
    /// whatever the separator, escaping, or the way the URL is mangled.
    #[test]
    fn url_secrets_are_redacted_wholesale() {
        for raw in [
            "grpc://user:Qz1/Qz2@h:80",
            "s3://AKIA:Qz1?Qz2@bucket/x",
            "s3://AKIA:Qz1#Qz2@bucket/x",
            "s3://AKIA:Qz1@Qz2@bucket/x",
            "s3://AKIA:Qz1%2FQz2%40@bucket/x",
            "s3://AKIA:12/Qz1Qz2@bucket/x",
            "grpcs://h/x?token=Qz1@Qz2",
            "grpcs://u:p@h/x?token=Qz1@Qz2",
            "grpcs://h/x#Qz1@Qz2",
            "grpcs://h/x#Qz1Qz2",
            " s3://AKIA:Qz1/Qz2@bucket/x",
            "\ts3://AKIA:Qz1Qz2@bucket/x\n",
            "s3:AKIA:Qz1/Qz2@bucket",
            "s3:/AKIA:Qz1Qz2@bucket",
            "http:\\\\u:Qz1Qz2@h/x",
            "https://u:Qz1Qz2@h/x",
            "file://u:Qz1Qz2@localhost/x",
            "FILE://u:Qz1/Qz2@/x",
            "file:///x?Qz1Qz2",
            "\u{a0}s3://AKIA:Qz1Qz2@bucket",
            "c://AKIA:Qz1Qz2@bucket",
        ] {
            let parsed = Location::parse(raw);
            let texts = [
                redact(raw),
                format!("{parsed:?}"),
                parsed.map_or_else(|e| e, |l| l.to_string()),
                format!("{:?}", RawLocation::from_arg(raw).unwrap()),
            ];
            for t in texts {
                assert!(!t.contains("Qz1") && !t.contains("Qz2"), "{raw:?}: {t}");
            }
        }
        assert_eq!(redact("grpcs://u:p@h/x?t=a@b"), "grpcs://***");
        assert_eq!(redact("s3:AKIA:secret@bucket"), "s3:***");
        assert_eq!(redact(" s3://K:s@bucket/p#f"), "s3://***@bucket/p#***");
        assert_eq!(redact("s3://bucket/p%40x"), "s3://bucket/p%40x");
    }

    #[test]
    fn a_value_with_a_scheme_is_never_a_directory() {
        for raw in [" s3://b/x", "s3:b", "s3:/b", "http:\\\\h/x", "\u{a0}s3://b"] {
            assert!(
                !matches!(Location::parse(raw), Ok(Location::Local(_))),
                "{raw:?} taken for a directory"
            );
        }
        let err = Location::parse("my:dir").unwrap_err();
        assert!(err.contains("./my:"), "{err}");
        assert_eq!(ok("./my:dir"), Location::Local("./my:dir".into()));
        assert_eq!(ok("file:/abs").kind(), "local");
    }
}
