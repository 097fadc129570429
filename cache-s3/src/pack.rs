//! Packed entries: the small files of an entry travel as a few zstd-compressed pack
//! objects instead of one object each.
//!
//! ## Objects
//!
//! * `<prefix>/packs/<hex>`: a pack. Its name is the BLAKE3 of [`NAME_TAG`] and its
//!   ordered member list (algorithm byte, 32 digest bytes, size as u64 LE per member),
//!   so an unchanged set of small files is an unchanged pack, found by name and never
//!   sent again.
//! * `<prefix>/entries/<alg>/<hex>`: an entry that uses packs is wrapped: `"TCPE"`,
//!   version 2, three zero bytes, the pack count (u32 LE, at most
//!   [`MAX_ENTRY_PACKS`]), per pack its 32-byte name and the length of its trailer and
//!   footer (u32 LE, 0 if unknown: a hint for the one ranged GET that reads them), then
//!   the length of the [`ActionRecord::encode`] bytes (u32 LE, at most
//!   [`MAX_ENTRY_BYTES`]) and those bytes as one zstd frame (paths and names compress;
//!   the record of a 2,000-file `node_modules` shrinks by half). Version 1, still read,
//!   has the record bytes verbatim after the pack names. An entry that uses none is the
//!   plain `"TCAR"` record, as before packs.
//!
//! ## Pack format, version 1
//!
//! ```text
//! segment 0 .. segment n-1   each one zstd frame of ~4 MiB of member bytes
//! trailer                    "TCPK", 1, 0, 0, 0, n (u32), m (u32),
//!                            n × (compressed offset u64, compressed len u64, raw len u64),
//!                            m × (algorithm u8, digest [32], size u64, segment u32, offset u64)
//! footer (16 bytes)          trailer length u64, "TCPK", 1, 0, 0, 0
//! ```
//!
//! All integers little-endian. Segments are contiguous from offset 0 up to the trailer;
//! members are listed in segment order, each starting where the previous one of its
//! segment ended, and a segment's members add up to its raw length. A member never
//! spans segments. Readers check all of that against the object's size before they
//! trust a number, cap every segment's decompression at its declared length, and hand
//! the bytes to `Cache`, which verifies each file against its own digest.

// Offsets and lengths here are u64 on the wire and index buffers in memory: each is
// checked against the length of the buffer it indexes (or bounded by the format's
// limits: 200,000 members, 64 MiB trailers, 5 MiB segments) before it is cast.
#![allow(clippy::cast_possible_truncation)]

use crate::put::{Sorted, sort_sources};
use crate::{EAGER_MAX, S3Storage, blocking, is_absent, memory};
use cache_core::storage::{ActionRecord, BlobSource, MAX_ENTRY_BYTES, StoredEntry, open_regular};
use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm, Hasher};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutMode};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Magic of a pack's trailer and footer.
pub const PACK_MAGIC: &[u8; 4] = b"TCPK";
/// Magic of a packed entry's wrapper.
pub const ENTRY_MAGIC: &[u8; 4] = b"TCPE";
/// Format version of packs.
pub const VERSION: u8 = 1;
/// Format version of the entry wrapper this build writes (it reads 1 and 2): 1 holds
/// the record verbatim, 2 as one zstd frame after its length.
pub const ENTRY_VERSION: u8 = 2;
/// Domain tag hashed before a pack's member list to name it.
pub const NAME_TAG: &[u8] = b"taskcache pack v1\0";

const FOOTER_LEN: u64 = 16;
const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: u64 = 24;
const MEMBER_LEN: u64 = 53;
/// A new pack starts after this many members...
pub(crate) const MAX_PACK_MEMBERS: usize = 200_000;
/// ...or this many bytes of members.
pub(crate) const MAX_PACK_BYTES: u64 = 1 << 30;
/// Member bytes a segment is filled to (a member never spans two).
const SEGMENT_TARGET: u64 = 4 << 20;
/// Largest raw segment a reader accepts (the target plus one whole small member).
const MAX_SEGMENT_RAW: u64 = SEGMENT_TARGET + EAGER_MAX;
/// Largest compressed segment a reader fetches (zstd never expands this much).
const MAX_SEGMENT_COMPRESSED: u64 = 2 * MAX_SEGMENT_RAW;
/// Largest trailer a reader fetches.
const MAX_TRAILER: u64 = 64 << 20;
/// What the first ranged GET of a trailer asks for (the end of the pack).
const TRAILER_PROBE: u64 = 64 << 10;
/// Most packs one entry may name.
pub const MAX_ENTRY_PACKS: usize = 16_384;
/// zstd level: fast, and small trees of text compress well at it.
const LEVEL: i32 = 3;

/// The name of a pack: BLAKE3 of the tag and its member list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PackName(pub(crate) [u8; 32]);

impl PackName {
    pub(crate) fn of(members: &[BlobRef]) -> PackName {
        let mut h = DigestAlgorithm::Blake3.hasher();
        h.update(NAME_TAG);
        for m in members {
            h.update(&member_key(m));
        }
        PackName(*h.finalize().as_bytes())
    }

    pub(crate) fn hex(self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

fn algorithm_byte(a: DigestAlgorithm) -> u8 {
    match a {
        DigestAlgorithm::Sha256 => 1,
        DigestAlgorithm::Blake3 => 2,
    }
}

fn algorithm_of(b: u8) -> Option<DigestAlgorithm> {
    match b {
        1 => Some(DigestAlgorithm::Sha256),
        2 => Some(DigestAlgorithm::Blake3),
        _ => None,
    }
}

fn member_key(m: &BlobRef) -> [u8; 41] {
    let mut out = [0; 41];
    out[0] = algorithm_byte(m.digest.algorithm());
    out[1..33].copy_from_slice(m.digest.as_bytes());
    out[33..].copy_from_slice(&m.size.to_le_bytes());
    out
}

/// One zstd frame of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) raw_len: u64,
}

/// Where a member's bytes are: its segment and its offset in the segment's raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) blob: BlobRef,
    pub(crate) segment: u32,
    pub(crate) offset: u64,
}

/// A pack's validated trailer.
#[derive(Debug)]
pub(crate) struct PackInfo {
    pub(crate) name: PackName,
    pub(crate) segments: Vec<Segment>,
    pub(crate) members: Vec<Member>,
    index: HashMap<Digest, u32>,
}

