//! Digests: the validated cache-key type, content digests of blobs, and streaming hashing.

use crate::error::truncate;
use crate::{BackendError, BackendResult};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

/// The hash functions a digest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    /// SHA-256 (what REAPI servers speak).
    Sha256,
    /// BLAKE3 (the default: several times faster than SHA-256 here).
    Blake3,
}

impl DigestAlgorithm {
    /// The key prefix without the colon.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Blake3 => "blake3",
        }
    }

    /// A fresh streaming hasher for this algorithm.
    #[must_use]
    pub fn hasher(self) -> Hasher {
        match self {
            DigestAlgorithm::Sha256 => Hasher(HasherImpl::Sha256(sha2::Sha256::default())),
            DigestAlgorithm::Blake3 => Hasher(HasherImpl::Blake3(Box::default())),
        }
    }

    /// Digest of an in-memory byte string.
    #[must_use]
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finalize()
    }
}

/// A 256-bit digest with its algorithm: the cache key of a task, or the address of a blob.
///
/// The only textual form is `<algorithm>:<64 lowercase hex>`; [`Digest::parse`] accepts
/// nothing else, so a key that passed it is safe to use in a file name, an object key
/// or an RPC.
///
/// ```
/// use cache_core::Digest;
/// let key = Digest::parse(&format!("blake3:{}", "ab".repeat(32))).unwrap();
/// assert_eq!(key.to_string(), format!("blake3:{}", "ab".repeat(32)));
/// assert!(Digest::parse("sha256:../../etc/passwd").is_err());
/// assert!(Digest::parse(&format!("sha256:{}", "AB".repeat(32))).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    bytes: [u8; 32],
}

impl Digest {
    /// Builds a digest from raw bytes.
    #[must_use]
    pub fn from_bytes(algorithm: DigestAlgorithm, bytes: [u8; 32]) -> Self {
        Digest { algorithm, bytes }
    }

