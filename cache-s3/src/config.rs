//! Options, and from a URL to an object store.

use crate::error::{Secrets, Where};
use cache_core::{BackendError, BackendResult};
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
use std::time::Duration;
use url::Url;

/// How an [`crate::S3Storage`] talks to its store. [`S3Options::default`] suits a CI
/// runner next to its bucket; every field can be changed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Options {
    /// Requests in flight at once for one call (HEADs, small GETs and PUTs of many
    /// small files). Default 32.
    pub concurrency: usize,
    /// A blob at least this large goes up as a multipart upload read from its file,
    /// and comes down as ranged GETs. Default 16 MiB.
    pub multipart_threshold: u64,
    /// Size of one multipart part and of one ranged GET. Default 8 MiB (S3 needs parts
    /// of at least 5 MiB).
    pub part_size: usize,
    /// Parts (or ranges) of one large blob in flight at once. Memory held for one
    /// large transfer is about `part_size * (parallel_parts + 2)`. Default 6.
    pub parallel_parts: usize,
    /// HTTP client options (timeouts, proxies, TLS) of `object_store`.
    #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
    pub client: object_store::ClientOptions,
    /// Retries and their backoff, of `object_store`.
    #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
    pub retry: object_store::RetryConfig,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            concurrency: 32,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            parallel_parts: 6,
            #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
            client: object_store::ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(60)),
            #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
            retry: retry_config(3, Duration::from_secs(15)),
        }
    }
}

/// `object_store`'s retry configuration with `max_retries` and `retry_timeout` (a cache
/// gives up sooner than a data pipeline: a task that waits minutes for its cache is
/// worse off than one that runs uncached).
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
#[must_use]
pub fn retry_config(max_retries: usize, retry_timeout: Duration) -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries,
        retry_timeout,
        ..object_store::RetryConfig::default()
    }
}

impl S3Options {
    /// Sets [`S3Options::concurrency`] (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the whole-request timeout and the retry budget: a call against a server
    /// that does not answer gives up after about `timeout` (connection attempts are
    /// bounded by it too).
    #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client = self
            .client
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(5)));
        self.retry = retry_config(self.retry.max_retries, timeout);
        self
    }

    /// Sets the timeouts from a cache's [`Deadlines`](cache_core::Deadlines): a call
    /// that moves no bulk data gives up, with its retries, within `deadlines.call`, and
    /// one request may take what the deadlines allow the largest body a request sends
    /// (a part, or an object just under the multipart threshold). A slow but working
    /// server is then not cut off mid-part or while it assembles a large upload
    /// (CompleteMultipartUpload); the caller's deadline still bounds the whole transfer.
    #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
    #[must_use]
    pub fn with_deadlines(self, deadlines: cache_core::Deadlines) -> Self {
        let largest = self.multipart_threshold.max(self.part_size as u64);
        let mut options = self.with_timeout(deadlines.call);
        options.client = options.client.with_timeout(deadlines.for_bytes(largest));
        options
    }

    /// Sets [`S3Options::multipart_threshold`] and [`S3Options::part_size`] (parts are
    /// at least 5 MiB, as S3 requires).
    #[must_use]
    pub fn with_parts(mut self, threshold: u64, part_size: usize) -> Self {
        self.part_size = part_size.max(5 << 20);
        self.multipart_threshold = threshold.max(1);
        self
    }
}

/// An opened store and what errors say about it.
pub(crate) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub place: Arc<Where>,
}

/// The bucket (or container, or directory) and prefix of a URL.
fn bucket_and_prefix(url: &Url) -> (String, Path) {
    let bucket = url.host_str().unwrap_or_default().to_owned();
    let prefix = Path::from(url.path().trim_matches('/'));
    (bucket, prefix)
}

/// The URL shown in messages: scheme, bucket and path, nothing else.
fn shown(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    format!("{}://{host}{}", url.scheme(), url.path())
}

fn refuse(url: &Url, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("cannot open object store {}: {reason}", shown(url)),
    ))
}

