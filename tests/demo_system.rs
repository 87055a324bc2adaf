//! The demo systems of `fixtures/demo`, checked on the host (the VM tests `demo-boot-uefi` and
//! `demo-boot-bios` boot them): their `disko.devices` evaluate to the layouts the installer
//! expects, their host binaries run from the store alone (in a chroot that holds nothing but
//! the closure), and their `switch-to-configuration boot` fails, naming why and writing nothing
//! to `/boot`, when it cannot install a boot loader.
//!
//! Needs root (chroot, mount namespaces) and Nix 2.8, like the other Nix tests.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rstest::rstest;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// Builds the demo configuration `name` and returns its toplevel.
fn toplevel(name: &str) -> String {
    let top = run(Command::new(repo().join("fixtures/demo/build")).arg(name));
    let top = top.trim().to_owned();
    assert!(top.starts_with("/nix/store/"), "build printed {top:?}");
    top
}

/// Evaluates `nixosConfigurations.NAME.config.ATTR` of the demo flake to JSON, as the
/// installer does.
fn eval(name: &str, attr: &str) -> Value {
    let flake = repo().join("fixtures/demo");
    let out = run(Command::new("nix")
        .env("NIX_REMOTE", "local")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
        ])
        .args(["--json", "--option", "build-users-group", ""])
        .arg(format!(
            "{}#nixosConfigurations.{name}.config.{attr}",
            flake.display()
        )));
    serde_json::from_str(&out).expect("nix eval --json prints JSON")
}

#[rstest]
#[case::efi("demo", &[("ESP", "EF00", Some("vfat"), Some("/boot")), ("root", "8300", Some("ext4"), Some("/"))], &[])]
#[case::bios("demo-bios", &[("boot", "EF02", None, None), ("root", "8300", Some("ext4"), Some("/"))], &["/dev/vda"])]
fn disko_devices_are_the_layout_the_installer_reads(
    #[case] name: &str,
    #[case] want: &[(&str, &str, Option<&str>, Option<&str>)],
    #[case] grub_devices: &[&str],
) {
    let devices = eval(name, "disko.devices");
    for top in ["bcachefs_filesystems", "lvm_vg", "mdadm", "nodev", "zpool"] {
        assert_eq!(devices[top], serde_json::json!({}), "{top}");
    }
    let disk = &devices["disk"]["main"];
    assert_eq!(disk["type"], "disk");
    assert_eq!(disk["device"], "/dev/vda");
    assert_eq!(disk["content"]["type"], "gpt");
    let partitions = disk["content"]["partitions"].as_object().unwrap();
    assert_eq!(partitions.len(), want.len());
    for (index, (part, code, format, mountpoint)) in want.iter().enumerate() {
        let p = &partitions[*part];
        let label = format!("disk-main-{part}");
        assert_eq!(p["_index"], index + 1, "{part}");
        assert_eq!(p["type"], *code, "{part}");
        assert_eq!(p["label"], label.as_str(), "{part}");
        assert_eq!(p["device"], format!("/dev/disk/by-partlabel/{label}"));
        match (format, mountpoint) {
            (Some(format), Some(mountpoint)) => {
                assert_eq!(p["content"]["type"], "filesystem", "{part}");
                assert_eq!(p["content"]["format"], *format, "{part}");
                assert_eq!(p["content"]["mountpoint"], *mountpoint, "{part}");
                assert_eq!(p["content"]["device"], p["device"], "{part}");
            }
            _ => assert_eq!(p["content"], Value::Null, "{part}"),
        }
    }
    // What disko's NixOS module derives from it, and what stage 1 mounts.
    let root = eval(name, "fileSystems");
    assert_eq!(root["/"]["device"], "/dev/disk/by-partlabel/disk-main-root");
    assert_eq!(root["/"]["fsType"], "ext4");
    assert_eq!(
        eval(name, "boot.loader.grub.devices"),
        serde_json::json!(grub_devices)
    );
}

/// A directory holding nothing but the closure of a demo toplevel, its system profile,
/// `/boot` and `/dev/null`, entered with chroot in a mount namespace of its own.
struct Root {
    dir: tempfile::TempDir,
    top: String,
}