impl PackInfo {
    fn new(name: PackName, segments: Vec<Segment>, members: Vec<Member>) -> Result<Self, String> {
        let mut index = HashMap::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if index.insert(m.blob.digest, i as u32).is_some() {
                return Err(format!("member {} is listed twice", m.blob));
            }
        }
        Ok(PackInfo {
            name,
            segments,
            members,
            index,
        })
    }

    /// The member holding `blob` (its digest and its size).
    pub(crate) fn member(&self, blob: &BlobRef) -> Option<&Member> {
        let m = &self.members[*self.index.get(&blob.digest)? as usize];
        (m.blob.size == blob.size).then_some(m)
    }

    /// Bytes of the whole pack: its segments, trailer and footer.
    fn size(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.offset + s.len) + self.tail()
    }

    /// Bytes of its trailer and footer.
    fn tail(&self) -> u64 {
        HEADER_LEN
            + SEGMENT_LEN * self.segments.len() as u64
            + MEMBER_LEN * self.members.len() as u64
            + FOOTER_LEN
    }

    fn weight(&self) -> usize {
        self.members.len().max(1)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn footer(trailer_len: u64) -> [u8; 16] {
    let mut f = [0; 16];
    f[..8].copy_from_slice(&trailer_len.to_le_bytes());
    f[8..12].copy_from_slice(PACK_MAGIC);
    f[12] = VERSION;
    f
}

/// The trailer's length, from the last 16 bytes of a pack of `object_size` bytes.
pub(crate) fn parse_footer(footer: &[u8], object_size: u64) -> Result<u64, String> {
    if footer.len() != FOOTER_LEN as usize || &footer[8..12] != PACK_MAGIC {
        return Err("no pack footer".into());
    }
    if footer[12] != VERSION || footer[13..] != [0, 0, 0] {
        return Err(format!("pack format {} is not known here", footer[12]));
    }
    let len = le_u64(footer);
    if len > MAX_TRAILER || len.saturating_add(FOOTER_LEN) > object_size {
        return Err(format!(
            "the trailer claims {len} bytes in a {object_size}-byte pack"
        ));
    }
    Ok(len)
}

fn encode_trailer(segments: &[Segment], members: &[Member]) -> Vec<u8> {
    let mut t = Vec::with_capacity(
        HEADER_LEN as usize
            + segments.len() * SEGMENT_LEN as usize
            + members.len() * MEMBER_LEN as usize,
    );
    t.extend_from_slice(PACK_MAGIC);
    t.extend_from_slice(&[VERSION, 0, 0, 0]);
    t.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    t.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for s in segments {
        t.extend_from_slice(&s.offset.to_le_bytes());
        t.extend_from_slice(&s.len.to_le_bytes());
        t.extend_from_slice(&s.raw_len.to_le_bytes());
    }
    for m in members {
        t.extend_from_slice(&member_key(&m.blob));
        t.extend_from_slice(&m.segment.to_le_bytes());
        t.extend_from_slice(&m.offset.to_le_bytes());
    }
    t
}

/// Parses and checks a trailer that starts at `trailer_start` in its pack: every
/// count and length against the bytes there are, before anything is allocated.
pub(crate) fn parse_trailer(
    name: PackName,
    trailer: &[u8],
    trailer_start: u64,
) -> Result<PackInfo, String> {
    let len = trailer.len() as u64;
    if len < HEADER_LEN || &trailer[..4] != PACK_MAGIC {
        return Err("no pack trailer".into());
    }
    if trailer[4] != VERSION || trailer[5..8] != [0, 0, 0] {
        return Err(format!("pack format {} is not known here", trailer[4]));
    }
    let n = u64::from(le_u32(&trailer[8..]));
    let m = u64::from(le_u32(&trailer[12..]));
    if HEADER_LEN + n * SEGMENT_LEN + m * MEMBER_LEN != len {
        return Err(format!(
            "the trailer claims {n} segments and {m} members in {len} bytes"
        ));
    }
    if m == 0 || m > MAX_PACK_MEMBERS as u64 || n == 0 || n > m {
        return Err(format!("a pack of {n} segments and {m} members"));
    }
    let mut segments = Vec::with_capacity(n as usize);
    let mut at = HEADER_LEN as usize;
    let mut end = 0u64;
    for _ in 0..n {
        let s = Segment {
            offset: le_u64(&trailer[at..]),
            len: le_u64(&trailer[at + 8..]),
            raw_len: le_u64(&trailer[at + 16..]),
        };
        at += SEGMENT_LEN as usize;
        if s.offset != end
            || s.len == 0
            || s.len > MAX_SEGMENT_COMPRESSED
            || s.raw_len > MAX_SEGMENT_RAW
        {
            return Err(format!(
                "a segment at {} of {} bytes ({} raw) does not fit",
                s.offset, s.len, s.raw_len
            ));
        }
        end = s.offset + s.len;
        segments.push(s);
    }
    if end != trailer_start {
        return Err(format!(
            "the segments end at {end}, the trailer starts at {trailer_start}"
        ));
    }
    let mut members = Vec::with_capacity(m as usize);
    let (mut segment, mut offset) = (0u32, 0u64);
    for _ in 0..m {
        let b = &trailer[at..at + MEMBER_LEN as usize];
        at += MEMBER_LEN as usize;
        let algorithm = algorithm_of(b[0]).ok_or("a member of an unknown digest algorithm")?;
        let digest = Digest::from_bytes(algorithm, b[1..33].try_into().expect("32 bytes"));
        let size = le_u64(&b[33..]);
        let (seg, off) = (le_u32(&b[41..]), le_u64(&b[45..]));
        if size > EAGER_MAX {
            return Err(format!("a {size}-byte member is not small"));
        }
        if seg != segment {
            // The next segment: the one before must be exactly full.
            if seg != segment + 1 || offset != segments[segment as usize].raw_len {
                return Err(format!("member {digest} is out of order"));
            }
            (segment, offset) = (seg, 0);
        }
        if u64::from(seg) >= n || off != offset {
            return Err(format!("member {digest} is not where its segment puts it"));
        }
        offset += size;
        if offset > segments[seg as usize].raw_len {
            return Err(format!("member {digest} runs past its segment"));
        }
        members.push(Member {
            blob: BlobRef { digest, size },
            segment: seg,
            offset: off,
        });
    }
    if u64::from(segment) + 1 != n || offset != segments[segment as usize].raw_len {
        return Err("the members do not fill the segments".into());
    }
    PackInfo::new(name, segments, members)
}

/// A segment's bytes, decompressed with a hard cap at its declared length: `None` if
/// the frame is not zstd or does not make exactly that many bytes.
pub(crate) fn decompress_segment(data: &[u8], raw_len: u64) -> Option<Vec<u8>> {
    if raw_len > MAX_SEGMENT_RAW {
        return None;
    }
    let raw = zstd::bulk::decompress(data, raw_len as usize).ok()?;
    (raw.len() as u64 == raw_len).then_some(raw)
}

/// A pack as a packed entry names it: its name, and how many bytes its trailer and
/// footer take (0: unknown), so a reader fetches them with one ranged GET.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PackRef {
    pub(crate) name: PackName,
    pub(crate) tail: u32,
}

/// Bytes a packed entry takes per pack.
const PACK_REF_LEN: usize = 36;

/// The wrapper of a packed entry (version [`ENTRY_VERSION`]: the record compressed).
/// Blocking: it compresses.
pub(crate) fn wrap_entry(packs: &[PackRef], record: &[u8]) -> BackendResult<Vec<u8>> {
    let raw_len = u32::try_from(record.len())
        .ok()
        .filter(|&n| n as usize <= MAX_ENTRY_BYTES)
        .ok_or_else(|| {
            BackendError::unavailable(format!(
                "the entry's record is {} bytes, over the {MAX_ENTRY_BYTES}-byte limit",
                record.len()
            ))
        })?;
    let compressed = zstd::bulk::compress(record, LEVEL).map_err(BackendError::Io)?;
    let mut out = Vec::with_capacity(16 + packs.len() * PACK_REF_LEN + compressed.len());
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&[ENTRY_VERSION, 0, 0, 0]);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.name.0);
        out.extend_from_slice(&p.tail.to_le_bytes());
    }
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Why a wrapped entry cannot be read.
#[derive(Debug)]
pub(crate) enum BadWrapper {
    /// A newer taskcache's format: a miss, left in place.
    Newer(u8),
    /// Not a wrapper this format allows.
    Corrupt(String),
}

/// Where a wrapped entry's record is: verbatim from an offset (version 1), or one
/// zstd frame from an offset that must make exactly `raw_len` bytes (version 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RecordAt {
    Plain(usize),
    Compressed { at: usize, raw_len: usize },
}