/// Opens the store `url` names, configured from the environment through `var`.
pub(crate) fn open(
    url: &Url,
    options: &S3Options,
    var: &dyn Fn(&str) -> Option<String>,
) -> BackendResult<Opened> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse(
            url,
            "credentials do not belong in the URL; use the environment \
             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)",
        ));
    }
    let (bucket, prefix) = bucket_and_prefix(url);
    let place = |endpoint: String, credentials: String, secrets: Secrets| {
        Arc::new(Where {
            url: shown(url),
            bucket: bucket.clone(),
            endpoint,
            credentials,
            secrets,
        })
    };
    match url.scheme() {
        "memory" => Ok(Opened {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix,
            place: place("memory".into(), "none".into(), Secrets::default()),
        }),
        "file" => {
            let dir = url
                .to_file_path()
                .map_err(|()| refuse(url, "not an absolute local path"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| BackendError::io_with_context("create", &dir, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| refuse(url, e))?;
            Ok(Opened {
                store: Arc::new(store),
                prefix: Path::default(),
                place: place(dir.display().to_string(), "none".into(), Secrets::default()),
            })
        }
        "s3" | "s3a" => open_s3(url, options, var, &bucket, prefix, place),
        "gs" => open_gcs(url, options, &bucket, prefix, place),
        "az" | "azure" => open_azure(url, options, &bucket, prefix, place),
        other => Err(refuse(
            url,
            format!("the scheme {other:?} is not an object store (s3, gs, az, file, memory)"),
        )),
    }
}

#[cfg(feature = "aws")]
fn open_s3(
    url: &Url,
    options: &S3Options,
    var: &dyn Fn(&str) -> Option<String>,
    bucket: &str,
    prefix: Path,
    place: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    if bucket.is_empty() {
        return Err(refuse(url, "no bucket (s3://BUCKET/PREFIX)"));
    }
    // Client options first: the environment's AWS_ALLOW_HTTP is one of them.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone());
    let mut secrets = Secrets::default();
    // The variables the AWS tools read, and nothing else from the environment: a
    // stray AWS_* variable of another tool does not change where the cache goes.
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ALLOW_HTTP",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    ] {
        let Some(value) = var(name).filter(|v| !v.is_empty()) else {
            continue;
        };
        if matches!(name, "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN") {
            secrets.add(&value);
        }
        let key: AmazonS3ConfigKey = name
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| refuse(url, e))?;
        builder = builder.with_config(key, value);
    }
    let endpoint = var("AWS_ENDPOINT_URL_S3")
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .filter(|v| !v.is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
    let credentials = aws_credential_source(var);
    let shown_endpoint = endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let store = builder
        .with_bucket_name(bucket)
        .with_region(region)
        .build()
        .map_err(|e| refuse(url, secrets.scrub(&e.to_string())))?;
    Ok(Opened {
        store: Arc::new(store),
        prefix,
        place: place(shown_endpoint, credentials, secrets),
    })
}

/// Which credentials the S3 client will use, named (never their values).
#[cfg(feature = "aws")]
fn aws_credential_source(var: &dyn Fn(&str) -> Option<String>) -> String {
    let set = |k: &str| var(k).is_some_and(|v| !v.is_empty());
    if set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY") {
        if set("AWS_SESSION_TOKEN") {
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN from the environment".into()
        } else {
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment".into()
        }
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".into()
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    {
        "container credentials endpoint".into()
    } else {
        "instance metadata (no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment)".into()
    }
}

#[cfg(not(feature = "aws"))]
fn open_s3(
    url: &Url,
    _: &S3Options,
    _: &dyn Fn(&str) -> Option<String>,
    _: &str,
    _: Path,
    _: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    Err(refuse(url, "this build has no S3 support (feature `aws`)"))
}

#[cfg(feature = "gcp")]
fn open_gcs(
    url: &Url,
    options: &S3Options,
    bucket: &str,
    prefix: Path,
    place: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone())
        .build()
        .map_err(|e| refuse(url, e))?;
    Ok(Opened {
        store: Arc::new(store),
        prefix,
        place: place(
            "https://storage.googleapis.com".into(),
            "GOOGLE_* variables or application default credentials".into(),
            Secrets::default(),
        ),
    })
}

#[cfg(not(feature = "gcp"))]
fn open_gcs(
    url: &Url,
    _: &S3Options,
    _: &str,
    _: Path,
    _: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    Err(refuse(url, "this build has no GCS support (feature `gcp`)"))
}

#[cfg(feature = "azure")]
fn open_azure(
    url: &Url,
    options: &S3Options,
    container: &str,
    prefix: Path,
    place: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    let store = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone())
        .build()
        .map_err(|e| refuse(url, e))?;
    Ok(Opened {
        store: Arc::new(store),
        prefix,
        place: place(
            "Azure Blob Storage (AZURE_STORAGE_ACCOUNT_NAME)".into(),
            "AZURE_* variables".into(),
            Secrets::default(),
        ),
    })
}

#[cfg(not(feature = "azure"))]
fn open_azure(
    url: &Url,
    _: &S3Options,
    _: &str,
    _: Path,
    _: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    Err(refuse(
        url,
        "this build has no Azure support (feature `azure`)",
    ))
}

#[cfg(all(test, feature = "aws"))]
mod tests {
    use super::*;

    #[test]
    fn one_request_may_move_its_largest_body_at_the_deadlines_rate() {
        let o =
            S3Options::default().with_deadlines(cache_core::Deadlines::new(Duration::from_secs(3)));
        // Lookups and their retries give up within the call deadline...
        assert_eq!(o.retry.retry_timeout, Duration::from_secs(3));
        let connect = o
            .client
            .get_config_value(&object_store::ClientConfigKey::ConnectTimeout);
        assert_eq!(connect.as_deref(), Some("3s"));
        // ...but one request carrying a 16 MiB body (or a CompleteMultipartUpload the
        // server takes as long to assemble) gets 3 s plus 16 MiB at 8 MiB/s: a flat 3 s
        // once cut off a working server under load.
        let request = o
            .client
            .get_config_value(&object_store::ClientConfigKey::Timeout);
        assert_eq!(request.as_deref(), Some("5s"));
    }
}
