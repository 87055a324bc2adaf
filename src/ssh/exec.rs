//! A remote command on one exec channel: its standard input as a writer, its standard output
//! as a reader, and its exit status and standard error at the end.
//!
//! Data moves as `Bytes` end to end: a chunk handed to [`ExecStdin::send`] is sliced into SSH
//! packets without copying, and each packet received is handed to the reader as is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{SessionState, SshError};

/// Largest chunk one `poll_write` copies and queues.
const WRITE_CHUNK: usize = 256 * 1024;
/// Chunks queued between the writer and the channel (so at most ~1 MiB of copies in flight).
const WRITE_QUEUE: usize = 4;
/// Received packets queued for the reader before the SSH session waits for it.
const READ_QUEUE: usize = 64;
/// Standard error kept for the exit report (the tail, if there is more).
const STDERR_KEEP: usize = 1 << 20;

/// A started remote command. Take the parts apart to use them from separate tasks.
pub struct Exec {
    pub stdin: ExecStdin,
    pub stdout: ExecStdout,
    pub exit: ExecExit,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit status; `None` when it was killed by a signal or the server sent none.
    pub status: Option<u32>,
    /// The signal that killed it, e.g. `KILL`.
    pub signal: Option<String>,
    /// Its standard error (the last MiB of it, if it wrote more).
    pub stderr: Vec<u8>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// "exit status 3" or "killed by signal KILL", for messages.
    pub fn describe(&self) -> String {
        describe_status(self.status, self.signal.as_deref())
    }
}

pub(crate) fn describe_status(status: Option<u32>, signal: Option<&str>) -> String {
    match (status, signal) {
        (Some(s), _) => format!("exit status {s}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "no exit status".to_owned(),
    }
}

enum WriteOp {
    Data(Bytes),
    Eof,
}

type ReserveFuture = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<WriteOp>, mpsc::error::SendError<()>>> + Send>,
>;

/// The command's standard input. Bytes written are queued at once and sent by a task of their
/// own, so no `flush` is needed before waiting for a reply; `shutdown` (or dropping it) sends
/// end-of-file.
pub struct ExecStdin {
    tx: Option<mpsc::Sender<WriteOp>>,
    reserve: Option<ReserveFuture>,
    task: Option<JoinHandle<Result<(), String>>>,
    state: Arc<SessionState>,
}

/// The command's standard output, ending at its end-of-file. Read it to the end or drop it:
/// output nobody reads stalls the whole connection once a few MiB are queued.
pub struct ExecStdout {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

/// Resolves to the command's [`ExitInfo`] once the channel closes.
pub struct ExecExit {
    rx: oneshot::Receiver<Result<ExitInfo, String>>,
    state: Arc<SessionState>,
}

/// Starts the tasks that drive an exec channel whose request the server accepted.
pub(crate) fn start(
    read: ChannelReadHalf,
    write: ChannelWriteHalf<Msg>,
    early: Vec<ChannelMsg>,
    state: Arc<SessionState>,
) -> Exec {
    let (closed_tx, closed_rx) = watch::channel(false);
    let (out_tx, out_rx) = mpsc::channel(READ_QUEUE);
    let (exit_tx, exit_rx) = oneshot::channel();
    tokio::spawn(pump(read, early, out_tx, exit_tx, closed_tx, state.clone()));
    let (in_tx, in_rx) = mpsc::channel(WRITE_QUEUE);
    let task = tokio::spawn(write_loop(write, in_rx, closed_rx));
    Exec {
        stdin: ExecStdin {
            tx: Some(in_tx),
            reserve: None,
            task: Some(task),
            state: state.clone(),
        },
        stdout: ExecStdout {
            rx: out_rx,
            chunk: Bytes::new(),
        },
        exit: ExecExit { rx: exit_rx, state },
    }
}

/// Reads everything the server sends on the channel and routes it.
async fn pump(
    mut read: ChannelReadHalf,
    early: Vec<ChannelMsg>,
    stdout: mpsc::Sender<Bytes>,
    exit: oneshot::Sender<Result<ExitInfo, String>>,
    closed: watch::Sender<bool>,
    state: Arc<SessionState>,
) {
    let mut stdout = Some(stdout);
    let mut info = ExitInfo {
        status: None,
        signal: None,
        stderr: Vec::new(),
    };
    let mut line_start = 0;
    let mut early = early.into_iter();
    let mut clean_close = false;
    loop {
        let msg = match early.next() {
            Some(msg) => msg,
            None => match read.wait().await {
                Some(msg) => msg,
                None => break,
            },
        };
        match msg {
            ChannelMsg::Data { data } => {
                if let Some(tx) = &stdout
                    && tx.send(data).await.is_err()
                {
                    // Nobody reads standard output any more: discard the rest.
                    stdout = None;
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                info.stderr.extend_from_slice(&data);
                log_lines(&info.stderr, &mut line_start);
                if info.stderr.len() > 2 * STDERR_KEEP {
                    let cut = info.stderr.len() - STDERR_KEEP;
                    info.stderr.drain(..cut);
                    line_start = line_start.saturating_sub(cut);
                }
            }
            ChannelMsg::ExitStatus { exit_status } => info.status = Some(exit_status),
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                let mut signal = format!("{signal_name:?}");
                if !error_message.is_empty() {
                    signal.push_str(&format!(" ({error_message})"));
                }
                info.signal = Some(signal);
            }
            ChannelMsg::Eof => stdout = None,
            ChannelMsg::Close => {
                clean_close = true;
                break;
            }
            _ => {}
        }
    }
    drop(stdout);
    let _ = closed.send(true);
    let result = if clean_close || info.status.is_some() || info.signal.is_some() {
        Ok(info)
    } else {
        Err(state.lost_reason())
    };
    let _ = exit.send(result);
}

/// Logs each complete line of standard error as it arrives.
fn log_lines(stderr: &[u8], line_start: &mut usize) {
    while let Some(end) = stderr[*line_start..].iter().position(|&b| b == b'\n') {
        let line = &stderr[*line_start..*line_start + end];
        tracing::debug!(target: "remote", "{}", String::from_utf8_lossy(line));
        *line_start += end + 1;
    }
}

/// Sends queued chunks in order; end-of-file when asked or when every writer is gone. Stops
/// early when the channel closes (the command exited), as no window will open again.
async fn write_loop(
    write: ChannelWriteHalf<Msg>,
    mut rx: mpsc::Receiver<WriteOp>,
    mut closed: watch::Receiver<bool>,
) -> Result<(), String> {
    let gone = || "the remote command exited before reading all its input".to_owned();
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = closed.wait_for(|c| *c) => return Err(gone()),
        };
        let sent = match op {
            Some(WriteOp::Data(bytes)) => tokio::select! {
                r = write.data_bytes(bytes) => r,
                _ = closed.wait_for(|c| *c) => return Err(gone()),
            },
            Some(WriteOp::Eof) | None => {
                // The channel may have closed already (the command exited): nothing to end.
                let _ = write.eof().await;
                return Ok(());
            }
        };
        sent.map_err(|e| e.to_string())?;
    }
}

