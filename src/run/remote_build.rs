//! `--build-on remote`: the target's own Nix builds the system straight into `/mnt`, driven
//! from here over `ssh-ng` (`nix build --eval-store auto --store
//! ssh-ng://HOST?remote-store=local?root=/mnt`): evaluation here, the build there. It needs
//! Nix on the target (a NixOS installer has it); without, the run stops before anything
//! changed.
//!
//! Nix reaches the target with OpenSSH, given the run's settings in `NIX_SSHOPTS` and a
//! known-hosts file holding the key this run pinned, so that Nix's connection is checked
//! against the same host key as ours.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cli::install::{Build, SshSettings};
use crate::exec::CmdError;
use crate::ssh::{HostKeyPin, Target};
use crate::store::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum RemoteBuildError {
    #[error(
        "--build-on remote needs Nix on the target, and {0} has no nix-daemon on its PATH; \
         nothing was changed: build here (--build-on local), or boot a NixOS installer"
    )]
    NoNix(String),
    #[error(
        "--build-on remote logs in with keys only (Nix runs OpenSSH, which reads no password \
         from the environment); nothing was changed: give a key with -i"
    )]
    Password,
    #[error("--build-on remote: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "--build-on remote: Nix passes ssh options split at whitespace, and {0:?} has some; \
         nothing was changed: use a path or option without spaces"
    )]
    Whitespace(String),
    #[error("the remote build of {installable} failed: {source}")]
    Build {
        installable: String,
        source: CmdError,
    },
    #[error("the remote build printed no store path: {0}")]
    Output(String),
}

/// Files that live as long as the remote build: the known-hosts file and, with
/// `SSH_PRIVATE_KEY`, the key; removed when dropped.
pub struct RemoteBuild {
    dir: PathBuf,
    store: String,
    ssh_opts: String,
}

impl Drop for RemoteBuild {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RemoteBuild {
    /// Prepares the store URI and NIX_SSHOPTS for `target`, whose host key `pin` holds.
    pub fn new(
        settings: &SshSettings,
        build: &Build,
        target: &Target,
        pin: &HostKeyPin,
        root: &Path,
    ) -> Result<Self, RemoteBuildError> {
        if settings.password.is_some() {
            return Err(RemoteBuildError::Password);
        }
        let dir = std::env::temp_dir().join(format!("nixos-anywhere-rs-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut opts = vec!["-p".to_owned(), target.port.to_string()];
        if let Some(key) = pin.key().and_then(|k| k.to_openssh().ok()) {
            let known = dir.join("known_hosts");
            let host = if target.port == 22 {
                target.host.clone()
            } else {
                format!("[{}]:{}", target.host, target.port)
            };
            std::fs::write(&known, format!("{host} {key}\n"))?;
            opts.extend([
                "-o".into(),
                format!("UserKnownHostsFile={}", known.display()),
                "-o".into(),
                "StrictHostKeyChecking=yes".into(),
            ]);
        }
        if let Some(config) = &settings.config_file {
            opts.extend(["-F".into(), config.display().to_string()]);
        }
        for id in &settings.identity_files {
            opts.extend(["-i".into(), id.display().to_string()]);
        }
        if let Some(key) = &settings.private_key {
            let path = dir.join("key");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(key.expose())?;
            opts.extend(["-i".into(), path.display().to_string()]);
        }
        for option in &settings.options {
            opts.extend(["-o".into(), option.clone()]);
        }
        // Nix splits NIX_SSHOPTS at whitespace, with no quoting.
        if let Some(bad) = opts.iter().find(|o| o.contains(char::is_whitespace)) {
            return Err(RemoteBuildError::Whitespace(bad.clone()));
        }
        let ssh_opts = opts.join(" ");
        let mut store = format!(
            "ssh-ng://{}@{}?remote-store={}",
            target.user,
            target.host,
            uri_encode(&format!("local?root={}", root.display()))
        );
        for setting in &build.ssh_store_settings {
            store.push_str(&format!("&{}={}", setting.key, setting.value));
        }
        Ok(Self {
            dir,
            store,
            ssh_opts,
        })
    }

    /// The store URI Nix builds into.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Builds `installable` on the target into its root's store; returns the output.
    pub fn build(&self, build: &Build, installable: &str) -> Result<StorePath, RemoteBuildError> {
        let out = super::inputs::nix(build, &["build", "--no-link", "--json"])
            .args(["--eval-store", "auto", "--store"])
            .arg(&self.store)
            .env("NIX_SSHOPTS", &self.ssh_opts)
            .arg(installable)
            .output()
            .map_err(|source| RemoteBuildError::Build {
                installable: installable.to_owned(),
                source,
            })?;
        super::inputs::built_path(installable, &out)
            .map_err(|_| RemoteBuildError::Output(String::from_utf8_lossy(&out).into_owned()))
    }
}

/// Percent-encodes what a store URI's query value cannot hold as is.
fn uri_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_remote_store_is_encoded_as_nixos_anywhere_does() {
        assert_eq!(
            super::uri_encode("local?root=/mnt"),
            "local%3Froot%3D%2Fmnt"
        );
    }
}
