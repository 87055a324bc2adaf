//! A transfer on the agent's side: one thread reads and decompresses block frames into a bounded
//! pipe, the other unpacks, verifies and registers paths from it ([`transfer::receive_all`]), so
//! memory stays bounded whatever the closure.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{AgentError, PEER};
use crate::pipe::pipe;
use crate::proto::{BlockDecoder, Frame, HEADER_LEN, Reply, WireError, frame};
use crate::store::{PathInfo, StoreError, StoreRoot};
use crate::transfer;

/// Chunks of decompressed NAR in flight between the two threads (whole blocks, up to 4 MiB each).
const PIPE_DEPTH: usize = 8;

/// How often progress is reported back.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Receives the NARs of `paths` from the block frames that follow on `input`.
pub(super) fn receive(
    store: &mut StoreRoot,
    paths: &[PathInfo],
    input: &mut (impl Read + Send),
    output: &mut (impl Write + Send),
) -> Result<Reply, AgentError> {
    let total: u64 = paths.iter().map(|p| p.nar_size).sum();
    let (mut nar_in, nar_out) = pipe(PIPE_DEPTH);
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || -> Result<u64, WireError> {
            let mut wire_bytes = 0u64;
            // `false`: the unpacker stopped reading; its error is reported.
            decode(
                input,
                &mut BlockDecoder::new(),
                total,
                &mut nar_in,
                &mut wire_bytes,
            )?;
            Ok(wire_bytes)
        });

        let mut last_report = Instant::now();
        let root = store.path().to_owned();
        let received = transfer::receive_all(store, paths, nar_out, |paths, nar_bytes| {
            if last_report.elapsed() < PROGRESS_EVERY {
                return Ok(());
            }
            last_report = Instant::now();
            let progress = Reply::Progress {
                paths,
                nar_bytes,
                substituted_paths: 0,
                substituted_bytes: 0,
            };
            frame::write_message(output, &progress, PEER)
                .map_err(|e| StoreError::io(&root, std::io::Error::other(e)))
        });
        let decoded = decoder.join().expect("the decoder does not panic");
        // A transport error explains a truncated NAR better than the truncation does.
        let wire_bytes = decoded?;
        let received = received?;
        Ok(Reply::Received {
            paths: received.paths,
            nar_bytes: received.nar_bytes,
            wire_bytes,
            sync_seconds: received.sync_seconds,
            substituted: None,
        })
    })
}

/// Reads block frames until `total` NAR bytes have passed into `nar_in`. `false`: the unpacker
/// stopped reading (its error is reported).
pub(super) fn decode(
    input: &mut impl Read,
    blocks: &mut BlockDecoder,
    total: u64,
    nar_in: &mut crate::pipe::PipeWriter,
    wire_bytes: &mut u64,
) -> Result<bool, WireError> {
    let mut left = total;
    while left > 0 {
        let (kind, payload) = match frame::read_frame(input, PEER)? {
            Some(Frame::Block { kind, payload }) => (kind, payload),
            Some(Frame::Message(_)) => {
                let problem = format!("a message with {left} NAR bytes still to come");
                return Err(WireError::Protocol {
                    peer: PEER,
                    problem,
                });
            }
            None => return Err(WireError::Closed { peer: PEER }),
        };
        *wire_bytes += (HEADER_LEN + payload.len()) as u64;
        let bytes = blocks.decode(kind, payload, PEER)?;
        if bytes.len() as u64 > left {
            let problem = "more NAR bytes than the paths declared".to_owned();
            return Err(WireError::Protocol {
                peer: PEER,
                problem,
            });
        }
        left -= bytes.len() as u64;
        if nar_in.send_chunk(bytes).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