    /// Parses and validates `sha256:<hex>` / `blake3:<hex>` (64 lowercase hex digits).
    pub fn parse(s: &str) -> BackendResult<Self> {
        let bad = |reason| BackendError::InvalidKey {
            value: truncate(s),
            reason,
        };
        if s.is_empty() {
            return Err(bad("the key is empty"));
        }
        let (algo, hex_part) = s
            .split_once(':')
            .ok_or_else(|| bad("no `algorithm:` prefix"))?;
        let algorithm = match algo {
            "sha256" => DigestAlgorithm::Sha256,
            "blake3" => DigestAlgorithm::Blake3,
            _ => return Err(bad("unknown algorithm")),
        };
        if hex_part.len() != 64 {
            return Err(bad("the hex part is not 64 digits long"));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the hex part has characters other than 0-9 and a-f"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|_| bad("the hex part does not decode"))?;
        Ok(Digest { algorithm, bytes })
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    #[must_use]
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// A streaming hasher over either algorithm (its implementation types stay private,
/// so the hash crates are not part of this crate's API).
#[derive(Clone)]
pub struct Hasher(HasherImpl);

#[derive(Clone)]
enum HasherImpl {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherImpl::Sha256(h) => sha2::Digest::update(h, data),
            HasherImpl::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything fed so far.
    #[must_use]
    pub fn finalize(self) -> Digest {
        match self.0 {
            HasherImpl::Sha256(h) => {
                Digest::from_bytes(DigestAlgorithm::Sha256, sha2::Digest::finalize(h).into())
            }
            HasherImpl::Blake3(h) => {
                Digest::from_bytes(DigestAlgorithm::Blake3, *h.finalize().as_bytes())
            }
        }
    }
}

/// A stored file's content address: its digest and its size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    /// Digest of the content.
    pub digest: Digest,
    /// Length of the content in bytes.
    pub size: u64,
}

impl BlobRef {
    /// The blob of an in-memory byte string.
    #[must_use]
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        BlobRef {
            digest: algorithm.digest(data),
            size: data.len() as u64,
        }
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.digest, self.size)
    }
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Buffer size for streaming copies: large enough for BLAKE3's SIMD paths and few syscalls,
/// small enough that memory does not depend on file size.
pub const COPY_BUFFER: usize = 1 << 20;

/// Copies `reader` to `writer` and hashes what passed, in one pass with a bounded buffer.
/// Returns the content's [`BlobRef`]. Inside a cache call that is cancelled it stops
/// between reads with [`crate::cancel::Cancelled`] ([`crate::cancel`]).
pub fn copy_hashing(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    algorithm: DigestAlgorithm,
) -> std::io::Result<BlobRef> {
    copy_hashing_with(reader, writer, algorithm, &mut vec![0u8; COPY_BUFFER])
}

/// A buffer for streaming `size` bytes: [`COPY_BUFFER`] at most, and no larger than the
/// content (plus the byte that tells it is longer), so small files cost small buffers.
pub(crate) fn buffer_for(size: u64) -> Vec<u8> {
    let len = usize::try_from(size.saturating_add(1)).unwrap_or(COPY_BUFFER);
    vec![0u8; len.clamp(4096, COPY_BUFFER)]
}

/// [`copy_hashing`] with the caller's buffer.
pub(crate) fn copy_hashing_with(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    algorithm: DigestAlgorithm,
    buf: &mut [u8],
) -> std::io::Result<BlobRef> {
    let mut hasher = algorithm.hasher();
    let mut size = 0u64;
    let cancel = crate::cancel::CancelToken::current();
    loop {
        cancel.check()?;
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok(BlobRef {
        digest: hasher.finalize(),
        size,
    })
}

/// Copies at most `limit` bytes of `src` into `dst` with the kernel's file-to-file copy
/// (`copy_file_range` on Linux, reached through `std::io::copy`: no copy through user
/// space, a reflink where the filesystem offers one), while a second thread reads back
/// each chunk once it is in `dst` and hashes it. Returns the [`BlobRef`] of what landed
/// in `dst`. Inside a cache call that is cancelled it stops between chunks with
/// [`crate::cancel::Cancelled`].
///
/// What is hashed is what `dst` holds, not what `src` held: a caller that owns `dst`
/// (a fresh temporary file) can trust the digest for the file it is about to publish,
/// whatever happens to `src` meanwhile. Memory stays at one buffer whatever the size.
#[cfg(unix)]
pub fn kernel_copy_hashing(
    src: &std::fs::File,
    dst: &std::fs::File,
    limit: u64,
    algorithm: DigestAlgorithm,
) -> std::io::Result<BlobRef> {
    use std::io;
    use std::os::unix::fs::FileExt;
    // Chunks the hashing thread is told about: large enough for few wake-ups, small
    // enough that hashing overlaps most of the copy.
    const STEP: u64 = 8 << 20;
    let hung_up = || io::Error::other("the hashing thread of a kernel copy stopped");
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let hasher = s.spawn(move || -> io::Result<BlobRef> {
            let mut h = algorithm.hasher();
            let mut buf = vec![0u8; COPY_BUFFER];
            let mut pos = 0u64;
            for end in rx {
                while pos < end {
                    let want =
                        usize::try_from((end - pos).min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
                    let n = match dst.read_at(&mut buf[..want], pos) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    h.update(&buf[..n]);
                    pos += n as u64;
                }
            }
            Ok(BlobRef {
                digest: h.finalize(),
                size: pos,
            })
        });
        let cancel = crate::cancel::CancelToken::current();
        let copied = (|| -> io::Result<()> {
            let mut end = 0u64;
            let mut out = dst;
            while end < limit {
                cancel.check()?;
                let n = io::copy(&mut src.take(STEP.min(limit - end)), &mut out)?;
                if n == 0 {
                    break;
                }
                end += n;
                tx.send(end).map_err(|_| hung_up())?;
            }
            Ok(())
        })();
        drop(tx);
        let hash_side = hasher.join().map_err(|_| hung_up())?;
        // If the hashing side failed first, the copy side only saw it hang up: report
        // the hashing side's own error.
        match (copied, hash_side) {
            (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(blob)) => Ok(blob),
        }
    })
}

/// Hashes everything `reader` yields (bounded memory).
pub fn hash_reader(reader: &mut dyn Read, algorithm: DigestAlgorithm) -> std::io::Result<BlobRef> {
    copy_hashing(reader, &mut std::io::sink(), algorithm)
}

/// Copies at most `expected.size + 1` bytes of `reader` into `writer` and fails with
/// [`BackendError::DigestMismatch`] unless they are exactly the expected blob.
///
/// This is the one digest check every path from storage to a caller goes through.
/// The caller must discard what was written when it fails.
pub fn copy_verified(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    expected: &BlobRef,
) -> BackendResult<()> {
    // One byte past the promised size is enough to know the blob is too long, and
    // bounds the work a hostile size or a runaway stream can cause.
    let mut limited = reader.take(expected.size.saturating_add(1));
    let actual = copy_hashing(&mut limited, writer, expected.digest.algorithm())
        .map_err(BackendError::Io)?;
    check_blob(expected, &actual)
}

/// A reader that passes `inner`'s bytes through while hashing them, and ends with an
/// [`std::io::ErrorKind::InvalidData`] error instead of end-of-file unless they were
/// exactly `expected` (never reading more than one byte past its size).
pub(crate) struct VerifyingReader<R> {
    inner: std::io::Take<R>,
    hasher: Hasher,
    read: u64,
    expected: BlobRef,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, expected: BlobRef) -> Self {
        VerifyingReader {
            inner: inner.take(expected.size.saturating_add(1)),
            hasher: expected.digest.algorithm().hasher(),
            read: 0,
            expected,
            done: false,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 && self.read + n as u64 <= self.expected.size {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            return Ok(n);
        }
        // End of the stream, or past the promised size: decide before handing over
        // any byte beyond it.
        self.done = true;
        let actual = BlobRef {
            digest: std::mem::replace(&mut self.hasher, self.expected.digest.algorithm().hasher())
                .finalize(),
            size: self.read + n as u64,
        };
        if n == 0 && actual == self.expected {
            return Ok(0);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            BackendError::DigestMismatch {
                expected: self.expected,
                actual,
            },
        ))
    }
}

