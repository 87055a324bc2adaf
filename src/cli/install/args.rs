//! The flags, as clap sees them: every flag of nixos-anywhere with its spelling, arity and
//! meaning, plus ours. Nothing is checked here beyond what clap checks per value; the
//! combinations are checked by [`InstallArgs::into_request`](super::InstallArgs::into_request).
//!
//! The two-value flags that repeat (`--chown PATH OWNER`, ...) collect their values flat, in
//! pairs (clap's derive has no list of lists); `num_args = 2` makes every occurrence a pair.
//!
//! Every single-value flag may be given again, the last one winning, as in nixos-anywhere's
//! shell loop (`args_override_self`); repeatable flags (`--ssh-option`, `--chown`, ...) collect.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::duration::parse_duration;

const TARGET: &str = "Target (SSH)";
const SOURCE: &str = "What to install";
const PHASES: &str = "Phases and disks";
const KEXEC: &str = "Kexec";
const INSTALL: &str = "Installed files";
const BUILD: &str = "Building and copying";
const SUBST: &str = "Substitution on the target";
const OUTPUT: &str = "Output";
const DEPRECATED: &str = "Deprecated (accepted with a warning)";

/// Environment variables, listed under the flags in `--help`.
const ENVIRONMENT: &str = "\
Environment:
  SSHPASS          the SSH password, read with --env-password (never put it in an argument)
  SSH_PRIVATE_KEY  the text of a private key to log in with, used when -i is not given
  NIXOS_NO_CHECK   passed on to the installed system's switch-to-configuration (skips
                   system.preSwitchChecks), as nixos-install takes it";

/// `nixos-anywhere-rs [options] [<ssh-host>]`: install NixOS on the machine at `<ssh-host>`.
/// Flattened into the top-level command, beside the subcommands (`args_conflicts_with_subcommands`
/// on the parent keeps `copy ...` a subcommand and `--flake .#x copy` a host named copy).
#[derive(Debug, Clone, Args)]
#[command(args_override_self = true, after_help = ENVIRONMENT)]
pub struct InstallArgs {
    // ---- Target ----
    /// The machine to install: [user@]host, ssh://[user@]host[:port] or an alias of the ssh
    /// config. Required unless --vm-test.
    #[arg(value_name = "SSH-HOST", help_heading = TARGET)]
    pub ssh_host: Vec<String>,

    /// The machine to install, as a flag (the same as <SSH-HOST>).
    #[arg(long, value_name = "SSH-HOST", help_heading = TARGET)]
    pub target_host: Option<String>,

    /// Private key file to log in with (repeatable, tried in order). Without -i, the key text
    /// in SSH_PRIVATE_KEY, then a running ssh-agent.
    #[arg(short = 'i', value_name = "IDENTITY-FILE", help_heading = TARGET)]
    pub identity: Vec<PathBuf>,

    /// SSH port, when <SSH-HOST> names none.
    #[arg(short = 'p', long, value_name = "PORT", help_heading = TARGET,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ssh_port: Option<u16>,

    /// One ssh option as Key=Value (repeatable), as `ssh -o`. Options given here win over the
    /// defaults (StrictHostKeyChecking=no, no known_hosts) and over the ssh config file.
    #[arg(long = "ssh-option", short = 'o', value_name = "KEY=VALUE", help_heading = TARGET)]
    pub ssh_option: Vec<String>,

    /// Read this ssh config file instead of ~/.ssh/config, as `ssh -F`.
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE", help_heading = TARGET)]
    pub ssh_config: Option<PathBuf>,

    /// Log in with the password in the environment variable SSHPASS (password or
    /// keyboard-interactive authentication; also fed to sudo).
    #[arg(long, help_heading = TARGET)]
    pub env_password: bool,