impl RecordAt {
    /// The record's bytes out of the wrapper's `bytes` (blocking: it may decompress,
    /// never past `raw_len`, itself at most [`MAX_ENTRY_BYTES`]).
    pub(crate) fn record(self, bytes: &bytes::Bytes) -> Result<bytes::Bytes, String> {
        match self {
            RecordAt::Plain(at) => Ok(bytes.slice(at..)),
            RecordAt::Compressed { at, raw_len } => {
                let raw = zstd::bulk::decompress(&bytes[at..], raw_len)
                    .map_err(|e| format!("the packed entry's record does not decompress: {e}"))?;
                if raw.len() == raw_len {
                    Ok(bytes::Bytes::from(raw))
                } else {
                    Err(format!(
                        "the packed entry's record is {} bytes, not the {raw_len} it declares",
                        raw.len()
                    ))
                }
            }
        }
    }
}

/// A packed entry's pack names and where its record is; `Ok(None)` for a plain
/// record (no wrapper).
pub(crate) fn unwrap_entry(bytes: &[u8]) -> Result<Option<(Vec<PackRef>, RecordAt)>, BadWrapper> {
    if bytes.len() < 4 || &bytes[..4] != ENTRY_MAGIC {
        return Ok(None);
    }
    if bytes.len() < 12 {
        return Err(BadWrapper::Corrupt("a packed entry cut short".into()));
    }
    let version = bytes[4];
    if version > ENTRY_VERSION {
        return Err(BadWrapper::Newer(version));
    }
    if version == 0 || bytes[5..8] != [0, 0, 0] {
        return Err(BadWrapper::Corrupt(format!(
            "packed entry format {version} is not known here"
        )));
    }
    let n = le_u32(&bytes[8..]) as usize;
    let end = 12 + n.saturating_mul(PACK_REF_LEN);
    if n == 0 || n > MAX_ENTRY_PACKS || end > bytes.len() {
        return Err(BadWrapper::Corrupt(format!(
            "a packed entry naming {n} packs"
        )));
    }
    let packs = bytes[12..end]
        .chunks_exact(PACK_REF_LEN)
        .map(|c| PackRef {
            name: PackName(c[..32].try_into().expect("32 bytes")),
            tail: le_u32(&c[32..]),
        })
        .collect();
    if version == 1 {
        return Ok(Some((packs, RecordAt::Plain(end))));
    }
    if end + 4 > bytes.len() {
        return Err(BadWrapper::Corrupt("a packed entry cut short".into()));
    }
    let raw_len = le_u32(&bytes[end..]) as usize;
    if raw_len > MAX_ENTRY_BYTES {
        return Err(BadWrapper::Corrupt(format!(
            "a packed entry declaring a {raw_len}-byte record, over the {MAX_ENTRY_BYTES}-byte limit"
        )));
    }
    Ok(Some((
        packs,
        RecordAt::Compressed {
            at: end + 4,
            raw_len,
        },
    )))
}

/// Where a small member's bytes come from while a pack is written.
pub(crate) enum Small {
    Bytes(Arc<[u8]>),
    File(PathBuf),
}

impl Small {
    /// The bytes, read anew (a file at most `size + 1` bytes).
    fn load(&self, size: u64) -> BackendResult<Arc<[u8]>> {
        match self {
            Small::Bytes(b) => Ok(Arc::clone(b)),
            Small::File(path) => {
                let file = open_regular(path)?;
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                file.take(size.saturating_add(1))
                    .read_to_end(&mut bytes)
                    .map_err(|e| BackendError::io_with_context("read", path, e))?;
                Ok(Arc::from(bytes))
            }
        }
    }

    fn describe(&self) -> PathBuf {
        match self {
            Small::Bytes(_) => PathBuf::from("<bytes>"),
            Small::File(p) => p.clone(),
        }
    }
}

/// Splits deduplicated small members into packs: a new one after
/// [`MAX_PACK_MEMBERS`] members or [`MAX_PACK_BYTES`] bytes.
pub(crate) fn split_packs(members: Vec<(BlobRef, Small)>) -> Vec<Vec<(BlobRef, Small)>> {
    let mut packs = Vec::new();
    let mut current: Vec<(BlobRef, Small)> = Vec::new();
    let mut bytes = 0u64;
    for (blob, source) in members {
        if !current.is_empty()
            && (current.len() >= MAX_PACK_MEMBERS || bytes + blob.size > MAX_PACK_BYTES)
        {
            packs.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += blob.size;
        current.push((blob, source));
    }
    if !current.is_empty() {
        packs.push(current);
    }
    packs
}

/// A pack written to a temporary file, ready to upload.
pub(crate) struct Written {
    pub(crate) file: tempfile::TempPath,
    /// BLAKE3 of the file: what a multipart upload checks it read.
    pub(crate) blob: BlobRef,
    pub(crate) info: PackInfo,
}

struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Pass 2 (blocking): reads each member again (it must still hash to its ref: a file
/// that changed while stored is an error, never a wrong pack), fills segments,
/// compresses each, and writes segments, trailer and footer to a temporary file.
pub(crate) fn write_pack(members: &[(BlobRef, Small)]) -> BackendResult<Written> {
    let refs: Vec<BlobRef> = members.iter().map(|(b, _)| *b).collect();
    let name = PackName::of(&refs);
    let temp = tempfile::NamedTempFile::new().map_err(BackendError::Io)?;
    let (file, path) = temp.into_parts();
    let io = |e| BackendError::io_with_context("write a pack", &*path, e);
    let mut out = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: DigestAlgorithm::Blake3.hasher(),
        len: 0,
    };
    let mut segments = Vec::new();
    let mut placed = Vec::with_capacity(members.len());
    // Never grown past a segment (a member never spans two): at most 5 MiB.
    let mut raw: Vec<u8> = Vec::with_capacity(MAX_SEGMENT_RAW as usize);
    let mut in_segment = 0usize;
    let mut compressor = zstd::bulk::Compressor::new(LEVEL).map_err(io)?;
    let mut flush = |raw: &mut Vec<u8>,
                     out: &mut HashingWriter<std::io::BufWriter<std::fs::File>>,
                     segments: &mut Vec<Segment>|
     -> std::io::Result<()> {
        let frame = compressor.compress(raw)?;
        segments.push(Segment {
            offset: out.len,
            len: frame.len() as u64,
            raw_len: raw.len() as u64,
        });
        out.put(&frame)?;
        raw.clear();
        Ok(())
    };
    for (blob, source) in members {
        let bytes = source.load(blob.size)?;
        if BlobRef::of(blob.digest.algorithm(), &bytes) != *blob {
            return Err(BackendError::io_with_context(
                "pack",
                source.describe(),
                std::io::Error::other("the file changed while it was being stored"),
            ));
        }
        if in_segment > 0 && raw.len() as u64 + bytes.len() as u64 > SEGMENT_TARGET {
            flush(&mut raw, &mut out, &mut segments).map_err(io)?;
            in_segment = 0;
        }
        placed.push(Member {
            blob: BlobRef {
                digest: blob.digest,
                size: bytes.len() as u64,
            },
            segment: segments.len() as u32,
            offset: raw.len() as u64,
        });
        raw.extend_from_slice(&bytes);
        in_segment += 1;
    }
    if in_segment > 0 {
        flush(&mut raw, &mut out, &mut segments).map_err(io)?;
    }
    let trailer = encode_trailer(&segments, &placed);
    out.put(&trailer).map_err(io)?;
    out.put(&footer(trailer.len() as u64)).map_err(io)?;
    out.inner.flush().map_err(io)?;
    let blob = BlobRef {
        digest: out.hasher.finalize(),
        size: out.len,
    };
    let info = PackInfo::new(name, segments, placed).map_err(BackendError::unavailable)?;
    Ok(Written {
        file: path,
        blob,
        info,
    })
}

/// Two generations of a map: inserts go to the young one; when it reaches `cap` (by
/// weight) it becomes the old one and the one before is dropped. Bounded memory, and
/// what was used lately stays.
pub(crate) struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    weight: usize,
    cap: usize,
}

