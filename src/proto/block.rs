//! NAR blocks: the concatenated NARs of a transfer cut into slices of at most [`BLOCK`] bytes,
//! each sent as a [`RAW_BLOCK`] frame or, where it pays, a [`ZSTD_BLOCK`] frame (`u32`
//! decompressed length, then one zstd frame) that may refer back into the NAR bytes of the block
//! before it (zstd's raw-content prefix). The sender fills [`BlockBuffer`]s and [`compress`]es
//! them in parallel; the receiver's [`BlockDecoder`] keeps the previous block for the prefix.

use bytes::Bytes;
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, InBuffer, OutBuffer};

use super::WireError;
use super::frame::{HEADER_LEN, RAW_BLOCK, ZSTD_BLOCK, header};

/// NAR bytes per block, and the most one block may claim: small enough that two cores share the
/// work evenly, large enough that zstd keeps most of its ratio.
pub const BLOCK: usize = 4 << 20;

/// A raw block being filled: room for its frame header, then up to [`BLOCK`] NAR bytes. Sealed,
/// it is a whole [`RAW_BLOCK`] frame without a copy.
pub struct BlockBuffer {
    buf: Vec<u8>,
}

impl Default for BlockBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockBuffer {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + BLOCK);
        buf.resize(HEADER_LEN, 0);
        Self { buf }
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(HEADER_LEN + BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    pub fn nar_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    pub fn is_full(&self) -> bool {
        self.nar_len() == BLOCK
    }

    /// The whole raw frame.
    pub fn seal(mut self) -> Bytes {
        let h = header(RAW_BLOCK, self.nar_len());
        self.buf[..HEADER_LEN].copy_from_slice(&h);
        Bytes::from(self.buf)
    }
}

/// The NAR bytes of a sealed raw frame (shared, not copied).
pub fn raw_nar(raw_frame: &Bytes) -> Bytes {
    raw_frame.slice(HEADER_LEN..)
}

/// A whole [`ZSTD_BLOCK`] frame of `nar` at `level`, referring back into `previous` (the NAR
/// bytes of the block before), or `None` when it would not be smaller than the raw frame.
pub fn compress(nar: &[u8], previous: Option<&[u8]>, level: i32) -> Option<Vec<u8>> {
    const ZSTD_HEADER: usize = HEADER_LEN + 4;
    // A fresh context per block costs nothing measurable next to compressing 4 MiB, and lets
    // the prefix be borrowed for just this call.
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .ok()?;
    if let Some(previous) = previous {
        cctx.ref_prefix(previous).ok()?;
    }
    let mut frame = Vec::with_capacity(ZSTD_HEADER + zstd::zstd_safe::compress_bound(nar.len()));
    frame.resize(ZSTD_HEADER, 0);
    let mut out = OutBuffer::around_pos(&mut frame, ZSTD_HEADER);
    let left = cctx
        .compress_stream2(&mut out, &mut InBuffer::around(nar), ZSTD_e_end)
        .ok()?;
    let compressed = out.pos() - ZSTD_HEADER;
    if left != 0 || compressed + 4 >= nar.len() {
        return None;
    }
    frame[..HEADER_LEN].copy_from_slice(&header(ZSTD_BLOCK, compressed + 4));
    frame[HEADER_LEN..ZSTD_HEADER].copy_from_slice(&(nar.len() as u32).to_le_bytes());
    Some(frame)
}

/// Turns the block frames of one transfer back into NAR bytes, in order. It keeps the previous
/// block, which the next zstd frame may use as its prefix.
#[derive(Default)]
pub struct BlockDecoder {
    previous: Bytes,
}

