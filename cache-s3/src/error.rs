//! From `object_store` errors to cache-core's: which are degradable faults (outages:
//! transport, throttling, server errors), which are refused permissions (401/403:
//! `Fault::Permission`), which are configuration errors that must say what to fix
//! (a missing bucket), and never a secret in any.

use cache_core::{BackendError, Detail};
use std::fmt;

/// Values that must never appear in a message (the secret key, the session token),
/// held only to cut them out of server answers. Its `Debug` shows how many, not what.
#[derive(Default, Clone)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) fn add(&mut self, value: &str) {
        // Short values would cut innocent text; real secrets are long.
        if value.len() >= 8 {
            self.0.push(value.to_owned());
        }
    }

    /// `text` with every secret replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

/// Where a store is, for messages: URL, bucket, endpoint and which credential source
/// was used (its name, not its value).
#[derive(Debug)]
pub(crate) struct Where {
    pub url: String,
    pub bucket: String,
    pub endpoint: String,
    pub credentials: String,
    pub secrets: Secrets,
}

impl Where {
    /// Maps an error of `op` on object `path`. `NotFound` and `AlreadyExists` are
    /// handled by callers where they mean a miss or success; here they are faults.
    pub(crate) fn error(&self, op: &str, path: &str, e: &object_store::Error) -> BackendError {
        use object_store::Error as E;
        let detail = self.secrets.scrub(&e.to_string());
        let here = format!(
            "{op} {path} in bucket {:?} at {} ({})",
            self.bucket, self.endpoint, self.url
        );
        match e {
            // HTTP 403 and 401: the store answered and refuses these credentials the
            // operation (often only writes: a read-only token). Not an outage.
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                BackendError::permission_denied(format!(
                    "{here}: access denied with the credentials from {}; check them and \
                     the bucket's policy: {detail}",
                    self.credentials
                ))
            }
            E::NotFound { .. } | E::Generic { .. } if is_missing_bucket(&detail) => {
                missing_bucket(self, &here)
            }
            E::Generic { .. } if is_transport(e) => {
                BackendError::Connection(Detail::new(format!("{here}: {detail}")))
            }
            _ => BackendError::Unavailable(Detail::new(format!("{here}: {detail}"))),
        }
    }
}

fn missing_bucket(place: &Where, here: &str) -> BackendError {
    BackendError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "{here}: the bucket {:?} does not exist at {} (credentials from {}); create it, \
             or fix the URL or AWS_ENDPOINT_URL",
            place.bucket, place.endpoint, place.credentials
        ),
    ))
}

pub(crate) fn is_missing_bucket(detail: &str) -> bool {
    detail.contains("NoSuchBucket") || detail.contains("ContainerNotFound")
}

/// A connection that could not be made or broke, or a timeout (as opposed to a server
/// that answered with an error).
fn is_transport(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
        if let Some(http) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return matches!(
                http.kind(),
                K::Connect | K::Request | K::Timeout | K::Interrupted
            );
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_and_not_debugged() {
        let mut s = Secrets::default();
        s.add("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        s.add("short");
        let text = s.scrub("sig for wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and short");
        assert_eq!(text, "sig for *** and short");
        assert_eq!(format!("{s:?}"), "Secrets(1 redacted)");
    }
}