impl<K: std::hash::Hash + Eq, V> Generations<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            weight: 0,
            cap,
        }
    }

    pub(crate) fn insert(&mut self, k: K, v: V, weight: usize) {
        if self.weight.saturating_add(weight) > self.cap && !self.young.is_empty() {
            self.old = std::mem::take(&mut self.young);
            self.weight = 0;
        }
        self.old.remove(&k);
        self.weight = self.weight.saturating_add(weight);
        self.young.insert(k, v);
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    pub(crate) fn remove(&mut self, k: &K) {
        self.young.remove(k);
        self.old.remove(k);
    }
}

/// What a storage knows of a pack.
#[derive(Clone)]
pub(crate) enum Known {
    /// It exists (stored or seen by HEAD); its trailer was not read.
    Present,
    /// Its trailer, read and checked (or written here).
    Info(Arc<PackInfo>),
}

/// Small blobs per generation of the blob → pack map.
const BLOBS_PER_GENERATION: usize = 250_000;
/// Pack members (trailers) per generation of the pack cache.
const MEMBERS_PER_GENERATION: usize = 250_000;

/// What one storage remembers of packs: which pack holds a blob (for `put_entry`,
/// `find_missing_blobs` and `open_blobs`), and what it knows of a pack.
pub(crate) struct State {
    blobs: Generations<Digest, (PackName, u64)>,
    packs: Generations<PackName, Known>,
}

impl Default for State {
    fn default() -> Self {
        State {
            blobs: Generations::new(BLOBS_PER_GENERATION),
            packs: Generations::new(MEMBERS_PER_GENERATION),
        }
    }
}

impl State {
    fn learn(&mut self, info: &Arc<PackInfo>) {
        for m in &info.members {
            self.blobs
                .insert(m.blob.digest, (info.name, m.blob.size), 1);
        }
        self.packs
            .insert(info.name, Known::Info(Arc::clone(info)), info.weight());
    }

    /// The pack that holds `blob`, as far as this storage knows (what it stored or
    /// read lately: the last 250,000 to 500,000 small blobs).
    fn locate(&self, blob: &BlobRef) -> Option<PackName> {
        let &(name, size) = self.blobs.get(&blob.digest)?;
        (size == blob.size).then_some(name)
    }

    fn info(&self, name: &PackName) -> Option<Arc<PackInfo>> {
        match self.packs.get(name)? {
            Known::Info(info) => Some(Arc::clone(info)),
            Known::Present => None,
        }
    }

    fn forget(&mut self, name: &PackName) {
        self.packs.remove(name);
    }
}

/// What reading a pack's trailer found.
enum Found {
    Absent,
    Bad,
    Good(Arc<PackInfo>),
}

fn corrupt(name: PackName, reason: &str) {
    tracing::warn!(pack = %name.hex(), reason, "ignoring a corrupt pack (its files are a miss)");
}

impl S3Storage {
    /// The object holding the pack named `hex` (64 hex digits).
    #[must_use]
    pub fn pack_path(&self, hex: &str) -> Path {
        let mut parts: Vec<_> = self.prefix().parts().collect();
        parts.push("packs".into());
        parts.push(hex.into());
        Path::from_iter(parts)
    }

    fn pack_object(&self, name: PackName) -> Path {
        self.pack_path(&name.hex())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves only caches: they stay usable.
        self.inner
            .packs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads and checks the trailer of pack `name`: `None` if the pack is absent or
    /// its trailer is bad (its members are then a miss). Remembered on success.
    pub(crate) async fn read_pack(&self, name: PackName) -> BackendResult<Option<Arc<PackInfo>>> {
        self.read_pack_ref(PackRef { name, tail: 0 }).await
    }

    /// [`S3Storage::read_pack`], first asking for as many bytes as `pack` says its
    /// trailer and footer take (bounded; 0: a fixed probe).
    async fn read_pack_ref(&self, pack: PackRef) -> BackendResult<Option<Arc<PackInfo>>> {
        Ok(match self.read_pack_as_found(pack).await? {
            Found::Good(info) => Some(info),
            Found::Absent | Found::Bad => None,
        })
    }

    async fn read_pack_as_found(&self, pack: PackRef) -> BackendResult<Found> {
        let name = pack.name;
        let path = self.pack_object(name);
        let probe = match u64::from(pack.tail) {
            0 => TRAILER_PROBE,
            tail => tail.clamp(FOOTER_LEN, MAX_TRAILER + FOOTER_LEN),
        };
        let Some((size, start, tail)) = self.get_range(&path, GetRange::Suffix(probe)).await?
        else {
            self.state().forget(&name);
            return Ok(Found::Absent);
        };
        let parsed = match self.trailer_bytes(&path, size, start, tail).await? {
            Ok((trailer, trailer_start)) => {
                blocking(move || Ok(parse_trailer(name, &trailer, trailer_start))).await?
            }
            Err(reason) => Err(reason),
        };
        match parsed {
            Ok(info) => {
                let info = Arc::new(info);
                self.state().learn(&info);
                Ok(Found::Good(info))
            }
            Err(reason) => {
                corrupt(name, &reason);
                self.state().forget(&name);
                Ok(Found::Bad)
            }
        }
    }

    /// The trailer's bytes and where it starts, from the pack's last bytes (one more
    /// ranged GET when the trailer is longer than they are).
    async fn trailer_bytes(
        &self,
        path: &Path,
        size: u64,
        start: u64,
        tail: bytes::Bytes,
    ) -> BackendResult<Result<(bytes::Bytes, u64), String>> {
        if start.saturating_add(tail.len() as u64) != size || (tail.len() as u64) < FOOTER_LEN {
            return Ok(Err("the pack is shorter than its footer".into()));
        }
        let foot = &tail[tail.len() - FOOTER_LEN as usize..];
        let len = match parse_footer(foot, size) {
            Ok(len) => len,
            Err(reason) => return Ok(Err(reason)),
        };
        let trailer_start = size - FOOTER_LEN - len;
        let trailer_end = size - FOOTER_LEN;
        if trailer_start >= start {
            let from = (trailer_start - start) as usize;
            let to = (trailer_end - start) as usize;
            return Ok(Ok((tail.slice(from..to), trailer_start)));
        }
        match self
            .get_range(path, GetRange::Bounded(trailer_start..trailer_end))
            .await?
        {
            Some((again, at, bytes))
                if again == size && at == trailer_start && bytes.len() as u64 == len =>
            {
                Ok(Ok((bytes, trailer_start)))
            }
            Some(_) => Ok(Err("the pack changed while its trailer was read".into())),
            None => Ok(Err("the pack went away while its trailer was read".into())),
        }
    }

    /// One ranged GET: the object's size, where the bytes start, the bytes; `None` if
    /// the object is absent.
    async fn get_range(
        &self,
        path: &Path,
        range: GetRange,
    ) -> BackendResult<Option<(u64, u64, bytes::Bytes)>> {
        let options = GetOptions {
            range: Some(range.clone()),
            ..GetOptions::default()
        };
        let got = match self.inner.store.get_opts(path, options).await {
            Ok(got) => got,
            Err(e) if is_absent(&e) => return Ok(None),
            // A store without suffix ranges (Azure refuses them; an emulator may answer
            // one badly): the size first, then a bounded range. A store that is down
            // fails that too, and that error is the one returned.
            Err(e) if matches!(range, GetRange::Suffix(_)) => {
                tracing::debug!(path = %path, error = %e, "a suffix range failed: asking the size first");
                return self.suffix_by_head(path, &range).await;
            }
            Err(e) => return Err(self.err("GET", path, &e)),
        };
        let (size, start) = (got.meta.size, got.range.start);
        let bytes = got.bytes().await.map_err(|e| self.err("GET", path, &e))?;
        Ok(Some((size, start, bytes)))
    }

    /// A suffix range as a HEAD and a bounded range.
    async fn suffix_by_head(
        &self,
        path: &Path,
        range: &GetRange,
    ) -> BackendResult<Option<(u64, u64, bytes::Bytes)>> {
        let GetRange::Suffix(n) = *range else {
            return Err(BackendError::unavailable("a suffix range was expected"));
        };
        let Some(size) = self.head_size(path).await? else {
            return Ok(None);
        };
        if size == 0 {
            return Ok(Some((0, 0, bytes::Bytes::new())));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(size - n.min(size)..size)),
            ..GetOptions::default()
        };
        let got = match self.inner.store.get_opts(path, options).await {
            Ok(got) => got,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(self.err("GET", path, &e)),
        };
        let (size, start) = (got.meta.size, got.range.start);
        let bytes = got.bytes().await.map_err(|e| self.err("GET", path, &e))?;
        Ok(Some((size, start, bytes)))
    }

