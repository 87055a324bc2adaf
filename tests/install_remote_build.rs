//! `--build-on remote`: the target's own Nix builds the system into `/mnt` over `ssh-ng`, driven
//! from here, and the install goes on from there. The target is a real sshd in a mount
//! namespace of its own (a tmpfs at `/mnt`), with Nix 2.8 configured as an installer's: it may
//! substitute from its own store at `/` (nixos-images sets `extra-substituters = /`), which holds
//! the demo system built here. The run is expected to stop at the boot loader check
//! (`demo-no-bootloader` installs none): everything before it ran on the remotely built system.
//!
//! Needs root (namespaces) and Nix 2.8, like the other Nix tests.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::sshd::Sshd;

const BIN: &str = env!("CARGO_BIN_EXE_nixos-anywhere-rs");

fn demo() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("fixtures/demo/build"))
        .arg("demo-no-bootloader")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs the install phase alone of `flake` against `sshd` (with the local Nix's settings for
/// root here), with `args` added.
fn install_only(sshd: &Sshd, flake: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("NIX_REMOTE", "local")
        .env("NIXOS_ANYWHERE_RS_AGENT", BIN)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .args(["--flake", flake, "--phases", "install"])
        .args(["--option", "build-users-group", ""])
        .args(args)
        .arg("-i")
        .arg(&sshd.client_key)
        .args(["-p", &sshd.port.to_string(), "root@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_target_builds_the_system_into_mnt_and_the_install_goes_on() {
    let top = demo();
    let sshd = Sshd::start_as_installer(
        "build-users-group =\nsandbox = false\nsubstituters = /\nrequire-sigs = false\n\
         experimental-features = nix-command flakes\n",
    );
    let flake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo#demo-no-bootloader");
    let out = install_only(
        &sshd,
        &flake.display().to_string(),
        &["--build-on", "remote", "--json", "--debug"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on the target, into /mnt") && stderr.contains(&format!("built {top}")),
        "{stderr}"
    );
    // The remote build's result passed the closure check in the target's /mnt, and the steps
    // ran up to the boot loader check.
    assert!(
        stderr.contains("[done] check that the 1 paths of the closure are valid")
            && stderr.contains("[done] set the system profile to")
            && stderr.contains("install step 7 (check that a boot loader is installed)"),
        "{stderr}"
    );
    // --debug shows the commands, local and remote.
    assert!(
        stderr.contains("remote command: ") && stderr.contains("nix --extra-experimental-features"),
        "{stderr}"
    );
    // Nothing of it reached this machine's /mnt.
    assert!(!Path::new("/mnt/nix/var/nix/profiles/system").exists());
}

/// A flake whose system is for another platform (aarch64-linux), built by a builder any
/// platform runs.
fn foreign_flake(dir: &Path) -> String {
    std::fs::write(
        dir.join("flake.nix"),
        r#"{
  outputs = _: {
    nixosConfigurations.foreign.config.system.build.toplevel = derivation {
      name = "foreign-system";
      system = "aarch64-linux";
      builder = "/bin/sh";
      args = [ "-c" "echo > $out" ];
    };
  };
}
"#,
    )
    .unwrap();
    format!("path:{}#foreign", dir.display())
}

/// `--build-on auto` (the default) builds where Nix can build for the system's platform, as
/// nixos-anywhere decides it: on the target when this machine cannot, here when the platform
/// is one of this machine's `extra-platforms` (compared whole, not as nixos-anywhere's quoted
/// glob).
#[test]
fn build_on_auto_builds_where_the_platform_can_be_built() {
    let sshd = Sshd::start_as_installer(
        "build-users-group =\nsandbox = false\nsubstituters =\nrequire-sigs = false\n\
         experimental-features = nix-command flakes\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let flake = foreign_flake(dir.path());
    let install = |extra: &[&str]| {
        let options = [
            ["--option", "sandbox", "false"],
            ["--option", "substituters", ""],
        ];
        let args: Vec<&str> = options.iter().flatten().chain(extra).copied().collect();
        let out = install_only(&sshd, &flake, &args);
        // Neither system is a NixOS one: both runs stop in the install phase.
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // This machine is x86_64-linux and cannot build for aarch64-linux: the target's Nix is
    // asked (and, being x86_64-linux too, says it cannot).
    let stderr = install(&[]);
    assert!(
        stderr.contains("--build-on auto: building aarch64-linux on the target")
            && stderr.contains("on the target, into /mnt")
            && stderr.contains("aarch64-linux"),
        "{stderr}"
    );
    assert!(!stderr.contains("streaming the closure"), "{stderr}");

    // With aarch64-linux among this machine's extra-platforms, it is built here and streamed.
    let stderr = install(&["--option", "extra-platforms", "i686-linux aarch64-linux"]);
    assert!(
        stderr.contains(
            "--build-on auto: building aarch64-linux here: aarch64-linux is one of this \
             machine's extra-platforms"
        ) && stderr.contains("streaming the closure of /nix/store/"),
        "{stderr}"
    );
}
