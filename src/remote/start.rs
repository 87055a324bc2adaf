//! Starting the agent on a remote target: upload this executable (once per build), start it over
//! one exec channel, greet it; and ending it, with its own account when it failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{AgentClient, ClientError};
use crate::exec::stderr_tail;
use crate::ssh::{
    ExecExit, ExecStdin, ExecStdout, ExitInfo, LocalFile, Session, SshError, shell_quote,
};
use crate::transfer::FrameSink;

/// Directories tried for the agent, in order: a tmpfs on every systemd machine and on the
/// NixOS installer first, then a per-user temporary directory.
const AGENT_DIRS: &str = r#"/run/nixos-anywhere-rs "${TMPDIR:-/tmp}/nixos-anywhere-rs-$(id -u)""#;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no writable directory for the agent on the target (tried {AGENT_DIRS})")]
    NoAgentDir,
    #[error("the agent on the target failed to start ({status}){}", stderr_tail(.stderr))]
    AgentStart { status: String, stderr: String },
    #[error("the agent on the target ended with {status}{}", stderr_tail(.stderr))]
    AgentExit { status: String, stderr: String },
    #[error("{error}\n(the agent on the target ended with {status}{})", stderr_tail(.stderr))]
    AgentFailed {
        error: Box<RemoteError>,
        status: String,
        stderr: String,
    },
    #[error(
        "the target is {target}, but the agent {} is built for {agent}: pass --agent PATH (or set NIXOS_ANYWHERE_RS_AGENT) to a static nixos-anywhere-rs built for {target}",
        binary.display()
    )]
    WrongArch {
        target: String,
        agent: &'static str,
        binary: PathBuf,
    },
    #[error("this executable: {0}")]
    SelfPath(#[source] std::io::Error),
}

/// A running agent and the channel it runs on.
pub struct Agent {
    pub client: AgentClient<ExecStdout, ExecStdin>,
    exit: ExecExit,
}

/// The executable to upload as the agent: this one, unless `NIXOS_ANYWHERE_RS_AGENT` names
/// another (for example the static build when this one is not).
pub fn agent_binary() -> Result<PathBuf, RemoteError> {
    match std::env::var_os("NIXOS_ANYWHERE_RS_AGENT") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => std::env::current_exe().map_err(RemoteError::SelfPath),
    }
}

/// Exit statuses of the start script: no agent of this build yet (its directory on stderr),
/// and no usable directory.
const NEEDS_UPLOAD: u32 = 42;
const NO_DIR: u32 = 43;
/// ... and the target's architecture is not the agent's (`uname -m` on stderr).
const WRONG_ARCH: u32 = 44;
const ARCH_MARKER: &str = "nixos-anywhere-rs target architecture: ";
/// Prefixes the directory the start script reports on stderr.
const DIR_MARKER: &str = "nixos-anywhere-rs agent directory: ";

/// Starts `binary` on the target as the agent, uploading it first unless it is there already;
/// it gives up on a connection silent for `give_up_after`.
///
/// The agent's file is named by its SHA-256 in a directory only this user may write to, and an
/// upload lands under a temporary name that is renamed only once its hash checked out: a file by
/// that name is this build. So when it is there (every run but the first after a rebuild), one
/// exec both finds it and starts it: no round trip for a hash check.
pub async fn start_agent(
    session: &Session,
    binary: &Path,
    give_up_after: Option<Duration>,
) -> Result<Agent, RemoteError> {
    let agent = LocalFile::read(binary).await?;
    // The agent exits after as long a silence as the client tolerates (see `agent::GiveUp`).
    let args = match give_up_after {
        Some(after) => format!(" --give-up-after {}", after.as_secs().max(1)),
        None => String::new(),
    };
    // The file's name says which build it is.
    let name = format!("nixos-anywhere-rs-{}", &agent.sha256()[..32]);
    // Checked in the same exec, before anything is written: a binary of another architecture
    // would only fail with a loader's riddle.
    let arch_check = match elf_arch(agent.bytes()) {
        Some(arch) => format!(
            r#"a=$(uname -m); [ "$a" = {arch} ] || {{ echo "{ARCH_MARKER}$a" >&2; exit {WRONG_ARCH}; }}
"#
        ),
        None => String::new(),
    };
    let start = format!(
        r#"{arch_check}for d in {AGENT_DIRS}; do
  mkdir -p "$d" 2>/dev/null && [ -O "$d" ] && chmod 700 "$d" 2>/dev/null || continue
  [ -x "$d/{name}" ] && exec "$d/{name}" agent{args}
  echo "{DIR_MARKER}$d" >&2; exit {NEEDS_UPLOAD}
done
exit {NO_DIR}"#
    );
    let dir = match run_agent(session, &start).await? {
        Started(agent) => {
            tracing::info!("reusing the agent at {}", session.target());
            return Ok(agent);
        }
        Ended(info) if info.status == Some(NEEDS_UPLOAD) => {
            // Marked: the server may write its own lines there (sshd's `LogLevel DEBUG`).
            let stderr = String::from_utf8_lossy(&info.stderr);
            match stderr.lines().find_map(|l| l.strip_prefix(DIR_MARKER)) {
                Some(dir) => dir.to_owned(),
                None => return Err(start_failed(info)),
            }
        }
        Ended(info) if info.status == Some(NO_DIR) => return Err(RemoteError::NoAgentDir),
        Ended(info) if info.status == Some(WRONG_ARCH) => {
            let stderr = String::from_utf8_lossy(&info.stderr);
            let target = stderr.lines().find_map(|l| l.strip_prefix(ARCH_MARKER));
            return Err(RemoteError::WrongArch {
                target: target.unwrap_or("another architecture").to_owned(),
                agent: elf_arch(agent.bytes()).unwrap_or("this machine"),
                binary: binary.to_owned(),
            });
        }
        Ended(info) => return Err(start_failed(info)),
    };
    let remote = format!("{dir}/{name}");
    session.upload_new(&agent, &remote).await?;
    tracing::info!("uploaded the agent to {}:{remote}", session.target());
    // Before it starts, remove other builds' agents unused for an hour (each agent touches its
    // file when it starts): a few MiB each, in RAM on an installer.
    let start = format!(
        "find {dir} -maxdepth 1 -name 'nixos-anywhere-rs*' ! -name '*.tmp.*' ! -name {name} -mmin +60 -exec rm -f {{}} + 2>/dev/null; exec {remote} agent{args}",
        dir = shell_quote(&dir),
        remote = shell_quote(&remote),
    );
    match run_agent(session, &start).await? {
        Started(agent) => Ok(agent),
        Ended(info) => Err(start_failed(info)),
    }
}

