//! The streamer end to end against a real agent process (the binary, as SSH would run it),
//! with Nix 2.8 checking the store it writes.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::process::{Command, Stdio};
use tokio::io::AsyncWrite;

use nixos_anywhere_rs::progress::Progress;
use nixos_anywhere_rs::proto::{self, Reply, Request, frame};
use nixos_anywhere_rs::remote::{AgentClient, ClientError};
use nixos_anywhere_rs::store::{NarSource, PathInfo, StorePath, query_closure};
use nixos_anywhere_rs::transfer::{Compression, FrameSink};

mod nix_oracle;

use nix_oracle::{BIN, assert_verifies, placed, registered};

fn small_closure() -> Vec<PathInfo> {
    let top = StorePath::parse(&nix_oracle::closure("small")).unwrap();
    query_closure(&[top]).unwrap()
}

fn spawn_agent() -> tokio::process::Child {
    spawn_agent_with(&[])
}

fn spawn_agent_with(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("agent")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn transfer(
    root: &Path,
    closure: &[PathInfo],
    compression: Compression,
) -> Result<u64, ClientError> {
    let mut agent = spawn_agent();
    let (out, inp) = (agent.stdout.take().unwrap(), agent.stdin.take().unwrap());
    let mut client = AgentClient::connect(out, inp).await?;
    client.open_store(root).await?;
    let paths: Vec<StorePath> = closure.iter().map(|i| i.path.clone()).collect();
    let valid = client.query_valid(root, &paths).await?;
    let missing: Vec<PathInfo> = closure
        .iter()
        .filter(|i| !valid.contains(&i.path))
        .cloned()
        .collect();
    let mut progress = Progress::new(missing.len() as u64, 0);
    let transfer = client
        .receive(&NarSource::Local, &missing, compression, &mut progress)
        .await?;
    client.bye().await;
    assert!(agent.wait().await.unwrap().success());
    Ok(transfer.paths)
}

/// Path infos Nix reads back from the store root, for comparison with the source's.
fn path_infos_in(root: &Path, top: &StorePath) -> Vec<PathInfo> {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "-r",
            "--store",
        ])
        .arg(root)
        .arg(top.to_absolute())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut infos: Vec<PathInfo> = serde_json::from_slice(&out.stdout).unwrap();
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos
}

