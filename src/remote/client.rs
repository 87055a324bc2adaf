//! The tool's side of the agent protocol, over any pair of byte streams: an SSH exec channel in
//! production, a local child process in tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::disk::plan::Mode;
use crate::facts::Facts;
use crate::install::InstallSpec;
use crate::install::files::FileEntry;
use crate::install::reboot::TakenDown;
use crate::plan::StepRecord;
use crate::progress::Progress;
use crate::proto::frame::{self, Frame};
use crate::proto::{AgentFailure, KeyFile, PROTOCOL_VERSION, Reply, Request, WireError};
use crate::store::{NarSource, PathInfo, StorePath};
use crate::substitute::{FetchReport, Overrides, PlanOverview};
use crate::transfer::{self, Compression, FrameSink, SendError, SendStats};

const PEER: &str = "agent";

/// How long the agent has to explain itself once our stream to it broke: it reports an error
/// before it exits, so its reply is already on the way.
const VERDICT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the agent on the target failed: {0}")]
    Agent(AgentFailure),
    #[error("the agent answered {got} where {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error(transparent)]
    Send(#[from] SendError),
}

/// A connected agent.
pub struct AgentClient<R, W> {
    from_agent: R,
    to_agent: W,
}

/// What the install phase reports besides its steps.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub bootloader: String,
    /// The agent's peak resident memory (the transfer included), in KiB.
    pub peak_rss_kib: u64,
    /// The machine's lowest available memory while the agent ran, in KiB.
    pub lowest_available_kib: Option<u64>,
}

/// What a transfer did, as the agent and the sender measured it.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub paths: u64,
    pub nar_bytes: u64,
    pub wire_bytes: u64,
    /// The agent's sync of the target file system, after the last path.
    pub sync_seconds: f64,
    pub sent: SendStats,
    /// What the agent substituted meanwhile, if it was asked to.
    pub substituted: Option<FetchReport>,
}

impl<R: AsyncRead + Unpin, W: FrameSink> AgentClient<R, W> {
    /// Greets the agent, checking that both speak the same protocol.
    pub async fn connect(from_agent: R, to_agent: W) -> Result<Self, ClientError> {
        let mut client = Self {
            from_agent,
            to_agent,
        };
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        match client.request(&hello).await? {
            Reply::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(client),
            Reply::Hello { protocol, .. } => Err(WireError::VersionMismatch {
                tool: PROTOCOL_VERSION,
                agent: protocol,
            }
            .into()),
            other => Err(unexpected("hello", other)),
        }
    }

    pub async fn facts(&mut self) -> Result<Facts, ClientError> {
        match self.request(&Request::Facts).await? {
            Reply::Facts(facts) => Ok(*facts),
            other => Err(unexpected("facts", other)),
        }
    }

