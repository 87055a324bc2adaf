//! The SSH client: connect to the target with russh, run commands on exec channels, upload a
//! file. Every connection of one run shares a [`HostKeyPin`].
//!
//! Tuned for one bulk channel: AES-GCM first (AES-NI makes it the fastest cipher on x86 and
//! ARMv8), a 16 MiB receive window, 256 KiB packets (russh refuses larger ones), and data
//! passed as `Bytes` without copies on the way (see [`exec`]).

mod auth;
mod config;
mod error;
pub mod exec;
mod hostkey;
mod net;
mod options;
mod password;
mod privilege;
mod proxy;
mod resolve;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::cipher;
use russh::client::{self, Handle};
use russh::keys::{Algorithm, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Preferred};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use config::ConfigReader;
pub use error::SshError;
pub use exec::{Exec, ExecExit, ExecStdin, ExecStdout, ExitInfo};
pub use hostkey::{HostKeyPin, fingerprint};
pub use options::{DEFAULT_PORT, DEFAULT_USER, KeyText, SshOptions, StrictHostKeyChecking, Target};
pub use password::{Password, TemporaryKey};
pub use privilege::Become;
pub use proxy::{JumpHost, Proxy};
pub use resolve::Resolver;

/// Ciphers in order of preference: AES-GCM is hardware-accelerated almost everywhere.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];
/// The receive window: enough for ~100 MiB/s at 150 ms round trip.
const WINDOW: u32 = 16 << 20;
/// Largest packet the server may send us. russh rejects packets over 256 KiB plus headers.
const MAX_PACKET: u32 = 256 * 1024 - 1024;

/// A command's complete output (see [`Session::run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit status; `None` when killed by a signal (see `signal`).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub signal: Option<String>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// "exit status 3" or "killed by signal KILL", for messages.
    pub fn describe(&self) -> String {
        exec::describe_status(self.status, self.signal.as_deref())
    }
}

/// What every part of one connection shares: its name for messages, and why it ended.
pub(crate) struct SessionState {
    pub(crate) dest: String,
    lost: Mutex<Option<String>>,
    cipher: Mutex<Option<String>>,
}

impl SessionState {
    pub(crate) fn lost_reason(&self) -> String {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "the channel closed unexpectedly".to_owned())
    }
}

/// The russh event handler: checks the host key, remembers why the connection ended.
pub(crate) struct Client {
    host: String,
    port: u16,
    strict: StrictHostKeyChecking,
    known_hosts: Vec<PathBuf>,
    pin: HostKeyPin,
    state: Arc<SessionState>,
}

impl client::Handler for Client {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let key: Cow<'_, PublicKey> = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Cow::Borrowed(key),
            PublicKeyOrCertificate::Certificate(cert) => {
                Cow::Owned(PublicKey::new(cert.public_key().clone(), ""))
            }
        };
        hostkey::verify(
            &self.host,
            self.port,
            &key,
            self.strict,
            &self.known_hosts,
            &self.pin,
        )?;
        Ok(true)
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut client::Session,
    ) -> Result<(), SshError> {
        tracing::debug!(
            dest = %self.state.dest,
            cipher = names.cipher.as_ref(),
            kex = names.kex.as_ref(),
            "key exchange done"
        );
        *self.state.cipher.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(names.cipher.as_ref().to_owned());
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<SshError>,
    ) -> Result<(), SshError> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected ({})", info.message)
            }
            client::DisconnectReason::Error(e) => e.to_string(),
        };
        tracing::debug!(dest = %self.state.dest, "connection ended: {text}");
        self.state
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(text);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// One authenticated SSH connection. Channels can be opened from several tasks at once.
pub struct Session {
    handle: Handle<Client>,
    target: Target,
    state: Arc<SessionState>,
    /// How commands become root (sudo, doas), for a login that is not root.
    elevation: privilege::Elevation,
    /// The jump host or proxy command the connection runs through (dropped after `handle`).
    _via: proxy::Via,
}