impl BlockDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one block frame from `peer`.
    pub fn decode(
        &mut self,
        kind: u8,
        payload: Vec<u8>,
        peer: &'static str,
    ) -> Result<Bytes, WireError> {
        let bad = |problem: String| WireError::Protocol { peer, problem };
        let bytes = match kind {
            RAW_BLOCK => Bytes::from(payload),
            ZSTD_BLOCK => {
                let (len, frame) = payload
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad("a zstd block without its length".into()))?;
                let len = u32::from_le_bytes(*len) as usize;
                if len > BLOCK {
                    return Err(bad(format!("a block claims {len} bytes, over {BLOCK}")));
                }
                // Decoding into exactly `len` bytes of room: a frame that would grow past its
                // claim fails instead of allocating.
                let mut bytes = Vec::with_capacity(len);
                let mut dctx = DCtx::create();
                dctx.ref_prefix(&self.previous).map_err(|code| {
                    bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
                })?;
                dctx.decompress(&mut bytes, frame).map_err(|code| {
                    bad(format!(
                        "corrupt zstd block: {}",
                        zstd::zstd_safe::get_error_name(code)
                    ))
                })?;
                if bytes.len() != len {
                    return Err(bad(format!(
                        "a zstd block gave {} bytes, not {len}",
                        bytes.len()
                    )));
                }
                Bytes::from(bytes)
            }
            other => return Err(bad(format!("expected a NAR block, got frame kind {other}"))),
        };
        self.previous = bytes.clone();
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Frame, MESSAGE, read_frame};
    use super::*;

    /// Encodes `nar` as the sender does: compressed at `level` when that pays, else raw.
    fn encode(nar: &[u8], previous: Option<&[u8]>, level: i32) -> (Vec<u8>, bool) {
        match (level > 0)
            .then(|| compress(nar, previous, level))
            .flatten()
        {
            Some(frame) => (frame, true),
            None => {
                let mut block = BlockBuffer::new();
                assert_eq!(block.fill(nar), nar.len());
                (block.seal().to_vec(), false)
            }
        }
    }

    #[test]
    fn blocks_decode_to_their_bytes() {
        let text: Vec<u8> = b"all work and no play "
            .iter()
            .cycle()
            .take(BLOCK)
            .copied()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..BLOCK)
            .map(|_| {
                // xorshift64: bytes zstd finds nothing in.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        // A block that repeats the end of its predecessor compresses to almost nothing.
        let repeat = noise[BLOCK - 65536..].to_vec();
        let blocks = [(text.clone(), 3), (text, 0), (noise, 3), (repeat, 1)];
        let mut decoder = BlockDecoder::new();
        let mut previous: Option<Vec<u8>> = None;
        for (i, (bytes, level)) in blocks.into_iter().enumerate() {
            let (frame, compressed) = encode(&bytes, previous.as_deref(), level);
            if i == 2 {
                assert!(!compressed, "noise on its own does not compress");
            }
            if i == 3 {
                assert!(compressed && frame.len() < 1024, "{} bytes", frame.len());
            }
            let mut input = &frame[..];
            let Some(Frame::Block { kind, payload }) = read_frame(&mut input, "t").unwrap() else {
                panic!("a block frame")
            };
            assert!(input.is_empty());
            assert_eq!(decoder.decode(kind, payload, "t").unwrap(), bytes);
            previous = Some(bytes);
        }
    }

    #[test]
    fn a_buffer_takes_one_block_and_no_more() {
        let mut block = BlockBuffer::new();
        assert_eq!(block.fill(&vec![7; BLOCK - 1]), BLOCK - 1);
        assert!(!block.is_full());
        assert_eq!(block.fill(&[1, 2, 3]), 1);
        assert!(block.is_full());
        let frame = block.seal();
        assert_eq!(&frame[..HEADER_LEN], &header(RAW_BLOCK, BLOCK));
        assert_eq!(raw_nar(&frame).len(), BLOCK);
    }

    #[test]
    fn rejects_bad_blocks() {
        // A block that lies about its decompressed length.
        let block = zstd::bulk::compress(b"abc", 1).unwrap();
        let mut payload = 2u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&block);
        assert!(
            BlockDecoder::new()
                .decode(ZSTD_BLOCK, payload, "tool")
                .is_err()
        );
        let garbage = vec![1, 0, 0, 0, 42, 42];
        assert!(
            BlockDecoder::new()
                .decode(ZSTD_BLOCK, garbage, "tool")
                .is_err()
        );
        let too_big = (BLOCK as u32 + 1).to_le_bytes().to_vec();
        assert!(
            BlockDecoder::new()
                .decode(ZSTD_BLOCK, too_big, "tool")
                .is_err()
        );
        assert!(BlockDecoder::new().decode(MESSAGE, vec![], "tool").is_err());
    }

    /// A zstd block compressed against the block before it decodes only after that block.
    #[test]
    fn zstd_blocks_refer_to_the_previous_block() {
        use zstd::zstd_safe::CCtx;
        let first: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let second = first.clone();
        let mut cctx = CCtx::create();
        cctx.ref_prefix(&first).unwrap();
        let mut compressed = Vec::with_capacity(zstd::zstd_safe::compress_bound(second.len()));
        cctx.compress2(&mut compressed, &second).unwrap();
        drop(cctx);
        assert!(
            compressed.len() < 1000,
            "the prefix is used: {}",
            compressed.len()
        );
        let mut payload = (second.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(&compressed);

        let mut decoder = BlockDecoder::new();
        assert_eq!(decoder.decode(RAW_BLOCK, first, "tool").unwrap(), second);
        assert_eq!(
            decoder.decode(ZSTD_BLOCK, payload.clone(), "tool").unwrap(),
            second
        );
        // Without the previous block the frame cannot be decoded.
        assert!(
            BlockDecoder::new()
                .decode(ZSTD_BLOCK, payload, "tool")
                .is_err()
        );
    }
}
