//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::stream::Compression;

pub mod install;

#[derive(Debug, Parser)]
#[command(
    name = "nixos-anywhere-rs",
    version,
    about = "Install NixOS anywhere over SSH, natively"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with Nix ARchives (NAR).
    #[command(subcommand)]
    Nar(NarCommand),
    /// Copy store closures to a store root, like `nix copy`.
    Copy(CopyArgs),
    /// Serve the tool on stdin/stdout (run by the tool on the target, over SSH).
    #[command(hide = true)]
    Agent {
        /// Exit when nothing arrives for this many seconds: the connection is gone.
        #[arg(long, value_name = "SECONDS")]
        give_up_after: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to standard output (byte-identical to `nix-store --dump`).
    Dump { path: PathBuf },
    /// Unpack a NAR from standard input to DEST, which must not exist (nor will it on failure).
    Restore { dest: PathBuf },
    /// Print the NAR hash of PATH as `nix hash path` does (SRI).
    Hash {
        /// Print it as `nix-hash --type sha256 --base32` does instead.
        #[arg(long)]
        base32: bool,
        path: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Where to copy: `ssh://[user@]host[:port]`, or `local` for a store root on this machine.
    #[arg(long, value_name = "ssh://[USER@]HOST[:PORT]|local")]
    pub to: String,
    /// The store root on the destination: a directory holding nix/store and nix/var/nix/db.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print a JSON summary on standard output instead of a sentence on standard error.
    #[arg(long)]
    pub json: bool,
    /// zstd level for the stream: `auto` follows the bottleneck (link or CPU), `none` sends
    /// NARs uncompressed, or a level from 1 to 19.
    #[arg(long, value_name = "auto|none|LEVEL", default_value = "auto")]
    pub compress: Compression,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Store paths (or links to them, such as ./result) whose closures are copied.
    #[arg(required = true, value_name = "STORE-PATH")]
    pub paths: Vec<PathBuf>,
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
    /// An ssh option as Key=Value (repeatable): Port, User, IdentityFile,
    /// StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout, ...
    #[arg(long = "ssh-option", short = 'o', value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}
