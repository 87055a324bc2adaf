//! Each nixos-anywhere flag, each of ours, each deprecated alias and each fixed bug, run through
//! the top-level parser into the install request; then every combination refused.

mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::{files, request};
use nixos_anywhere_rs::cli::install::*;
use nixos_anywhere_rs::ssh::{SshOptions, StrictHostKeyChecking};
use rstest::rstest;

const BASE: &str = "--flake .#demo root@h";

fn ssh(r: &InstallRequest) -> &SshSettings {
    r.target.as_ref().expect("a target")
}

fn phases(r: &InstallRequest) -> Vec<Phase> {
    r.phases.iter().copied().collect()
}

fn fixture(name: &str) -> PathBuf {
    files().path(name)
}

#[rstest]
// Defaults: what nixos-anywhere does with a flake and a host alone.
#[case(BASE, |r: &InstallRequest| {
    assert_eq!(r.source, Source::Flake { flake: ".".into(), attr: "nixosConfigurations.\"demo\".config".into() });
    assert_eq!(phases(r), Phase::ALL);
    assert_eq!(r.disko, Disko { mode: DiskoMode::Disko, deps: true });
    let s = ssh(r);
    assert_eq!((s.user.as_deref(), s.host.as_str(), s.port), (Some("root"), "h", None));
    assert_eq!(s.after_kexec, Reconnect { user: "root".into(), host: "h".into(), port: None });
    assert_eq!(s.connect_deadline_secs, 600);
    assert_eq!(r.kexec, Kexec { image: KexecImage::Default, force: false, extra_flags: String::new(), deadline_secs: 600, new_host_key: false });
    assert!(r.substitution.on_destination && r.substitution.use_machine_substituters);
    assert_eq!(r.build.on, BuildOn::Auto);
    assert_eq!(r.build.ssh_store_settings, [KeyValue { key: "compress".into(), value: "true".into() }]);
    assert!(r.warnings.is_empty() && !r.vm_test && r.nixos_no_check.is_none());
    assert_eq!(r.source.installable("system.build.toplevel").unwrap(),
               ".#nixosConfigurations.\"demo\".config.system.build.toplevel");
})]
// --flake: a fragment starting with nixosConfigurations. is used as given; the last # splits.
#[case("-f .#nixosConfigurations.demo.config.virtualisation.vmVariant h", |r: &InstallRequest| {
    assert_eq!(r.source, Source::Flake { flake: ".".into(), attr: "nixosConfigurations.demo.config.virtualisation.vmVariant".into() });
    assert_eq!(ssh(r).user, None);
})]
#[case("--flake path:/x#a#b h", |r: &InstallRequest| assert_eq!(r.source, Source::Flake { flake: "path:/x#a".into(), attr: "nixosConfigurations.\"b\".config".into() }))]
// The last of a repeated single-value flag wins, as in nixos-anywhere's loop.
#[case("--flake .#a --flake .#b h", |r: &InstallRequest| assert!(matches!(&r.source, Source::Flake { attr, .. } if attr.contains("\"b\""))))]
// --store-paths: a layout JSON or a disko script, and the system (links resolved).
#[case("--store-paths @JSON @SYSTEM h", |r: &InstallRequest| {
    let Source::StorePaths { layout, system } = &r.source else { panic!() };
    assert_eq!(layout, &Layout::Json(fixture("layout.json")));
    assert_eq!(system.to_absolute(), files().system);
    assert!(!r.substitution.use_machine_substituters, "machine substituters are a flake thing");
})]
#[case("-s @SCRIPT @SYSTEMLINK h", |r: &InstallRequest| {
    let Source::StorePaths { layout, system } = &r.source else { panic!() };
    assert_eq!(layout, &Layout::DiskoScript(fixture("disko-script")));
    assert_eq!(system.to_absolute(), files().system);
})]
// The destination: positional or --target-host; user, port, IPv6.
#[case("--flake .#a --target-host me@h:2222", |r: &InstallRequest| {
    let s = ssh(r);
    assert_eq!((s.destination.as_str(), s.user.as_deref(), s.host.as_str(), s.port), ("me@h:2222", Some("me"), "h", Some(2222)));
})]
#[case("--flake .#a ssh://me@[::1]:2222", |r: &InstallRequest| assert_eq!((ssh(r).host.as_str(), ssh(r).port), ("::1", Some(2222))))]
// -p: and after kexec nixos-anywhere puts its default 22 in -p's place.
#[case("--flake .#a -p 2222 h", |r: &InstallRequest| assert_eq!((ssh(r).port, ssh(r).after_kexec.port), (Some(2222), Some(22))))]
#[case("--flake .#a --ssh-port 2222 --post-kexec-ssh-port 2200 h", |r: &InstallRequest| assert_eq!(ssh(r).after_kexec.port, Some(2200)))]
// Fixed: --post-kexec-ssh-port applies without -p too.
#[case("--flake .#a --post-kexec-ssh-port 2200 h", |r: &InstallRequest| assert_eq!((ssh(r).port, ssh(r).after_kexec.port), (None, Some(2200))))]
#[case("--flake .#a --post-kexec-ssh-host fe80::1%eth0 me@h", |r: &InstallRequest| {
    assert_eq!(ssh(r).after_kexec, Reconnect { user: "root".into(), host: "fe80::1%eth0".into(), port: None });
})]
#[case("--flake .#a --post-kexec-ssh-host [fe80::1%eth0] h", |r: &InstallRequest| assert_eq!(ssh(r).after_kexec.host, "fe80::1%eth0"))]
// Fixed (#552): --ssh-option wins over the defaults (no known_hosts, StrictHostKeyChecking=no).
#[case("--flake .#a --ssh-option UserKnownHostsFile=@KH --ssh-option StrictHostKeyChecking=yes h", |r: &InstallRequest| {
    let s = ssh(r);
    assert_eq!(s.options.len(), 2);
    let mut opts = SshOptions::default();
    assert_eq!(opts.strict_host_key_checking, StrictHostKeyChecking::No);
    s.apply_to(&mut opts).unwrap();
    assert_eq!(opts.known_hosts, [fixture("known_hosts")]);
    assert_eq!(opts.strict_host_key_checking, StrictHostKeyChecking::Yes);
})]
#[case("--flake .#a -o Port=2200 -p 2222 h", |r: &InstallRequest| {
    let mut opts = SshOptions::default();
    ssh(r).apply_to(&mut opts).unwrap();
    assert_eq!(opts.port, Some(2200), "an option given wins over -p, as with `copy`");
})]
#[case("--flake .#a -i @ID -i @ID2 h", |r: &InstallRequest| assert_eq!(ssh(r).identity_files, [fixture("id"), fixture("id2")]))]
#[case("--flake .#a -F @CONFIG demo", |r: &InstallRequest| assert_eq!(ssh(r).config_file.as_deref(), Some(fixture("ssh_config").as_path())))]
#[case("--flake .#a --ssh-config @CONFIG demo", |r: &InstallRequest| assert!(ssh(r).config_file.is_some()))]
#[case("--flake .#a --connect-deadline 5m h", |r: &InstallRequest| assert_eq!(ssh(r).connect_deadline_secs, 300))]
// --phases: a set, in the fixed order, whatever order it is given in.
#[case("--flake .#a --phases kexec,disko h", |r: &InstallRequest| assert_eq!(phases(r), [Phase::Kexec, Phase::Disko]))]
#[case("--flake .#a --phases reboot,install,install h", |r: &InstallRequest| assert_eq!(phases(r), [Phase::Install, Phase::Reboot]))]
#[case("--flake .#a --phases disko, h", |r: &InstallRequest| assert_eq!(phases(r), [Phase::Disko]))]
// Deprecated aliases, each with its warning.
#[case("--flake .#a --stop-after-disko h", |r: &InstallRequest| {
    assert_eq!(phases(r), [Phase::Kexec, Phase::Disko]);
    assert_eq!(r.warnings, ["--stop-after-disko is deprecated, use --phases kexec,disko instead"]);
})]
#[case("--flake .#a --no-reboot h", |r: &InstallRequest| {
    assert_eq!(phases(r), [Phase::Kexec, Phase::Disko, Phase::Install]);
    assert!(r.warnings[0].contains("--no-reboot is deprecated"));
})]
#[case("--flake .#a -t h", |r: &InstallRequest| assert!(r.warnings[0].contains("--tty flag is deprecated")))]
#[case("--flake .#a --tty h", |r: &InstallRequest| { assert_eq!(r.warnings.len(), 1); assert_eq!(phases(r), Phase::ALL); })]
#[case("--flake .#a --build-on-remote h", |r: &InstallRequest| {
    assert_eq!(r.build.on, BuildOn::Remote);
    assert!(r.warnings[0].contains("--build-on-remote is deprecated"));
})]
#[case("--flake .#a --build-on-remote --build-on remote h", |r: &InstallRequest| assert_eq!(r.build.on, BuildOn::Remote))]
#[case("--flake .#a --build-on local h", |r: &InstallRequest| assert_eq!(r.build.on, BuildOn::Local))]
#[case("--flake .#a --build-on remote h", |r: &InstallRequest| assert_eq!(r.build.on, BuildOn::Remote))]
// --disko-mode, including format,mount (#622) and disko's long spelling.
#[case("--flake .#a --disko-mode mount h", |r: &InstallRequest| assert_eq!(r.disko.mode, DiskoMode::Mount))]
#[case("--flake .#a --disko-mode format h", |r: &InstallRequest| assert_eq!(r.disko.mode, DiskoMode::Format))]
#[case("--flake .#a --disko-mode format,mount h", |r: &InstallRequest| {
    assert_eq!(r.disko.mode, DiskoMode::FormatMount);
    assert!(r.disko.mode.formats() && r.disko.mode.mounts() && !r.disko.mode.destroys());
})]
#[case("--flake .#a --disko-mode destroy,format,mount h", |r: &InstallRequest| assert_eq!(r.disko.mode, DiskoMode::Disko))]
#[case("--flake .#a --no-disko-deps h", |r: &InstallRequest| {
    assert!(!r.disko.deps);
    assert_eq!(r.disko.mode.disko_attrs(r.disko.deps), ["diskoScriptNoDeps"]);
})]
// Kexec.
#[case("--flake .#a --kexec @XZ h", |r: &InstallRequest| assert_eq!(r.kexec.image, KexecImage::File { path: fixture("kexec.tar.xz"), format: TarFormat::Xz }))]
#[case("--flake .#a --kexec @WEIRD h", |r: &InstallRequest| assert!(matches!(r.kexec.image, KexecImage::File { format: TarFormat::Sniff, .. })))]
#[case("--flake .#a --kexec https://example.org/dl/installer.tar.zst?x=1 h", |r: &InstallRequest| {
    assert_eq!(r.kexec.image, KexecImage::Url { url: "https://example.org/dl/installer.tar.zst?x=1".into(), format: TarFormat::Zstd });
})]
// Fixed: --force-kexec does not eat the argument after it.
#[case("--force-kexec --flake .#a h", |r: &InstallRequest| {
    assert!(r.kexec.force);
    assert!(matches!(&r.source, Source::Flake { attr, .. } if attr.contains("\"a\"")));
    assert_eq!(ssh(r).host, "h");
})]
#[case("--flake .#a --kexec-extra-flags --no-sync h", |r: &InstallRequest| assert_eq!(r.kexec.extra_flags, "--no-sync"))]
#[case("--flake .#a --kexec-deadline 90s h", |r: &InstallRequest| assert_eq!(r.kexec.deadline_secs, 90))]
#[case("--flake .#a --generate-hardware-config nixos-facter @ROOT/hw/facter.json h", |r: &InstallRequest| {
    assert_eq!(r.hardware_config, Some(HardwareConfig { backend: HardwareBackend::NixosFacter, path: fixture("hw/facter.json") }));
})]
#[case("--flake .#a --generate-hardware-config nixos-generate-config hw.nix h", |r: &InstallRequest| {
    let hw = r.hardware_config.as_ref().unwrap();
    assert_eq!(hw.backend, HardwareBackend::NixosGenerateConfig);
    assert!(hw.path.is_absolute() && hw.path.ends_with("hw.nix"));
})]
// Files into the installed system.
#[case("--flake .#a --extra-files @DIR --chown /home/u 1000:100 --chown etc/x root --chown home/u 1001:100 h", |r: &InstallRequest| {
    assert_eq!(r.extra_files.as_deref(), Some(fixture("extra").as_path()));
    assert_eq!(r.chown, [
        Chown { path: "home/u".into(), owner: "1001:100".into() },
        Chown { path: "etc/x".into(), owner: "root".into() },
    ]);
})]
#[case("--flake .#a --copy-host-keys h", |r: &InstallRequest| assert!(r.copy_host_keys))]
#[case("--flake .#a --disk-encryption-keys /tmp/a @KEY --disk-encryption-keys /tmp/b @KEY2 h", |r: &InstallRequest| {
    assert_eq!(r.disk_encryption_keys, [
        EncryptionKey { remote: "/tmp/a".into(), local: fixture("key") },
        EncryptionKey { remote: "/tmp/b".into(), local: fixture("key2") },
    ]);
})]
#[case("--flake .#a --disk-encryption-keys /tmp/a @KEY --disk-encryption-keys /tmp/a @KEY2 h", |r: &InstallRequest| {
    assert_eq!(r.disk_encryption_keys, [EncryptionKey { remote: "/tmp/a".into(), local: fixture("key2") }]);
    assert!(r.warnings[0].contains("names /tmp/a twice"));
})]
#[case("--flake .#a --reboot-deadline 1h h", |r: &InstallRequest| assert_eq!(r.reboot_deadline_secs, 3600))]
// Substitution.
#[case("--flake .#a --no-substitute-on-destination h", |r: &InstallRequest| {
    assert!(!r.substitution.on_destination && !r.substitution.use_machine_substituters);
})]
#[case("--flake .#a --no-use-machine-substituters h", |r: &InstallRequest| {
    assert!(r.substitution.on_destination && !r.substitution.use_machine_substituters);
})]
#[case("--flake .#a --substituters http://a:8080 --substituters https://b/c h", |r: &InstallRequest| {
    assert_eq!(r.substitution.substituters.as_deref(), Some(&["http://a:8080".to_owned(), "https://b/c".to_owned()][..]));
})]
#[case("--flake .#a --extra-substituters / --extra-substituters file:///c h", |r: &InstallRequest| {
    assert_eq!(r.substitution.extra_substituters, ["/", "file:///c"]);
    assert_eq!(r.substitution.substituters, None);
})]
#[case("--flake .#a --trusted-public-keys cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= h", |r: &InstallRequest| {
    assert_eq!(r.substitution.trusted_public_keys.len(), 1);
})]
// The CA file is read here: its certificates go to the target, not its name.
#[case("--flake .#a --ssl-cert-file @CA h", |r: &InstallRequest| {
    let ca = r.substitution.ssl_cert_file.as_ref().unwrap();
    assert_eq!(ca.file, fixture("ca.pem"));
    assert_eq!(ca.pem, std::fs::read_to_string(fixture("ca.pem")).unwrap());
    assert!(r.build.nix_options.is_empty(), "not an option of this machine's Nix");
})]
// Building and copying.
#[case("--flake .#a --option cores 2 --option max-jobs 1 h", |r: &InstallRequest| {
    assert_eq!(r.build.nix_options, [
        KeyValue { key: "cores".into(), value: "2".into() },
        KeyValue { key: "max-jobs".into(), value: "1".into() },
    ]);
})]
#[case("--flake .#a -L h", |r: &InstallRequest| assert!(r.build.print_build_logs && !r.output.debug))]
#[case("--flake .#a --print-build-logs h", |r: &InstallRequest| assert!(r.build.print_build_logs))]
#[case("--flake .#a --debug h", |r: &InstallRequest| assert!(r.output.debug && r.build.print_build_logs, "--debug implies -L"))]
#[case("--flake .#a --show-trace h", |r: &InstallRequest| assert!(r.build.show_trace))]
#[case("--flake .#a --ssh-store-setting remote-store local%3Froot%3D%2Fmnt h", |r: &InstallRequest| {
    assert_eq!(r.build.ssh_store_settings[1], KeyValue { key: "remote-store".into(), value: "local%3Froot%3D%2Fmnt".into() });
})]
#[case("--flake .#a --from file:///cache h", |r: &InstallRequest| assert_eq!(r.build.from.as_deref(), Some("file:///cache")))]
#[case("--vm-test --flake .#a", |r: &InstallRequest| assert!(r.vm_test && r.target.is_none()))]
// Output and our own flags.
#[case("--flake .#a --dry-run --json h", |r: &InstallRequest| assert_eq!(r.output, Output { debug: false, dry_run: true, json: true }))]
#[case("--flake .#a --agent @AGENT h", |r: &InstallRequest| assert_eq!(r.agent.as_deref(), Some(fixture("agent").as_path())))]
// Flags without effect for the phases chosen are said so.
#[case("--flake .#a --phases disko,install --kexec @XZ h", |r: &InstallRequest| {
    assert_eq!(r.warnings, ["--kexec has no effect without the kexec phase"]);
})]
#[case("--store-paths @JSON @SYSTEM --build-on remote --phases install --chown x 0:0 h", |r: &InstallRequest| {
    assert_eq!(r.warnings, ["--build-on remote has no effect with --store-paths (they are built already)"]);
})]
#[case("--flake .#a --phases install --post-kexec-ssh-port 22 --copy-host-keys h", |r: &InstallRequest| {
    assert_eq!(r.warnings, ["--post-kexec-ssh-host/--post-kexec-ssh-port has no effect without the kexec phase"]);
})]
fn accepted(#[case] line: &str, #[case] check: fn(&InstallRequest)) {
    let r = request(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    check(&r);
    // Every request prints as JSON (--dry-run --json).
    serde_json::to_value(&r).unwrap();
}

#[rstest]
#[case(
    "--disko-mode mount --store-paths @SCRIPT @SYSTEM h",
    "--disko-mode cannot be used with --store-paths"
)]
#[case(
    "--flake .#a --store-paths @JSON @SYSTEM h",
    "--flake cannot be used with --store-paths"
)]
#[case(
    "h",
    "nothing to install: give --flake FLAKE#NAME, or --store-paths DISKO SYSTEM"
)]
#[case("--flake . h", "it names no configuration")]
#[case("--flake .# h", "the name after '#' is empty")]
#[case("--flake .#a\"b h", "cannot contain a double quote")]
#[case("--flake #a h", "no flake before '#'")]
#[case("--flake .#a", "no target host")]
#[case("--flake .#a h1 h2", "a second target host \"h2\" after \"h1\"")]
#[case(
    "--flake .#a --target-host h1 h2",
    "a second target host \"h2\" after \"h1\""
)]
// The bug fixed: in nixos-anywhere this would have eaten --flake.
#[case("--force-kexec .#a h", "nothing to install")]
#[case("--flake .#a --phases kexec,bogus h", "unknown phase \"bogus\"")]
#[case("--flake .#a --phases , h", "no phase named")]
#[case(
    "--flake .#a --phases kexec --stop-after-disko h",
    "--stop-after-disko cannot be used with --phases"
)]
#[case(
    "--flake .#a --stop-after-disko --no-reboot h",
    "--stop-after-disko cannot be used with --no-reboot"
)]
#[case(
    "--flake .#a --build-on local --build-on-remote h",
    "--build-on local cannot be used with --build-on-remote"
)]
#[case(
    "--flake .#a --build-on somewhere h",
    "invalid value 'somewhere' for '--build-on <WHERE>'"
)]
// nixos-anywhere's help says destroy, its parser refuses it; so do we.
#[case(
    "--flake .#a --disko-mode destroy h",
    "invalid value 'destroy' for '--disko-mode <MODE>'"
)]
#[case(
    "--vm-test --store-paths @JSON @SYSTEM",
    "--vm-test cannot be used with --store-paths"
)]
#[case(
    "--vm-test --flake .#a --build-on remote",
    "--vm-test cannot be used with --build-on remote"
)]
#[case(
    "--vm-test --flake .#a --build-on-remote",
    "--vm-test cannot be used with --build-on remote"
)]
#[case(
    "--vm-test --flake .#a --extra-files @DIR",
    "--vm-test cannot be used with --extra-files"
)]
#[case(
    "--vm-test --flake .#a --disk-encryption-keys /tmp/k @KEY",
    "--vm-test cannot be used with --disk-encryption-keys"
)]
#[case(
    "--vm-test --flake .#a --generate-hardware-config nixos-facter f.json",
    "--vm-test cannot be used with --generate-hardware-config"
)]
#[case("--vm-test", "--vm-test needs --flake")]
#[case(
    "--flake .#a --generate-hardware-config facter f.json h",
    "unknown backend"
)]
#[case(
    "--flake .#a h --generate-hardware-config nixos-facter",
    "2 values required"
)]
#[case(
    "--flake .#a --generate-hardware-config nixos-facter @DIR h",
    "must name a file to write"
)]
#[case("--store-paths @ROOT/missing @SYSTEM h", "missing: cannot be used")]
#[case("--store-paths @JSON @JSON h", "is not a store path")]
#[case("--store-paths @GARBAGE @SYSTEM h", "neither a disko script")]
#[case("--store-paths @JSON", "2 values required")]
#[case("--flake .#a --extra-files @ROOT/missing h", "--extra-files")]
#[case("--flake .#a --extra-files @KEY h", "is not a directory")]
#[case("--flake .#a --chown / 0:0 h", "the whole installed system")]
#[case(
    "--flake .#a --chown home/../../etc 0:0 h",
    "'..' would leave the installed system"
)]
#[case("--flake .#a --chown home/u a:b:c h", "expected an owner")]
#[case("--flake .#a --disk-encryption-keys tmp/k @KEY h", "must be absolute")]
#[case(
    "--flake .#a --disk-encryption-keys /tmp/ @KEY h",
    "must be absolute, name a file"
)]
#[case(
    "--flake .#a --disk-encryption-keys /tmp/k @ROOT/missing h",
    "cannot be used as the key source for /tmp/k"
)]
#[case("--flake .#a --disk-encryption-keys /tmp/k @DIR h", "is a directory")]
#[case(
    "--flake .#a --kexec @ROOT/missing.tar.gz h",
    "neither an existing file nor an http(s):// URL"
)]
#[case("--flake .#a --kexec ftp://x/i.tar h", "ftp:// is not supported")]
#[case("--flake .#a --kexec https://x h", "names no file")]
#[case(
    "--flake .#a --post-kexec-ssh-host me@x h",
    "after kexec the login is always root"
)]
#[case(
    "--flake .#a --post-kexec-ssh-host x:22 h",
    "the port with --post-kexec-ssh-port"
)]
#[case("--flake .#a -p 0 h", "invalid value '0'")]
#[case("--flake .#a -p 70000 h", "invalid value '70000'")]
#[case("--flake .#a --post-kexec-ssh-port 0 h", "invalid value '0'")]
#[case("--flake .#a --ssh-option Bogus=1 h", "unknown option \"Bogus\"")]
#[case("--flake .#a --ssh-option Port h", "expected Key=Value")]
#[case("--flake .#a -i @ROOT/missing h", "-i ")]
#[case("--flake .#a -F @ROOT/missing h", "-F ")]
#[case("--flake .#a -F @DIR h", "is not a file")]
#[case("--flake .#a --env-password h", "SSHPASS is not set")]
#[case(
    "--flake .#a --substituters ftp://x h",
    "expected an http:// or https:// binary cache"
)]
#[case("--flake .#a --extra-substituters https:// h", "names no host")]
#[case("--flake .#a --trusted-public-keys nocolon h", "expected NAME:BASE64")]
#[case(
    "--flake .#a --trusted-public-keys k:AAAA h",
    "not an ed25519 public key"
)]
#[case("--flake .#a --trusted-public-keys k:!!! h", "not base64")]
#[case("--flake .#a --ssl-cert-file @KEY h", "holds no PEM certificate")]
#[case("--flake .#a --ssl-cert-file @ROOT/missing.pem h", "No such file")]
#[case("--flake .#a --ssh-store-setting a b&c h", "must be URI-encoded")]
#[case("--flake .#a --kexec-deadline 0 h", "must be longer than zero")]
#[case("--flake .#a --connect-deadline forever h", "is not a duration")]
#[case("--flake .#a --reboot-deadline 2d h", "is not a duration")]
#[case("--flake .#a --agent @KEY h", "is not executable")]
#[case("--flake .#a u@", "invalid SSH destination")]
#[case("--flake .#a --bogus h", "unexpected argument '--bogus'")]
fn refused(#[case] line: &str, #[case] expected: &str) {
    match request(line) {
        Ok(r) => panic!("{line} was accepted: {r:?}"),
        Err(e) => assert!(
            e.contains(expected),
            "{line}:\n  got {e}\n  expected it to contain {expected:?}"
        ),
    }
}