fn temp_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    (dir, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_closure_that_nix_accepts_and_skips_it_the_second_time() {
    let closure = small_closure();
    for compression in [Compression::Auto, Compression::None, Compression::Level(3)] {
        let (_dir, root) = temp_root();
        assert_eq!(
            transfer(&root, &closure, compression).await.unwrap(),
            closure.len() as u64
        );
        assert_verifies(&root);
        let top = &closure.last().unwrap().path;
        let mut expected: Vec<PathInfo> = closure
            .iter()
            .map(|i| PathInfo {
                signatures: Vec::new(),
                ca: None,
                deriver: None,
                ..i.clone()
            })
            .collect();
        expected.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<PathInfo> = path_infos_in(&root, top)
            .into_iter()
            .map(|i| PathInfo {
                signatures: Vec::new(),
                ca: None,
                deriver: None,
                ..i
            })
            .collect();
        assert_eq!(got, expected, "{compression:?}");
        assert_eq!(transfer(&root, &closure, compression).await.unwrap(), 0);
    }
}

/// A tool of another protocol version is told so, in words that say what to do.
#[test]
fn an_agent_refuses_a_tool_of_another_protocol_version() {
    let hello = Request::Hello {
        protocol: proto::PROTOCOL_VERSION + 1,
        version: "from the future".into(),
    };
    let mut agent = Command::new(BIN)
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = agent.stdin.take().unwrap();
    stdin.write_all(&frame::message_frame(&hello)).unwrap();
    let out = agent.wait_with_output().unwrap();
    assert!(!out.status.success());
    let mut replies = out.stdout.as_slice();
    let Some(frame::Frame::Message(m)) = frame::read_frame(&mut replies, "agent").unwrap() else {
        panic!("no reply")
    };
    let Reply::Error(proto::AgentFailure { message, .. }) =
        frame::decode::<Reply>(&m, "agent").unwrap()
    else {
        panic!("not an error reply")
    };
    let expected = format!(
        "the agent speaks protocol version {}, this tool version {}: use the same nixos-anywhere-rs build on both ends",
        proto::PROTOCOL_VERSION,
        proto::PROTOCOL_VERSION + 1
    );
    assert_eq!(message, expected);
    drop(stdin);
}

/// A hostile or broken tool: the NAR bytes of a path do not match its declared hash.
#[test]
fn rejects_a_path_whose_bytes_do_not_match_and_registers_none_of_it() {
    let closure = small_closure();
    let (_dir, root) = temp_root();
    let victim = closure
        .iter()
        .find(|i| i.references.iter().all(|r| *r == i.path))
        .unwrap();
    let mut nar = Vec::new();
    nixos_anywhere_rs::nar::dump(Path::new(&victim.path.to_absolute()), &mut nar).unwrap();
    let last = nar.len() - 20;
    nar[last] ^= 0x55; // somewhere in the last file's contents or padding

    let mut stream = Vec::new();
    for request in [
        Request::Hello {
            protocol: proto::PROTOCOL_VERSION,
            version: "test".into(),
        },
        Request::OpenStore { root: root.clone() },
        Request::Receive {
            paths: vec![victim.clone()],
            substitute: false,
        },
    ] {
        stream.extend(frame::message_frame(&request));
    }
    stream.extend(frame::header(frame::RAW_BLOCK, nar.len()));
    stream.extend(&nar);
    let mut agent = Command::new(BIN)
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    agent.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = agent.wait_with_output().unwrap();
    assert!(!out.status.success());
    let mut replies = out.stdout.as_slice();
    let mut last_reply = None;
    while let Some(frame::Frame::Message(m)) = frame::read_frame(&mut replies, "agent").unwrap() {
        last_reply = Some(frame::decode::<Reply>(&m, "agent").unwrap());
    }
    let Some(Reply::Error(proto::AgentFailure {
        message,
        kind,
        step,
    })) = last_reply
    else {
        panic!("no error reply: {last_reply:?}")
    };
    assert!(message.contains(&victim.path.to_absolute()), "{message}");
    // The tool learns what kind of failure it was, and in which step.
    assert_eq!(kind, proto::ErrorKind::Integrity);
    assert_eq!(step, Some(format!("receive {}", victim.path)));
    // Nothing of it is in the store or its database.
    let store: Vec<_> = std::fs::read_dir(root.join("nix/store")).unwrap().collect();
    assert!(store.is_empty(), "{store:?}");
    assert_eq!(registered(&root), 0);
}

/// After an interruption: Nix accepts the store, a rerun sends exactly the paths that were not
/// registered, and a third run sends nothing.
async fn check_resumes(root: &Path, closure: &[PathInfo]) {
    assert_verifies(root);
    let before = registered(root);
    let sent = transfer(root, closure, Compression::Auto).await.unwrap();
    assert_eq!(
        sent,
        closure.len() as u64 - before,
        "{before} were registered"
    );
    assert_verifies(root);
    assert_eq!(transfer(root, closure, Compression::Auto).await.unwrap(), 0);
}

/// Passes `limit` bytes to the agent, then fails as a dropped connection does.
struct CutWriter<W> {
    inner: Option<W>,
    left: usize,
}

impl<W: AsyncWrite + Unpin> FrameSink for CutWriter<W> {}

impl<W: AsyncWrite + Unpin> AsyncWrite for CutWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.left == 0 {
            self.inner = None; // the agent sees its stdin close
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.left);
        let inner = self.inner.as_mut().expect("open until cut");
        let written = std::task::ready!(Pin::new(inner).poll_write(cx, &buf[..n]))?;
        self.left -= written;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The connection drops at several points of a transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_leaves_a_consistent_store_and_a_rerun_sends_only_the_rest() {
    let closure = small_closure();
    let total_nar: u64 = closure.iter().map(|i| i.nar_size).sum();
    // Raw blocks make the cut points predictable fractions of the NAR stream.
    for fraction in [0.05, 0.5, 0.95] {
        let (_dir, root) = temp_root();
        let mut agent = spawn_agent();
        let (out, inp) = (agent.stdout.take().unwrap(), agent.stdin.take().unwrap());
        let cut = CutWriter {
            inner: Some(inp),
            left: 4096 + (total_nar as f64 * fraction) as usize,
        };
        let mut client = AgentClient::connect(out, cut).await.unwrap();
        client.open_store(&root).await.unwrap();
        let mut progress = Progress::new(closure.len() as u64, 0);
        let result = client
            .receive(
                &NarSource::Local,
                &closure,
                Compression::None,
                &mut progress,
            )
            .await;
        assert!(result.is_err(), "the transfer survived a cut at {fraction}");
        drop(client);
        assert!(!agent.wait().await.unwrap().success());
        // The agent registered what arrived whole before it exited.
        assert!(
            registered(&root) > 0 || fraction < 0.1,
            "nothing registered at {fraction}"
        );
        check_resumes(&root, &closure).await;
    }
}

/// The agent is killed outright at several points: what it had not committed is unregistered
/// and is sent again.
///
/// The stream is held after a whole number of blocks, so the agent cannot run ahead of the kill:
/// it places exactly the paths those blocks complete, and is killed with them in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_a_consistent_store_and_a_rerun_completes() {
    let closure = small_closure();
    let total_nar: u64 = closure.iter().map(|i| i.nar_size).sum();
    let blocks = total_nar.div_ceil(proto::BLOCK as u64);
    assert!(blocks >= 3, "the small closure fills {blocks} blocks");
    for hold_after in [1, blocks / 2, blocks - 1] {
        let complete = complete_within(&closure, hold_after);
        let (_dir, root) = temp_root();
        let (mut agent, mut client) = held_agent(&root, hold_after, &[]).await;
        let pid = agent.id().unwrap();
        let watched = root.clone();
        let killer = std::thread::spawn(move || {
            // A stuck agent fails the count below rather than hanging the test.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while placed(&watched) < complete && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Give a path beyond the held point every chance to (wrongly) appear.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let placed = placed(&watched);
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            placed
        });
        let mut progress = Progress::new(closure.len() as u64, 0);
        let result = client
            .receive(
                &NarSource::Local,
                &closure,
                Compression::Level(1),
                &mut progress,
            )
            .await;
        let placed = killer.join().unwrap();
        let _ = agent.wait().await;
        assert!(result.is_err(), "the transfer survived the kill");
        assert_eq!(
            placed, complete,
            "paths in place when held after {hold_after} blocks"
        );
        check_resumes(&root, &closure).await;
    }
}