impl Session {
    /// Connects (through `opts.proxy`), checks the host key (against known_hosts as
    /// configured, then `pin`) and authenticates. Resolves no name when `target.host` is an IP
    /// address, nor behind a jump host (the last jump host resolves it, as with OpenSSH).
    /// Each jump host's key is checked the same way, and pinned in `pin` under its name.
    pub async fn connect(
        target: &Target,
        opts: &SshOptions,
        pin: &HostKeyPin,
    ) -> Result<Session, SshError> {
        let dest = target.to_string();
        let state = Arc::new(SessionState {
            dest: dest.clone(),
            lost: Mutex::new(None),
            cipher: Mutex::new(None),
        });
        let known_hosts = known_hosts_files(opts);
        let config = Arc::new(client_config(target, opts, pin, &known_hosts));
        let handler = Client {
            host: target.host.clone(),
            port: target.port,
            strict: opts.strict_host_key_checking,
            known_hosts,
            pin: pin.clone(),
            state: state.clone(),
        };
        let (stream, via) = proxy::open(target, opts, pin).await?;
        let handshake = client::connect_stream(config, stream, handler);
        let mut handle = with_timeout(
            opts.connect_timeout,
            &dest,
            "in the SSH handshake with",
            handshake,
        )
        .await?
        .map_err(|e| match e {
            SshError::Protocol(source) => SshError::Handshake {
                dest: dest.clone(),
                source,
            },
            e => e,
        })?;
        let auth = auth::authenticate(&mut handle, target, opts);
        // A password typed at a prompt takes as long as the person typing.
        let limit = opts.connect_timeout.filter(|_| !opts.ask_password);
        let method = with_timeout(limit, &dest, "authenticating to", auth).await??;
        tracing::debug!(%dest, ?method, "authenticated");
        let mut session = Session {
            handle,
            target: target.clone(),
            state,
            elevation: privilege::Elevation::Nothing,
            _via: via,
        };
        if method == auth::Method::Password && opts.identity_files.is_empty() {
            opts.temporary_key.install(&session).await?;
        }
        session.elevation = privilege::Elevation::detect(
            &session,
            opts.become_root,
            opts.password.as_ref(),
            opts.ask_password,
        )
        .await?;
        Ok(session)
    }

    /// A `direct-tcpip` channel from the server to `host:port` (the server resolves the name).
    pub(crate) async fn open_direct_tcpip(
        &self,
        host: &str,
        port: u16,
    ) -> Result<russh::Channel<client::Msg>, String> {
        self.handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| self.reason(e))
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The negotiated cipher, e.g. `aes128-gcm@openssh.com`.
    pub fn cipher(&self) -> Option<String> {
        self.state
            .cipher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `command` (through the user's login shell, as `ssh host command` does), as root
    /// through sudo or doas when the login is not root (see [`Become`]).
    pub async fn exec(&self, command: &str) -> Result<Exec, SshError> {
        let mut exec = self.exec_as_login(&self.elevation.wrap(command)).await?;
        self.elevation.unlock(&mut exec, &self.state.dest).await?;
        Ok(exec)
    }

    /// Runs `command` as the login user.
    async fn exec_as_login(&self, command: &str) -> Result<Exec, SshError> {
        // Commands carry no secret: passwords go to sudo on stdin, keys in messages.
        tracing::debug!(dest = %self.state.dest, "remote command: {command}");
        let fail = |reason: String| SshError::Channel {
            dest: self.state.dest.clone(),
            command: command.to_owned(),
            reason,
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| fail(self.reason(e)))?;
        let (mut read, write) = channel.split();
        write
            .exec(true, command)
            .await
            .map_err(|e| fail(self.reason(e)))?;
        // The server answers the request before sending anything else of the command's.
        let mut early = Vec::new();
        loop {
            match read.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(fail("the server refused to run it".to_owned()));
                }
                Some(msg @ (ChannelMsg::WindowAdjusted { .. } | ChannelMsg::Open { .. })) => {
                    drop(msg)
                }
                Some(msg) => early.push(msg),
                None => return Err(fail(self.state.lost_reason())),
            }
        }
        Ok(exec::start(read, write, early, self.state.clone()))
    }

    /// Runs `command` to completion, feeding it `stdin`, and collects its output.
    pub async fn run(&self, command: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let Exec {
            stdin: mut input,
            mut stdout,
            exit,
        } = self.exec(command).await?;
        let data = Bytes::copy_from_slice(stdin);
        let feed = async move {
            input.send(data).await?;
            input.close().await
        };
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let (fed, read) = tokio::join!(feed, read);
        let info = exit.wait().await?;
        // A command may exit without reading its input; its status tells what happened.
        if let Err(e) = fed
            && info.status.is_none()
        {
            return Err(e);
        }
        read.map_err(|source| SshError::Io {
            what: format!("reading the output of `{command}`"),
            source,
        })?;
        Ok(Output {
            status: info.status,
            stdout: out,
            stderr: info.stderr,
            signal: info.signal,
        })
    }

