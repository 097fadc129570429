//! Options, and from a URL to an object store.

use crate::error::{Secrets, Where};
use cache_core::{BackendError, BackendResult};
use object_store::ObjectStore;
use object_store::list::PaginatedListStore;
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
    /// Store the small files (up to 1 MiB) of an entry as a few zstd-compressed pack
    /// objects instead of one object each. Default on; entries written either way
    /// are read either way.
    pub packing: bool,
    /// `touch` (called after every restore) records an entry's last use as the time of
    /// a small marker object (`used/<alg>/<hex>`), rewritten only when it is older than
    /// this: at most one HEAD per hit and one PUT per entry per interval. `gc` evicts by
    /// that time, so keep this well under the `--unused-for` it runs with. Default 1 day.
    pub touch_interval: std::time::Duration,
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
            packing: true,
            touch_interval: std::time::Duration::from_secs(24 * 3600),
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

    /// Sets [`S3Options::touch_interval`].
    #[must_use]
    pub fn with_touch_interval(mut self, interval: std::time::Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// Sets [`S3Options::packing`].
    #[must_use]
    pub fn with_packing(mut self, packing: bool) -> Self {
        self.packing = packing;
        self
    }
}

/// An opened store and what errors say about it.
pub(crate) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    /// The store's paginated listing, if it has one.
    pub lister: Option<Arc<dyn PaginatedListStore>>,
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
            lister: None,
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
                lister: None,
                prefix: Path::default(),
                place: place(dir.display().to_string(), "none".into(), Secrets::default()),
            })
        }
        "s3" | "s3a" => open_s3(url, options, var, &bucket, prefix, place),
        "gs" => open_gcs(url, options, var, &bucket, prefix, place),
        "az" | "azure" => open_azure(url, options, var, &bucket, prefix, place),
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
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    // Checked before anything else: a bad endpoint is refused without being shown.
    let endpoint = aws_endpoint(&var).map_err(|e| refuse(url, e))?;
    let credentials = AwsCredentials::of(&var);
    if credentials == AwsCredentials::InstanceMetadata
        && metadata_disabled(&var).map_err(|e| refuse(url, e))?
    {
        return Err(refuse(url, NO_CREDENTIALS));
    }
    // Client options first: the environment's AWS_ALLOW_HTTP is one of them.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone());
    let mut secrets = Secrets::default();
    // The variables the AWS tools read, and nothing else from the environment: a
    // stray AWS_* variable of another tool does not change where the cache goes.
    let names = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ALLOW_HTTP",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    ];
    let secret = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];
    for (key, value) in config_from::<AmazonS3ConfigKey>(&names, &secret, &var, &mut secrets)
        .map_err(|e| refuse(url, e))?
    {
        builder = builder.with_config(key, value);
    }
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let shown_endpoint = match endpoint {
        Some(endpoint) => {
            builder = builder.with_endpoint(endpoint.clone());
            endpoint
        }
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    let store = Arc::new(
        builder
            .with_bucket_name(bucket)
            .with_region(region)
            .build()
            .map_err(|e| refuse(url, secrets.scrub(&e.to_string())))?,
    );
    Ok(Opened {
        lister: Some(store.clone()),
        store,
        prefix,
        place: place(shown_endpoint, credentials.describe().into(), secrets),
    })
}

/// The variables naming an S3 endpoint, the one that wins first (as the AWS tools and
/// `object_store` read them).
#[cfg(feature = "aws")]
const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];

/// The S3 endpoint from the environment, if one is set (see [`endpoint_from`]).
#[cfg(feature = "aws")]
fn aws_endpoint(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    endpoint_from(
        &ENDPOINT_VARS,
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "e.g. http://127.0.0.1:9000 or https://minio.example.com",
        var,
    )
}

