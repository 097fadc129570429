//! Where the server is and how to talk to it: endpoint, instance, headers, TLS,
//! deadlines, retries. Header values and keys are secrets: never shown by `Debug`,
//! errors or logs.

use std::fmt;
use std::time::Duration;

/// A value that must never be shown (a header value, a private key).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS settings for `grpcs://` (rustls).
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// PEM of a CA to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_pem: Option<Vec<u8>>,
    /// Client private key (PEM) for mutual TLS: a secret.
    pub key_pem: Option<Secret>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .field("client_key", &self.key_pem.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Everything needed to open a [`crate::RemoteStorage`].
///
/// ```
/// use cache_remote::RemoteConfig;
/// let config = RemoteConfig::from_url("grpc://127.0.0.1:8980/main")
///     .unwrap()
///     .header("authorization", "Bearer s3cret")
///     .unwrap();
/// assert_eq!(config.instance, "main");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RemoteConfig {
    /// `http://host:port` or `https://host:port` (what the channel dials).
    pub endpoint: String,
    /// The REAPI instance name (`""` is the default instance).
    pub instance: String,
    /// Extra request headers (lowercase names); values are secrets.
    pub headers: Vec<(String, Secret)>,
    /// TLS, for `grpcs://`.
    pub tls: Option<TlsConfig>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Deadline of one call (one attempt), and of each message of a stream.
    pub call_timeout: Duration,
    /// Attempts per call (the first and its retries).
    pub max_attempts: u32,
    /// First retry backoff (doubled each retry, with full jitter).
    pub backoff: Duration,
    /// Calls in flight at once on the shared channel.
    pub concurrency: usize,
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("endpoint", &self.endpoint)
            .field("instance", &self.instance)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl RemoteConfig {
    /// A configuration for `endpoint` (`http://host:port` or `https://...`) with the
    /// default deadlines (connect 5 s, call 30 s), 4 attempts and 16 calls in flight.
    pub fn new(endpoint: impl Into<String>) -> Self {
        RemoteConfig {
            endpoint: endpoint.into(),
            instance: String::new(),
            headers: Vec::new(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            max_attempts: 4,
            backoff: Duration::from_millis(50),
            concurrency: 16,
        }
    }

    /// Parses `grpc://host:port[/instance]` or `grpcs://host[:port][/instance]`. User
    /// info, queries and fragments are refused (credentials go in headers), and errors
    /// never echo the value.
    pub fn from_url(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw.trim())
            .map_err(|e| format!("not a grpc:// or grpcs:// URL ({e})"))?;
        let tls = match url.scheme() {
            "grpc" => false,
            "grpcs" => true,
            other => return Err(format!("scheme {other:?} is not grpc or grpcs")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials in the URL are refused: pass them as a header (--remote-header)"
                    .into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a query or fragment is not allowed in a grpc URL".into());
        }
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port().unwrap_or(if tls { 443 } else { 80 });
        let instance = url.path().trim_matches('/').to_owned();
        let mut c = RemoteConfig::new(format!(
            "{}://{host}:{port}",
            if tls { "https" } else { "http" }
        ));
        c.instance = instance;
        if tls {
            c.tls = Some(TlsConfig::default());
        }
        Ok(c)
    }

    /// Adds a request header (e.g. `authorization`). The name must be a valid lowercase
    /// gRPC metadata key; the value is kept as a secret.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, String> {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty()
            || name.starts_with("grpc-")
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!("{name:?} is not a usable header name"));
        }
        if name.ends_with("-bin") {
            return Err(format!("binary header {name:?} is not supported"));
        }
        if tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.trim()).is_err()
        {
            // Never echo the value: it is a credential.
            return Err(format!(
                "the value of header {name:?} is not valid ASCII text"
            ));
        }
        self.headers.push((name, Secret::new(value.trim())));
        Ok(self)
    }

    /// Parses `NAME:VALUE` (one header) or a comma/newline separated list of them
    /// (`TASKCACHE_REMOTE_HEADERS`) and adds each.
    pub fn headers_from_list(mut self, list: &str) -> Result<Self, String> {
        for item in list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (name, value) = item
                .split_once(':')
                .ok_or("a header is written NAME:VALUE")?;
            self = self.header(name, value)?;
        }
        Ok(self)
    }

    /// Where it dials, with the instance: what messages name (no secrets).
    #[must_use]
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "grpcs" } else { "grpc" };
        let hostport = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, h)| h);
        if self.instance.is_empty() {
            format!("{scheme}://{hostport}")
        } else {
            format!("{scheme}://{hostport}/{}", self.instance)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_secrets_never_show() {
        let c = RemoteConfig::from_url("grpc://127.0.0.1:8980/ci/main").unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:8980");
        assert_eq!(c.instance, "ci/main");
        assert_eq!(c.describe(), "grpc://127.0.0.1:8980/ci/main");
        let c = RemoteConfig::from_url("grpcs://cache.example").unwrap();
        assert_eq!(c.endpoint, "https://cache.example:443");
        assert!(c.tls.is_some());
        for bad in [
            "http://x",
            "grpc://user:pw@h:1",
            "grpc://h:1?token=x",
            "grpc://",
        ] {
            let e = RemoteConfig::from_url(bad).unwrap_err();
            assert!(!e.contains("pw") && !e.contains("token=x"), "{e}");
        }
        let mut c = c
            .headers_from_list("authorization: Bearer TOPSECRET, x-buildbuddy-api-key:KEY123")
            .unwrap();
        c.tls = Some(TlsConfig {
            key_pem: Some(Secret::new("PRIVATEKEY")),
            ..TlsConfig::default()
        });
        let shown = format!("{c:?} {c:#?}");
        for secret in ["TOPSECRET", "KEY123", "PRIVATEKEY"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("authorization"));
        let e = RemoteConfig::new("http://h:1")
            .header("x-k", "bad\u{1}SECRET")
            .unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }
}
