//! The agent on a remote target: upload this executable, start it over one exec channel, and
//! speak the protocol to it.

use std::path::{Path, PathBuf};

use crate::client::{AgentClient, ClientError};
use crate::ssh::{ExecExit, ExecStdin, ExecStdout, Session, SshError, shell_quote};

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
    #[error("the agent on the target failed to start ({status}){}", stderr_note(.stderr))]
    AgentStart { status: String, stderr: String },
    #[error("the agent on the target ended with {status}{}", stderr_note(.stderr))]
    AgentExit { status: String, stderr: String },
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

/// Uploads `binary` to the target (unless it is there already) and starts it as the agent.
pub async fn start_agent(session: &Session, binary: &Path) -> Result<Agent, RemoteError> {
    let pick = format!(
        "for d in {AGENT_DIRS}; do mkdir -p \"$d\" 2>/dev/null && [ -w \"$d\" ] && echo \"$d\" && exit 0; done; exit 1"
    );
    let out = session.run(&pick, b"").await?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.success() || dir.is_empty() {
        return Err(RemoteError::NoAgentDir);
    }
    let remote = format!("{dir}/nixos-anywhere-rs");
    let uploaded = session.upload(binary, &remote).await?;
    tracing::info!(
        "{} the agent at {}:{remote}",
        if uploaded { "uploaded" } else { "reusing" },
        session.target()
    );
    let exec = session
        .exec(&format!("{} agent", shell_quote(&remote)))
        .await?;
    match AgentClient::connect(exec.stdout, exec.stdin).await {
        Ok(client) => Ok(Agent {
            client,
            exit: exec.exit,
        }),
        // An agent that cannot start (wrong architecture, missing loader) says why on stderr.
        Err(ClientError::Wire(_)) => {
            let info = exec.exit.wait().await?;
            let stderr = String::from_utf8_lossy(&info.stderr).into_owned();
            Err(RemoteError::AgentStart {
                status: info.describe(),
                stderr,
            })
        }
        Err(e) => Err(e.into()),
    }
}

impl Agent {
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

fn stderr_note(stderr: &str) -> String {
    let tail: Vec<&str> = stderr.trim_end().lines().rev().take(10).collect();
    if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!(":\n  {}", lines.join("\n  "))
    }
}