/// The first of `names` that is set, checked like a `--cache` URL: an `http://` or
/// `https://` URL with a host and neither user info, a query nor a fragment (any of
/// which may hold a secret, and a password with a `/` in it once panicked the S3
/// request signer). The error names the variable, what to do (`credentials`: the
/// variables credentials go in; `example`: addresses to give), and never shows its
/// value.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn endpoint_from(
    names: &[&'static str],
    credentials: &str,
    example: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let Some((name, raw)) = names.iter().find_map(|name| var(name).map(|v| (*name, v))) else {
        return Ok(None);
    };
    let not_shown = "(its value is not shown: it may hold a secret)";
    if raw.contains('@') {
        return Err(format!(
            "{name} holds user info (an `@`) {not_shown}; credentials never go in the \
             endpoint: set {credentials}, and {name} to the server's address alone, {example}"
        ));
    }
    let parsed = Url::parse(raw.trim()).map_err(|e| {
        format!("{name} is not a URL ({e}) {not_shown}; set it to the server's address, {example}")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{name} is not an http:// or https:// URL with a host {not_shown}; set it to \
             the server's address, {example}"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{name} has a query or fragment (`?` or `#`) {not_shown}; requests are signed \
             from {credentials}, so set {name} to the server's address alone, {example}"
        ));
    }
    Ok(Some(parsed.as_str().trim_end_matches('/').to_owned()))
}

/// The `names` that are set, as `object_store` configuration keys (the name in lower
/// case) with their values; the values of the `secret` names go in `secrets`, to be
/// scrubbed from messages.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn config_from<K>(
    names: &[&str],
    secret: &[&str],
    var: &dyn Fn(&str) -> Option<String>,
    secrets: &mut Secrets,
) -> Result<Vec<(K, String)>, String>
where
    K: std::str::FromStr,
    K::Err: std::fmt::Display,
{
    let mut config = Vec::new();
    for name in names {
        let Some(value) = var(name) else {
            continue;
        };
        if secret.contains(name) {
            secrets.add(&value);
        }
        let key = name
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| format!("{e}"))?;
        config.push((key, value));
    }
    Ok(config)
}

/// For messages: the first of `names` that is set ("NAME from the environment"), else
/// `otherwise`.
#[cfg(any(feature = "gcp", feature = "azure"))]
fn credential_source<'a>(
    names: impl IntoIterator<Item = &'a str>,
    var: &dyn Fn(&str) -> Option<String>,
    otherwise: &str,
) -> String {
    names
        .into_iter()
        .find(|name| var(name).is_some())
        .map_or_else(
            || otherwise.to_owned(),
            |name| format!("{name} from the environment"),
        )
}

/// Why a runner with `AWS_EC2_METADATA_DISABLED=true` and no credentials gets no store.
#[cfg(feature = "aws")]
const NO_CREDENTIALS: &str = "no S3 credentials: AWS_EC2_METADATA_DISABLED forbids \
     asking the instance metadata service for them, and none are set. Set \
     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE with \
     AWS_ROLE_ARN, or the AWS_CONTAINER_CREDENTIALS_* variables), or unset \
     AWS_EC2_METADATA_DISABLED on a machine whose instance role should be used";

/// Whether `AWS_EC2_METADATA_DISABLED` forbids the instance metadata service.
#[cfg(feature = "aws")]
fn metadata_disabled(var: &dyn Fn(&str) -> Option<String>) -> Result<bool, String> {
    flag("AWS_EC2_METADATA_DISABLED", var)
}

/// A yes/no variable: `true` (as the cloud tools read it), `1` or `yes`; unset, empty,
/// `false`, `0` or `no` is no. A value that is neither is refused rather than guessed.
#[cfg(any(feature = "aws", feature = "azure"))]
fn flag(name: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<bool, String> {
    let Some(value) = var(name) else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!("{name} must be true or false")),
    }
}

