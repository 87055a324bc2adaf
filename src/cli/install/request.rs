//! The validated install request: what the run planner consumes. Plain data, every value
//! checked and every combination agreed, printable with `--dry-run --json`. Secrets in it
//! serialise as `<redacted>`; disk-encryption keys are here as paths only.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use super::args::{BuildOn, DiskoMode};
use super::keys::Secret;
use crate::ssh::{SshError, SshOptions};
use crate::store::StorePath;
use crate::substitute::CaCertificates;

/// An install, or with `--vm-test` the build of disko's VM test.
#[derive(Debug, Serialize)]
pub struct InstallRequest {
    /// Build `<flake>#<attr>.system.build.installTest` and stop (`--vm-test`).
    pub vm_test: bool,
    pub source: Source,
    /// The phases to run, in their fixed order (kexec, disko, install, reboot).
    pub phases: BTreeSet<Phase>,
    pub disko: Disko,
    /// Where to install; `None` only with `--vm-test`.
    pub target: Option<SshSettings>,
    pub kexec: Kexec,
    pub hardware_config: Option<HardwareConfig>,
    /// Written into the installer before disko; read with [`KeySources`](super::KeySources).
    pub disk_encryption_keys: Vec<EncryptionKey>,
    /// Copied into the installed system's `/` (a directory, canonical).
    pub extra_files: Option<PathBuf>,
    /// Applied after the extra files, in order.
    pub chown: Vec<Chown>,
    pub copy_host_keys: bool,
    pub substitution: Substitution,
    pub build: Build,
    /// `NIXOS_NO_CHECK` as set in the environment (even empty), for the system's
    /// switch-to-configuration; `None` when unset. nixos-anywhere meant to pass it on and
    /// does not.
    pub nixos_no_check: Option<String>,
    /// How long to wait for the installed system after the reboot.
    pub reboot_deadline_secs: u64,
    pub output: Output,
    /// The agent executable to upload; `None`: this executable.
    pub agent: Option<PathBuf>,
    /// Deprecated flags used and flags without effect, for the user to see before the run.
    pub warnings: Vec<String>,
}

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// `--flake FLAKE#NAME`: `attr` is the configuration's attribute path, normalised as
    /// nixos-anywhere does (`nixosConfigurations."NAME".config`).
    Flake { flake: String, attr: String },
    /// `--store-paths LAYOUT SYSTEM`, both resolved (`readlink -f`).
    StorePaths { layout: Layout, system: StorePath },
}

impl Source {
    /// `FLAKE#ATTR.SUFFIX`, for Nix's command line; `None` for store paths.
    pub fn installable(&self, suffix: &str) -> Option<String> {
        match self {
            Source::Flake { flake, attr } => Some(format!("{flake}#{attr}.{suffix}")),
            Source::StorePaths { .. } => None,
        }
    }
}

/// The disk layout given with `--store-paths`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Layout {
    /// A disko script (it starts with `#!`), run in the installer as nixos-anywhere does.
    DiskoScript(PathBuf),
    /// An evaluated `disko.devices` as JSON.
    Json(PathBuf),
}

/// A phase of the install, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Kexec,
    Disko,
    Install,
    Reboot,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Kexec, Phase::Disko, Phase::Install, Phase::Reboot];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Kexec => "kexec",
            Phase::Disko => "disko",
            Phase::Install => "install",
            Phase::Reboot => "reboot",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Phase::ALL.into_iter().find(|p| p.name() == s).ok_or(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disko {
    pub mode: DiskoMode,
    /// Upload disko's own tools (false: `--no-disko-deps`, the installer's are used).
    pub deps: bool,
}

/// How to reach the target.
#[derive(Debug, Serialize)]
pub struct SshSettings {
    /// As given on the command line (a config alias resolves through the ssh config).
    pub destination: String,
    /// The user named in the destination; `None`: from the ssh config, else root.
    pub user: Option<String>,
    pub host: String,
    /// The destination's port, else `-p`; `None`: from the options or config, else 22.
    pub port: Option<u16>,
    /// `--ssh-option` in order. They win over the tool's defaults (nixos-anywhere #552 is the
    /// opposite bug) and over the config file.
    pub options: Vec<String>,
    /// `-F FILE`.
    pub config_file: Option<PathBuf>,
    /// `-i`, in order, canonical.
    pub identity_files: Vec<PathBuf>,
    /// `SSH_PRIVATE_KEY`, only when no `-i` was given (as nixos-anywhere).
    pub private_key: Option<Secret>,
    /// `SSHPASS`, with `--env-password`.
    pub password: Option<Secret>,
    /// How long the first connection is retried.
    pub connect_deadline_secs: u64,
    /// Where to connect after kexec: as root, to `--post-kexec-ssh-host` or the same host.
    pub after_kexec: Reconnect,
}

impl SshSettings {
    /// Applies these settings to `opts` in the order `ssh` would see them on its command line:
    /// identities, `-p`, then every `--ssh-option`, so that each option overrides the defaults
    /// already in `opts`.
    pub fn apply_to(&self, opts: &mut SshOptions) -> Result<(), SshError> {
        opts.identity_files
            .extend(self.identity_files.iter().cloned());
        if let Some(key) = &self.private_key {
            let text = String::from_utf8_lossy(key.expose()).into_owned();
            opts.private_key = Some(crate::ssh::KeyText::new(text));
        }
        if self.port.is_some() {
            opts.port = self.port;
        }
        for option in &self.options {
            opts.set_option(option)?;
        }
        Ok(())
    }
}

/// The connection after kexec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconnect {
    /// Always root: the installer carries the login's authorized keys over to root.
    pub user: String,
    pub host: String,
    /// `--post-kexec-ssh-port` when given, whether or not `-p` was (a fix of nixos-anywhere,
    /// which ignores it without `-p`); else 22 when `-p` was given (nixos-anywhere replaces
    /// `-p`'s value by its default); else `None`, the port used before kexec.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kexec {
    pub image: KexecImage,
    /// Run kexec even on a NixOS installer (`--force-kexec`).
    pub force: bool,
    /// `--kexec-extra-flags`, passed to the tarball's `kexec/run` as one argument.
    pub extra_flags: String,
    /// How long to wait for the installer to answer after kexec.
    pub deadline_secs: u64,
    /// `--accept-new-host-key-after-kexec`: the installer's key need not be the pinned one.
    pub new_host_key: bool,
}

