//! `cache-remote` will be the taskcache backend for any Bazel Remote Execution API v2
//! cache (ActionCache, CAS, ByteStream, Capabilities over gRPC).
//!
//! It is not written yet: this crate exists so the workspace layout matches
//! `ARCHITECTURE.md`. It exports nothing. Its design (a `cache_core::storage::Storage`
//! implementation mapping entries to `ActionResult`) is described in `ARCHITECTURE.md`.