    /// How long to keep trying the first connection (the machine may still be booting), e.g.
    /// 90s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "10m", help_heading = TARGET,
          value_parser = parse_duration)]
    pub connect_deadline: Duration,

    // ---- Source ----
    /// The flake and configuration to install, FLAKE#NAME (NAME means
    /// nixosConfigurations."NAME".config) or FLAKE#nixosConfigurations.NAME... as given.
    #[arg(short = 'f', long, value_name = "FLAKE#NAME", help_heading = SOURCE)]
    pub flake: Option<String>,

    /// Install store paths built already: the disk layout (a disko script store path, or a
    /// layout JSON file) and the NixOS system (its toplevel).
    #[arg(short = 's', long, num_args = 2, value_names = ["DISKO", "SYSTEM"],
          help_heading = SOURCE)]
    pub store_paths: Option<Vec<PathBuf>>,

    // ---- Phases ----
    /// The phases to run, comma-separated, from kexec,disko,install,reboot (default: all).
    #[arg(long, value_name = "PHASES", help_heading = PHASES)]
    pub phases: Option<String>,

    /// What the disko phase does: disko (destroy, format, mount; also spelt
    /// destroy,format,mount), format, format,mount, or mount.
    #[arg(long, value_enum, value_name = "MODE", help_heading = PHASES)]
    pub disko_mode: Option<DiskoMode>,

    /// Rely on the installer's own partitioning tools instead of uploading disko's (a disko
    /// script's NoDeps variant).
    #[arg(long, help_heading = PHASES)]
    pub no_disko_deps: bool,

    /// Before disko, write the disk-encryption key read from LOCAL (a file, or a pipe such as
    /// <(pass key)) to REMOTE in the installer's memory, mode 0600 (repeatable).
    #[arg(long, num_args = 2, value_names = ["REMOTE", "LOCAL"], help_heading = PHASES)]
    pub disk_encryption_keys: Vec<PathBuf>,

    /// How long to wait for the installed system to come up after the reboot.
    #[arg(long, value_name = "DURATION", default_value = "10m", help_heading = PHASES,
          value_parser = parse_duration)]
    pub reboot_deadline: Duration,

    // ---- Kexec ----
    /// The kexec installer tarball (.tar.gz, .tar.xz, .tar.zst, .tar): a local file, streamed
    /// up, or a URL, downloaded by the target. Default: nixos-images' for the target's CPU.
    #[arg(long, value_name = "PATH|URL", help_heading = KEXEC)]
    pub kexec: Option<String>,

    /// Run kexec even when the target already runs a NixOS installer.
    #[arg(long, help_heading = KEXEC)]
    pub force_kexec: bool,

    /// Extra flags for the tarball's kexec/run, added to `kexec --load` and `kexec -e`,
    /// e.g. "--no-sync".
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true, help_heading = KEXEC)]
    pub kexec_extra_flags: Option<String>,

    /// Connect to this host after kexec (the installer may come up at another address).
    #[arg(long, value_name = "HOST", help_heading = KEXEC)]
    pub post_kexec_ssh_host: Option<String>,

    /// Connect to this port after kexec. Default: 22 when -p was given, else the same port.
    #[arg(long, value_name = "PORT", help_heading = KEXEC,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub post_kexec_ssh_port: Option<u16>,

    /// How long to wait for the installer to answer after kexec.
    #[arg(long, value_name = "DURATION", default_value = "10m", help_heading = KEXEC,
          value_parser = parse_duration)]
    pub kexec_deadline: Duration,

    /// Accept (and pin) another host key after kexec, for an installer that does not carry the
    /// old system's keys over. Without it a changed key stops the run before any disk is
    /// touched.
    #[arg(long, help_heading = KEXEC)]
    pub accept_new_host_key_after_kexec: bool,

    /// After kexec, write the target's hardware configuration to the local PATH, with
    /// nixos-facter or nixos-generate-config.
    #[arg(long, num_args = 2, value_names = ["BACKEND", "PATH"], help_heading = KEXEC)]
    pub generate_hardware_config: Option<Vec<String>>,

    // ---- Installed files ----
    /// Copy the contents of this local directory into / of the installed system (modes kept,
    /// owned by root unless --chown).
    #[arg(long, value_name = "DIR", help_heading = INSTALL)]
    pub extra_files: Option<PathBuf>,

    /// After the extra files, change the owner of PATH (relative to the installed system's /)
    /// recursively to OWNER, best as uid:gid (repeatable).
    #[arg(long, num_args = 2, value_names = ["PATH", "OWNER"], help_heading = INSTALL)]
    pub chown: Vec<String>,

    /// Carry the installer's /etc/ssh/ssh_host_* keys over into the installed system.
    #[arg(long, help_heading = INSTALL)]
    pub copy_host_keys: bool,

    // ---- Build ----
    /// Where to build the system: auto (local when this machine can build for the target),
    /// local, or remote (on the target, which needs Nix).
    #[arg(long, value_enum, value_name = "WHERE", help_heading = BUILD)]
    pub build_on: Option<BuildOn>,

    /// Copy the closure from this Nix store instead of the local one, e.g. file:///cache.
    #[arg(long, value_name = "STORE-URI", help_heading = BUILD)]
    pub from: Option<String>,

    /// A Nix option for every Nix command run on this machine (repeatable).
    #[arg(long, num_args = 2, value_names = ["KEY", "VALUE"], help_heading = BUILD)]
    pub option: Vec<String>,

    /// Print full build logs.
    #[arg(short = 'L', long, help_heading = BUILD)]
    pub print_build_logs: bool,

    /// Show Nix's evaluation traces.
    #[arg(long, help_heading = BUILD)]
    pub show_trace: bool,

    /// A setting appended to the ssh store URI (`ssh-ng://...?KEY=VALUE`) a remote build uses;
    /// VALUE URI-encoded (repeatable).
    #[arg(long, num_args = 2, value_names = ["KEY", "VALUE"], help_heading = BUILD)]
    pub ssh_store_setting: Vec<String>,

    /// Build disko's VM test of the configuration (installTest) instead of installing.
    #[arg(long, help_heading = BUILD)]
    pub vm_test: bool,

    // ---- Substitution ----
    /// Send every path from here: the target fetches nothing from binary caches.
    /// Implies --no-use-machine-substituters.
    #[arg(long, help_heading = SUBST)]
    pub no_substitute_on_destination: bool,

    /// Do not add the configuration's own nix.settings.substituters and trusted-public-keys
    /// to the caches the target uses.
    #[arg(long, help_heading = SUBST)]
    pub no_use_machine_substituters: bool,

    /// The binary caches the target uses, replacing those of its nix.conf (repeatable, or
    /// space-separated; "" for none).
    #[arg(long, value_name = "URL", help_heading = SUBST)]
    pub substituters: Option<Vec<String>>,

    /// Binary caches the target uses in addition (repeatable, or space-separated).
    #[arg(long, value_name = "URL", help_heading = SUBST)]
    pub extra_substituters: Vec<String>,

    /// Keys the caches' signatures must verify with, NAME:BASE64 (repeatable, or
    /// space-separated).
    #[arg(long, value_name = "KEY", help_heading = SUBST)]
    pub trusted_public_keys: Vec<String>,

    /// CA certificates (PEM) of https caches with a private CA: read here and sent along, so
    /// the target need not have the file; trusted besides the bundled roots, instead of the
    /// target's ssl-cert-file (`--option ssl-cert-file` is this machine's Nix's).
    #[arg(long, value_name = "FILE", help_heading = SUBST)]
    pub ssl_cert_file: Option<PathBuf>,

    // ---- Output ----
    /// Show every remote command and the scripts' traces; implies -L.
    #[arg(long, help_heading = OUTPUT)]
    pub debug: bool,

    /// Print the plan and stop before anything is changed.
    #[arg(long, help_heading = OUTPUT)]
    pub dry_run: bool,

    /// Print a machine-readable record of the plan and the run on standard output.
    #[arg(long, help_heading = OUTPUT)]
    pub json: bool,

    /// The agent executable uploaded to the target (default: this executable); a static build
    /// for the target's CPU.
    #[arg(long, value_name = "PATH", help_heading = OUTPUT)]
    pub agent: Option<PathBuf>,

    // ---- Deprecated ----
    /// Deprecated: --phases kexec,disko.
    #[arg(long, help_heading = DEPRECATED)]
    pub stop_after_disko: bool,

    /// Deprecated: --phases kexec,disko,install.
    #[arg(long, help_heading = DEPRECATED)]
    pub no_reboot: bool,

    /// Deprecated: --build-on remote.
    #[arg(long, help_heading = DEPRECATED)]
    pub build_on_remote: bool,

    /// Deprecated and without effect: a terminal is detected by itself.
    #[arg(short = 't', long, help_heading = DEPRECATED)]
    pub tty: bool,
}