    /// Whether pack `name` exists (what this storage knows, else a HEAD).
    async fn pack_present(&self, name: PackName) -> BackendResult<bool> {
        if self.state().packs.get(&name).is_some() {
            return Ok(true);
        }
        let present = self.head_size(&self.pack_object(name)).await?.is_some();
        if present {
            self.state().packs.insert(name, Known::Present, 1);
        }
        Ok(present)
    }

    /// `put_blobs` with packing: small sources into packs, the others on their own.
    pub(crate) async fn put_packed(
        &self,
        sources: Vec<BlobSource>,
        algorithm: DigestAlgorithm,
    ) -> BackendResult<Vec<BlobRef>> {
        let sorted = blocking(move || sort_sources(sources, algorithm, true)).await?;
        let mut refs: Vec<Option<BlobRef>> = vec![None; sorted.len()];
        let mut small = Vec::new();
        let mut alone = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in sorted.into_iter().enumerate() {
            match s {
                Sorted::Small(blob, source) => {
                    refs[i] = Some(blob);
                    if seen.insert(blob.digest) {
                        small.push((blob, source));
                    }
                }
                Sorted::Alone(blob, upload) => alone.push((i, blob, upload)),
            }
        }
        drop(seen);
        // Packs one after another, beside the large blobs' uploads.
        let packs = async {
            for pack in split_packs(small) {
                self.store_pack(pack).await?;
            }
            Ok::<_, BackendError>(())
        };
        let large = futures::stream::iter(alone)
            .map(|(i, blob, upload)| async move {
                Ok::<_, BackendError>((i, self.put_one(blob, upload).await?))
            })
            .buffered(self.inner.options.concurrency)
            .try_collect::<Vec<(usize, BlobRef)>>();
        let ((), stored) = futures::try_join!(packs, large)?;
        for (i, blob) in stored {
            refs[i] = Some(blob);
        }
        Ok(refs
            .into_iter()
            .map(|r| r.expect("every source has a ref"))
            .collect())
    }

    /// Stores one pack unless a whole one is already there under its name.
    async fn store_pack(&self, members: Vec<(BlobRef, Small)>) -> BackendResult<()> {
        let refs: Vec<BlobRef> = members.iter().map(|(b, _)| *b).collect();
        let name = PackName::of(&refs);
        let mode = match self.read_pack_as_found(PackRef { name, tail: 0 }).await? {
            Found::Good(info) if refs.iter().all(|b| info.member(b).is_some()) => {
                // Reused, not sent: claimed first, so a gc sweeping it now keeps it.
                if self.claim(&self.pack_object(name)).await?.is_some() {
                    return Ok(());
                }
                // Swept between the two reads: sent again.
                self.state().forget(&name);
                PutMode::Create
            }
            // Under this name but not these members (a member removed, tampered, cut):
            // replaced.
            Found::Good(_) | Found::Bad => PutMode::Overwrite,
            Found::Absent => PutMode::Create,
        };
        let written = {
            let _turn = memory::pack().await;
            blocking(move || write_pack(&members)).await?
        };
        self.upload_pack(written, mode).await
    }

    async fn upload_pack(&self, written: Written, mode: PutMode) -> BackendResult<()> {
        let path = self.pack_object(written.info.name);
        if written.blob.size < self.inner.options.multipart_threshold {
            self.put_file_whole(&path, written.file.to_path_buf(), written.blob, mode)
                .await?;
        } else {
            self.put_file(&path, written.file.to_path_buf(), written.blob)
                .await?;
        }
        self.state().learn(&Arc::new(written.info));
        Ok(())
    }

    /// `put_entry` with packing: the packs the record's small blobs are in, each
    /// present, named in a wrapper; a small blob in no pack must be stored on its own.
    pub(crate) async fn packed_entry_bytes(&self, record: &ActionRecord) -> BackendResult<Vec<u8>> {
        let bytes = record.encode()?;
        let mut names = Vec::new();
        let mut alone = Vec::new();
        {
            let state = self.state();
            let mut seen = std::collections::HashSet::new();
            for blob in record.blobs().filter(|b| b.size <= EAGER_MAX) {
                match state.locate(&blob) {
                    Some(name) => {
                        if seen.insert(name) {
                            names.push(name);
                        }
                    }
                    None => alone.push(blob),
                }
            }
        }
        if names.len() > MAX_ENTRY_PACKS {
            return Err(BackendError::unavailable(format!(
                "the entry's small files are in {} packs, over the limit of {MAX_ENTRY_PACKS}",
                names.len()
            )));
        }
        let gone = |what: String| {
            BackendError::unavailable(format!(
                "{what} is not stored in {}: the entry is not published",
                self.describe()
            ))
        };
        let packs_present: Vec<bool> = futures::stream::iter(names.iter().copied())
            .map(|n| self.pack_present(n))
            .buffered(self.inner.options.concurrency)
            .try_collect()
            .await?;
        if let Some(i) = packs_present.iter().position(|p| !p) {
            return Err(gone(format!("pack {}", names[i].hex())));
        }
        let missing = self.find_standalone_missing(alone, true).await?;
        if let Some(blob) = missing.first() {
            return Err(gone(format!("blob {blob}")));
        }
        if names.is_empty() {
            return Ok(bytes);
        }
        let packs: Vec<PackRef> = {
            let state = self.state();
            names
                .iter()
                .map(|&name| PackRef {
                    name,
                    tail: state
                        .info(&name)
                        .and_then(|i| u32::try_from(i.tail()).ok())
                        .unwrap_or(0),
                })
                .collect()
        };
        blocking(move || wrap_entry(&packs, &bytes)).await
    }

    /// `get_entry` of a wrapped entry: the record, and which of its blobs are in none
    /// of its packs and not stored on their own (listing at least one when any is).
    pub(crate) async fn packed_entry(
        &self,
        digest: Digest,
        bytes: bytes::Bytes,
        packs: Vec<PackRef>,
        at: RecordAt,
    ) -> BackendResult<StoredEntry> {
        let record = blocking(move || {
            let body = at
                .record(&bytes)
                .map_err(|reason| BackendError::CorruptEntry {
                    key: digest,
                    reason,
                })?;
            ActionRecord::decode(&digest, &body)
        })
        .await?;
        let infos: Vec<Option<Arc<PackInfo>>> = futures::stream::iter(packs)
            .map(|p| self.read_pack_ref(p))
            .buffered(8)
            .try_collect()
            .await?;
        let infos: Vec<Arc<PackInfo>> = infos.into_iter().flatten().collect();
        let uncovered: Vec<BlobRef> = record
            .blobs()
            .filter(|b| !infos.iter().any(|i| i.member(b).is_some()))
            .collect();
        let missing = self.find_standalone_missing(uncovered, true).await?;
        Ok(StoredEntry::with_missing_blobs(record, missing))
    }

