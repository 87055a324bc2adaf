//! nixos-anywhere's flags through the binary itself: each line runs `--dry-run --json` and the
//! printed run plan (the request and each phase's description) shows the flag's effect,
//! including the bugs of nixos-anywhere that are fixed here. Nothing is connected to.

use std::process::{Command, Stdio};

use rstest::rstest;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nixos-anywhere-rs");

fn plan(line: &str, env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("extra")).unwrap();
    let line = line.replace("@DIR", dir.path().join("extra").to_str().unwrap());
    let ca = dir.path().join("ca.pem");
    let line = if line.contains("@CA") {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=dry run CA",
                "-nodes",
            ])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .arg("-keyout")
            .arg(dir.path().join("ca.key"))
            .arg("-out")
            .arg(&ca)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl: {out:?}");
        line.replace("@CA", ca.to_str().unwrap())
    } else {
        line
    };
    let out = Command::new(BIN)
        .args(line.split_whitespace())
        .args(["--dry-run", "--json"])
        .env_remove("SSHPASS")
        .env_remove("SSH_PRIVATE_KEY")
        .env_remove("NIXOS_NO_CHECK")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn phases(plan: &Value) -> Vec<&str> {
    plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect()
}

fn does<'p>(plan: &'p Value, phase: &str) -> &'p str {
    plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == phase)
        .and_then(|p| p["does"].as_str())
        .unwrap_or_else(|| panic!("no phase {phase}"))
}

#[rstest]
#[case("--flake .#a h", &[], |p: &Value| assert_eq!(phases(p), ["kexec", "disko", "install", "reboot"]))]
#[case("--flake .#a --phases install,disko h", &[], |p: &Value| assert_eq!(phases(p), ["disko", "install"]))]
#[case("--flake .#a --stop-after-disko h", &[], |p: &Value| assert_eq!(phases(p), ["kexec", "disko"]))]
#[case("--flake .#a --no-reboot h", &[], |p: &Value| assert_eq!(phases(p), ["kexec", "disko", "install"]))]
// nixos-anywhere's --force-kexec took the next argument as its value.
#[case("--force-kexec --flake .#a h", &[], |p: &Value| {
    assert_eq!(p["request"]["kexec"]["force"], true);
    assert_eq!(p["request"]["source"]["attr"], "nixosConfigurations.\"a\".config");
})]
// nixos-anywhere ignored --post-kexec-ssh-port without -p.
#[case("--flake .#a --post-kexec-ssh-port 2200 h", &[], |p: &Value| assert_eq!(p["request"]["target"]["after_kexec"]["port"], 2200))]
// --ssh-option wins over the defaults (nixos-anywhere #552).
#[case("--flake .#a --ssh-option UserKnownHostsFile=/k h", &[], |p: &Value| assert_eq!(p["request"]["target"]["options"][0], "UserKnownHostsFile=/k"))]
// NIXOS_NO_CHECK reaches switch-to-configuration (nixos-anywhere meant to and did not).
#[case("--flake .#a h", &[("NIXOS_NO_CHECK", "1")], |p: &Value| assert_eq!(p["request"]["nixos_no_check"], "1"))]
#[case("--flake .#a --disko-mode format,mount h", &[], |p: &Value| assert!(does(p, "disko").contains("format,mount"), "{}", does(p, "disko")))]
#[case("--flake .#a --disko-mode mount h", &[], |p: &Value| assert!(does(p, "disko").contains("\"mount\""), "{}", does(p, "disko")))]
#[case("--flake .#a --build-on remote h", &[], |p: &Value| assert!(does(p, "install").contains("with the target's Nix"), "{}", does(p, "install")))]
#[case("--flake .#a h", &[], |p: &Value| assert!(does(p, "install").contains("stream the closure") && does(p, "install").contains("--build-on auto"), "{}", does(p, "install")))]
#[case("--flake .#a --build-on local h", &[], |p: &Value| assert!(!does(p, "install").contains("target's Nix"), "{}", does(p, "install")))]
#[case("--flake .#a --from file:///cache h", &[], |p: &Value| assert_eq!(p["request"]["build"]["from"], "file:///cache"))]
#[case("--flake .#a --disk-encryption-keys /tmp/k /dev/null h", &[], |p: &Value| assert!(does(p, "disko").contains("1 disk-encryption key"), "{}", does(p, "disko")))]
#[case("--flake .#a --reboot-deadline 90s h", &[], |p: &Value| assert!(does(p, "reboot").contains("90 s"), "{}", does(p, "reboot")))]
#[case("--flake .#a --extra-files @DIR --chown /srv 1:1 --copy-host-keys h", &[], |p: &Value| {
    assert!(p["request"]["extra_files"].as_str().unwrap().ends_with("/extra"));
    assert_eq!(p["request"]["chown"][0]["path"], "srv");
    assert_eq!(p["request"]["copy_host_keys"], true);
})]
#[case("--flake .#a --debug h", &[], |p: &Value| assert_eq!((p["request"]["output"]["debug"].as_bool(), p["request"]["build"]["print_build_logs"].as_bool()), (Some(true), Some(true))))]
#[case("--flake .#a --env-password h", &[("SSHPASS", "hunter2")], |p: &Value| {
    assert_eq!(p["request"]["target"]["password"], "<redacted>");
    assert!(!p.to_string().contains("hunter2"));
})]
// The plan names the CA file; its certificates travel in the substitution request only.
#[case("--flake .#a --ssl-cert-file @CA h", &[], |p: &Value| {
    let file = p["request"]["substitution"]["ssl_cert_file"].as_str().unwrap();
    assert!(file.ends_with("/ca.pem"), "{file}");
    assert!(!p.to_string().contains("BEGIN CERTIFICATE"));
})]
fn each_flag_shows_in_the_plan(
    #[case] line: &str,
    #[case] env: &[(&str, &str)],
    #[case] check: fn(&Value),
) {
    check(&plan(line, env));
}