/// Which credentials the S3 client will use, in the order `object_store`'s builder
/// picks them (so that "instance metadata" here is exactly when it would ask the
/// instance metadata service).
#[cfg(feature = "aws")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AwsCredentials {
    /// Keys from the environment (with a session token or not; one of the two keys
    /// alone is an error of the builder's).
    Keys { token: bool },
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`.
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or the `FULL_URI` with its token file.
    Container,
    /// None of the above: the instance metadata service.
    InstanceMetadata,
}

#[cfg(feature = "aws")]
impl AwsCredentials {
    fn of(var: &dyn Fn(&str) -> Option<String>) -> Self {
        let set = |k: &str| var(k).is_some();
        if set("AWS_ACCESS_KEY_ID") || set("AWS_SECRET_ACCESS_KEY") {
            AwsCredentials::Keys {
                token: set("AWS_SESSION_TOKEN"),
            }
        } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
            AwsCredentials::WebIdentity
        } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || (set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                && set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
        {
            AwsCredentials::Container
        } else {
            AwsCredentials::InstanceMetadata
        }
    }

    /// Named for messages (never their values).
    fn describe(self) -> &'static str {
        match self {
            AwsCredentials::Keys { token: true } => {
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN from the environment"
            }
            AwsCredentials::Keys { token: false } => {
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment"
            }
            AwsCredentials::WebIdentity => {
                "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)"
            }
            AwsCredentials::Container => "container credentials endpoint",
            AwsCredentials::InstanceMetadata => {
                "instance metadata (no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment)"
            }
        }
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

/// The variables the GCS client reads (`object_store`'s names), and nothing else from
/// the environment; the endpoint, `GOOGLE_BASE_URL`, is checked apart.
#[cfg(feature = "gcp")]
const GOOGLE_VARS: [&str; 7] = [
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_BEARER_TOKEN",
    "GOOGLE_SKIP_SIGNATURE",
    "GOOGLE_ALLOW_HTTP",
];

#[cfg(feature = "gcp")]
fn open_gcs(
    url: &Url,
    options: &S3Options,
    var: &dyn Fn(&str) -> Option<String>,
    bucket: &str,
    prefix: Path,
    place: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    if bucket.is_empty() {
        return Err(refuse(url, "no bucket (gs://BUCKET/PREFIX)"));
    }
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    let endpoint = endpoint_from(
        &["GOOGLE_BASE_URL"],
        "GOOGLE_SERVICE_ACCOUNT_KEY (or another GOOGLE_* credential)",
        "e.g. http://127.0.0.1:4443 or https://storage.googleapis.com",
        &var,
    )
    .map_err(|e| refuse(url, e))?;
    // Client options first: GOOGLE_ALLOW_HTTP is one of them.
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone());
    let mut secrets = Secrets::default();
    let secret = ["GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN"];
    for (key, value) in config_from::<GoogleConfigKey>(&GOOGLE_VARS, &secret, &var, &mut secrets)
        .map_err(|e| refuse(url, e))?
    {
        builder = builder.with_config(key, value);
    }
    let shown_endpoint = match endpoint {
        Some(endpoint) => {
            builder = builder.with_config(GoogleConfigKey::BaseUrl, endpoint.clone());
            endpoint
        }
        None => "https://storage.googleapis.com".into(),
    };
    let credentials = credential_source(
        [
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_BEARER_TOKEN",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ],
        &var,
        "application default credentials or instance metadata (no GOOGLE_* credentials in the environment)",
    );
    let store = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| refuse(url, secrets.scrub(&e.to_string())))?;
    let store = Arc::new(store);
    Ok(Opened {
        lister: Some(store.clone()),
        store,
        prefix,
        place: place(shown_endpoint, credentials, secrets),
    })
}

#[cfg(not(feature = "gcp"))]
fn open_gcs(
    url: &Url,
    _: &S3Options,
    _: &dyn Fn(&str) -> Option<String>,
    _: &str,
    _: Path,
    _: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    Err(refuse(url, "this build has no GCS support (feature `gcp`)"))
}

/// The variables the Azure client reads (`object_store`'s names), and nothing else from
/// the environment; the endpoint and the emulator's are checked apart.
#[cfg(feature = "azure")]
const AZURE_VARS: [&str; 17] = [
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USE_AZURE_CLI",
    "AZURE_SKIP_SIGNATURE",
    "AZURE_ALLOW_HTTP",
];

/// Azure variables whose values are secrets.
#[cfg(feature = "azure")]
const AZURE_SECRETS: [&str; 7] = [
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
];

/// The development account of Azurite (and of the older storage emulator), and its
/// key, published with the emulator: it protects nothing.
#[cfg(feature = "azure")]
const EMULATOR_ACCOUNT: (&str, &str) = (
    "devstoreaccount1",
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
);

#[cfg(feature = "azure")]
fn open_azure(
    url: &Url,
    options: &S3Options,
    var: &dyn Fn(&str) -> Option<String>,
    container: &str,
    prefix: Path,
    place: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    if container.is_empty() {
        return Err(refuse(url, "no container (az://CONTAINER/PREFIX)"));
    }
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    let credentials_hint = "AZURE_STORAGE_ACCOUNT_KEY (or another AZURE_* credential)";
    let emulator = flag("AZURE_STORAGE_USE_EMULATOR", &var).map_err(|e| refuse(url, e))?;
    let endpoint = if emulator {
        endpoint_from(
            &["AZURITE_BLOB_STORAGE_URL"],
            credentials_hint,
            "e.g. http://127.0.0.1:10000",
            &var,
        )
    } else {
        endpoint_from(
            &["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"],
            credentials_hint,
            "e.g. https://ACCOUNT.blob.core.windows.net or http://127.0.0.1:10000/ACCOUNT",
            &var,
        )
    }
    .map_err(|e| refuse(url, e))?;
    // Client options first: AZURE_ALLOW_HTTP is one of them.
    let mut builder = MicrosoftAzureBuilder::new()
        .with_client_options(options.client.clone())
        .with_retry(options.retry.clone());
    let mut secrets = Secrets::default();
    for (key, value) in
        config_from::<AzureConfigKey>(&AZURE_VARS, &AZURE_SECRETS, &var, &mut secrets)
            .map_err(|e| refuse(url, e))?
    {
        builder = builder.with_config(key, value);
    }
    let account = var("AZURE_STORAGE_ACCOUNT_NAME");
    let mut credentials = credential_source(
        AZURE_SECRETS
            .into_iter()
            .chain(["AZURE_FEDERATED_TOKEN_FILE", "AZURE_USE_AZURE_CLI"]),
        &var,
        "managed identity (no AZURE_* credentials in the environment)",
    );
    let shown_endpoint = if emulator {
        // What `object_store`'s emulator mode does, with the emulator's address read
        // like every other variable (its own mode reads AZURITE_BLOB_STORAGE_URL from
        // the process environment): the development account, path-style, over HTTP.
        let base = endpoint.unwrap_or_else(|| "http://127.0.0.1:10000".into());
        let account = account.unwrap_or_else(|| EMULATOR_ACCOUNT.0.into());
        if !AZURE_SECRETS.iter().any(|name| var(name).is_some()) {
            builder = builder.with_access_key(EMULATOR_ACCOUNT.1);
            credentials = format!("the emulator's development account key ({account})");
        }
        builder = builder
            .with_account(&account)
            .with_endpoint(format!("{base}/{account}"))
            .with_allow_http(true);
        base
    } else if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.clone());
        endpoint
    } else {
        account.map_or_else(
            || "Azure Blob Storage (AZURE_STORAGE_ACCOUNT_NAME is not set)".into(),
            |account| format!("https://{account}.blob.core.windows.net"),
        )
    };
    let store = builder
        .with_container_name(container)
        .build()
        .map_err(|e| refuse(url, secrets.scrub(&e.to_string())))?;
    let store = Arc::new(store);
    Ok(Opened {
        lister: Some(store.clone()),
        store,
        prefix,
        place: place(shown_endpoint, credentials, secrets),
    })
}

#[cfg(not(feature = "azure"))]
fn open_azure(
    url: &Url,
    _: &S3Options,
    _: &dyn Fn(&str) -> Option<String>,
    _: &str,
    _: Path,
    _: impl Fn(String, String, Secrets) -> Arc<Where>,
) -> BackendResult<Opened> {
    Err(refuse(
        url,
        "this build has no Azure support (feature `azure`)",
    ))
}

/// An environment of `pairs` and nothing else.
#[cfg(test)]
fn test_env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let pairs = pairs.to_vec();
    move |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    }
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

    use super::test_env as env;

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "test-access-key"),
        ("AWS_SECRET_ACCESS_KEY", "test-secret-access-key"),
    ];

    fn open_s3_with(pairs: &[(&'static str, &'static str)]) -> BackendResult<Opened> {
        let url = Url::parse("s3://bucket/ci").unwrap();
        let all: Vec<_> = KEYS.iter().chain(pairs).copied().collect();
        open(&url, &S3Options::default(), &env(&all))
    }

    #[test]
    fn an_endpoint_with_credentials_or_that_is_not_http_is_refused_unseen() {
        for (name, value, secret) in [
            // A password with a `/`: the URL parser sees a bad port (the signer panicked).
            ("AWS_ENDPOINT_URL", "http://user:pa/ss@127.0.0.1:1", "pa/ss"),
            (
                "AWS_ENDPOINT_URL",
                "http://user:hunter2@127.0.0.1:1",
                "hunter2",
            ),
            (
                "AWS_ENDPOINT_URL_S3",
                "https://key@minio.example.com",
                "key@",
            ),
            (
                "AWS_ENDPOINT_URL",
                "http://host/?X-Amz-Signature=s3cr3t",
                "s3cr3t",
            ),
            ("AWS_ENDPOINT_URL", "http://host/#s3cr3t", "s3cr3t"),
            ("AWS_ENDPOINT_URL", "ftp://s3cr3t.example.com", "s3cr3t"),
            ("AWS_ENDPOINT_URL", "s3cr3t-no-scheme", "s3cr3t"),
            ("AWS_ENDPOINT_URL", "http://[s3cr3t", "s3cr3t"),
        ] {
            let Err(e) = open_s3_with(&[(name, value)]) else {
                panic!("{name}={value} accepted");
            };
            let text = format!("{e} {e:?}");
            assert!(!text.contains(secret), "{value}: {text}");
            assert!(
                text.contains(name),
                "{value}: the variable is not named: {text}"
            );
            assert!(text.contains("e.g. http://"), "{value}: no advice: {text}");
        }
    }

    #[test]
    fn the_endpoint_in_effect_is_checked_and_shown() {
        let opened = open_s3_with(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/")]).unwrap();
        assert_eq!(opened.place.endpoint, "http://127.0.0.1:9000");
        // The S3-specific variable wins, as in the AWS tools: the other is not used.
        let opened = open_s3_with(&[
            ("AWS_ENDPOINT_URL_S3", "https://minio.example.com"),
            ("AWS_ENDPOINT_URL", "http://user:pa/ss@127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(opened.place.endpoint, "https://minio.example.com");
        let opened = open_s3_with(&[("AWS_REGION", "eu-west-1")]).unwrap();
        assert_eq!(opened.place.endpoint, "https://s3.eu-west-1.amazonaws.com");
    }

    #[test]
    fn metadata_disabled_and_no_credentials_is_refused_before_any_request() {
        let url = Url::parse("s3://bucket/ci").unwrap();
        let o = S3Options::default();
        for value in ["true", "TRUE", "1"] {
            let Err(e) = open(
                &url,
                &o,
                &env(&[
                    ("AWS_EC2_METADATA_DISABLED", value),
                    ("AWS_REGION", "us-east-1"),
                ]),
            ) else {
                panic!(
                    "AWS_EC2_METADATA_DISABLED={value}: a store that would ask the metadata service"
                );
            };
            let text = e.to_string();
            assert!(
                text.contains("AWS_EC2_METADATA_DISABLED") && text.contains("AWS_ACCESS_KEY_ID"),
                "{text}"
            );
        }
        // A token file without its role is not a web identity for the client either.
        let half = env(&[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
        ]);
        assert!(open(&url, &o, &half).is_err());
        // Credentials given, or the metadata service allowed: a store.
        let keys = env(&[("AWS_EC2_METADATA_DISABLED", "true"), KEYS[0], KEYS[1]]);
        assert!(open(&url, &o, &keys).is_ok());
        let allowed = env(&[("AWS_EC2_METADATA_DISABLED", "false")]);
        let opened = open(&url, &o, &allowed).unwrap();
        assert!(opened.place.credentials.contains("instance metadata"));
        // A value that is neither yes nor no is not guessed at.
        let odd = env(&[("AWS_EC2_METADATA_DISABLED", "maybe")]);
        let Err(e) = open(&url, &o, &odd) else {
            panic!("AWS_EC2_METADATA_DISABLED=maybe accepted")
        };
        assert!(e.to_string().contains("true or false"), "{e}");
    }
}

#[cfg(all(test, any(feature = "gcp", feature = "azure")))]
mod provider_tests {
    use super::*;

    use super::test_env as env;

    fn open_url(url: &str, pairs: &[(&'static str, &'static str)]) -> BackendResult<Opened> {
        open(
            &Url::parse(url).unwrap(),
            &S3Options::default(),
            &env(pairs),
        )
    }

    #[cfg(feature = "azure")]
    #[test]
    fn azure_emulator_mode_uses_the_development_account_at_the_given_address() {
        let opened = open_url(
            "az://c/p",
            &[
                ("AZURE_STORAGE_USE_EMULATOR", "true"),
                ("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10999/"),
            ],
        )
        .unwrap();
        assert_eq!(opened.place.endpoint, "http://127.0.0.1:10999");
        assert!(
            opened.place.credentials.contains("devstoreaccount1"),
            "{}",
            opened.place.credentials
        );
        // Without the emulator, an account endpoint is shown as given; a bad one is
        // refused unseen.
        let opened = open_url(
            "az://c/p",
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5a2V5a2V5"),
                ("AZURE_STORAGE_ENDPOINT", "https://acct.blob.example.com"),
            ],
        )
        .unwrap();
        assert_eq!(opened.place.endpoint, "https://acct.blob.example.com");
        assert!(
            opened
                .place
                .credentials
                .contains("AZURE_STORAGE_ACCOUNT_KEY")
        );
        let refused = |name: &str, pairs: &[(&'static str, &'static str)]| {
            let Err(e) = open_url("az://c/p", pairs) else {
                panic!("{pairs:?} accepted");
            };
            let text = e.to_string();
            assert!(text.contains(name) && !text.contains("s3cr3t"), "{text}");
        };
        refused(
            "AZURE_STORAGE_ENDPOINT",
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_ENDPOINT", "http://user:s3cr3t@127.0.0.1:1"),
            ],
        );
        refused(
            "AZURITE_BLOB_STORAGE_URL",
            &[
                ("AZURE_STORAGE_USE_EMULATOR", "true"),
                ("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:1/?sig=s3cr3t"),
            ],
        );
        let Err(e) = open_url("az://c/p", &[("AZURE_STORAGE_USE_EMULATOR", "maybe")]) else {
            panic!("AZURE_STORAGE_USE_EMULATOR=maybe accepted");
        };
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[cfg(feature = "gcp")]
    #[test]
    fn gcs_reads_its_variables_through_the_given_environment() {
        let key = r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#;
        let opened = open_url(
            "gs://b/p",
            &[
                ("GOOGLE_BASE_URL", "http://127.0.0.1:4443/"),
                ("GOOGLE_ALLOW_HTTP", "true"),
                ("GOOGLE_SERVICE_ACCOUNT_KEY", key),
            ],
        )
        .unwrap();
        assert_eq!(opened.place.endpoint, "http://127.0.0.1:4443");
        assert!(
            opened
                .place
                .credentials
                .contains("GOOGLE_SERVICE_ACCOUNT_KEY"),
            "{}",
            opened.place.credentials
        );
        let Err(e) = open_url(
            "gs://b/p",
            &[
                ("GOOGLE_BASE_URL", "http://127.0.0.1:1/#s3cr3t"),
                ("GOOGLE_SERVICE_ACCOUNT_KEY", key),
            ],
        ) else {
            panic!("an endpoint with a fragment accepted");
        };
        let text = e.to_string();
        assert!(
            text.contains("GOOGLE_BASE_URL") && !text.contains("s3cr3t"),
            "{text}"
        );
        let Err(e) = open_url("gs:///p", &[]) else {
            panic!("a URL without a bucket accepted");
        };
        assert!(e.to_string().contains("no bucket"), "{e}");
    }
}