/// A connection that dies without a word leaves the agent's stdin open: the agent gives up after
/// the silence it was told to tolerate, registers what arrived whole and exits, so that the
/// store's lock is free for the rerun.
#[tokio::test]
async fn an_agent_left_in_silence_gives_up_and_frees_the_store_for_a_rerun() {
    let closure = small_closure();
    let total_nar: u64 = closure.iter().map(|i| i.nar_size).sum();
    let hold_after = total_nar.div_ceil(proto::BLOCK as u64) / 2;
    let complete = complete_within(&closure, hold_after);
    let (_dir, root) = temp_root();
    let (mut agent, mut client) = held_agent(&root, hold_after, &["--give-up-after", "2"]).await;
    let started = std::time::Instant::now();
    let mut progress = Progress::new(closure.len() as u64, 0);
    let receive = client.receive(
        &NarSource::Local,
        &closure,
        Compression::Level(1),
        &mut progress,
    );
    let result = tokio::time::timeout(std::time::Duration::from_secs(60), receive)
        .await
        .expect("the agent did not give up within a minute");
    match result {
        Err(ClientError::Agent(failure)) => {
            assert!(
                failure.message.contains("nothing from the tool for 2 s"),
                "{failure}"
            )
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }
    let status = agent.wait().await.unwrap();
    assert!(!status.success());
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    // Registered, not only in place: the agent flushed before it exited.
    assert_eq!(registered(&root), complete);
    check_resumes(&root, &closure).await;
}

/// How many paths of `closure` have their whole NAR within its first `blocks` blocks.
fn complete_within(closure: &[PathInfo], blocks: u64) -> u64 {
    let passed = blocks * proto::BLOCK as u64;
    closure
        .iter()
        .scan(0, |end, i| {
            *end += i.nar_size;
            Some(*end)
        })
        .take_while(|end| *end <= passed)
        .count() as u64
}

type HeldClient = AgentClient<tokio::process::ChildStdout, HoldWriter<tokio::process::ChildStdin>>;

/// An agent (started with `args`) whose store is open at `root`, behind a [`HoldWriter`] that
/// lets `blocks` NAR blocks through.
async fn held_agent(
    root: &Path,
    blocks: u64,
    args: &[&str],
) -> (tokio::process::Child, HeldClient) {
    let mut agent = spawn_agent_with(args);
    let (out, inp) = (agent.stdout.take().unwrap(), agent.stdin.take().unwrap());
    let mut client = AgentClient::connect(out, HoldWriter::new(inp, blocks))
        .await
        .unwrap();
    client.open_store(root).await.unwrap();
    (agent, client)
}

/// Passes frames to the agent until `blocks` NAR blocks have gone through, then holds the rest
/// back for ever, as a stalled connection does.
struct HoldWriter<W> {
    inner: W,
    blocks: u64,
    /// Header bytes of the frame being passed, and how much of its payload is still to go.
    header: Vec<u8>,
    payload_left: usize,
}

impl<W> HoldWriter<W> {
    fn new(inner: W, blocks: u64) -> Self {
        Self {
            inner,
            blocks,
            header: Vec::new(),
            payload_left: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> FrameSink for HoldWriter<W> {}

impl<W: AsyncWrite + Unpin> AsyncWrite for HoldWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let at_frame_start = this.header.is_empty() && this.payload_left == 0;
        if at_frame_start && this.blocks == 0 {
            return Poll::Pending; // never woken: the agent is killed meanwhile
        }
        // Never write past the current header or payload, so frame edges are seen exactly.
        let n = if this.payload_left > 0 {
            buf.len().min(this.payload_left)
        } else {
            buf.len().min(frame::HEADER_LEN - this.header.len())
        };
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
        if this.payload_left > 0 {
            this.payload_left -= written;
        } else {
            this.header.extend_from_slice(&buf[..written]);
            if this.header.len() == frame::HEADER_LEN {
                let header: [u8; frame::HEADER_LEN] = this.header[..].try_into().unwrap();
                let (kind, len) = frame::parse_header(header, "test").unwrap();
                if kind != frame::MESSAGE {
                    this.blocks -= 1;
                }
                this.header.clear();
                this.payload_left = len;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The agent reports why a transfer failed and exits, which breaks the stream the tool is still
/// sending: the user must see the agent's reason (the path and its hash), not the broken pipe.
/// The ordering is forced: the agent's reply is held back until the sender has hit the broken
/// pipe, so a tool that reported the first error it saw would fail this every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_error_wins_over_the_broken_pipe_it_leaves() {
    let mut closure = small_closure();
    let total: u64 = closure.iter().map(|i| i.nar_size).sum();
    assert!(total > 8 << 20, "the stream must outgrow the agent's pipe");
    let victim = closure[0].path.clone();
    closure[0].nar_hash = nixos_anywhere_rs::nar::NarHash::digest(b"something else");
    let (_dir, root) = temp_root();
    let mut agent = spawn_agent();
    let gate = Gate::default();
    let out = GatedReader {
        inner: agent.stdout.take().unwrap(),
        gate: gate.clone(),
    };
    let inp = GateOpener {
        inner: agent.stdin.take().unwrap(),
        gate: gate.clone(),
    };
    let mut client = AgentClient::connect(out, inp).await.unwrap();
    client.open_store(&root).await.unwrap();
    gate.close();
    let mut progress = Progress::new(closure.len() as u64, 0);
    let err = client
        .receive(
            &NarSource::Local,
            &closure,
            Compression::None,
            &mut progress,
        )
        .await
        .unwrap_err();
    assert!(gate.opened_by_broken_pipe(), "the pipe did not break first");
    match err {
        ClientError::Agent(failure) => {
            assert_eq!(failure.kind, proto::ErrorKind::Integrity, "{failure}");
            assert!(
                failure.message.contains(&victim.to_absolute())
                    && failure.message.contains("NAR hash"),
                "{failure}"
            );
        }
        other => panic!("the broken pipe hid the agent's error: {other}"),
    }
    assert_eq!(registered(&root), 0);
    let _ = agent.wait().await;
}

/// Holds the agent's replies back while closed; the first failed write to the agent opens it.
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<std::sync::Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    closed: bool,
    opened_by_broken_pipe: bool,
    waiting: Option<std::task::Waker>,
}

impl Gate {
    fn close(&self) {
        self.0.lock().unwrap().closed = true;
    }

    fn open_on_broken_pipe(&self) {
        let mut state = self.0.lock().unwrap();
        if state.closed {
            state.closed = false;
            state.opened_by_broken_pipe = true;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }
    }

    fn opened_by_broken_pipe(&self) -> bool {
        self.0.lock().unwrap().opened_by_broken_pipe
    }
}

struct GatedReader<R> {
    inner: R,
    gate: Gate,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GatedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        {
            let mut state = self.gate.0.lock().unwrap();
            if state.closed {
                state.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

struct GateOpener<W> {
    inner: W,
    gate: Gate,
}

impl<W: AsyncWrite + Unpin> FrameSink for GateOpener<W> {}

impl<W: AsyncWrite + Unpin> AsyncWrite for GateOpener<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if written.is_err() {
            self.gate.open_on_broken_pipe();
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The agent reports the machine it runs on: what the kernel's own files say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_the_facts_of_its_machine() {
    let mut agent = spawn_agent();
    let (out, inp) = (agent.stdout.take().unwrap(), agent.stdin.take().unwrap());
    let mut client = AgentClient::connect(out, inp).await.unwrap();
    let facts = client.facts().await.unwrap();
    client.bye().await;
    assert!(agent.wait().await.unwrap().success());
    assert_eq!(facts.arch, std::env::consts::ARCH);
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    assert_eq!(facts.kernel, String::from_utf8_lossy(&uname.stdout).trim());
    assert_eq!(facts.uid, 0, "the tests run as root");
    let debian = std::fs::read_to_string("/etc/os-release").unwrap();
    assert_eq!(facts.is_installer, debian.contains("VARIANT_ID=installer"));
    assert!(facts.memory.total_bytes > 1 << 30);
}
