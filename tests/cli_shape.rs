//! The install flags in the shape `main.rs` will give them: beside the subcommands, listed by
//! `--help`, none sharing a name; and the environment variables nixos-anywhere reads.

mod cli_support;

use std::collections::HashSet;

use clap::CommandFactory;
use cli_support::{Cli, Sub, env_lock, files, request_with};
use nixos_anywhere_rs::cli::install::Environment;

/// Every flag of nixos-anywhere (reference §A, its usage text, and --force-kexec and
/// --post-kexec-ssh-host from its main branch and PR #627), then ours.
const NIXOS_ANYWHERE_FLAGS: &[&str] = &[
    "-f",
    "--flake",
    "--target-host",
    "-i",
    "-p",
    "--ssh-port",
    "--ssh-option",
    "-L",
    "--print-build-logs",
    "--env-password",
    "-s",
    "--store-paths",
    "--kexec",
    "--force-kexec",
    "--kexec-extra-flags",
    "--ssh-store-setting",
    "--post-kexec-ssh-port",
    "--post-kexec-ssh-host",
    "--copy-host-keys",
    "--extra-files",
    "--chown",
    "--disk-encryption-keys",
    "--no-substitute-on-destination",
    "--no-use-machine-substituters",
    "--debug",
    "--show-trace",
    "--option",
    "--from",
    "--build-on-remote",
    "--vm-test",
    "--generate-hardware-config",
    "--phases",
    "--disko-mode",
    "--no-disko-deps",
    "--build-on",
    "-t",
    "--tty",
    "--stop-after-disko",
    "--no-reboot",
    "--help",
];
const OUR_FLAGS: &[&str] = &[
    "-F",
    "--ssh-config",
    "-o",
    "--dry-run",
    "--json",
    "--substituters",
    "--extra-substituters",
    "--trusted-public-keys",
    "--ssl-cert-file",
    "--agent",
    "--kexec-deadline",
    "--connect-deadline",
    "--reboot-deadline",
];

#[test]
fn help_lists_every_flag_grouped() {
    let help = Cli::command().render_long_help().to_string();
    for flag in NIXOS_ANYWHERE_FLAGS.iter().chain(OUR_FLAGS) {
        // A flag is listed where its line starts with it, or after a short form ("-f, --flake").
        let listed = help.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("{flag} "))
                || l.starts_with(&format!("{flag},"))
                || l == *flag
                || l.contains(&format!(", {flag} "))
                || l.ends_with(&format!(", {flag}"))
        });
        assert!(listed, "--help does not list {flag}:\n{help}");
    }
    // And no argument of the command is missing from it either.
    let cmd = Cli::command();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            assert!(help.contains(&format!("--{long}")), "--help lacks --{long}");
        }
    }
    for heading in [
        "Target (SSH):",
        "What to install:",
        "Phases and disks:",
        "Kexec:",
        "Installed files:",
        "Building and copying:",
        "Substitution on the target:",
        "Output:",
        "Deprecated (accepted with a warning):",
    ] {
        assert!(help.contains(heading), "--help has no group {heading}");
    }
    for var in ["SSHPASS", "SSH_PRIVATE_KEY", "NIXOS_NO_CHECK"] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    // The <ssh-host> positional and the two-value flags show their value names.
    for shown in [
        "[SSH-HOST]...",
        "--store-paths <DISKO> <SYSTEM>",
        "--disk-encryption-keys <REMOTE> <LOCAL>",
        "--chown <PATH> <OWNER>",
        "--ssh-store-setting <KEY> <VALUE>",
        "--option <KEY> <VALUE>",
        "--generate-hardware-config <BACKEND> <PATH>",
    ] {
        assert!(help.contains(shown), "--help lacks {shown:?}:\n{help}");
    }
}

/// clap checks this only in debug builds; the suite runs release builds, so check it here.
#[test]
fn no_two_flags_share_a_name() {
    let mut cmd = Cli::command();
    cmd.build();
    let (mut shorts, mut longs) = (HashSet::new(), HashSet::new());
    for arg in cmd.get_arguments() {
        if let Some(s) = arg.get_short() {
            assert!(shorts.insert(s), "-{s} is used twice");
        }
        if let Some(l) = arg.get_long() {
            assert!(longs.insert(l.to_owned()), "--{l} is used twice");
        }
    }
}