/// Where the system is built (`--build-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOn {
    /// Locally when this machine can build for the target's system, else on the target.
    Auto,
    Local,
    Remote,
}

/// What the disko phase does (`--disko-mode`; `format,mount` is nixos-anywhere #622).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum DiskoMode {
    /// Destroy what is on the disks, then format and mount.
    #[value(name = "disko", alias = "destroy,format,mount")]
    #[serde(rename = "disko")]
    Disko,
    /// Format only (create partitions and file systems).
    #[value(name = "format")]
    #[serde(rename = "format")]
    Format,
    /// Format, then mount, without destroying first.
    #[value(name = "format,mount")]
    #[serde(rename = "format,mount")]
    FormatMount,
    /// Mount what is there already.
    #[value(name = "mount")]
    #[serde(rename = "mount")]
    Mount,
}

impl DiskoMode {
    pub fn destroys(self) -> bool {
        self == DiskoMode::Disko
    }

    pub fn formats(self) -> bool {
        self != DiskoMode::Mount
    }

    pub fn mounts(self) -> bool {
        self != DiskoMode::Format
    }

    /// The disko attributes of `config.system.build` that do this mode (`diskoScript`, ...),
    /// their `NoDeps` variants without `deps`. disko has no script of its own for
    /// `format,mount`: it is the format script, then the mount script.
    pub fn disko_attrs(self, deps: bool) -> Vec<String> {
        let names: &[&str] = match self {
            DiskoMode::Disko => &["diskoScript"],
            DiskoMode::Format => &["formatScript"],
            DiskoMode::FormatMount => &["formatScript", "mountScript"],
            DiskoMode::Mount => &["mountScript"],
        };
        let suffix = if deps { "" } else { "NoDeps" };
        names.iter().map(|n| format!("{n}{suffix}")).collect()
    }
}