/// The architecture an ELF executable is built for, as `uname -m` names it; `None` for anything
/// else (a script standing in for the agent in tests, an architecture not listed).
pub fn elf_arch(binary: &[u8]) -> Option<&'static str> {
    if binary.get(..4) != Some(b"\x7fELF") {
        return None;
    }
    // e_machine, little-endian on every architecture listed.
    let machine = u16::from_le_bytes(binary.get(18..20)?.try_into().ok()?);
    Some(match machine {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0xf3 => "riscv64",
        0x03 => "i686",
        _ => return None,
    })
}

enum Launch {
    Started(Agent),
    /// The command ended without greeting (the start script's verdict, or a failure).
    Ended(ExitInfo),
}
use Launch::{Ended, Started};

/// Runs `command`, which should exec the agent, and greets it.
async fn run_agent(session: &Session, command: &str) -> Result<Launch, RemoteError> {
    let exec = session.exec(command).await?;
    match AgentClient::connect(exec.stdout, exec.stdin).await {
        Ok(client) => Ok(Started(Agent {
            client,
            exit: exec.exit,
        })),
        // An agent that cannot start (wrong architecture, missing loader) says why on stderr.
        Err(ClientError::Wire(_)) => Ok(Ended(exec.exit.wait().await?)),
        Err(e) => Err(e.into()),
    }
}

/// Frames go into the channel's queue as they are, without a copy.
impl FrameSink for ExecStdin {
    async fn send_frame(&mut self, frame: bytes::Bytes) -> std::io::Result<()> {
        self.send(frame).await.map_err(std::io::Error::other)
    }
}

fn start_failed(info: ExitInfo) -> RemoteError {
    RemoteError::AgentStart {
        status: info.describe(),
        stderr: String::from_utf8_lossy(&info.stderr).into_owned(),
    }
}

/// How long an agent whose request failed has to exit and say why.
const EXIT_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    /// Ends an agent after `error`: closes its input, waits a little for it to exit, and adds
    /// its exit status and the tail of its standard error to the error, so the user sees why it
    /// stopped (a panic, a signal, its own message), not only that it did.
    pub async fn abandon(self, error: impl Into<RemoteError>) -> RemoteError {
        let error = error.into();
        drop(self.client);
        // An agent that reported its failure and exited on it (status 1): the report says
        // it all, and its stderr would repeat it. Any other end is shown.
        let reported = matches!(error, RemoteError::Client(ClientError::Agent(_)));
        match tokio::time::timeout(EXIT_WAIT, self.exit.wait()).await {
            Ok(Ok(info)) if info.success() && info.stderr.is_empty() => error,
            Ok(Ok(info)) if reported && info.status == Some(1) => error,
            Ok(Ok(info)) => RemoteError::AgentFailed {
                error: Box::new(error),
                status: info.describe(),
                stderr: String::from_utf8_lossy(&info.stderr).into_owned(),
            },
            // The connection is gone too, or the agent hangs: the first error is the news.
            Ok(Err(_)) | Err(_) => error,
        }
    }

    /// Says goodbye and checks that the agent exited cleanly.
    pub async fn finish(self) -> Result<(), RemoteError> {
        self.client.bye().await;
        let info = self.exit.wait().await?;
        if info.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&info.stderr).into_owned();
        Err(RemoteError::AgentExit {
            status: info.describe(),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_architecture_of_this_executable() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_arch(&me), Some(std::env::consts::ARCH));
        assert_eq!(elf_arch(b"#!/bin/sh\nexec true\n"), None);
        let mut arm = me[..64].to_vec();
        arm[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
        assert_eq!(elf_arch(&arm), Some("aarch64"));
    }
}