impl Root {
    fn new(name: &str) -> Root {
        let top = toplevel(name);
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("nix/store");
        fs::create_dir_all(&store).unwrap();
        let paths = run(Command::new("nix-store")
            .env("NIX_REMOTE", "local")
            .args(["-qR", &top]));
        for path in paths.lines() {
            run(Command::new("cp").args(["-a", path]).arg(&store));
        }
        fs::create_dir_all(dir.path().join("nix/var/nix/profiles")).unwrap();
        fs::create_dir_all(dir.path().join("boot")).unwrap();
        // sshd and ssh-keygen open /dev/null; no other device is there.
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        run(Command::new("mknod")
            .args(["-m", "666"])
            .arg(dir.path().join("dev/null"))
            .args(["c", "1", "3"]));
        Root { dir, top }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Links generation `n` of the system profile to this toplevel and makes it current, as
    /// `nix-env -p .../system --set` does.
    fn link_generation(&self, n: u32) {
        let profiles = self.path("nix/var/nix/profiles");
        symlink(&self.top, profiles.join(format!("system-{n}-link"))).unwrap();
        let _ = fs::remove_file(profiles.join("system"));
        symlink(format!("system-{n}-link"), profiles.join("system")).unwrap();
    }

    /// Runs a shell command line in the chroot, with /proc mounted and nothing else of the
    /// host; PATH is the system's own.
    fn sh(&self, script: &str) -> Output {
        let root = self.dir.path();
        fs::create_dir_all(root.join("proc")).unwrap();
        let inner = format!(
            "mount -t proc proc '{root}/proc' && exec chroot '{root}' {top}/sw/bin/sh -c \"$0\"",
            root = root.display(),
            top = self.top
        );
        output(
            Command::new("unshare")
                .args(["--mount", "--fork", "sh", "-c", &inner, script])
                .env_clear()
                .env(
                    "PATH",
                    format!("{}/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin", self.top),
                ),
        )
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[rstest]
#[case::efi("demo")]
#[case::bios("demo-bios")]
fn host_binaries_run_from_the_store_alone(#[case] name: &str) {
    let root = Root::new(name);
    for host_dir in ["lib", "lib64", "usr/lib"] {
        assert!(!root.path(host_dir).exists(), "the chroot has /{host_dir}");
    }
    root.link_generation(1);
    root.sh_ok(&format!("{}/activate", root.top));
    assert_eq!(
        fs::read_link(root.path("run/current-system")).unwrap(),
        Path::new(&root.top)
    );
    assert!(root.path("etc/NIXOS").exists());
    let checks = root.sh_ok(
        "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && \
         sshd -t -f /etc/ssh/sshd_config && echo sshd-config-ok && nixos-version",
    );
    assert_eq!(checks, "sshd-config-ok\n25.11.demo\n");
    if name == "demo-bios" {
        let grub = root.sh_ok(&format!(
            "$(dirname $(grep -o '/nix/store/[^ ]*/bin/grub-install' {}/bin/switch-to-configuration | head -1))/grub-install --version",
            root.top
        ));
        assert!(grub.contains("GRUB"), "{grub}");
    }
}

/// How a case breaks the root before `switch-to-configuration boot` runs.
#[derive(Debug, Clone, Copy)]
enum Break {
    /// Asks for `switch`, which the demo system cannot do.
    Switch,
    /// No /etc/NIXOS: not a NixOS root.
    NoNixosMarker,
    /// No system-N-link generation.
    NoGeneration,
    /// Nothing mounted at /boot (the ESP).
    NoEsp,
    /// The GRUB device (/dev/vda) does not exist.
    NoGrubDisk,
}

#[rstest]
#[case::switch("demo", Break::Switch, "supports only 'boot'")]
#[case::no_marker("demo", Break::NoNixosMarker, "/etc/NIXOS is missing")]
#[case::no_generation("demo", Break::NoGeneration, "no generation of the system profile")]
#[case::no_esp("demo", Break::NoEsp, "/boot is not a mounted vfat ESP")]
#[case::no_grub_disk("demo-bios", Break::NoGrubDisk, "/dev/vda is not a block device")]
#[case::bios_no_generation("demo-bios", Break::NoGeneration, "no generation")]
fn switch_to_configuration_fails_when_it_cannot_install(
    #[case] name: &str,
    #[case] how: Break,
    #[case] message: &str,
) {
    let root = Root::new(name);
    if !matches!(how, Break::NoGeneration) {
        root.link_generation(1);
    }
    root.sh_ok(&format!("{}/activate", root.top));
    if matches!(how, Break::NoNixosMarker) {
        fs::remove_file(root.path("etc/NIXOS")).unwrap();
    }
    let action = if matches!(how, Break::Switch) {
        "switch"
    } else {
        "boot"
    };
    // NoEsp and NoGrubDisk need no change: the chroot has no mounts but /proc, and no /dev.
    let out = root.sh(&format!(
        "NIXOS_INSTALL_BOOTLOADER=1 {}/bin/switch-to-configuration {action}",
        root.top
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{how:?}: it succeeded:\n{stderr}");
    assert!(
        stderr.contains("switch-to-configuration: ") && stderr.contains(message),
        "{how:?}: {stderr}"
    );
    let left: Vec<_> = fs::read_dir(root.path("boot")).unwrap().collect();
    assert!(left.is_empty(), "{how:?}: /boot has {left:?}");
}

/// `demo-disko-internals` has the demo's layout with what disko's module adds (scripts,
/// functions, a parent link): plain `nix eval --json` fails on it, and dropping functions and
/// `_` names but `_index` and `_name` gives the demo's layout back. The installer's own
/// evaluation is tested against it elsewhere; this keeps the fixture honest.
#[test]
fn the_internals_variant_is_the_demo_layout_plus_what_disko_adds() {
    let attr = |name: &str| {
        format!(
            "{}#nixosConfigurations.{name}.config.disko.devices",
            repo().join("fixtures/demo").display()
        )
    };
    let nix_eval = |args: &[&str]| {
        output(
            Command::new("nix")
                .env("NIX_REMOTE", "local")
                .args([
                    "--extra-experimental-features",
                    "nix-command flakes",
                    "eval",
                ])
                .args(["--json", "--option", "build-users-group", ""])
                .args(args),
        )
    };
    let plain = nix_eval(&[&attr("demo-disko-internals")]);
    assert!(!plain.status.success(), "a tree with functions became JSON");
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("cannot convert a function to JSON"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let create = nix_eval(&[&format!(
        "{}.disk.main.content.partitions.ESP._create",
        attr("demo-disko-internals")
    )]);
    assert!(create.status.success(), "the partitions carry no _create");

    let strip = "let strip = v: \
        if builtins.isAttrs v then builtins.mapAttrs (_: strip) (builtins.removeAttrs v \
          (builtins.filter (n: builtins.isFunction v.${n} \
            || (builtins.substring 0 1 n == \"_\" && n != \"_index\" && n != \"_name\")) \
          (builtins.attrNames v))) \
        else if builtins.isList v then map strip v else v; in strip";
    let stripped = nix_eval(&[&attr("demo-disko-internals"), "--apply", strip]);
    assert!(stripped.status.success());
    let stripped: Value = serde_json::from_slice(&stripped.stdout).unwrap();
    assert_eq!(stripped, eval("demo", "disko.devices"));
}
