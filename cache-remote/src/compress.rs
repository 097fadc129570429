//! zstd for REAPI `compressed-blobs`: what a blob is encoded with on the way up, and a
//! bounded decoder for what comes down. A server (or whoever answers at its address)
//! chooses the compressed bytes, so decoding never produces more than the blob's
//! recorded size plus one byte, in pieces of at most [`CHUNK`], with the decoder's
//! window (its one large allocation) capped by that size too.

use crate::blobs::CHUNK;
use std::io::Read;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

/// The level blobs are compressed at: zstd's default, fast enough to keep up with a
/// network link on one core while still shrinking text and object files severalfold.
pub const LEVEL: i32 = 3;

/// The largest decoder window accepted for a blob of `size` bytes: 8 MiB (what common
/// levels use without knowing the size), up to the next power of two above `size`,
/// and never over zstd's own default limit of 128 MiB.
pub fn window_log_max(size: u64) -> u32 {
    (64 - size.leading_zeros()).clamp(23, 27)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// A streaming zstd decoder that stops past `limit` decoded bytes.
pub struct Unzstd {
    decoder: Decoder<'static>,
    limit: u64,
    produced: u64,
    /// Whether the last call ended exactly at the end of a frame.
    at_frame_end: bool,
}

impl Unzstd {
    /// A decoder for data that must decode to at most `limit` bytes (the blob's size,
    /// less what was already received before a resumed read).
    pub fn new(limit: u64, size: u64) -> std::io::Result<Self> {
        let mut decoder = Decoder::new()?;
        decoder.set_parameter(DParameter::WindowLogMax(window_log_max(size)))?;
        Ok(Unzstd {
            decoder,
            limit,
            produced: 0,
            at_frame_end: true,
        })
    }

    /// Decodes from `input` (advanced past what was used) into at most one piece of
    /// at most [`CHUNK`] bytes; `None` when `input` is used up and nothing is pending.
    /// Decoding past the limit is an error.
    pub fn step(&mut self, input: &mut &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let room = usize::try_from((self.limit + 1).saturating_sub(self.produced))
            .unwrap_or(CHUNK)
            .min(CHUNK);
        let mut piece = vec![0u8; room];
        let written = loop {
            let (used, written, hint) = {
                let mut src = InBuffer::around(input);
                let mut dst = OutBuffer::around(&mut piece[..]);
                let hint = self.decoder.run(&mut src, &mut dst)?;
                (src.pos(), dst.pos(), hint)
            };
            *input = &input[used..];
            if used > 0 || written > 0 {
                // A call that did nothing answers how to start the next frame.
                self.at_frame_end = hint == 0;
            }
            if written > 0 {
                break written;
            }
            if input.is_empty() || used == 0 {
                return Ok(None);
            }
        };
        self.produced += written as u64;
        if self.produced > self.limit {
            return Err(invalid(format!(
                "zstd data decodes past the blob's {} bytes",
                self.limit
            )));
        }
        piece.truncate(written);
        Ok(Some(piece))
    }

    /// The compressed stream ended: an error unless it ended at a frame's end.
    pub fn finish(&self) -> std::io::Result<()> {
        if self.at_frame_end {
            Ok(())
        } else {
            Err(invalid("zstd data ends inside a frame".into()))
        }
    }
}

/// Decodes a whole in-memory blob of `size` bytes (a batch answer): at most `size + 1`
/// bytes are ever produced, so a wrong size is left for the digest check to refuse.
pub fn decode_all(mut data: &[u8], size: u64) -> std::io::Result<Vec<u8>> {
    let mut d = Unzstd::new(size, size)?;
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(CHUNK));
    while let Some(piece) = d.step(&mut data)? {
        out.extend_from_slice(&piece);
    }
    d.finish()?;
    Ok(out)
}

/// `data` compressed for a batch, or `None` when that would not make it smaller.
pub fn encode_small(data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let z = zstd::bulk::compress(data, LEVEL)?;
    Ok((z.len() < data.len()).then_some(z))
}

/// A reader of the zstd encoding of `reader` (streamed: zstd's own buffers only);
/// `finish().into_inner()` gives `reader` back.
pub fn encoder<R: Read>(
    reader: R,
) -> std::io::Result<zstd::stream::read::Encoder<'static, std::io::BufReader<R>>> {
    zstd::stream::read::Encoder::new(reader, LEVEL)
}

/// Fills `buf` from `r` until it is full or `r` ends; the bytes read.
pub fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros_compressed(len: u64) -> Vec<u8> {
        let mut z = Vec::new();
        encoder(std::io::repeat(0).take(len))
            .unwrap()
            .read_to_end(&mut z)
            .unwrap();
        z
    }

    #[test]
    fn round_trips_in_pieces_no_larger_than_a_chunk() {
        let data: Vec<u8> = (0..3 * CHUNK + 5)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let z = zeros_compressed(0);
        assert!(decode_all(&z, 0).unwrap().is_empty());
        let mut z = Vec::new();
        encoder(&data[..]).unwrap().read_to_end(&mut z).unwrap();
        assert!(z.len() < data.len() / 10);
        let mut d = Unzstd::new(data.len() as u64, data.len() as u64).unwrap();
        let mut out = Vec::new();
        // Fed a few bytes at a time, as messages arrive.
        for part in z.chunks(7) {
            let mut part = part;
            while let Some(piece) = d.step(&mut part).unwrap() {
                assert!(piece.len() <= CHUNK);
                out.extend_from_slice(&piece);
            }
        }
        d.finish().unwrap();
        assert!(out == data);
    }

    #[test]
    fn a_zip_bomb_stops_one_byte_past_the_recorded_size() {
        // 256 MiB of zeros in a few KiB, claimed to be a 1 MiB blob.
        let bomb = zeros_compressed(256 << 20);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let e = decode_all(&bomb, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("decodes past"), "{e}");
        let mut d = Unzstd::new(1 << 20, 1 << 20).unwrap();
        let mut input = &bomb[..];
        let mut total = 0;
        let e = loop {
            match d.step(&mut input) {
                Ok(Some(p)) => total += p.len(),
                Ok(None) => panic!("the bomb ended"),
                Err(e) => break e,
            }
        };
        assert!(total <= 1 << 20, "{total}");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_and_garbage_data_are_errors() {
        let data = vec![1u8; 100_000];
        let z = encode_small(&data).unwrap().unwrap();
        assert!(decode_all(&z[..z.len() - 3], 100_000).is_err());
        assert!(decode_all(b"not zstd at all", 100_000).is_err());
        assert_eq!(decode_all(&z, 100_000).unwrap(), data);
        assert!(
            encode_small(b"x").unwrap().is_none(),
            "a tiny blob stays identity"
        );
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        // A frame header claiming a 2 GiB window (window log 31), no content size.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3];
        frame.extend_from_slice(&[0; 8]);
        let e = decode_all(&frame, 1000).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }
}