    /// Like [`Session::run`], but a failure (non-zero status, signal) is an error quoting the
    /// command and its standard error.
    pub async fn run_checked(&self, command: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let out = self.run(command, stdin).await?;
        if out.success() {
            return Ok(out);
        }
        Err(SshError::CommandFailed {
            dest: self.state.dest.clone(),
            command: command.to_owned(),
            status: exec::describe_status(out.status, out.signal.as_deref()),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Uploads `local` to `remote_path` (mode 0755), unless a file with the same SHA-256 is
    /// already there (asked with `sha256sum`; without it, the file is uploaded). Writes a
    /// temporary name beside it, checks its hash when `sha256sum` exists, then renames it.
    /// Returns whether it uploaded.
    pub async fn upload(&self, local: &Path, remote_path: &str) -> Result<bool, SshError> {
        let file = LocalFile::read(local).await?;
        let quoted = shell_quote(remote_path);
        let probe = format!("test -x {quoted} && sha256sum {quoted} 2>/dev/null");
        let existing = self.run(&probe, b"").await?;
        let hash = file.sha256();
        if existing.success() && existing.stdout.starts_with(format!("{hash} ").as_bytes()) {
            tracing::debug!(remote_path, "already uploaded (same sha256)");
            return Ok(false);
        }
        self.upload_new(&file, remote_path).await?;
        Ok(true)
    }

    /// Uploads `file` to `remote_path` like [`upload`](Self::upload), without asking first
    /// whether it is there: one round trip less, for a caller that knows it is not.
    pub async fn upload_new(&self, file: &LocalFile, remote_path: &str) -> Result<(), SshError> {
        let (local, hash) = (&file.path, file.sha256());
        let quoted = shell_quote(remote_path);
        let dir = match remote_path.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((dir, _)) => dir,
            None => ".",
        };
        // The temporary name is unique per upload, so concurrent runs cannot mix their bytes.
        let script = format!(
            "set -e; umask 077; mkdir -p {dir}; t={quoted}.tmp.$$; cat > \"$t\"; \
             if command -v sha256sum >/dev/null 2>&1; then \
               set -- $(sha256sum \"$t\"); \
               if [ \"$1\" != {hash} ]; then rm -f \"$t\"; \
                 echo \"upload corrupted: sha256 $1, expected {hash}\" >&2; exit 1; fi; \
             fi; \
             chmod 0755 \"$t\"; mv -f \"$t\" {quoted}",
            dir = shell_quote(dir),
        );
        let Exec {
            mut stdin, exit, ..
        } = self.exec(&script).await?;
        let size = file.data.len();
        let sent = async {
            stdin.send(file.data.clone()).await?;
            stdin.close().await
        }
        .await;
        let info = exit.wait().await?;
        if !info.success() {
            return Err(SshError::CommandFailed {
                dest: self.state.dest.clone(),
                command: format!("upload of {} to {remote_path}", local.display()),
                status: info.describe(),
                stderr: String::from_utf8_lossy(&info.stderr).into_owned(),
            });
        }
        sent?;
        tracing::debug!(remote_path, size, "uploaded");
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(self) -> Result<(), SshError> {
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await?;
        Ok(())
    }

    /// The best explanation for a failed channel operation: the connection's end if it ended.
    fn reason(&self, e: russh::Error) -> String {
        match &*self.state.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(lost) => format!("the connection was lost: {lost}"),
            None => e.to_string(),
        }
    }
}

pub use crate::exec::shell_quote;

fn known_hosts_files(opts: &SshOptions) -> Vec<PathBuf> {
    if !opts.known_hosts.is_empty() || opts.strict_host_key_checking == StrictHostKeyChecking::No {
        return opts.known_hosts.clone();
    }
    std::env::var_os("HOME")
        .map(|home| vec![PathBuf::from(home).join(".ssh/known_hosts")])
        .unwrap_or_default()
}

fn client_config(
    target: &Target,
    opts: &SshOptions,
    pin: &HostKeyPin,
    known_hosts: &[PathBuf],
) -> client::Config {
    // Ask for the key type we can check first: the pinned one, or those known_hosts records.
    let first: Vec<Algorithm> = match pin.key() {
        Some(key) => vec![key.algorithm()],
        None => hostkey::recorded_algorithms(known_hosts, &target.host, target.port),
    };
    let mut keys: Vec<Algorithm> = Vec::new();
    for algorithm in Preferred::DEFAULT.key.iter() {
        if first
            .iter()
            .any(|f| f == algorithm || (is_rsa(f) && is_rsa(algorithm)))
        {
            keys.push(algorithm.clone());
        }
    }
    for algorithm in Preferred::DEFAULT.key.iter() {
        if !keys.contains(algorithm) {
            keys.push(algorithm.clone());
        }
    }
    client::Config {
        preferred: Preferred {
            cipher: Cow::Borrowed(CIPHERS),
            key: Cow::Owned(keys),
            ..Preferred::DEFAULT
        },
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        nodelay: true,
        keepalive_interval: opts.keepalive_interval,
        keepalive_max: opts.keepalive_max,
        ..client::Config::default()
    }
}

fn is_rsa(algorithm: &Algorithm) -> bool {
    matches!(algorithm, Algorithm::Rsa { .. })
}

async fn with_timeout<F: Future>(
    limit: Option<Duration>,
    dest: &str,
    stage: &'static str,
    fut: F,
) -> Result<F::Output, SshError> {
    match limit {
        None => Ok(fut.await),
        Some(after) => tokio::time::timeout(after, fut)
            .await
            .map_err(|_| SshError::Timeout {
                dest: dest.to_owned(),
                stage,
                after,
            }),
    }
}

/// A local file read whole, with its SHA-256: what an upload sends and checks.
pub struct LocalFile {
    path: PathBuf,
    data: Bytes,
    sha256: String,
}

impl LocalFile {
    pub async fn read(path: &Path) -> Result<Self, SshError> {
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&owned))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let data = read.map_err(|source| SshError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        let sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(&data));
        Ok(Self {
            path: path.to_owned(),
            data: Bytes::from(data),
            sha256,
        })
    }

    /// The SHA-256 of its bytes, in lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}
