//! `cache-s3` will be the taskcache backend for S3 and every other object store the
//! `object_store` crate speaks (GCS, Azure, local filesystem, in-memory).
//!
//! It is not written yet: this crate exists so the workspace layout matches
//! `ARCHITECTURE.md`. It exports nothing. Its design (a `cache_core::storage::Storage`
//! implementation, so publish order, digest checks and path safety come from
//! `cache-core`) is described in `ARCHITECTURE.md`.
