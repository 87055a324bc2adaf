//! How the SSH connection reaches the host: a TCP connection of our own, a `direct-tcpip`
//! channel through a chain of jump hosts (`ProxyJump`), or the standard input and output of a
//! local command (`ProxyCommand`).

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

use super::{HostKeyPin, Session, SshError, SshOptions, Target};

/// How to reach a host (`ProxyJump`, `ProxyCommand`).
#[derive(Debug, Clone, Default)]
pub enum Proxy {
    /// A TCP connection from this machine; host names are resolved here.
    #[default]
    Direct,
    /// Through these hosts in order, each with its own options and host-key check; the last
    /// one opens the connection to the host and resolves its name.
    Jump(Vec<JumpHost>),
    /// A shell command whose standard input and output carry the connection, as OpenSSH runs
    /// it; `%h`, `%p`, `%r`, `%n` and `%%` in it stand for the host, port, user, and `%`.
    Command(String),
}

/// One jump host and how to log in to it.
#[derive(Debug, Clone)]
pub struct JumpHost {
    pub target: Target,
    pub opts: SshOptions,
}

/// A byte stream an SSH session can run over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What must stay alive while the session runs over it.
#[expect(dead_code, reason = "held for as long as the session, never read")]
pub(crate) enum Via {
    Nothing,
    /// The jump host's session (which keeps its own way there alive in turn).
    Jump(Box<Session>),
    /// The proxy command, killed when the session goes.
    Command(ProxyChild),
}

/// A proxy command in a process group of its own: dropped, the whole group is killed, so that
/// what it started in the background (a `cat` from a shell, say) goes too.
pub(crate) struct ProxyChild(Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        if let Some(pid) = self
            .0
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Opens the way to `target` as `opts.proxy` says.
pub(crate) async fn open(
    target: &Target,
    opts: &SshOptions,
    pin: &HostKeyPin,
) -> Result<(Box<dyn Transport>, Via), SshError> {
    match &opts.proxy {
        Proxy::Direct => {
            let stream = super::net::tcp_connect(target, opts.connect_timeout).await?;
            Ok((Box::new(stream), Via::Nothing))
        }
        Proxy::Command(template) => {
            let command = &expand_command(template, target)?;
            let mut child = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("exec {command}"))
                // The password given in the environment is for us, not for the proxy.
                .env_remove("SSHPASS")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .process_group(0)
                .spawn()
                .map_err(|source| SshError::Io {
                    what: format!("starting the ProxyCommand `{command}`"),
                    source,
                })?;
            let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                unreachable!("both are piped");
            };
            tracing::debug!(%target, command, "connecting through a ProxyCommand");
            Ok((
                Box::new(tokio::io::join(stdout, stdin)),
                Via::Command(ProxyChild(child)),
            ))
        }
        Proxy::Jump(hops) => {
            let Some((last, before)) = hops.split_last() else {
                let stream = super::net::tcp_connect(target, opts.connect_timeout).await?;
                return Ok((Box::new(stream), Via::Nothing));
            };
            // The last hop is reached through the ones before it: its own options say so.
            let mut last_opts = last.opts.clone();
            if !before.is_empty() {
                last_opts.proxy = Proxy::Jump(before.to_vec());
            }
            let hop_pin = pin.hop(&last.target.to_string());
            let jump = Box::pin(Session::connect(&last.target, &last_opts, &hop_pin)).await?;
            tracing::debug!(%target, via = %last.target, "opening a channel through the jump host");
            let channel = jump
                .open_direct_tcpip(&target.host, target.port)
                .await
                .map_err(|reason| SshError::Channel {
                    dest: last.target.to_string(),
                    command: format!("a connection to {}:{}", target.host, target.port),
                    reason,
                })?;
            Ok((Box::new(channel.into_stream()), Via::Jump(Box::new(jump))))
        }
    }
}

/// Expands a `ProxyCommand`'s tokens for `target`.
fn expand_command(template: &str, target: &Target) -> Result<String, SshError> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h' | 'n') => out.push_str(&target.host),
            Some('p') => out.push_str(&target.port.to_string()),
            Some('r') => out.push_str(&target.user),
            other => {
                return Err(SshError::Config {
                    what: format!("ProxyCommand {template}"),
                    reason: format!(
                        "the token %{} is not supported (supported: %h, %p, %r, %n, %%)",
                        other.map(String::from).unwrap_or_default()
                    ),
                });
            }
        }
    }
    Ok(out)
}
