//! The framed protocol between the tool and its agent, over the agent's stdin and stdout.
//!
//! Every frame is a kind byte, a little-endian `u32` payload length, and the payload:
//!
//! | kind | payload |
//! |------|---------|
//! | [`MESSAGE`] | one JSON [`Request`] (tool → agent) or [`Reply`] (agent → tool) |
//! | [`RAW_BLOCK`] | a slice of the NAR stream, uncompressed |
//! | [`ZSTD_BLOCK`] | `u32` decompressed length, then one zstd frame of a slice of the NAR stream |
//!
//! A zstd frame may refer back into the NAR bytes of the block just before it in the same
//! transfer (zstd's raw-content prefix): blocks are compressed in parallel, yet matches that
//! cross a block boundary are not lost. [`BlockDecoder`] keeps that previous block.
//!
//! A session starts with [`Request::Hello`] answered by [`Reply::Hello`]; both sides check
//! [`PROTOCOL_VERSION`]. After [`Request::Receive`] the tool sends the NARs of the listed paths,
//! concatenated in that order and cut into blocks, with no other frame in between: there is no
//! round trip per path. The agent reports [`Reply::Progress`] as paths land and ends with
//! [`Reply::Received`], or [`Reply::Error`] at any point.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zstd::zstd_safe::DCtx;

use crate::store::{PathInfo, StorePath};

/// Bumped whenever a frame or message changes meaning.
pub const PROTOCOL_VERSION: u32 = 2;

pub const MESSAGE: u8 = 1;
pub const RAW_BLOCK: u8 = 2;
pub const ZSTD_BLOCK: u8 = 3;

/// Largest NAR slice one block carries.
pub const MAX_BLOCK: usize = 4 << 20;
/// Largest frame payload accepted: a block, with room for zstd's worst case, or a message.
pub const MAX_FRAME: usize = 2 * MAX_BLOCK;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol: u32,
        version: String,
    },
    /// Opens (creating if needed) the store root the next requests act on.
    OpenStore {
        root: PathBuf,
    },
    /// Which of these paths are valid in the open store root?
    QueryValid {
        paths: Vec<StorePath>,
    },
    /// The NARs of these paths follow, in this order, as blocks.
    Receive {
        paths: Vec<PathInfo>,
    },
    Bye,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: u32,
        version: String,
    },
    StoreOpened,
    Valid {
        paths: Vec<StorePath>,
    },
    /// Paths completed (verified and in place) so far in this `Receive`, and their NAR bytes.
    Progress {
        paths: u64,
        nar_bytes: u64,
    },
    Received {
        paths: u64,
        nar_bytes: u64,
        wire_bytes: u64,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection to the {peer} closed unexpectedly")]
    Closed { peer: &'static str },
    #[error("reading from or writing to the {peer}: {source}")]
    Io {
        peer: &'static str,
        source: io::Error,
    },
    #[error("protocol error from the {peer}: {problem}")]
    Protocol { peer: &'static str, problem: String },
    #[error(
        "the agent speaks protocol version {agent}, this tool version {tool}: use the same nixos-anywhere-rs build on both ends"
    )]
    VersionMismatch { tool: u32, agent: u32 },
}

/// One frame as read: a message or a block of NAR bytes (still compressed if it was).
#[derive(Debug)]
pub enum Frame {
    Message(Vec<u8>),
    Block { kind: u8, payload: Vec<u8> },
}

/// Bytes in a frame header: the kind, then the payload length.
pub const HEADER_LEN: usize = 5;

/// The header of a frame.
pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("frames are smaller than 4 GiB");
    let mut h = [kind, 0, 0, 0, 0];
    h[1..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Encodes a message as a whole frame.
pub fn message_frame(message: &impl Serialize) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("protocol messages serialise");
    let mut frame = header(MESSAGE, json.len()).to_vec();
    frame.extend_from_slice(&json);
    frame
}