    /// Which of `blobs` are not stored on their own (HEADs, bounded concurrency); with
    /// `first_only`, stops at the first missing one.
    pub(crate) async fn find_standalone_missing(
        &self,
        blobs: Vec<BlobRef>,
        first_only: bool,
    ) -> BackendResult<Vec<BlobRef>> {
        let mut heads = futures::stream::iter(blobs)
            .map(|blob| async move {
                let size = self.head_size(&self.blob_path(&blob.digest)).await?;
                // A stored object of another size is not this blob.
                Ok::<_, BackendError>((size != Some(blob.size)).then_some(blob))
            })
            .buffered(self.inner.options.concurrency);
        let mut missing = Vec::new();
        while let Some(found) = heads.try_next().await? {
            if let Some(blob) = found {
                missing.push(blob);
                if first_only {
                    break;
                }
            }
        }
        Ok(missing)
    }

    /// The pack each of `blobs` is in, as far as this storage knows, and those packs.
    fn locate_all(&self, blobs: &[BlobRef]) -> (Vec<Option<PackName>>, Vec<PackName>) {
        let located: Vec<Option<PackName>> = {
            let state = self.state();
            blobs.iter().map(|b| state.locate(b)).collect()
        };
        let mut names: Vec<PackName> = located.iter().flatten().copied().collect();
        names.sort_unstable_by_key(|n| n.0);
        names.dedup();
        (located, names)
    }

    /// `find_missing_blobs`: a blob in a pack known to be there is present; the others
    /// are asked about on their own.
    pub(crate) async fn find_missing_packed(
        &self,
        blobs: Vec<BlobRef>,
    ) -> BackendResult<Vec<BlobRef>> {
        let (located, names) = self.locate_all(&blobs);
        let present: Vec<(PackName, bool)> = futures::stream::iter(names)
            .map(|n| async move { Ok::<_, BackendError>((n, self.pack_present(n).await?)) })
            .buffered(self.inner.options.concurrency)
            .try_collect()
            .await?;
        let present: HashMap<PackName, bool> = present.into_iter().collect();
        let ask: Vec<BlobRef> = blobs
            .into_iter()
            .zip(located)
            .filter(|(_, at)| !at.is_some_and(|n| present.get(&n) == Some(&true)))
            .map(|(b, _)| b)
            .collect();
        self.find_standalone_missing(ask, false).await
    }

    /// `open_blobs`: packed blobs by segment (one ranged GET each), the others on
    /// their own.
    pub(crate) async fn open_packed(
        &self,
        blobs: Vec<BlobRef>,
    ) -> BackendResult<Vec<Option<BlobSource>>> {
        let (located, names) = self.locate_all(&blobs);
        // Trailers not cached any more are read again.
        let mut infos: HashMap<PackName, Arc<PackInfo>> = HashMap::new();
        let mut unread = Vec::new();
        {
            let state = self.state();
            for n in names {
                match state.info(&n) {
                    Some(info) => {
                        infos.insert(n, info);
                    }
                    None => unread.push(n),
                }
            }
        }
        let read: Vec<Option<Arc<PackInfo>>> = futures::stream::iter(unread)
            .map(|n| self.read_pack(n))
            .buffered(8)
            .try_collect()
            .await?;
        infos.extend(read.into_iter().flatten().map(|i| (i.name, i)));
        // (pack, segment) → the members wanted from it, by position in `blobs`.
        let mut segments: HashMap<(PackName, u32), Vec<(usize, Member)>> = HashMap::new();
        let mut alone = Vec::new();
        for (i, (blob, at)) in blobs.iter().zip(&located).enumerate() {
            let member = at
                .and_then(|n| infos.get(&n))
                .and_then(|info| Some((info.name, *info.member(blob)?)));
            match member {
                Some((name, m)) => segments.entry((name, m.segment)).or_default().push((i, m)),
                None => alone.push((i, *blob)),
            }
        }
        let mut out: Vec<Option<BlobSource>> = (0..blobs.len()).map(|_| None).collect();
        let packed = futures::stream::iter(segments)
            .map(|((name, segment), wanted)| {
                let info = Arc::clone(&infos[&name]);
                self.open_segment(info, segment, wanted)
            })
            .buffered(4)
            .try_collect::<Vec<_>>();
        let single = futures::stream::iter(alone)
            .map(|(i, blob)| async move { Ok::<_, BackendError>((i, self.open_one(blob).await?)) })
            .buffered(self.inner.options.concurrency)
            .try_collect::<Vec<_>>();
        let (packed, single) = futures::try_join!(packed, single)?;
        for (i, source) in packed.into_iter().flatten().chain(single) {
            out[i] = source;
        }
        Ok(out)
    }

    /// One segment, fetched and decompressed (capped at its declared length), cut into
    /// the members wanted. A segment that does not decompress to its length serves
    /// its members as empty bytes: `Cache`'s check fails them, and a caller that may
    /// write removes the pack, so the next store sends it again.
    async fn open_segment(
        &self,
        info: Arc<PackInfo>,
        segment: u32,
        wanted: Vec<(usize, Member)>,
    ) -> BackendResult<Vec<(usize, Option<BlobSource>)>> {
        let s = info.segments[segment as usize];
        let path = self.pack_object(info.name);
        // Held until the members are cut out: the frame and the decompressed segment.
        let _room = memory::segment(s.len.saturating_add(s.raw_len)).await;
        let got = self
            .get_range(&path, GetRange::Bounded(s.offset..s.offset + s.len))
            .await?;
        let Some((_, start, frame)) = got else {
            self.state().forget(&info.name);
            return Ok(wanted.into_iter().map(|(i, _)| (i, None)).collect());
        };
        let name = info.name;
        blocking(move || {
            let raw = if start == s.offset && frame.len() as u64 == s.len {
                decompress_segment(&frame, s.raw_len)
            } else {
                None
            };
            if raw.is_none() {
                corrupt(name, "a segment does not decompress to its length");
            }
            Ok(wanted
                .into_iter()
                .map(|(i, m)| {
                    let bytes: Arc<[u8]> = match &raw {
                        Some(raw) => {
                            Arc::from(&raw[m.offset as usize..(m.offset + m.blob.size) as usize])
                        }
                        None => Arc::from(&[][..]),
                    };
                    (i, Some(BlobSource::Bytes(bytes)))
                })
                .collect())
        })
        .await
    }

    /// `remove_blob`: the packs this storage knows to hold `blob` are rewritten
    /// without it (the other members stay readable: one bad file does not cost the
    /// others), or deleted when it was their only member or they are too large to
    /// rewrite. The next store of the same files finds the pack incomplete and sends
    /// it again, under the same name.
    pub(crate) async fn remove_packed(&self, blob: &BlobRef) -> BackendResult<()> {
        let name = self.state().locate(blob);
        if let Some(name) = name {
            self.state().forget(&name);
            self.rewrite_pack(name, blob, false).await?;
        }
        Ok(())
    }

