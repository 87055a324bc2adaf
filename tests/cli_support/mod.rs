//! What the command-line tests share: a top-level parser shaped as `main.rs` will have it
//! (the install flags flattened beside the subcommands), real files for the flags that name
//! files, and one lock for the process environment.

#![allow(dead_code)] // Each test crate uses a different part.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use clap::{Parser, Subcommand};
use nixos_anywhere_rs::cli::CopyArgs;
use nixos_anywhere_rs::cli::install::{Environment, InstallArgs, InstallRequest};

/// `nixos-anywhere-rs [options] [<ssh-host>]` beside `nixos-anywhere-rs copy ...`.
#[derive(Debug, Parser)]
#[command(name = "nixos-anywhere-rs", args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub install: InstallArgs,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Copy store closures, like `nix copy`.
    Copy(CopyArgs),
}

/// Real files and directories for the flags that must name existing ones.
pub struct Files {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// A store path added to the real store with `nix-store --add`.
    pub system: String,
}

impl Files {
    /// Replaces each `@NAME` in `arg` by the fixture of that name.
    pub fn expand(&self, arg: &str) -> String {
        let mut out = arg.to_owned();
        // Longest names first, so that @KEY does not eat the start of @KEY2.
        for (token, path) in [
            (
                "@SYSTEMLINK",
                self.root.join("result").display().to_string(),
            ),
            ("@SYSTEM", self.system.clone()),
            ("@GARBAGE", self.path("garbage").display().to_string()),
            ("@SCRIPT", self.path("disko-script").display().to_string()),
            ("@CONFIG", self.path("ssh_config").display().to_string()),
            ("@AGENT", self.path("agent").display().to_string()),
            ("@WEIRD", self.path("installer.img").display().to_string()),
            ("@JSON", self.path("layout.json").display().to_string()),
            ("@KEY2", self.path("key2").display().to_string()),
            ("@KEY", self.path("key").display().to_string()),
            ("@DIR", self.path("extra").display().to_string()),
            ("@ID2", self.path("id2").display().to_string()),
            ("@ID", self.path("id").display().to_string()),
            ("@XZ", self.path("kexec.tar.xz").display().to_string()),
            ("@KH", self.path("known_hosts").display().to_string()),
            ("@CA", self.path("ca.pem").display().to_string()),
            ("@ROOT", self.root.display().to_string()),
        ] {
            out = out.replace(token, &path);
        }
        out
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

pub fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        // tempfile reads TMPDIR: not while a test changes the environment.
        let _env = env_lock();
        let dir = tempfile::Builder::new()
            .prefix("nixos-anywhere-rs-cli-")
            .tempdir()
            .expect("a temporary directory");
        // Canonical, so that what the conversion canonicalises compares equal.
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let write = |name: &str, text: &str| std::fs::write(root.join(name), text).unwrap();
        write("key", "secret-key-1\n");
        write("key2", "secret-key-2\n");
        write("layout.json", "  {\"disk\": {}}\n");
        write("disko-script", "#!/bin/sh\necho disko\n");
        write("garbage", "this is neither\n");
        write("ssh_config", "Host demo\n  HostName 127.0.0.1\n");
        write("id", "not really a key\n");
        write("id2", "not really a key either\n");
        write("kexec.tar.xz", "");
        write("installer.img", "");
        write("known_hosts", "");
        write("agent", "#!/bin/sh\n");
        std::fs::set_permissions(root.join("agent"), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(root.join("extra")).unwrap();
        self_signed_ca(&root.join("ca.pem"));
        let system = add_to_store(&root);
        std::os::unix::fs::symlink(&system, root.join("result")).unwrap();
        Files {
            _dir: dir,
            root,
            system,
        }
    })
}

/// A CA certificate made with openssl, at `pem` (its key beside it).
pub fn self_signed_ca(pem: &Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=cli test CA",
            "-nodes",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(pem.with_extension("key"))
        .arg("-out")
        .arg(pem)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl req: {out:?}");
}

/// A small directory added to the local store, standing in for a system toplevel.
fn add_to_store(scratch: &Path) -> String {
    let tree = scratch.join("cli-test-system");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("nixos-version"), "25.11\n").unwrap();
    let out = Command::new("nix-store")
        .env("NIX_REMOTE", "local")
        .arg("--add")
        .arg(&tree)
        .output()
        .expect("nix-store runs");
    assert!(out.status.success(), "nix-store --add: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The environment is one per process: tests that read or change it take this first.
pub fn env_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Splits `line` on whitespace and expands the fixtures' `@NAME`s.
pub fn words(line: &str) -> Vec<String> {
    let f = files();
    line.split_whitespace().map(|w| f.expand(w)).collect()
}

/// Parses the words as the top-level command line and converts the install flags, with
/// `env` for the environment. Errors come back as text, clap's or ours.
pub fn request_with(args: &[String], env: Environment) -> Result<InstallRequest, String> {
    // The conversion reads HOME (for ~ in options): never while a test changes the environment.
    let _env = env_lock();
    let cli = Cli::try_parse_from(
        std::iter::once("nixos-anywhere-rs".to_owned()).chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())?;
    assert!(cli.command.is_none(), "{args:?} parsed as a subcommand");
    cli.install.into_request(env).map_err(|e| e.to_string())
}

/// [`request_with`] with an empty environment.
pub fn request(line: &str) -> Result<InstallRequest, String> {
    request_with(&words(line), Environment::default())
}
