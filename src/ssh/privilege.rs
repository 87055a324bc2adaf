//! Becoming root on a target logged in to as another user (nixos-anywhere #446): every command
//! of the session then runs through `sudo` or `doas`.
//!
//! sudo's password goes on the command's standard input (`sudo -S`) before anything else, and
//! only when sudo asks for one (`-k` makes it ask every time, so a cached credential never
//! leaves the password unread in front of the agent's protocol). A marker line printed as
//! root says the password was taken; the caller sees the command's output from after it.
//! The password is never in an argument list or a log line.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::exec::Exec;
use super::password::Password;
use super::{Session, SshError, shell_quote};

/// The line the root shell prints once sudo let it start.
const MARKER: &[u8] = b"nixos-anywhere-rs: root\n";
/// How long sudo may take to check a password (a wrong one costs it about two seconds).
const SUDO_PATIENCE: Duration = Duration::from_secs(20);

/// How to become root (`--become`, and the default: whatever the target has).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Become {
    /// Root logins as they are; others through sudo, else doas, else as themselves.
    #[default]
    Auto,
    /// Run every command as the login user.
    Never,
}

/// What the session wraps its commands in.
#[derive(Debug, Clone, Default)]
pub(crate) enum Elevation {
    /// Root already, or told not to.
    #[default]
    Nothing,
    /// `sudo -n`: no password needed.
    SudoNoPassword,
    /// `sudo -S -k`, fed this password first.
    Sudo(Password),
    /// `doas -n` (doas reads a password only from a terminal: its rule must say `nopass`).
    Doas,
}

impl Elevation {
    /// Finds out, over `session` (which runs commands as the login user still), how this
    /// login becomes root.
    pub(crate) async fn detect(
        session: &Session,
        how: Become,
        password: Option<&Password>,
        ask: bool,
    ) -> Result<Elevation, SshError> {
        // A root login needs nothing, and no round trip to find that out.
        if how == Become::Never || session.target().user == "root" {
            return Ok(Self::Nothing);
        }
        let probe = "id -u; command -v sudo >/dev/null && echo sudo; \
                     command -v doas >/dev/null && echo doas; \
                     sudo -n true 2>/dev/null && echo sudo-n; \
                     doas -n true 2>/dev/null && echo doas-n; true";
        let out = session.run(probe, b"").await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let facts: Vec<&str> = text.lines().collect();
        let has = |fact: &str| facts.contains(&fact);
        let fail = |reason: String| SshError::Privilege {
            dest: session.target().to_string(),
            reason,
        };
        if facts.first() == Some(&"0") {
            return Ok(Self::Nothing);
        }
        // What needs no password first: a user may have sudo installed without rights to
        // it, and doas with `nopass`.
        if has("sudo-n") {
            return Ok(Self::SudoNoPassword);
        }
        if has("doas-n") {
            return Ok(Self::Doas);
        }
        // A user may have sudo installed without rights to it, which sudo tells only after
        // a password: what doas would need is said alongside.
        let doas_too = if has("doas") {
            "; doas needs a password too, which it reads only from a terminal (add `nopass` \
             to the user's rule in /etc/doas.conf)"
        } else {
            ""
        };
        if has("sudo") {
            let password = match password {
                Some(p) => p.clone(),
                None if ask => {
                    Password::prompt(&format!("[sudo] password for {}: ", session.target()))
                        .ok_or_else(|| {
                            fail(format!(
                                "sudo needs a password and there is no terminal{doas_too}"
                            ))
                        })?
                }
                None => {
                    return Err(fail(format!(
                        "sudo needs a password: pass --env-password with it in SSHPASS, or \
                         run on a terminal to be asked{doas_too}"
                    )));
                }
            };
            // Checked once here, so that a wrong password fails at once and says so: later,
            // with the command's input still open, sudo would wait for another try.
            let mut input = password.0.clone().into_bytes();
            input.push(b'\n');
            let check = session.run("sudo -S -k -p '' -- true", &input).await?;
            if check.status != Some(0) {
                return Err(fail(format!(
                    "sudo refused the password (from --env-password or the terminal){doas_too}"
                )));
            }
            return Ok(Self::Sudo(password));
        }
        if has("doas") {
            return Err(fail(
                "doas needs a password, which it reads only from a terminal; add `nopass` to \
                 the user's rule in /etc/doas.conf, or use sudo"
                    .to_owned(),
            ));
        }
        tracing::warn!(
            "{} is not root and has neither sudo nor doas: running as that user",
            session.target()
        );
        Ok(Self::Nothing)
    }

    /// `command` as root.
    pub(crate) fn wrap(&self, command: &str) -> String {
        let quoted = shell_quote(command);
        match self {
            Self::Nothing => command.to_owned(),
            Self::SudoNoPassword => format!("sudo -n -- sh -c {quoted}"),
            Self::Doas => format!("doas -n -- sh -c {quoted}"),
            Self::Sudo(_) => format!(
                "sudo -S -k -p '' -- sh -c 'printf \"%s\\n\" \"nixos-anywhere-rs: root\" && \
                 eval \"$1\"' sh {quoted}"
            ),
        }
    }

    /// Feeds the password to a command started by [`wrap`](Self::wrap) and waits until it
    /// runs as root.
    pub(crate) async fn unlock(&self, exec: &mut Exec, dest: &str) -> Result<(), SshError> {
        let Self::Sudo(password) = self else {
            return Ok(());
        };
        let fail = |reason: String| SshError::Privilege {
            dest: dest.to_owned(),
            reason,
        };
        exec.stdin
            .send(Bytes::from(format!("{}\n", password.0)))
            .await?;
        let mut seen = vec![0u8; MARKER.len()];
        match tokio::time::timeout(SUDO_PATIENCE, exec.stdout.read_exact(&mut seen)).await {
            Ok(Ok(_)) if seen == MARKER => Ok(()),
            Ok(_) => Err(fail(
                "sudo did not start the command; was the password right?".to_owned(),
            )),
            Err(_) => Err(fail(format!(
                "sudo did not accept the password within {}s",
                SUDO_PATIENCE.as_secs()
            ))),
        }
    }
}
