//! Which backends the drills can run against, by name (`--backend local|s3|remote|all`).
//!
//! The one place that knows every backend: [`super::taskcache`] defines what a backend
//! is, and the backend modules implement it, so none of them needs this file.

use super::backend_reapi::Reapi;
use super::backend_s3::S3;
use super::taskcache::{Backend, Local};
use std::path::Path;

/// Every backend `--backend all` means.
pub const ALL: [&str; 3] = ["local", "s3", "remote"];

/// The backend named `name` (`local`, `s3`, `remote`), its server started if needed
/// (and stopped when it is dropped, if the drill started it).
pub fn open(name: &str, root: &Path) -> Result<Box<dyn Backend>, String> {
    match name {
        "local" => Ok(Box::new(Local::new(root))),
        "s3" => Ok(Box::new(S3::start()?)),
        "remote" => Ok(Box::new(Reapi::start(root)?)),
        other => Err(format!(
            "unknown backend {other:?} (local, s3, remote or all)"
        )),
    }
}
