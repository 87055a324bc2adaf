//! The protocol between the tool and its agent, over the agent's stdin and stdout: frames
//! ([`frame`]), NAR blocks ([`block`]) and messages ([`message`]).
//!
//! Every frame is a kind byte, a little-endian `u32` payload length, and the payload:
//!
//! | kind | payload |
//! |------|---------|
//! | [`frame::MESSAGE`] | one JSON [`Request`] (tool → agent) or [`Reply`] (agent → tool) |
//! | [`frame::RAW_BLOCK`] | a slice of the NAR stream, uncompressed |
//! | [`frame::ZSTD_BLOCK`] | `u32` decompressed length, then one zstd frame of a slice of the NAR stream |
//!
//! A zstd frame may refer back into the NAR bytes of the block just before it in the same
//! transfer (zstd's raw-content prefix): blocks are compressed in parallel, yet matches that
//! cross a block boundary are not lost. [`block::BlockDecoder`] keeps that previous block.
//!
//! A session starts with [`Request::Hello`] answered by [`Reply::Hello`]; both sides check
//! [`PROTOCOL_VERSION`]. After [`Request::Receive`] the tool sends the NARs of the listed paths,
//! concatenated in that order and cut into blocks, with no other frame in between: there is no
//! round trip per path. The agent reports [`Reply::Progress`] as paths land and ends with
//! [`Reply::Received`], or [`Reply::Error`] at any point.
//!
//! Substitution: [`Request::PlanSubstitution`] is answered by [`Reply::SubstitutionPlanned`];
//! a `Receive` with `substitute` then carries only the paths the caches do not hold, while the
//! agent downloads the others. When its downloads end the agent sends [`Reply::Needed`] with
//! the planned paths it could not substitute, and the tool sends their NARs right after the
//! first ones, in the same way; the agent ends with `Received` once both are in.

pub mod block;
pub mod frame;
pub mod message;

use std::io;

pub use block::{BLOCK, BlockDecoder};
pub use frame::{Frame, HEADER_LEN, MAX_FRAME, read_frame, read_frame_async, write_message};
pub use message::{AgentFailure, ErrorKind, KeyFile, Reply, Request};

/// Bumped whenever a frame or message changes meaning.
pub const PROTOCOL_VERSION: u32 = 7;

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
