//! Where a cache lives: `--cache` and `--remote` values.
//!
//! | form | meaning | this build |
//! |---|---|---|
//! | `PATH`, `file:///abs/path` | a local cache directory | supported |
//! | `s3://...`, `gs://...`, `az://...`, `grpc://...`, `grpcs://...` | object stores, REAPI servers | recognised and refused (their backends are the next crates) |
//!
//! Values are taken as strings and parsed here rather than by clap, so that an error
//! message never echoes credentials someone put in a URL: [`redact`] removes the user
//! info and the query before any URL is shown.

use std::fmt;
use std::path::PathBuf;

/// A parsed `--cache` / `--remote` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local cache directory.
    Local(PathBuf),
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
            Location::Planned { shown, .. } => f.write_str(shown),
        }
    }
}

const FORMS: &str = "use a directory path or file:///abs/path";

/// URL schemes of the shared caches that are being added (object stores, REAPI).
const PLANNED: &[&str] = &["s3", "gs", "az", "grpc", "grpcs"];

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
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            return parse_file(rest, &shown);
        }
        match PLANNED.iter().find(|p| **p == scheme) {
            Some(kind) => Ok(Location::Planned { kind, shown }),
            None => Err(format!(
                "{shown:?}: the URL scheme {scheme:?} is not a cache location: {FORMS}"
            )),
        }
    }

    /// The kind of backend, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local(_) => "local",
            Location::Planned { kind, .. } => kind,
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

/// Shows a location without credentials: everything up to the last `@` becomes
/// `***` (a secret pasted into a URL may hold `/`, `?` or `#` unescaped, as AWS secret
/// keys often do), and a query or fragment after it is cut. Plain paths are returned
/// as they are.
pub fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = split_scheme(raw) else {
        return raw.to_owned();
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let tail = if cut < rest.len() { "?***" } else { "" };
    format!("{scheme}://{userinfo}{}{tail}", &rest[..cut])
}

fn parse_file(rest: &str, shown: &str) -> Result<Location, String> {
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{shown:?}: query strings and fragments are not understood here; remove them"
        ));
    }
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
            ("s3://my-bucket/ci", "s3"),
            ("S3://b", "s3"),
            ("gs://b/p", "gs"),
            ("az://c/p", "az"),
            ("grpc://cache.internal:8980/main", "grpc"),
            ("grpcs://h", "grpcs"),
        ] {
            assert_eq!(ok(raw).kind(), kind, "{raw}");
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
    }
}