/// Compares an expected blob with what was actually read.
pub fn check_blob(expected: &BlobRef, actual: &BlobRef) -> BackendResult<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(BackendError::DigestMismatch {
            expected: *expected,
            actual: *actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            DigestAlgorithm::Sha256.digest(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            DigestAlgorithm::Blake3.digest(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn parse_rejects_bad_keys() {
        let ok = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{ok}")).is_ok());
        for bad in [
            String::new(),
            "../x".into(),
            format!("md5:{ok}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha256:{}/", "a".repeat(63)),
            format!("SHA256:{ok}"),
            ok.clone(),
        ] {
            let err = Digest::parse(&bad).unwrap_err();
            assert!(matches!(err, BackendError::InvalidKey { .. }), "{bad}");
            assert!(err.to_string().contains("64 lowercase hex"));
        }
    }

    #[test]
    fn round_trips_through_display() {
        let d = DigestAlgorithm::Blake3.digest(b"x");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn verifying_reader_ends_in_an_error_unless_exact() {
        let data = b"hello world".to_vec();
        let good = BlobRef::of(DigestAlgorithm::Blake3, &data);
        let read = |bytes: &[u8]| {
            let mut out = Vec::new();
            VerifyingReader::new(bytes, good)
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(read(&data).unwrap(), data);
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        let mut longer = data.clone();
        longer.extend_from_slice(b"!!");
        for bad in [&flipped[..], &longer[..], &data[..4], &[][..]] {
            let e = read(bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn copy_verified_detects_flips_and_length() {
        let data = b"hello world".to_vec();
        let good = BlobRef::of(DigestAlgorithm::Blake3, &data);
        let mut out = Vec::new();
        copy_verified(&mut &data[..], &mut out, &good).unwrap();
        assert_eq!(out, data);

        let mut flipped = data.clone();
        flipped[0] ^= 1;
        let err = copy_verified(&mut &flipped[..], &mut Vec::new(), &good).unwrap_err();
        assert!(matches!(err, BackendError::DigestMismatch { .. }));

        let mut longer = data.clone();
        longer.push(b'!');
        assert!(copy_verified(&mut &longer[..], &mut Vec::new(), &good).is_err());
        assert!(copy_verified(&mut &data[..5], &mut Vec::new(), &good).is_err());
    }
}