    /// Rewrites pack `name` without `blob` (or with its middle byte flipped, for
    /// tests): whether the pack held it.
    async fn rewrite_pack(
        &self,
        name: PackName,
        blob: &BlobRef,
        flip: bool,
    ) -> BackendResult<bool> {
        let path = self.pack_object(name);
        let Some(info) = self.read_pack(name).await? else {
            return Ok(false);
        };
        if info.member(blob).is_none() {
            return Ok(false);
        }
        let size = info.size();
        if size > MAX_REWRITE && !flip {
            self.delete(&path).await?;
            return Ok(true);
        }
        let Some((_, _, whole)) = self.get_range(&path, GetRange::Bounded(0..size)).await? else {
            return Ok(false);
        };
        let target = *blob;
        let rebuilt = blocking(move || Ok(rebuild_pack(name, &whole, &target, flip))).await?;
        match rebuilt {
            Rebuilt::NotHeld => return Ok(false),
            Rebuilt::Empty => self.delete(&path).await?,
            Rebuilt::Bytes(bytes) => self
                .inner
                .store
                .put(&path, bytes.into())
                .await
                .map(drop)
                .map_err(|e| self.err("PUT", &path, &e))?,
        }
        self.state().forget(&name);
        Ok(true)
    }

    /// Tests and tools: rewrites every pack under the prefix that holds `blob`, with
    /// that member's middle byte flipped (`flip`: same member list, so the lie is in
    /// the bytes) or without that member (the pack is deleted if it was the only
    /// one). Returns how many packs held it.
    #[doc(hidden)]
    pub async fn tamper_packed_blob(&self, blob: &BlobRef, flip: bool) -> BackendResult<usize> {
        if flip && blob.size == 0 {
            return Err(BackendError::InvalidOutput {
                path: blob.to_string(),
                reason: "an empty blob has no byte to flip".into(),
            });
        }
        let prefix: Path = self.prefix().parts().chain(["packs".into()]).collect();
        let listed: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err("LIST", &prefix, &e))?;
        let mut held = 0;
        for meta in listed {
            let Some(name) = meta.location.filename().and_then(parse_hex) else {
                continue;
            };
            if self.rewrite_pack(name, blob, flip).await? {
                held += 1;
            }
        }
        Ok(held)
    }
}

/// Largest pack `remove_blob` rewrites (held in memory while it is); a larger one is
/// deleted whole.
const MAX_REWRITE: u64 = 32 << 20;

enum Rebuilt {
    NotHeld,
    Empty,
    Bytes(Vec<u8>),
}

/// A pack (`whole`, checked again here) without `target`, or with its middle byte
/// flipped. Segments that do not hold it are copied as they are; the one that does
/// is decompressed, edited and compressed again (a corrupt one is dropped whole).
fn rebuild_pack(name: PackName, whole: &[u8], target: &BlobRef, flip: bool) -> Rebuilt {
    let size = whole.len() as u64;
    let info = (size >= FOOTER_LEN)
        .then(|| &whole[(size - FOOTER_LEN) as usize..])
        .ok_or_else(|| "no footer".to_owned())
        .and_then(|f| parse_footer(f, size))
        .and_then(|len| {
            let start = size - FOOTER_LEN - len;
            parse_trailer(
                name,
                &whole[start as usize..(size - FOOTER_LEN) as usize],
                start,
            )
        });
    let Ok(info) = info else {
        // Unreadable: nothing in it is served, so nothing needs removing from it.
        return Rebuilt::NotHeld;
    };
    if info.member(target).is_none() {
        return Rebuilt::NotHeld;
    }
    let mut out = Vec::with_capacity(whole.len());
    let mut segments = Vec::new();
    let mut members = Vec::new();
    let mut at = 0;
    for (si, s) in info.segments.iter().enumerate() {
        let end = at
            + info.members[at..]
                .iter()
                .take_while(|m| m.segment as usize == si)
                .count();
        let these = &info.members[at..end];
        at = end;
        let frame = &whole[s.offset as usize..(s.offset + s.len) as usize];
        let index = segments.len() as u32;
        if !these.iter().any(|m| m.blob.digest == target.digest) {
            segments.push(Segment {
                offset: out.len() as u64,
                ..*s
            });
            out.extend_from_slice(frame);
            members.extend(these.iter().map(|m| Member {
                segment: index,
                ..*m
            }));
            continue;
        }
        let Some(raw) = decompress_segment(frame, s.raw_len) else {
            continue;
        };
        let mut edited = Vec::with_capacity(raw.len());
        for m in these {
            let mut bytes = raw[m.offset as usize..(m.offset + m.blob.size) as usize].to_vec();
            if m.blob.digest == target.digest {
                if !flip {
                    continue;
                }
                if let Some(b) = bytes.get_mut(m.blob.size as usize / 2) {
                    *b ^= 0x01;
                }
            }
            members.push(Member {
                segment: index,
                offset: edited.len() as u64,
                ..*m
            });
            edited.extend_from_slice(&bytes);
        }
        if members.last().is_none_or(|m| m.segment != index) {
            continue;
        }
        let Ok(frame) = zstd::bulk::compress(&edited, LEVEL) else {
            return Rebuilt::NotHeld;
        };
        segments.push(Segment {
            offset: out.len() as u64,
            len: frame.len() as u64,
            raw_len: edited.len() as u64,
        });
        out.extend_from_slice(&frame);
    }
    if members.is_empty() {
        return Rebuilt::Empty;
    }
    let trailer = encode_trailer(&segments, &members);
    out.extend_from_slice(&trailer);
    out.extend_from_slice(&footer(trailer.len() as u64));
    Rebuilt::Bytes(out)
}

