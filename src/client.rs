//! The tool's side of the agent protocol, over any pair of byte streams: an SSH exec channel in
//! production, a local child process in tests.

use std::collections::BTreeSet;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::progress::Progress;
use crate::store::{PathInfo, StorePath};
use crate::stream::{self, Compression, FrameSink, SendError, SendStats};
use crate::wire::{self, PROTOCOL_VERSION, Reply, Request, WireError};

const PEER: &str = "agent";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the agent on the target failed: {0}")]
    Agent(String),
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

/// What a transfer did, as the agent and the sender measured it.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub paths: u64,
    pub nar_bytes: u64,
    pub wire_bytes: u64,
    pub sent: SendStats,
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

    pub async fn open_store(&mut self, root: &Path) -> Result<(), ClientError> {
        match self
            .request(&Request::OpenStore {
                root: root.to_owned(),
            })
            .await?
        {
            Reply::StoreOpened => Ok(()),
            other => Err(unexpected("store_opened", other)),
        }
    }

    pub async fn query_valid(
        &mut self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ClientError> {
        match self
            .request(&Request::QueryValid {
                paths: paths.to_vec(),
            })
            .await?
        {
            Reply::Valid { paths } => Ok(paths.into_iter().collect()),
            other => Err(unexpected("valid", other)),
        }
    }

    /// Sends the NARs of `paths` (dependencies first) as one stream and waits until the agent
    /// has verified and registered them all.
    pub async fn receive(
        &mut self,
        paths: &[PathInfo],
        compression: Compression,
        progress: &mut Progress,
    ) -> Result<Transfer, ClientError> {
        let request = Request::Receive {
            paths: paths.to_vec(),
        };
        self.write(&wire::message_frame(&request)).await?;
        let sources = paths.iter().map(|p| p.path.clone()).collect();
        let Self {
            from_agent,
            to_agent,
        } = self;

        // Send and listen at once: the agent reports progress, or an error that ends the
        // transfer early (then the sending side is dropped).
        let wire_so_far = std::cell::Cell::new(0u64);
        let send = stream::send_nars(sources, compression, to_agent, |_, wire| {
            wire_so_far.set(wire)
        });
        tokio::pin!(send);
        let mut sent: Option<SendStats> = None;
        let mut done_paths = 0;
        loop {
            tokio::select! {
                result = &mut send, if sent.is_none() => sent = Some(result?),
                reply = read_reply(from_agent) => match reply? {
                    Reply::Progress { paths, nar_bytes } => {
                        progress.advance(paths - done_paths, nar_bytes);
                        done_paths = paths;
                        progress.wire_bytes(wire_so_far.get());
                    }
                    Reply::Received { paths: n, nar_bytes, wire_bytes } => {
                        progress.advance(n - done_paths, nar_bytes);
                        let sent = match sent {
                            Some(sent) => sent,
                            None => send.await?,
                        };
                        return Ok(Transfer { paths: n, nar_bytes, wire_bytes, sent });
                    }
                    other => return Err(unexpected("progress", other)),
                },
            }
        }
    }

    /// Ends the session politely. The agent exits on `Bye`, so it may be gone before the frame
    /// is flushed or our end is closed: its exit status, not these writes, says how it ended.
    pub async fn bye(mut self) {
        let _ = self.write(&wire::message_frame(&Request::Bye)).await;
        let _ = self.to_agent.shutdown().await;
    }

    async fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.write(&wire::message_frame(request)).await?;
        read_reply(&mut self.from_agent).await
    }

    async fn write(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let io = |source| ClientError::Wire(WireError::Io { peer: PEER, source });
        self.to_agent.write_all(frame).await.map_err(io)?;
        self.to_agent.flush().await.map_err(io)
    }
}

/// Reads the agent's next message; an [`Reply::Error`] becomes [`ClientError::Agent`].
async fn read_reply(from_agent: &mut (impl AsyncRead + Unpin)) -> Result<Reply, ClientError> {
    let mut h = [0u8; wire::HEADER_LEN];
    from_agent.read_exact(&mut h).await.map_err(closed)?;
    let (kind, len) = wire::parse_header(h, PEER)?;
    if kind != wire::MESSAGE {
        let problem = format!("frame kind {kind} where a message was expected");
        return Err(WireError::Protocol {
            peer: PEER,
            problem,
        }
        .into());
    }
    let mut payload = vec![0u8; len];
    from_agent.read_exact(&mut payload).await.map_err(closed)?;
    match wire::decode::<Reply>(&payload, PEER)? {
        Reply::Error { message } => Err(ClientError::Agent(message)),
        reply => Ok(reply),
    }
}

fn closed(source: std::io::Error) -> ClientError {
    ClientError::Wire(match source.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Closed { peer: PEER },
        _ => WireError::Io { peer: PEER, source },
    })
}

fn unexpected(expected: &'static str, got: Reply) -> ClientError {
    let got = serde_json::to_string(&got).unwrap_or_default();
    ClientError::Unexpected { expected, got }
}
