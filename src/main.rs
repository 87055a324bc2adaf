use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nixos_anywhere_rs::agent::GiveUp;
use nixos_anywhere_rs::cli::{Cli, Command, CopyArgs, NarCommand, SshArgs};
use nixos_anywhere_rs::copy;
use nixos_anywhere_rs::nar::{self, Canonical, NarReader};
use nixos_anywhere_rs::ssh::{SshOptions, Target};
use nixos_anywhere_rs::store::{self, StorePath};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        // russh's client logs an error for every packet size over 64 KiB, which we choose on
        // purpose (src/ssh); its real failures reach us as errors anyway.
        0 => "info,russh::client=off",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Nar(NarCommand::Dump { path }) => {
            let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            nar::dump(&path, &mut out)?;
            out.flush()?;
        }
        Command::Nar(NarCommand::Restore { dest }) => {
            let mut reader = NarReader::new(BufReader::with_capacity(1 << 20, io::stdin().lock()));
            nar::restore(&mut reader, &dest, Canonical::No)?;
            if let Err(e) = reader.finish_at_eof() {
                // Best effort: the archive's own error is what the user needs to see.
                let _ = std::fs::remove_dir_all(&dest).or_else(|_| std::fs::remove_file(&dest));
                return Err(e.into());
            }
        }
        Command::Nar(NarCommand::Hash { base32, path }) => {
            let (hash, _) = nar::dump_hash(&path)?;
            println!(
                "{}",
                if base32 {
                    hash.to_nix32()
                } else {
                    hash.to_sri()
                }
            );
        }
        Command::Copy(args) => copy_command(args)?,
        Command::Agent { give_up_after } => {
            // Marks this build's file as in use, so that another build's upload leaves it be.
            if let Ok(exe) = std::env::current_exe() {
                let _ = File::open(exe).and_then(|f| f.set_modified(SystemTime::now()));
            }
            // The raw descriptors: the agent buffers by itself, and reads on its own thread.
            let stdin = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
            // sshd writes the channel into this pipe 32 KiB at a time; a deeper pipe means
            // fewer wake-ups on both sides (best effort: it may be a socket, or the limit lower).
            let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 1 << 20);
            let stdout = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
            let stdout = BufWriter::new(stdout);
            match give_up_after {
                Some(secs) => {
                    let stdin = GiveUp::after(stdin, Duration::from_secs(secs));
                    nixos_anywhere_rs::agent::serve(stdin, stdout)?
                }
                None => nixos_anywhere_rs::agent::serve(stdin, stdout)?,
            }
        }
    }
    Ok(())
}

fn copy_command(args: CopyArgs) -> Result<()> {
    let paths = args
        .paths
        .iter()
        .map(|p| resolve_store_path(p))
        .collect::<Result<Vec<_>>>()?;
    let closure = store::query_closure(&paths)?;
    let summary = match args.to.as_str() {
        "local" => copy::copy_to_local(closure, &args.root)?,
        dest if dest.starts_with("ssh://") => {
            let opts = ssh_options(&args.ssh)?;
            let target = Target::parse_with(dest, &opts)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(copy::copy_over_ssh(
                closure,
                &target,
                &opts,
                &args.root,
                args.compress,
            ))?
        }
        other => bail!(
            "unsupported destination {other:?}: use `--to ssh://[user@]host[:port]` or `--to local`"
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}

/// SSH options as `ssh` would take them from the environment, then the command line.
fn ssh_options(args: &SshArgs) -> Result<SshOptions> {
    let mut opts = SshOptions::from_env();
    opts.identity_files.extend(args.identity.iter().cloned());
    if args.port.is_some() {
        opts.port = args.port;
    }
    for option in &args.options {
        opts.set_option(option)?;
    }
    Ok(opts)
}

/// Accepts a store path, a path below one, or a link to one (`./result`).
fn resolve_store_path(arg: &Path) -> Result<StorePath> {
    let text = arg.to_string_lossy();
    if let Ok(path) = StorePath::parse(&text) {
        return Ok(path);
    }
    let real = std::fs::canonicalize(arg).with_context(|| format!("{}", arg.display()))?;
    let real = real.to_string_lossy();
    let base = real
        .strip_prefix(store::STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("{} is not in {}", arg.display(), store::STORE_DIR))?;
    Ok(StorePath::from_base_name(base)?)
}
