//! `--backend s3`: `taskcache --cache s3://BUCKET/PREFIX` (the bucket alone, no local
//! tier) against moto, started through `peers::moto::up` (an already running one is
//! reused; one the drill started is stopped when the backend is dropped). Each fresh
//! cache is a new prefix; the old prefix's objects are deleted so moto's memory stays
//! bounded. The drill reads, damages and deletes objects through its own S3 client.

use super::taskcache::{Backend, walk};
use cache_s3::object_store::aws::AmazonS3Builder;
use cache_s3::object_store::path::Path as ObjectPath;
use cache_s3::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use futures::TryStreamExt;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bucket on moto, one prefix per fresh cache.
pub struct S3 {
    endpoint: String,
    bucket: String,
    /// `drill/<pid>-<nanos>`: this drill's own corner of the shared bucket.
    base: String,
    generation: u32,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    /// `target/peers/moto` if this drill started moto (and so stops it).
    started: Option<PathBuf>,
    /// More variables every `taskcache` process gets.
    extra: Vec<(String, String)>,
}

impl S3 {
    /// Starts moto if it does not run (idempotent) and opens a client on its bucket.
    pub fn start() -> Result<Self, String> {
        let dir = crate::peers::root().join("moto");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let running = crate::peers::net::running(&dir.join("moto.pid")).is_some();
        let vars = crate::peers::moto::up(&dir).map_err(|e| format!("moto: {e}"))?;
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("moto did not say {k}"))
        };
        let (endpoint, bucket) = (
            get("TASKCACHE_TEST_S3_ENDPOINT")?,
            get("TASKCACHE_TEST_S3_BUCKET")?,
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = format!("drill/{}-{nanos}", std::process::id());
        let mut s3 = Self::on(&endpoint, &bucket, &base, Vec::new())?;
        s3.started = (!running).then_some(dir);
        Ok(s3)
    }

    /// A bucket on an S3 server the caller runs (the gc drill's own moto), under
    /// `base`; `extra`: more variables for every `taskcache` process.
    pub fn on(
        endpoint: &str,
        bucket: &str,
        base: &str,
        extra: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("drill")
            .with_secret_access_key("drill-secret")
            .build()
            .map_err(|e| format!("an S3 client for {endpoint}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime: {e}"))?;
        Ok(S3 {
            endpoint: endpoint.to_owned(),
            bucket: bucket.to_owned(),
            base: base.to_owned(),
            generation: 0,
            store: Arc::new(store),
            rt,
            started: None,
            extra,
        })
    }

    /// The prefix of the current cache, in the bucket.
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.base, self.generation)
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{name}", self.prefix()))
    }

    /// `s3://BUCKET/PREFIX` of the current cache.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix())
    }

    fn clear(&self) -> Result<(), String> {
        for name in self.objects()? {
            self.delete_object(&name)?;
        }
        Ok(())
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.clear();
        if let Some(dir) = &self.started {
            let _ = crate::peers::moto::down(dir);
        }
    }
}

impl Backend for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn run_args(&self) -> Vec<OsString> {
        vec!["--cache".into(), self.url().into()]
    }

    fn admin_args(&self) -> Vec<OsString> {
        self.run_args()
    }

    fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "drill"),
            ("AWS_SECRET_ACCESS_KEY", "drill-secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(self.extra.iter().cloned())
        .collect()
    }

    fn verifies(&self) -> bool {
        false
    }

    fn fresh(&mut self) -> Result<(), String> {
        self.clear()?;
        self.generation += 1;
        Ok(())
    }

    fn objects(&self) -> Result<Vec<String>, String> {
        let prefix = self.prefix();
        let listed: Vec<_> = self
            .rt
            .block_on(
                self.store
                    .list(Some(&ObjectPath::from(prefix.as_str())))
                    .try_collect(),
            )
            .map_err(|e| format!("list s3://{}/{prefix}: {e}", self.bucket))?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|m| {
                m.location
                    .as_ref()
                    .strip_prefix(&format!("{prefix}/"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn read_object(&self, name: &str) -> Result<Vec<u8>, String> {
        let path = self.path(name);
        self.rt
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| format!("read {path}: {e}"))
    }

    fn write_object(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.path(name);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(bytes.to_vec())))
            .map(drop)
            .map_err(|e| format!("write {path}: {e}"))
    }

    fn delete_object(&self, name: &str) -> Result<(), String> {
        let path = self.path(name);
        self.rt
            .block_on(self.store.delete(&path))
            .map_err(|e| format!("delete {path}: {e}"))
    }

    fn save(&self, to: &Path) -> Result<(), String> {
        for name in self.objects()? {
            let file = to.join(&name);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&file, self.read_object(&name)?)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(())
    }

    fn load(&mut self, from: &Path) -> Result<(), String> {
        self.fresh()?;
        let mut names = Vec::new();
        walk(from, "", &mut names)?;
        for name in names {
            let bytes = std::fs::read(from.join(&name)).map_err(|e| format!("read {name}: {e}"))?;
            self.write_object(&name, &bytes)?;
        }
        Ok(())
    }
}