/// Checks a frame header from `peer`, returning its kind and payload length.
pub fn parse_header(h: [u8; HEADER_LEN], peer: &'static str) -> Result<(u8, usize), WireError> {
    let len = u32::from_le_bytes(h[1..].try_into().expect("four bytes")) as usize;
    if !matches!(h[0], MESSAGE | RAW_BLOCK | ZSTD_BLOCK) {
        return Err(WireError::Protocol {
            peer,
            problem: format!("unknown frame kind {}", h[0]),
        });
    }
    if len > MAX_FRAME {
        let problem = format!("a frame of {len} bytes exceeds the {MAX_FRAME} allowed");
        return Err(WireError::Protocol { peer, problem });
    }
    Ok((h[0], len))
}

/// Reads one frame (blocking); `None` at a clean end of stream before a frame starts.
pub fn read_frame(input: &mut impl Read, peer: &'static str) -> Result<Option<Frame>, WireError> {
    let mut h = [0u8; HEADER_LEN];
    match read_full(input, &mut h) {
        Ok(0) => return Ok(None),
        Ok(HEADER_LEN) => {}
        Ok(_) => return Err(WireError::Closed { peer }),
        Err(source) => return Err(WireError::Io { peer, source }),
    }
    let (kind, len) = parse_header(h, peer)?;
    // Read into spare capacity: a block is megabytes, not worth zeroing first.
    let mut payload = Vec::with_capacity(len);
    input
        .take(len as u64)
        .read_to_end(&mut payload)
        .map_err(|source| WireError::Io { peer, source })?;
    if payload.len() != len {
        return Err(WireError::Closed { peer });
    }
    Ok(Some(if kind == MESSAGE {
        Frame::Message(payload)
    } else {
        Frame::Block { kind, payload }
    }))
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes a message payload from `peer`.
pub fn decode<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
    peer: &'static str,
) -> Result<T, WireError> {
    serde_json::from_slice(payload).map_err(|e| WireError::Protocol {
        peer,
        problem: format!("undecodable message: {e}"),
    })
}

/// Writes a message frame and flushes it (blocking).
pub fn write_message(
    out: &mut impl Write,
    message: &impl Serialize,
    peer: &'static str,
) -> Result<(), WireError> {
    out.write_all(&message_frame(message))
        .and_then(|()| out.flush())
        .map_err(|source| WireError::Io { peer, source })
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
                if len > MAX_BLOCK {
                    return Err(bad(format!("a block claims {len} bytes, over {MAX_BLOCK}")));
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
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut stream = message_frame(&Request::Bye);
        let block = zstd::bulk::compress(b"hello hello hello", 3).unwrap();
        stream.extend_from_slice(&header(ZSTD_BLOCK, block.len() + 4));
        stream.extend_from_slice(&17u32.to_le_bytes());
        stream.extend_from_slice(&block);
        let mut input = stream.as_slice();
        let Some(Frame::Message(m)) = read_frame(&mut input, "tool").unwrap() else {
            panic!()
        };
        assert_eq!(decode::<Request>(&m, "tool").unwrap(), Request::Bye);
        let Some(Frame::Block { kind, payload }) = read_frame(&mut input, "tool").unwrap() else {
            panic!()
        };
        assert_eq!(
            BlockDecoder::new().decode(kind, payload, "tool").unwrap(),
            &b"hello hello hello"[..]
        );
        assert!(read_frame(&mut input, "tool").unwrap().is_none());
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(parse_header([9, 0, 0, 0, 0], "tool").is_err());
        assert!(parse_header(header(RAW_BLOCK, MAX_FRAME + 1), "tool").is_err());
        let mut truncated: &[u8] = &[MESSAGE, 10, 0, 0, 0, b'{'];
        assert!(matches!(
            read_frame(&mut truncated, "tool"),
            Err(WireError::Closed { .. })
        ));
        let mut half_header: &[u8] = &[MESSAGE, 10];
        assert!(matches!(
            read_frame(&mut half_header, "tool"),
            Err(WireError::Closed { .. })
        ));
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
        let too_big = (MAX_BLOCK as u32 + 1).to_le_bytes().to_vec();
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