/// Values with spaces in them, which the word-split table cannot hold.
#[test]
fn values_with_spaces() {
    let args = |extra: &[&str]| -> Vec<String> {
        ["--flake", ".#a", "h"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let r = cli_support::request_with(
        &args(&[
            "--substituters",
            "http://a https://b",
            "--kexec-extra-flags",
            "--no-sync --noefi",
        ]),
        Environment::default(),
    )
    .unwrap();
    assert_eq!(
        r.substitution.substituters.unwrap(),
        ["http://a", "https://b"]
    );
    assert_eq!(r.kexec.extra_flags, "--no-sync --noefi");
    // An empty list means no caches at all, not the target's own.
    let r =
        cli_support::request_with(&args(&["--substituters", ""]), Environment::default()).unwrap();
    assert_eq!(r.substitution.substituters, Some(vec![]));
    // Options, keys and paths containing spaces keep them.
    let r = cli_support::request_with(
        &args(&[
            "--option",
            "extra-substituters",
            "http://a http://b",
            "--chown",
            "home/my dir",
            "1000:100",
        ]),
        Environment::default(),
    )
    .unwrap();
    assert_eq!(r.build.nix_options[0].value, "http://a http://b");
    assert_eq!(r.chown[0].path, Path::new("home/my dir"));
}

/// The request as `--dry-run --json` prints it: the planner's and the user's view.
#[test]
fn json_shape() {
    let r = request(
        "--flake .#demo --phases install,disko --disko-mode format,mount \
         --kexec https://example.org/k.tar.gz --disk-encryption-keys /tmp/k @KEY me@h",
    )
    .unwrap();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["phases"], serde_json::json!(["disko", "install"]));
    assert_eq!(
        j["source"],
        serde_json::json!({"kind": "flake", "flake": ".", "attr": "nixosConfigurations.\"demo\".config"})
    );
    assert_eq!(
        j["disko"],
        serde_json::json!({"mode": "format,mount", "deps": true})
    );
    assert_eq!(
        j["kexec"]["image"],
        serde_json::json!({"kind": "url", "url": "https://example.org/k.tar.gz", "format": "gzip"})
    );
    assert_eq!(j["target"]["user"], "me");
    assert_eq!(j["target"]["password"], serde_json::Value::Null);
    assert_eq!(
        j["target"]["after_kexec"],
        serde_json::json!({"user": "root", "host": "h", "port": null})
    );
    assert_eq!(j["disk_encryption_keys"][0]["remote"], "/tmp/k");
    assert_eq!(j["build"]["on"], "auto");
    let r =
        request("--store-paths @SCRIPT @SYSTEM --generate-hardware-config nixos-facter f.json h")
            .unwrap();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["source"]["layout"]["kind"], "disko_script");
    assert_eq!(j["source"]["system"], files().system.as_str());
    assert_eq!(j["hardware_config"]["backend"], "nixos-facter");
}