fn parse_hex(hex: &str) -> Option<PackName> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PackName(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, size: usize) -> Vec<(BlobRef, Small)> {
        (0..n)
            .map(|i| {
                let bytes: Vec<u8> = format!("member {i} ").bytes().cycle().take(size).collect();
                (
                    BlobRef::of(DigestAlgorithm::Blake3, &bytes),
                    Small::Bytes(Arc::from(bytes)),
                )
            })
            .collect()
    }

    fn read_back(written: &Written) -> (Vec<u8>, PackInfo) {
        let whole = std::fs::read(&written.file).unwrap();
        let size = whole.len() as u64;
        let len = parse_footer(&whole[whole.len() - 16..], size).unwrap();
        let start = size - 16 - len;
        let info = parse_trailer(
            written.info.name,
            &whole[start as usize..whole.len() - 16],
            start,
        )
        .unwrap();
        (whole, info)
    }

    #[test]
    fn a_pack_reads_back_member_by_member_across_segments() {
        // 3,000 members of 5,000 bytes: about 15 MB, several 4 MiB segments.
        let m = members(3000, 5000);
        let written = write_pack(&m).unwrap();
        let (whole, info) = read_back(&written);
        assert!(info.segments.len() >= 3, "{:?}", info.segments);
        assert_eq!(info.members, written.info.members);
        assert_eq!(info.size(), whole.len() as u64);
        assert_eq!(info.tail(), written.info.tail());
        for (blob, source) in &m {
            let member = info.member(blob).unwrap();
            let s = info.segments[member.segment as usize];
            let raw = decompress_segment(
                &whole[s.offset as usize..(s.offset + s.len) as usize],
                s.raw_len,
            )
            .unwrap();
            let bytes = &raw[member.offset as usize..(member.offset + blob.size) as usize];
            let Small::Bytes(want) = source else {
                unreachable!()
            };
            assert_eq!(bytes, &want[..]);
        }
    }

    #[test]
    fn the_name_is_the_member_list() {
        let m = members(10, 100);
        let refs: Vec<BlobRef> = m.iter().map(|(b, _)| *b).collect();
        assert_eq!(PackName::of(&refs), write_pack(&m).unwrap().info.name);
        let mut reordered = refs.clone();
        reordered.swap(0, 1);
        assert_ne!(PackName::of(&refs), PackName::of(&reordered));
    }

    #[test]
    fn a_file_that_changed_since_it_was_hashed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"before").unwrap();
        let blob = BlobRef::of(DigestAlgorithm::Blake3, b"before");
        std::fs::write(&path, b"after!").unwrap();
        let e = write_pack(&[(blob, Small::File(path))]).err().unwrap();
        assert!(e.to_string().contains("changed"), "{e}");
    }

    #[test]
    fn every_truncation_and_every_flipped_trailer_byte_is_refused_or_consistent() {
        let m = members(5, 300);
        let written = write_pack(&m).unwrap();
        let (whole, _) = read_back(&written);
        let size = whole.len() as u64;
        let len = parse_footer(&whole[whole.len() - 16..], size).unwrap();
        let start = (size - 16 - len) as usize;
        for i in start..whole.len() {
            let mut bad = whole.clone();
            bad[i] ^= 0x55;
            let Ok(len) = parse_footer(&bad[bad.len() - 16..], size) else {
                continue;
            };
            let at = size - 16 - len;
            if let Ok(info) =
                parse_trailer(written.info.name, &bad[at as usize..bad.len() - 16], at)
            {
                // What passes is still self-consistent: every member inside its
                // segment, every segment inside the object.
                for mem in &info.members {
                    let s = info.segments[mem.segment as usize];
                    assert!(mem.offset + mem.blob.size <= s.raw_len);
                    assert!(s.offset + s.len <= at);
                }
            }
        }
        for cut in [0, 1, 15, 16, 17, whole.len() / 2, whole.len() - 1] {
            let short = &whole[..cut];
            let size = short.len() as u64;
            if size < 16 {
                continue;
            }
            if let Ok(len) = parse_footer(&short[short.len() - 16..], size) {
                let at = size - 16 - len;
                assert!(
                    parse_trailer(written.info.name, &short[at as usize..short.len() - 16], at)
                        .is_err()
                );
            }
        }
    }

    #[test]
    fn random_damage_never_panics_and_what_passes_is_consistent() {
        let m = members(40, 700);
        let written = write_pack(&m).unwrap();
        let (whole, _) = read_back(&written);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut bad = whole.clone();
            for _ in 0..=next() % 4 {
                let i = (next() % bad.len() as u64) as usize;
                bad[i] = next() as u8;
            }
            if next() % 8 == 0 {
                bad.truncate((next() % bad.len() as u64) as usize);
            }
            let size = bad.len() as u64;
            if size < FOOTER_LEN {
                continue;
            }
            let Ok(len) = parse_footer(&bad[bad.len() - 16..], size) else {
                continue;
            };
            let at = size - FOOTER_LEN - len;
            let Ok(info) = parse_trailer(written.info.name, &bad[at as usize..bad.len() - 16], at)
            else {
                continue;
            };
            for s in &info.segments {
                assert!(s.offset + s.len <= at);
                let frame = &bad[s.offset as usize..(s.offset + s.len) as usize];
                if let Some(raw) = decompress_segment(frame, s.raw_len) {
                    assert_eq!(raw.len() as u64, s.raw_len);
                }
            }
            for mem in &info.members {
                assert!(mem.offset + mem.blob.size <= info.segments[mem.segment as usize].raw_len);
            }
            let _ = rebuild_pack(info.name, &bad, &info.members[0].blob, false);
        }
    }

    #[test]
    fn a_segment_is_decompressed_to_its_declared_length_and_no_further() {
        let raw = vec![0u8; 1 << 20];
        let frame = zstd::bulk::compress(&raw, 3).unwrap();
        assert_eq!(decompress_segment(&frame, 1 << 20).unwrap().len(), 1 << 20);
        assert!(
            decompress_segment(&frame, 4096).is_none(),
            "a bomb is capped"
        );
        assert!(
            decompress_segment(&frame, (1 << 20) + 1).is_none(),
            "too short"
        );
        assert!(decompress_segment(b"not zstd", 10).is_none());
        assert!(decompress_segment(&frame, MAX_SEGMENT_RAW + 1).is_none());
    }

    #[test]
    fn entry_wrappers_round_trip_and_bound_their_pack_count() {
        let packs = [
            PackRef {
                name: PackName([1; 32]),
                tail: 0,
            },
            PackRef {
                name: PackName([2; 32]),
                tail: 1234,
            },
        ];
        let record: Vec<u8> = b"TCAR, then paths that repeat: node_modules/a/index.js "
            .iter()
            .copied()
            .cycle()
            .take(20_000)
            .collect();
        let wrapped = wrap_entry(&packs, &record).unwrap();
        assert_eq!(wrapped[4], ENTRY_VERSION);
        assert!(wrapped.len() < record.len() / 4, "the record is compressed");
        let (got, at) = unwrap_entry(&wrapped).unwrap().unwrap();
        assert_eq!(got, packs);
        let bytes = bytes::Bytes::from(wrapped.clone());
        assert_eq!(at.record(&bytes).unwrap(), record);
        assert!(unwrap_entry(b"TCAR...").unwrap().is_none());
        let mut huge = wrapped.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unwrap_entry(&huge).is_err());
        let mut newer = wrapped.clone();
        newer[4] = ENTRY_VERSION + 1;
        assert!(matches!(
            unwrap_entry(&newer),
            Err(BadWrapper::Newer(v)) if v == ENTRY_VERSION + 1
        ));
        // Version 1, written before records were compressed: the record verbatim.
        let mut v1 = wrapped[..12 + 2 * PACK_REF_LEN].to_vec();
        v1[4] = 1;
        v1.extend_from_slice(&record);
        let (got, at) = unwrap_entry(&v1).unwrap().unwrap();
        assert_eq!(got, packs);
        assert_eq!(at.record(&bytes::Bytes::from(v1)).unwrap(), record);
    }

    #[test]
    fn a_compressed_record_is_bounded_and_must_be_the_length_it_declares() {
        let packs = [PackRef {
            name: PackName([1; 32]),
            tail: 0,
        }];
        let record = vec![b'x'; 100_000];
        let wrapped = wrap_entry(&packs, &record).unwrap();
        let len_at = 12 + PACK_REF_LEN;
        let with_len = |n: u32| {
            let mut w = wrapped.clone();
            w[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
            w
        };
        // Over the entry limit: refused before anything is decompressed.
        let over = u32::try_from(MAX_ENTRY_BYTES + 1).unwrap();
        assert!(matches!(
            unwrap_entry(&with_len(over)),
            Err(BadWrapper::Corrupt(_))
        ));
        // Declaring less than the frame makes: decompression stops there, an error.
        for lie in [99_999, 1, 0, 100_001, 1 << 20] {
            let w = bytes::Bytes::from(with_len(lie));
            let (_, at) = unwrap_entry(&w).unwrap().unwrap();
            assert!(
                at.record(&w).is_err(),
                "a record declared at {lie} bytes was read"
            );
        }
        // Cut inside the length, or inside the frame.
        assert!(unwrap_entry(&wrapped[..len_at + 2]).is_err());
        let cut = bytes::Bytes::copy_from_slice(&wrapped[..wrapped.len() - 3]);
        let (_, at) = unwrap_entry(&cut).unwrap().unwrap();
        assert!(at.record(&cut).is_err());
        // A frame of garbage.
        let mut garbage = wrapped[..len_at + 4].to_vec();
        garbage.extend_from_slice(b"not a zstd frame at all");
        let garbage = bytes::Bytes::from(garbage);
        let (_, at) = unwrap_entry(&garbage).unwrap().unwrap();
        assert!(at.record(&garbage).is_err());
    }

    #[test]
    fn generations_stay_bounded() {
        let mut g = Generations::new(10);
        for i in 0..1000 {
            g.insert(i, i, 1);
        }
        assert!(g.young.len() + g.old.len() <= 20);
        assert_eq!(g.get(&999), Some(&999));
        assert_eq!(g.get(&0), None);
    }
}