#[test]
fn the_install_and_the_subcommands_both_parse() {
    use clap::Parser;
    let cli = Cli::try_parse_from(["nixos-anywhere-rs", "--flake", ".#x", "root@h"]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.install.flake.as_deref(), Some(".#x"));
    assert_eq!(cli.install.ssh_host, ["root@h"]);

    let cli = Cli::try_parse_from(["nixos-anywhere-rs", "copy", "--to", "local", "/nix/store/x"])
        .unwrap();
    let Some(Sub::Copy(copy)) = cli.command else {
        panic!("copy is a subcommand");
    };
    assert_eq!(copy.to, "local");

    // After an install flag a word is a host, even one spelt like a subcommand.
    let cli = Cli::try_parse_from(["nixos-anywhere-rs", "-v", "--flake", ".#x", "copy"]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(
        (cli.verbose, cli.install.ssh_host.as_slice()),
        (1, &["copy".to_owned()][..])
    );

    // args_override_self (the last of a repeated flag wins, as in nixos-anywhere) leaves the
    // counting -v alone.
    let cli =
        Cli::try_parse_from(["nixos-anywhere-rs", "-v", "-v", "-p", "1", "-p", "2", "h"]).unwrap();
    assert_eq!((cli.verbose, cli.install.ssh_port), (2, Some(2)));

    // An install flag after the subcommand is the subcommand's problem, not silently an install.
    assert!(Cli::try_parse_from(["nixos-anywhere-rs", "copy", "--flake", ".#x"]).is_err());
}

/// Sets `vars` (None: unset), reads the environment as the install does, restores it.
fn environment(vars: &[(&str, Option<&str>)]) -> Environment {
    files(); // Made before the lock: making it reads TMPDIR.
    let _env = env_lock();
    let saved: Vec<_> = vars
        .iter()
        .map(|(k, _)| (*k, std::env::var_os(k)))
        .collect();
    for (k, v) in vars {
        // SAFETY: every reader of the environment in this test binary holds env_lock.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    let env = Environment::from_process();
    for (k, old) in saved {
        // SAFETY: as above.
        unsafe {
            match old {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    env
}

fn args(line: &str) -> Vec<String> {
    cli_support::words(line)
}

#[test]
fn sshpass_is_read_with_env_password_only_and_never_printed() {
    let env = || environment(&[("SSHPASS", Some("pa55-w0rd"))]);
    let r = request_with(&args("--flake .#a --env-password h"), env()).unwrap();
    let ssh = r.target.as_ref().unwrap();
    assert_eq!(ssh.password.as_ref().unwrap().expose(), b"pa55-w0rd");
    let json = serde_json::to_string(&r).unwrap();
    let debug = format!("{r:?}");
    assert!(
        !json.contains("pa55") && !debug.contains("pa55"),
        "{json}\n{debug}"
    );
    assert!(json.contains("\"password\":\"<redacted>\""), "{json}");

    // Without --env-password it is not used, as in nixos-anywhere.
    let r = request_with(&args("--flake .#a h"), env()).unwrap();
    assert!(r.target.unwrap().password.is_none());

    // Unset or empty: --env-password is refused before anything runs.
    for unset in [None, Some("")] {
        let e = request_with(
            &args("--flake .#a --env-password h"),
            environment(&[("SSHPASS", unset)]),
        )
        .unwrap_err();
        assert!(e.contains("SSHPASS is not set"), "{e}");
    }
}

#[test]
fn ssh_private_key_is_used_without_i_only() {
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-text\n";
    let env = || environment(&[("SSH_PRIVATE_KEY", Some(key))]);
    let r = request_with(&args("--flake .#a h"), env()).unwrap();
    let ssh = r.target.as_ref().unwrap();
    assert_eq!(ssh.private_key.as_ref().unwrap().expose(), key.as_bytes());
    assert!(
        !serde_json::to_string(&r)
            .unwrap()
            .contains("secret-key-text")
    );
    assert!(!format!("{r:?}").contains("secret-key-text"));

    let r = request_with(&args("--flake .#a -i @ID h"), env()).unwrap();
    assert!(
        r.target.unwrap().private_key.is_none(),
        "-i wins, as in nixos-anywhere"
    );

    let r = request_with(
        &args("--flake .#a h"),
        environment(&[("SSH_PRIVATE_KEY", None)]),
    )
    .unwrap();
    assert!(r.target.unwrap().private_key.is_none());
}

/// nixos-anywhere meant to pass NIXOS_NO_CHECK on and does not (§A); here it is in the
/// request, set or not, even when set to the empty string.
#[test]
fn nixos_no_check_is_passed_on() {
    for (value, expected) in [(Some("1"), Some("1")), (Some(""), Some("")), (None, None)] {
        let env = environment(&[("NIXOS_NO_CHECK", value)]);
        let r = request_with(&args("--flake .#a h"), env).unwrap();
        assert_eq!(r.nixos_no_check.as_deref(), expected);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nixos_no_check"].as_str(), expected);
    }
}