    /// Which of `paths` are valid in the store root `root`; changes nothing there.
    pub async fn query_valid(
        &mut self,
        root: &Path,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ClientError> {
        let request = Request::QueryValid {
            root: root.to_owned(),
            paths: paths.to_vec(),
        };
        match self.request(&request).await? {
            Reply::Valid { paths } => Ok(paths.into_iter().collect()),
            other => Err(unexpected("valid", other)),
        }
    }

    /// Opens the store root `root` for writing (creating and locking it).
    pub async fn open_store(&mut self, root: &Path) -> Result<(), ClientError> {
        let request = Request::OpenStore {
            root: root.to_owned(),
        };
        match self.request(&request).await? {
            Reply::StoreOpened => Ok(()),
            other => Err(unexpected("store_opened", other)),
        }
    }

    /// Asks the agent which of `paths` (those the store root `root` lacks, dependencies first)
    /// its substituters hold, with the target's Nix configuration and `overrides`. Downloads
    /// nothing.
    pub async fn plan_substitution(
        &mut self,
        overrides: &Overrides,
        root: &Path,
        paths: &[PathInfo],
    ) -> Result<PlanOverview, ClientError> {
        let request = Request::PlanSubstitution {
            overrides: overrides.clone(),
            root: root.to_owned(),
            paths: paths.to_vec(),
        };
        match self.request(&request).await? {
            Reply::SubstitutionPlanned(plan) => Ok(*plan),
            other => Err(unexpected("substitution_planned", other)),
        }
    }

    /// Sends the NARs of `paths` (dependencies first, read from `source`) as one stream and
    /// waits until the agent has verified, registered and synced them all.
    ///
    /// When the stream breaks, the agent has usually just said why (a hash mismatch names the
    /// path) and exited: its reply, not our broken pipe, is the error the user sees.
    pub async fn receive(
        &mut self,
        source: &NarSource,
        paths: &[PathInfo],
        compression: Compression,
        progress: &mut Progress,
    ) -> Result<Transfer, ClientError> {
        self.transfer(source, paths, false, compression, progress)
            .await
    }

    /// As [`receive`](Self::receive), while the agent substitutes what its last
    /// [`plan_substitution`](Self::plan_substitution) planned (`paths` are the rest); the
    /// substitutes it could not get are streamed after `paths`, when it names them.
    pub async fn receive_substituting(
        &mut self,
        source: &NarSource,
        paths: &[PathInfo],
        compression: Compression,
        progress: &mut Progress,
    ) -> Result<Transfer, ClientError> {
        self.transfer(source, paths, true, compression, progress)
            .await
    }

    async fn transfer(
        &mut self,
        source: &NarSource,
        paths: &[PathInfo],
        substitute: bool,
        compression: Compression,
        progress: &mut Progress,
    ) -> Result<Transfer, ClientError> {
        let request = Request::Receive {
            paths: paths.to_vec(),
            substitute,
        };
        self.write(&frame::message_frame(&request)).await?;
        let sources = paths.iter().map(|p| p.path.clone()).collect();
        let Self {
            from_agent,
            to_agent,
        } = self;

        // Send and listen at once: the agent reports progress, or an error that ends the
        // transfer early (then the sending side is dropped). When substituting, the second
        // part of the stream is what the agent says it still needs.
        let wire_so_far = std::cell::Cell::new(0u64);
        let (needed_tx, needed_rx) = tokio::sync::oneshot::channel::<Vec<StorePath>>();
        let mut needed_tx = Some(needed_tx);
        let send = async {
            let mut stats =
                transfer::send_nars(source.clone(), sources, compression, to_agent, |_, wire| {
                    wire_so_far.set(wire)
                })
                .await?;
            if substitute {
                let needed = needed_rx.await.unwrap_or_default();
                if !needed.is_empty() {
                    let base = stats.wire_bytes;
                    let more = transfer::send_nars(
                        source.clone(),
                        needed,
                        compression,
                        to_agent,
                        |_, wire| wire_so_far.set(base + wire),
                    )
                    .await?;
                    stats.add(more);
                }
            }
            Ok::<_, SendError>(stats)
        };
        tokio::pin!(send);
        let mut sent: Option<SendStats> = None;
        let mut send_failed: Option<SendError> = None;
        let mut done_paths = 0;
        loop {
            let reply = tokio::select! {
                result = &mut send, if sent.is_none() && send_failed.is_none() => {
                    match result {
                        Ok(stats) => sent = Some(stats),
                        Err(e) => send_failed = Some(e),
                    }
                    continue;
                }
                reply = read_reply(from_agent) => reply,
                _ = tokio::time::sleep(VERDICT_WAIT), if send_failed.is_some() => {
                    return Err(send_failed.take().expect("guarded").into());
                }
            };
            let reply = match (reply, send_failed.take()) {
                (Ok(reply), failed) => {
                    send_failed = failed;
                    reply
                }
                // The agent's own account of the failure comes first...
                (Err(e @ ClientError::Agent(_)), _) => return Err(e),
                // ... then our sending side's, which explains a closed channel.
                (Err(_), Some(failed)) => return Err(failed.into()),
                (Err(e), None) => return Err(e),
            };
            match reply {
                Reply::Progress {
                    paths,
                    nar_bytes,
                    substituted_paths,
                    substituted_bytes,
                } => {
                    progress.substituted(substituted_paths, substituted_bytes);
                    progress.advance(paths - done_paths, nar_bytes);
                    done_paths = paths;
                    progress.wire_bytes(wire_so_far.get());
                }
                Reply::Needed { paths } if substitute => {
                    if !paths.is_empty() {
                        tracing::warn!(
                            "{} paths the caches did not provide are streamed instead",
                            paths.len()
                        );
                    }
                    if let Some(tx) = needed_tx.take() {
                        let _ = tx.send(paths);
                    }
                }
                Reply::Received {
                    paths: n,
                    nar_bytes,
                    wire_bytes,
                    sync_seconds,
                    substituted,
                } => {
                    if let Some(report) = &substituted {
                        progress.substituted(report.paths_substituted, report.nar_bytes);
                    }
                    progress.advance(n - done_paths, nar_bytes);
                    let sent = match (sent, send_failed) {
                        (Some(sent), _) => sent,
                        (None, Some(failed)) => return Err(failed.into()),
                        (None, None) => send.await?,
                    };
                    return Ok(Transfer {
                        paths: n,
                        nar_bytes,
                        wire_bytes,
                        sync_seconds,
                        sent,
                        substituted,
                    });
                }
                other => return Err(unexpected("progress", other)),
            }
        }
    }

    /// Writes the disk-encryption keys in the installer's RAM.
    pub async fn write_keys(&mut self, keys: Vec<KeyFile>) -> Result<usize, ClientError> {
        match self.request(&Request::WriteKeys { keys }).await? {
            Reply::KeysWritten { count } => Ok(count),
            other => Err(unexpected("keys_written", other)),
        }
    }

    /// Runs the disk layer on the target; `on_step` hears of each step as it ends.
    pub async fn disko(
        &mut self,
        layout: String,
        mode: Mode,
        root_mountpoint: String,
        on_step: impl FnMut(StepRecord),
    ) -> Result<usize, ClientError> {
        let request = Request::Disko {
            layout,
            mode,
            root_mountpoint,
        };
        match self.request_with_steps(&request, on_step).await? {
            Reply::Disked { steps } => Ok(steps),
            other => Err(unexpected("disked", other)),
        }
    }

    /// Writes one batch of extra files into `root`.
    pub async fn put_files(
        &mut self,
        root: &Path,
        entries: Vec<FileEntry>,
    ) -> Result<usize, ClientError> {
        let request = Request::PutFiles {
            root: root.to_owned(),
            entries,
        };
        match self.request(&request).await? {
            Reply::FilesWritten { entries } => Ok(entries),
            other => Err(unexpected("files_written", other)),
        }
    }

    /// nixos-install's steps on the target; returns where the boot loader was found and what
    /// memory the agent and the machine had.
    pub async fn install(
        &mut self,
        spec: InstallSpec,
        on_step: impl FnMut(StepRecord),
    ) -> Result<InstallReport, ClientError> {
        match self
            .request_with_steps(&Request::Install(Box::new(spec)), on_step)
            .await?
        {
            Reply::Installed {
                bootloader,
                peak_rss_kib,
                lowest_available_kib,
                ..
            } => Ok(InstallReport {
                bootloader,
                peak_rss_kib,
                lowest_available_kib: (lowest_available_kib != u64::MAX)
                    .then_some(lowest_available_kib),
            }),
            other => Err(unexpected("installed", other)),
        }
    }

    /// Takes the file systems down and starts the reboot.
    pub async fn reboot(&mut self, root: &Path) -> Result<TakenDown, ClientError> {
        let request = Request::Reboot {
            root: root.to_owned(),
        };
        match self.request(&request).await? {
            Reply::Rebooting(done) => Ok(done),
            other => Err(unexpected("rebooting", other)),
        }
    }

    /// Sends `request` and passes each [`Reply::Step`] to `on_step` until another reply.
    async fn request_with_steps(
        &mut self,
        request: &Request,
        mut on_step: impl FnMut(StepRecord),
    ) -> Result<Reply, ClientError> {
        self.write(&frame::message_frame(request)).await?;
        loop {
            match read_reply(&mut self.from_agent).await? {
                Reply::Step(record) => on_step(record),
                reply => return Ok(reply),
            }
        }
    }

    /// Ends the session politely. The agent exits on `Bye`, so it may be gone before the frame
    /// is flushed or our end is closed: its exit status, not these writes, says how it ended.
    pub async fn bye(mut self) {
        let _ = self.write(&frame::message_frame(&Request::Bye)).await;
        let _ = self.to_agent.shutdown().await;
    }

    async fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.write(&frame::message_frame(request)).await?;
        read_reply(&mut self.from_agent).await
    }

    async fn write(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let io = |source| ClientError::Wire(WireError::Io { peer: PEER, source });
        self.to_agent.write_all(frame).await.map_err(io)?;
        self.to_agent.flush().await.map_err(io)
    }
}

/// Reads the agent's next message; a [`Reply::Error`] becomes [`ClientError::Agent`].
async fn read_reply(from_agent: &mut (impl AsyncRead + Unpin)) -> Result<Reply, ClientError> {
    let payload = match frame::read_frame_async(from_agent, PEER).await? {
        Frame::Message(payload) => payload,
        Frame::Block { kind, .. } => {
            let problem = format!("frame kind {kind} where a message was expected");
            return Err(WireError::Protocol {
                peer: PEER,
                problem,
            }
            .into());
        }
    };
    match frame::decode::<Reply>(&payload, PEER)? {
        Reply::Error(failure) => Err(ClientError::Agent(failure)),
        reply => Ok(reply),
    }
}

fn unexpected(expected: &'static str, got: Reply) -> ClientError {
    let got = serde_json::to_string(&got).unwrap_or_default();
    ClientError::Unexpected { expected, got }
}
