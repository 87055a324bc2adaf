//! The agent: this same executable, run on the target as `nixos-anywhere-rs agent` over one SSH
//! exec channel. It speaks [`crate::wire`] on stdin and stdout and needs nothing from the target
//! but a kernel.
//!
//! While receiving, one thread reads and decompresses blocks into a bounded pipe and the other
//! unpacks, verifies and registers paths from it, so memory stays bounded whatever the closure.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::pipe::pipe;
use crate::store::{PathInfo, StoreError, StoreRoot};
use crate::wire::{self, BlockDecoder, Frame, PROTOCOL_VERSION, Reply, Request, WireError};

const PEER: &str = "tool";

/// Input that fails once nothing has arrived for a while. A connection that dies without a
/// word (a pulled cable, a lost route) never closes the agent's stdin: sshd notices only hours
/// later, and until then the agent would hold the store's lock, so that a rerun waits for it.
/// The tool passes its own patience (`ServerAliveInterval` × `ServerAliveCountMax`): both ends
/// give up on the same silence, and whatever arrived whole is registered.
pub struct GiveUp<R> {
    inner: R,
    after: Duration,
    timeout: Timespec,
}

impl<R: Read + AsFd> GiveUp<R> {
    pub fn after(inner: R, after: Duration) -> Self {
        let timeout = Timespec::try_from(after).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        Self {
            inner,
            after,
            timeout,
        }
    }
}

impl<R: Read + AsFd> Read for GiveUp<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&self.timeout)) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "nothing from the tool for {} s: the connection is gone",
                            self.after.as_secs()
                        ),
                    ));
                }
                Ok(_) => return self.inner.read(buf),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Chunks of decompressed NAR in flight between the two threads (whole blocks, up to 4 MiB each).
const PIPE_DEPTH: usize = 8;

/// How often progress is reported back.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} before a store root was opened")]
    NoStore(&'static str),
}

/// Serves one tool over `input`/`output` until it says goodbye or the stream ends. An error is
/// reported to the tool as [`Reply::Error`] as well as returned.
pub fn serve(input: impl Read + Send, mut output: impl Write) -> Result<(), AgentError> {
    let result = session(input, &mut output);
    if let Err(e) = &result {
        // The tool may be gone already; the error is returned either way.
        let _ = wire::write_message(
            &mut output,
            &Reply::Error {
                message: e.to_string(),
            },
            PEER,
        );
    }
    result
}

fn session(input: impl Read + Send, output: &mut impl Write) -> Result<(), AgentError> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut store: Option<StoreRoot> = None;
    while let Some(frame) = wire::read_frame(&mut input, PEER)? {
        let Frame::Message(payload) = frame else {
            let problem = "a NAR block outside a transfer".to_owned();
            return Err(WireError::Protocol {
                peer: PEER,
                problem,
            }
            .into());
        };
        let reply = match wire::decode::<Request>(&payload, PEER)? {
            Request::Hello { protocol, version } => {
                if protocol != PROTOCOL_VERSION {
                    tracing::error!(%version, "tool speaks another protocol");
                    return Err(WireError::VersionMismatch {
                        tool: protocol,
                        agent: PROTOCOL_VERSION,
                    }
                    .into());
                }
                Reply::Hello {
                    protocol: PROTOCOL_VERSION,
                    version: env!("CARGO_PKG_VERSION").into(),
                }
            }
            Request::OpenStore { root } => {
                store = Some(StoreRoot::open(&root)?);
                Reply::StoreOpened
            }
            Request::QueryValid { paths } => {
                let store = store.as_ref().ok_or(AgentError::NoStore("a query"))?;
                Reply::Valid {
                    paths: store.valid_paths(&paths)?.into_iter().collect(),
                }
            }
            Request::Receive { paths } => {
                let store = store.as_mut().ok_or(AgentError::NoStore("a transfer"))?;
                receive(store, &paths, &mut input, output)?
            }
            Request::Bye => return Ok(()),
        };
        wire::write_message(output, &reply, PEER)?;
    }
    Ok(())
}

/// Receives the NARs of `paths` from the block frames that follow on `input`.
fn receive(
    store: &mut StoreRoot,
    paths: &[PathInfo],
    input: &mut (impl Read + Send),
    output: &mut impl Write,
) -> Result<Reply, AgentError> {
    let total: u64 = paths.iter().map(|p| p.nar_size).sum();
    let (mut nar_in, mut nar_out) = pipe(PIPE_DEPTH);
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || -> Result<u64, WireError> {
            let mut wire_bytes = 0u64;
            let mut left = total;
            let mut blocks = BlockDecoder::new();
            while left > 0 {
                let (kind, payload) = match wire::read_frame(input, PEER)? {
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
                wire_bytes += (wire::HEADER_LEN + payload.len()) as u64;
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
                    break; // the unpacker stopped; its error is reported
                }
            }
            Ok(wire_bytes)
        });

        let mut done = (0u64, 0u64);
        let mut last_report = Instant::now();
        let mut unpacked = Ok(());
        for info in paths {
            if let Err(e) = store.receive(info, &mut nar_out) {
                unpacked = Err(e);
                break;
            }
            done = (done.0 + 1, done.1 + info.nar_size);
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                let progress = Reply::Progress {
                    paths: done.0,
                    nar_bytes: done.1,
                };
                if let Err(e) = wire::write_message(output, &progress, PEER) {
                    unpacked = Err(StoreError::io(store.path(), std::io::Error::other(e)));
                    break;
                }
            }
        }
        drop(nar_out);
        // What arrived complete is registered even when the transfer broke off.
        let flushed = store.flush();
        let decoded = decoder.join().expect("the decoder does not panic");
        // A transport error explains a truncated NAR better than the truncation does.
        let wire_bytes = decoded?;
        unpacked?;
        flushed?;
        Ok(Reply::Received {
            paths: done.0,
            nar_bytes: done.1,
            wire_bytes,
        })
    })
}
