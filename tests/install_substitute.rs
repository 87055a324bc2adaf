//! The install substitutes by default: the target (a real sshd in a mount namespace of its own
//! standing in for an installer, its `nix.conf` naming only the test's cache on this machine's
//! 127.0.0.1) fetches what the cache holds of the system's closure while the rest is streamed,
//! and `--no-substitute-on-destination` streams it all. The demo system installs no boot
//! loader, so both runs stop at the boot loader check, after the closure is in `/mnt`.
//!
//! Needs root (namespaces) and Nix 2.8, like the other Nix tests.

mod nix_oracle;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use nix_oracle::{nix, nix_store, run};
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

/// The install phase alone of the demo flake against `sshd`, built here, with `args` added.
fn install_only(sshd: &Sshd, args: &[&str]) -> Output {
    let flake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo#demo-no-bootloader");
    Command::new(BIN)
        .env("NIX_REMOTE", "local")
        .env("NIXOS_ANYWHERE_RS_AGENT", BIN)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .arg("--flake")
        .arg(flake)
        .args(["--phases", "install", "--build-on", "local"])
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
fn the_install_substitutes_from_the_installers_caches_unless_told_not_to() {
    let top = demo();
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = (dir.path().join("key.sec"), dir.path().join("key.pub"));
    run(nix_store()
        .args(["--generate-binary-cache-key", "install-test-1"])
        .args([&secret, &public]));
    let key = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    // Everything but the system itself, as a cache holds what was built before.
    let refs = run(nix_store().args(["-q", "--references", &top]));
    let refs: Vec<&str> = std::str::from_utf8(&refs)
        .unwrap()
        .lines()
        .filter(|l| *l != top)
        .collect();
    assert!(!refs.is_empty());
    let cache = dir.path().join("cache");
    run(nix()
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression=zstd&secret-key={}",
            cache.display(),
            secret.display()
        ))
        .args(["--option", "build-users-group", ""])
        .args(&refs));
    let mut server = Command::new("python3")
        .arg(nix_oracle::repo().join("tests/substitute_server.py"))
        .arg(&cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("http://127.0.0.1:{}", port.trim());
    let conf = format!(
        "build-users-group =\nsubstituters = {url}\ntrusted-public-keys = {key}\n\
         experimental-features = nix-command flakes\n"
    );

    let sshd = Sshd::start_as_installer(&conf);
    let out = install_only(&sshd, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the target fetched") && stderr.contains(&format!("from {url}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("install step 7 (check that a boot loader is installed)"),
        "{stderr}"
    );

    // A fresh installer, told not to substitute: all of it streamed.
    let sshd = Sshd::start_as_installer(&conf);
    let out = install_only(&sshd, &["--no-substitute-on-destination"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("streaming the closure"), "{stderr}");
    assert!(!stderr.contains("the target fetched"), "{stderr}");
    assert!(
        stderr.contains("install step 7 (check that a boot loader is installed)"),
        "{stderr}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