impl ExecStdin {
    /// Queues `data` without copying it, in slices of at most [`WRITE_CHUNK`] (so the queue
    /// holds as few bytes as written ones would); it is sent after everything written before.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), SshError> {
        self.reserve = None;
        while !data.is_empty() {
            let slice = data.split_to(data.len().min(WRITE_CHUNK));
            let tx = self
                .tx
                .as_ref()
                .ok_or_else(|| self.broken("stdin was closed"))?;
            if tx.send(WriteOp::Data(slice)).await.is_err() {
                return Err(self.failure().await);
            }
        }
        Ok(())
    }

    /// Sends end-of-file after the queued data and waits until all of it went out.
    pub async fn close(mut self) -> Result<(), SshError> {
        self.reserve = None;
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(WriteOp::Eof).await;
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(self.lost(reason)),
                Err(e) => Err(self.lost(e.to_string())),
            },
            None => Ok(()),
        }
    }

    fn lost(&self, reason: String) -> SshError {
        SshError::ConnectionLost {
            dest: self.state.dest.clone(),
            reason,
        }
    }

    fn broken(&self, why: &str) -> SshError {
        self.lost(why.to_owned())
    }

    /// Why the writer task stopped.
    async fn failure(&mut self) -> SshError {
        let reason = match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(reason)) => reason,
                Ok(Ok(())) => "stdin was closed".to_owned(),
                Err(e) => e.to_string(),
            },
            None => self.state.lost_reason(),
        };
        self.tx = None;
        self.lost(reason)
    }

    fn io_error(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("stdin of the command on {}: {reason}", self.state.dest),
        )
    }

    /// Polls the writer task after its queue closed, for the reason.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let reason = match &mut self.task {
            Some(task) => match ready!(Pin::new(task).poll(cx)) {
                Ok(Err(reason)) => reason,
                Ok(Ok(())) => "stdin was closed".to_owned(),
                Err(e) => e.to_string(),
            },
            None => self.state.lost_reason(),
        };
        self.task = None;
        self.tx = None;
        Poll::Ready(self.io_error(reason))
    }

    fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<mpsc::OwnedPermit<WriteOp>>> {
        let Some(tx) = &self.tx else {
            return Poll::Ready(Err(self.io_error("stdin was closed".to_owned())));
        };
        let reserve = self
            .reserve
            .get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
        let result = ready!(reserve.as_mut().poll(cx));
        self.reserve = None;
        match result {
            Ok(permit) => Poll::Ready(Ok(permit)),
            Err(_) => self.poll_failure(cx).map(Err),
        }
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let permit = ready!(self.poll_permit(cx))?;
        let n = buf.len().min(WRITE_CHUNK);
        permit.send(WriteOp::Data(Bytes::copy_from_slice(&buf[..n])));
        Poll::Ready(Ok(n))
    }

    /// Queued bytes go out on their own; there is nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends end-of-file after the queued bytes and waits for them to be sent.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tx.is_some() {
            let permit = ready!(self.poll_permit(cx))?;
            permit.send(WriteOp::Eof);
            self.tx = None;
        }
        let Some(task) = &mut self.task else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(task).poll(cx));
        self.task = None;
        match result {
            Ok(Ok(())) => Poll::Ready(Ok(())),
            Ok(Err(reason)) => Poll::Ready(Err(self.io_error(reason))),
            Err(e) => Poll::Ready(Err(self.io_error(e.to_string()))),
        }
    }
}

impl ExecStdout {
    /// The next chunk as received, without copying; `None` at end-of-file.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.chunk.is_empty() {
            return Some(std::mem::take(&mut self.chunk));
        }
        self.rx.recv().await
    }
}

impl AsyncRead for ExecStdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.chunk.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.chunk = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(self.chunk.len());
        let part = self.chunk.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

impl ExecExit {
    /// Waits for the channel to close. An error means the connection was lost on the way.
    pub async fn wait(self) -> Result<ExitInfo, SshError> {
        match self.rx.await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(reason)) => Err(SshError::ConnectionLost {
                dest: self.state.dest.clone(),
                reason,
            }),
            Err(_) => Err(SshError::ConnectionLost {
                dest: self.state.dest.clone(),
                reason: self.state.lost_reason(),
            }),
        }
    }
}
