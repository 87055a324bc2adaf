//! Frames: a kind byte, a little-endian `u32` payload length, the payload. Both ends read them
//! here, the agent blocking ([`read_frame`]), the tool on its async runtime ([`read_frame_async`]).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::WireError;
use super::block::BLOCK;

pub const MESSAGE: u8 = 1;
pub const RAW_BLOCK: u8 = 2;
pub const ZSTD_BLOCK: u8 = 3;

/// Bytes in a frame header: the kind, then the payload length.
pub const HEADER_LEN: usize = 5;

/// Largest frame payload accepted: a block, with room for zstd's worst case, or a message.
pub const MAX_FRAME: usize = 2 * BLOCK;

/// One frame as read: a message or a block of NAR bytes (still compressed if it was).
#[derive(Debug)]
pub enum Frame {
    Message(Vec<u8>),
    Block { kind: u8, payload: Vec<u8> },
}

impl Frame {
    fn new(kind: u8, payload: Vec<u8>) -> Self {
        if kind == MESSAGE {
            Self::Message(payload)
        } else {
            Self::Block { kind, payload }
        }
    }
}

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
    Ok(Some(Frame::new(kind, payload)))
}

/// Reads one frame on the async side; a stream that ends, even between frames, is
/// [`WireError::Closed`]: the tool always expects an answer.
pub async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
    peer: &'static str,
) -> Result<Frame, WireError> {
    let closed = |source: io::Error| match source.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Closed { peer },
        _ => WireError::Io { peer, source },
    };
    let mut h = [0u8; HEADER_LEN];
    input.read_exact(&mut h).await.map_err(closed)?;
    let (kind, len) = parse_header(h, peer)?;
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).await.map_err(closed)?;
    Ok(Frame::new(kind, payload))
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

#[cfg(test)]
mod tests {
    use super::super::Request;
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut stream = message_frame(&Request::Bye);
        stream.extend_from_slice(&header(RAW_BLOCK, 3));
        stream.extend_from_slice(b"abc");
        let mut input = stream.as_slice();
        let Some(Frame::Message(m)) = read_frame(&mut input, "tool").unwrap() else {
            panic!()
        };
        assert_eq!(decode::<Request>(&m, "tool").unwrap(), Request::Bye);
        let Some(Frame::Block { kind, payload }) = read_frame(&mut input, "tool").unwrap() else {
            panic!()
        };
        assert_eq!((kind, &payload[..]), (RAW_BLOCK, &b"abc"[..]));
        assert!(read_frame(&mut input, "tool").unwrap().is_none());
    }

    #[tokio::test]
    async fn the_async_reader_reads_the_same_frames() {
        let mut stream = message_frame(&Request::Bye);
        stream.extend_from_slice(&header(ZSTD_BLOCK, 2));
        stream.extend_from_slice(b"xy");
        let mut input = stream.as_slice();
        let Frame::Message(m) = read_frame_async(&mut input, "agent").await.unwrap() else {
            panic!()
        };
        assert_eq!(decode::<Request>(&m, "agent").unwrap(), Request::Bye);
        let Frame::Block { kind, payload } = read_frame_async(&mut input, "agent").await.unwrap()
        else {
            panic!()
        };
        assert_eq!((kind, &payload[..]), (ZSTD_BLOCK, &b"xy"[..]));
        assert!(matches!(
            read_frame_async(&mut input, "agent").await,
            Err(WireError::Closed { .. })
        ));
        let mut bad: &[u8] = &[9, 0, 0, 0, 0];
        assert!(matches!(
            read_frame_async(&mut bad, "agent").await,
            Err(WireError::Protocol { .. })
        ));
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
    }
}
