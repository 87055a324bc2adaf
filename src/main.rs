use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use nixos_anywhere_rs::cli::install::{Environment, InstallArgs};
use nixos_anywhere_rs::cli::{Cli, Command};
use nixos_anywhere_rs::{agent, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The install's --debug (nixos-anywhere's) shows every command, local and remote.
    let debug = cli.command.is_none() && cli.install.debug;
    let level = match cli.verbose.max(u8::from(debug)) {
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
    // Before any thread exists: entering namespaces needs a single-threaded process.
    if let Some(Command::Enter(args)) = cli.command {
        return match args.run() {
            Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(127)
            }
        };
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only once: most of our messages already quote their
/// cause, which anyhow's `{:#}` would print a second time.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn dispatch(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        return install(cli.install);
    };
    match command {
        Command::Nar(command) => command.run()?,
        Command::Copy(args) => {
            let request = args.request()?;
            let outcome = tokio::runtime::Runtime::new()?.block_on(run::copy::run(request))?;
            match (&outcome, args.json) {
                (_, true) => println!("{}", serde_json::to_string(&outcome)?),
                (run::copy::Outcome::Planned(plan), false) => eprint!("{plan}"),
                (run::copy::Outcome::Copied(summary), false) => eprintln!("{summary}"),
            }
        }
        Command::Disko(args) => args.run()?,
        Command::Facts(args) => {
            let (target, opts) = args.ssh.resolve(&args.destination)?;
            let facts =
                tokio::runtime::Runtime::new()?.block_on(run::facts::run(&target, &opts))?;
            println!("{}", serde_json::to_string_pretty(&facts)?);
        }
        Command::Agent { give_up_after } => {
            agent::run_on_stdio(give_up_after.map(Duration::from_secs))?
        }
        Command::Enter(_) => unreachable!("handled before any thread starts"),
    }
    Ok(())
}

/// `nixos-anywhere-rs [options] <ssh-host>`: the request checked whole, then its run plan.
fn install(args: InstallArgs) -> Result<()> {
    let request = args.into_request(Environment::from_process())?;
    let plan = run::install::RunPlan::new(&request);
    match (request.output.dry_run, request.output.json) {
        (true, true) => println!("{}", serde_json::to_string(&plan)?),
        _ => eprint!("{plan}"),
    }
    if request.output.dry_run {
        return Ok(());
    }
    let record = tokio::runtime::Runtime::new()?.block_on(run::phases::run(&request))?;
    if request.output.json {
        println!("{}", serde_json::to_string(&record)?);
    }
    Ok(())
}
