//! Logins by password: the password itself (from `SSHPASS` with `--env-password`, or asked on
//! the terminal), never printed, never in an argument list; and the temporary key that a
//! password login leaves in the user's `authorized_keys`, so that later logins (the root login
//! after kexec, which carries `authorized_keys` over) need no password.

use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};

use super::{Session, SshError};

/// A password. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Password(pub(crate) String);

impl Password {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The password in `SSHPASS` (what `--env-password` reads, as `sshpass -e` does).
    pub fn from_env() -> Result<Self, SshError> {
        match std::env::var("SSHPASS") {
            Ok(text) if !text.is_empty() => Ok(Self(text)),
            _ => Err(SshError::Credential {
                what: "--env-password".to_owned(),
                reason: "SSHPASS is not set; export the password in it".to_owned(),
            }),
        }
    }

    /// Asks on the terminal (`/dev/tty`, without echo); `None` when there is no terminal.
    pub fn prompt(question: &str) -> Option<Self> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        use std::io::Write;
        let mut tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let saved = tcgetattr(&tty).ok()?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&tty, OptionalActions::Flush, &quiet).ok()?;
        let _ = write!(tty, "{question}");
        let _ = tty.flush();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while let Ok(1) = tty.read(&mut byte) {
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let _ = tcsetattr(&tty, OptionalActions::Flush, &saved);
        let _ = writeln!(tty);
        String::from_utf8(line).ok().map(Self)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The key a password login installs, shared by every connection of one run (clones share
/// it). It exists only in this process's memory.
#[derive(Clone, Default)]
pub struct TemporaryKey(Arc<Mutex<Option<Arc<PrivateKey>>>>);

impl fmt::Debug for TemporaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let installed = self.get().is_some();
        f.debug_struct("TemporaryKey")
            .field("installed", &installed)
            .finish()
    }
}

impl TemporaryKey {
    /// The installed key, if a password login installed one.
    pub fn get(&self) -> Option<Arc<PrivateKey>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a new key to the login user's `~/.ssh/authorized_keys` over `session` (once per
    /// run: a second call keeps the first key) and remembers it.
    pub(crate) async fn install(&self, session: &Session) -> Result<(), SshError> {
        if self.get().is_some() {
            return Ok(());
        }
        let key = generate()?;
        let line = key
            .public_key()
            .to_openssh()
            .map_err(|e| SshError::Credential {
                what: "the temporary key".to_owned(),
                reason: e.to_string(),
            })?;
        // The line comes on stdin; the script appends it unless it is there already.
        let script = "umask 077; mkdir -p ~/.ssh && read -r key && \
                      { grep -qxF \"$key\" ~/.ssh/authorized_keys 2>/dev/null || \
                        printf '%s\\n' \"$key\" >> ~/.ssh/authorized_keys; }";
        session
            .run_checked(script, format!("{line} nixos-anywhere-rs\n").as_bytes())
            .await?;
        tracing::info!(
            "added a temporary key to ~/.ssh/authorized_keys on {}",
            session.target()
        );
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
        Ok(())
    }
}

fn generate() -> Result<PrivateKey, SshError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| SshError::Io {
            what: "reading /dev/urandom for a temporary key".to_owned(),
            source,
        })?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), "nixos-anywhere-rs").map_err(|e| {
        SshError::Credential {
            what: "the temporary key".to_owned(),
            reason: e.to_string(),
        }
    })
}
