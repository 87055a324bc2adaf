//! The command line: clap's definitions, and turning what was typed into the plain requests
//! the rest of the tool plans and runs.

pub mod copy;
pub mod disko;
pub mod nar;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use copy::CopyArgs;
pub use disko::DiskoArgs;
pub use nar::NarCommand;

use std::io::IsTerminal;

use crate::ssh::{Password, Resolver, SshError, SshOptions, Target};

pub mod install;

/// `nixos-anywhere-rs [options] [<ssh-host>]` installs, with nixos-anywhere's flags; the
/// subcommands are the tool's parts on their own.
#[derive(Debug, Parser)]
#[command(
    name = "nixos-anywhere-rs",
    version,
    about = "Install NixOS anywhere over SSH, natively",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub install: install::InstallArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with Nix ARchives (NAR).
    #[command(subcommand)]
    Nar(NarCommand),
    /// Copy store closures to a store root, like `nix copy`.
    Copy(CopyArgs),
    /// Partition, format and mount disks from a disko layout (its evaluated `disko.devices`
    /// JSON) on this machine, as disko does.
    Disko(DiskoArgs),
    /// Show what the agent finds on a target (architecture, installer or not, memory, disks,
    /// network), as JSON: what every phase plans from.
    Facts(FactsArgs),
    /// Serve the tool on stdin/stdout (run by the tool on the target, over SSH).
    #[command(hide = true)]
    Agent {
        /// Exit when nothing arrives for this many seconds: the connection is gone.
        #[arg(long, value_name = "SECONDS")]
        give_up_after: Option<u64>,
    },
    /// Run a command inside an installed NixOS root, in nixos-enter's environment (run by the
    /// agent for the bootloader step; also usable by hand on an installer).
    Enter(EnterArgs),
}

#[derive(Debug, Args)]
pub struct EnterArgs {
    /// The installed root.
    #[arg(long, value_name = "DIR", default_value = "/mnt")]
    pub root: PathBuf,
    /// The system whose `activate` runs first.
    #[arg(
        long,
        value_name = "TOPLEVEL",
        default_value = "/nix/var/nix/profiles/system"
    )]
    pub system: PathBuf,
    /// Bind the root again at DIR inside it, as nixos-install does (`/mnt`).
    #[arg(long, value_name = "DIR")]
    pub root_again_at: Option<PathBuf>,
    /// NAME=VALUE for the command's environment (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = crate::install::env_pair)]
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The command, after `--`; default: the system's shell.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

impl EnterArgs {
    /// Runs the command; returns its exit status.
    pub fn run(self) -> Result<i32, crate::install::enter::EnterError> {
        let system = system_in_root(&self.root, &self.system);
        let command = if self.command.is_empty() {
            vec![system.join("sw/bin/sh").into_os_string()]
        } else {
            self.command
        };
        crate::install::enter::Enter {
            root: self.root,
            system,
            root_again_at: self.root_again_at,
            env: self.env,
            command,
        }
        .run()
    }
}

/// `system` as a path inside `root`, its links followed there (a profile's links are
/// absolute store paths, which mean the root's store, not this machine's).
fn system_in_root(root: &std::path::Path, system: &std::path::Path) -> PathBuf {
    let mut path = system.to_owned();
    for _ in 0..16 {
        let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
        match std::fs::read_link(&inside) {
            Ok(target) if target.is_absolute() => path = target,
            Ok(target) => path = path.parent().unwrap_or(&path).join(target),
            Err(_) => break,
        }
    }
    path
}

#[derive(Debug, Args)]
pub struct FactsArgs {
    /// The target: `ssh://[user@]host[:port]` or `[user@]host`.
    #[arg(value_name = "DESTINATION")]
    pub destination: String,
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// How to reach the target over SSH, as nixos-anywhere takes it.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// Private key file to authenticate with (repeatable); also SSH_PRIVATE_KEY (key text) and
    /// a running ssh-agent.
    #[arg(short = 'i', value_name = "KEY")]
    pub identity: Vec<PathBuf>,
    /// SSH port, when the destination names none.
    #[arg(short = 'p', long = "ssh-port", value_name = "PORT")]
    pub port: Option<u16>,
    /// An ssh option as Key=Value (repeatable), winning over the config file: Port, User,
    /// IdentityFile, ProxyJump, StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout, ...
    #[arg(long = "ssh-option", short = 'o', value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Read this ssh config file instead of ~/.ssh/config, as `ssh -F`.
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Log in with the password in the environment variable SSHPASS (also fed to sudo).
    #[arg(long)]
    pub env_password: bool,
}

impl SshArgs {
    /// The target and its options, as OpenSSH would resolve `destination` (`ssh -G` with the
    /// config file, then the command line's options, which win).
    pub fn resolve(&self, destination: &str) -> Result<(Target, SshOptions), SshError> {
        let (target, mut opts) = Resolver::from_command_line(
            self.config_file.clone(),
            &self.identity,
        )
        .resolve(&self.options, &[], self.port, destination)?;
        if self.env_password {
            opts.password = Some(Password::from_env()?);
        }
        opts.ask_password = std::io::stdin().is_terminal();
        Ok((target, opts))
    }
}
