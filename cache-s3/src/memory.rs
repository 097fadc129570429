//! What an [`crate::S3Storage`] holds in memory, and the process-wide budgets that
//! bound it however many calls run at once.
//!
//! | held in memory | bound | per |
//! |---|---|---|
//! | a blob sent by one PUT (below the multipart threshold, 16 MiB), read from its file only once the blob is known to be missing; a pack file below the threshold | [`UPLOAD_BUFFERS`]: 64 MiB of such bodies at once | process |
//! | a multipart upload: its parts being read and sent | one at a time, `part_size × (parallel_parts + 2)` (64 MiB with the defaults) | process |
//! | packs being built (pass 2: a segment of ~4 MiB raw and its frame, one member) | [`PACKS_BUILT`] at once, 11 MiB each | process |
//! | packed segments being fetched and decompressed | [`SEGMENT_BUFFERS`]: 64 MiB of compressed and raw segment bytes at once | process |
//! | blobs `open_blobs` hands over: small ones fetched whole, members cut from segments, the first part of a larger one, and what its reader fetches ahead (at most the blob, and at most `part_size × (parallel_parts + 3)`, 72 MiB, for one larger than that) | `Cache`'s window budget ([`cache_core::storage::WINDOW_BUDGET`], 128 MiB) | process |
//! | hashing a store's sources (pass 1, one blocking job: a 1 MiB buffer) | 1 MiB | call |
//!
//! With the default options that is [`MEMORY_PER_PROCESS`] beyond `Cache`'s window
//! budget, and [`MEMORY_PER_CALL`] per call in flight. A reader of unknown length
//! (an import from another tier) is spooled to a temporary file while it is hashed, so
//! it is never held in memory. The storage also remembers, in bounded tables, which
//! pack holds which blob (two generations of 250,000 blobs and of 250,000 pack
//! members) and the last use of 100,000 entries: tens of MiB at most, per storage.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bytes of objects a process holds in memory to send them with one PUT.
pub const UPLOAD_BUFFERS: u64 = 64 << 20;

/// Bytes of packed segments (compressed and decompressed) a process fetches and
/// decodes at once.
pub const SEGMENT_BUFFERS: u64 = 64 << 20;

/// Packs a process builds at once (each a segment of ~4 MiB, its compressed frame, and
/// one member of at most 1 MiB: 11 MiB).
pub const PACKS_BUILT: usize = 4;

/// What one pack being built holds at most.
const PACK_BUILD_BYTES: u64 = 11 << 20;

/// One multipart upload at a time, holding `part_size × (parallel_parts + 2)`.
const MULTIPART_BYTES: u64 = (8 << 20) * (6 + 2);

/// The most an S3 storage's transfers hold at once in one process with the default
/// [`crate::S3Options`], beyond `Cache`'s window budget: in-memory PUTs, one multipart
/// upload, packs being built, segments being decoded.
pub const MEMORY_PER_PROCESS: u64 =
    UPLOAD_BUFFERS + MULTIPART_BYTES + PACKS_BUILT as u64 * PACK_BUILD_BYTES + SEGMENT_BUFFERS;

/// What one call holds besides: the buffer that hashes a store's sources.
pub const MEMORY_PER_CALL: u64 = 1 << 20;

// Permits are bytes (64 MiB: they fit a u32 and any usize).
#[allow(clippy::cast_possible_truncation)]
static UPLOADS: Semaphore = Semaphore::const_new(UPLOAD_BUFFERS as usize);
#[allow(clippy::cast_possible_truncation)]
static SEGMENTS: Semaphore = Semaphore::const_new(SEGMENT_BUFFERS as usize);
static PACKS: Semaphore = Semaphore::const_new(PACKS_BUILT);
static MULTIPART: Semaphore = Semaphore::const_new(1);

/// Waits until `bytes` of `budget` (at most all of it) are free and holds them.
async fn take(budget: &'static Semaphore, total: u64, bytes: u64) -> SemaphorePermit<'static> {
    let n = u32::try_from(bytes.min(total)).unwrap_or(u32::MAX);
    // The semaphores are never closed.
    budget.acquire_many(n).await.expect("an open semaphore")
}

/// Room for a PUT body of `bytes` held in memory.
pub(crate) async fn upload(bytes: u64) -> SemaphorePermit<'static> {
    take(&UPLOADS, UPLOAD_BUFFERS, bytes).await
}

/// Room for a segment's `bytes` (compressed plus raw) being fetched and decoded.
pub(crate) async fn segment(bytes: u64) -> SemaphorePermit<'static> {
    take(&SEGMENTS, SEGMENT_BUFFERS, bytes).await
}

/// A turn to build a pack.
pub(crate) async fn pack() -> SemaphorePermit<'static> {
    take(&PACKS, PACKS_BUILT as u64, 1).await
}

/// The turn of a multipart upload.
pub(crate) async fn multipart() -> SemaphorePermit<'static> {
    take(&MULTIPART, 1, 1).await
}
