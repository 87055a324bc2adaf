//! What can go wrong talking SSH to the target, each with what the user can do about it.

use std::io;
use std::time::Duration;

use crate::exec::stderr_tail;

/// Every failure of the SSH layer. No variant ever carries private key text.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "invalid SSH destination {input:?}: {reason}; expected [user@]host[:port], \
         ssh://[user@]host[:port] or [IPv6-address]:port"
    )]
    InvalidTarget { input: String, reason: String },

    #[error("invalid SSH option {option:?}: {reason}")]
    InvalidOption { option: String, reason: String },

    #[error("SSH configuration: {what}: {reason}")]
    Config { what: String, reason: String },

    #[error(
        "{} uses Match, which only OpenSSH's own client understands; install openssh-client \
         (so that `ssh -G` resolves it), or pass another file with -F",
        .file.display()
    )]
    ConfigNeedsMatch { file: std::path::PathBuf },

    #[error("unsupported SSH option {option}: {reason}")]
    UnsupportedOption { option: String, reason: String },

    #[error("could not connect to {dest}: {source}{}", connect_hint(.source))]
    Connect { dest: String, source: io::Error },

    #[error(
        "timed out after {}s {stage} {dest}; is the host up and reachable? \
         (raise the limit with --ssh-option ConnectTimeout=SECONDS)",
        .after.as_secs()
    )]
    Timeout {
        dest: String,
        stage: &'static str,
        after: Duration,
    },

    #[error("SSH handshake with {dest} failed: {source}")]
    Handshake { dest: String, source: russh::Error },

    #[error(
        "the host key of {host} changed during this run: the first connection presented \
         {pinned_fingerprint}, this one presented {seen_fingerprint}. Either the machine was \
         replaced or reinstalled in between, or someone is intercepting the connection; \
         the run stops here. If the change is expected, start the run again"
    )]
    HostKeyChanged {
        host: String,
        pinned_fingerprint: String,
        seen_fingerprint: String,
    },

    #[error("refusing the host key of {host} ({fingerprint}): {reason}")]
    HostKeyRejected {
        host: String,
        fingerprint: String,
        reason: String,
    },

    #[error("could not use {what}: {reason}")]
    Credential { what: String, reason: String },

    #[error(
        "no SSH key to try for {dest}: pass -i KEY, set SSH_PRIVATE_KEY to the key text, \
         or load a key into a running ssh-agent (ssh-add) and set SSH_AUTH_SOCK"
    )]
    NoCredentials { dest: String },

    #[error(
        "authentication failed for {dest} with {tried}; the server accepts: {server_methods}. \
         Pass -i KEY with a private key whose public half is in the target's \
         ~/.ssh/authorized_keys, set SSH_PRIVATE_KEY, or add the key to ssh-agent"
    )]
    AuthFailed {
        dest: String,
        tried: String,
        server_methods: String,
    },

    #[error("could not become root on {dest}: {reason}")]
    Privilege { dest: String, reason: String },

    #[error("could not run `{command}` on {dest}: {reason}")]
    Channel {
        dest: String,
        command: String,
        reason: String,
    },

    #[error("the SSH connection to {dest} was lost: {reason}")]
    ConnectionLost { dest: String, reason: String },

    #[error("`{command}` failed on {dest} ({status}){}", stderr_tail(.stderr))]
    CommandFailed {
        dest: String,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },

    #[error("SSH protocol error: {0}")]
    Protocol(#[from] russh::Error),
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "; is sshd running there and listening on that port? (set it with -p PORT)"
        }
        io::ErrorKind::NotFound => "; check the host name, or pass an IP address",
        _ => "",
    }
}