/// The kexec tarball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KexecImage {
    /// nixos-images' tarball for the target's CPU, chosen once the facts are known.
    Default,
    /// A local file (canonical), streamed up.
    File { path: PathBuf, format: TarFormat },
    /// Downloaded by the target, else by this machine.
    Url { url: String, format: TarFormat },
}

/// How the kexec tarball is compressed, from its name as nixos-anywhere decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TarFormat {
    Gzip,
    Xz,
    Zstd,
    Tar,
    /// The name says nothing: decided from the first bytes.
    Sniff,
}

impl TarFormat {
    pub fn from_name(name: &str) -> TarFormat {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            TarFormat::Gzip
        } else if name.ends_with(".tar.xz") || name.ends_with(".txz") {
            TarFormat::Xz
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            TarFormat::Zstd
        } else if name.ends_with(".tar") {
            TarFormat::Tar
        } else {
            TarFormat::Sniff
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HardwareConfig {
    pub backend: HardwareBackend,
    /// Where the result is written on this machine (absolute; parents are created).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HardwareBackend {
    NixosFacter,
    NixosGenerateConfig,
}

/// `--disk-encryption-keys REMOTE LOCAL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncryptionKey {
    /// An absolute path in the installer.
    pub remote: PathBuf,
    /// A file or pipe on this machine, as given (a pipe's `/dev/fd/N` name is only valid in
    /// this process). Never read before [`KeySources`](super::KeySources) reads it.
    pub local: PathBuf,
}

/// `--chown PATH OWNER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chown {
    /// Relative to the installed system's `/`, without a leading `/` and without `..`.
    pub path: PathBuf,
    /// `uid:gid`, `user`, `user:group`, as `chown` takes it.
    pub owner: String,
}

/// Which binary caches the target may fetch from (issue 15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Substitution {
    /// Let the target fetch what caches hold (off: `--no-substitute-on-destination`).
    pub on_destination: bool,
    /// Add the configuration's own `nix.settings.substituters` and `trusted-public-keys`
    /// (flake installs only; off with `--no-use-machine-substituters` or no substitution).
    pub use_machine_substituters: bool,
    /// `--substituters`: replaces the target's list; `Some(empty)`: none at all.
    pub substituters: Option<Vec<String>>,
    /// `--extra-substituters`: added to it.
    pub extra_substituters: Vec<String>,
    /// `--trusted-public-keys`: `NAME:BASE64` ed25519 keys, added to the target's.
    pub trusted_public_keys: Vec<String>,
    /// `--ssl-cert-file`: CA certificates read here for the target's https caches (the plan
    /// shows the file they came from).
    #[serde(serialize_with = "ca_file", skip_serializing_if = "Option::is_none")]
    pub ssl_cert_file: Option<CaCertificates>,
}

fn ca_file<S: serde::Serializer>(ca: &Option<CaCertificates>, s: S) -> Result<S::Ok, S::Error> {
    ca.as_ref().map(|c| &c.file).serialize(s)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    pub on: BuildOn,
    /// `--from STORE-URI`: the closure is copied from there.
    pub from: Option<String>,
    /// `--option KEY VALUE` for this machine's Nix commands, in order.
    pub nix_options: Vec<KeyValue>,
    /// `-L`, also implied by `--debug`.
    pub print_build_logs: bool,
    pub show_trace: bool,
    /// The ssh store URI's settings for a remote build: `compress=true` (nixos-anywhere's
    /// default), then `--ssh-store-setting`s in order.
    pub ssh_store_settings: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Output {
    pub debug: bool,
    pub dry_run: bool,
    pub json: bool,
}
