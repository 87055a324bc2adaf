//! The install phase's target side on the host, against real roots: the extra files keep
//! their modes and cannot write outside the root through a link; `--chown` is recursive and
//! changes links themselves; `enter` runs a command in namespaces of its own, with the system
//! activated and nothing left mounted; nixos-install's steps on a root that holds a demo
//! closure (copied and registered by this tool) make the profile and markers, refuse an
//! incomplete closure before touching anything, refuse a root without a boot loader, and skip
//! what is done on a rerun; and the tool's evaluation of `disko.devices` drops what disko's
//! module adds.
//!
//! Needs root (chown, namespaces, chroot) and Nix 2.8, like the other Nix tests.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nixos_anywhere_rs::install::files::{self, EntryKind, FileEntry, Root};
use nixos_anywhere_rs::install::{self, InstallEnv, InstallSpec};
use nixos_anywhere_rs::plan::Outcome;
use nixos_anywhere_rs::store::StorePath;

const EXE: &str = env!("CARGO_BIN_EXE_nixos-anywhere-rs");

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

fn toplevel(name: &str) -> String {
    let top = run(Command::new(repo().join("fixtures/demo/build")).arg(name));
    top.trim().to_owned()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// Mount points at or below `dir` on this machine.
fn mounts_below(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

#[test]
fn extra_files_keep_their_modes_and_stay_inside_the_root() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    fs::create_dir_all(s.join("root/.ssh")).unwrap();
    fs::set_permissions(s.join("root/.ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(
        s.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA test\n",
    )
    .unwrap();
    fs::set_permissions(
        s.join("root/.ssh/authorized_keys"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Bigger than a chunk, so that it travels in pieces.
    let big: Vec<u8> = (0..files::CHUNK * 2 + 17)
        .map(|i| (i % 251) as u8)
        .collect();
    fs::write(s.join("big"), &big).unwrap();
    fs::write(s.join("empty"), "").unwrap();
    fs::set_permissions(s.join("empty"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("root/.ssh", s.join("link")).unwrap();
    // Made by someone else: the entries must say root, and do.
    std::os::unix::fs::chown(s.join("big"), Some(1234), Some(1234)).unwrap();

    let entries = files::read_tree(s).unwrap();
    assert!(
        entries.iter().filter(|e| e.path == "big").count() == 3,
        "the big file is not in three pieces"
    );
    let batches = files::batches(entries.clone());
    assert!(batches.len() >= 3, "{} batches", batches.len());

    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    let root = Root::open(d).unwrap();
    for batch in &batches {
        for entry in batch {
            root.write(entry).unwrap();
        }
    }
    assert_eq!(
        mode(d),
        0o700,
        "the root's own mode is the install step's business"
    );
    assert_eq!(mode(&d.join("root/.ssh")), 0o700);
    assert_eq!(mode(&d.join("root/.ssh/authorized_keys")), 0o600);
    assert_eq!(mode(&d.join("empty")), 0o4755);
    assert_eq!(fs::read(d.join("big")).unwrap(), big);
    assert_eq!(owner(&d.join("big")), (0, 0));
    assert_eq!(
        fs::read_link(d.join("link")).unwrap(),
        Path::new("root/.ssh")
    );
    // A second write of the same tree replaces, and keeps everything as it was.
    for entry in &entries {
        root.write(entry).unwrap();
    }
    assert_eq!(fs::read(d.join("big")).unwrap(), big);

    // A link in the root that points outside it resolves inside the root.
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), d.join("escape")).unwrap();
    let through = FileEntry {
        path: "escape/planted".into(),
        mode: 0o644,
        kind: EntryKind::File {
            offset: 0,
            data: b"x".to_vec(),
        },
    };
    let _ = root.write(&through);
    assert!(
        !outside.path().join("planted").exists(),
        "an extra file was written outside the root through a link"
    );
    for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
        let entry = FileEntry {
            path: bad.into(),
            mode: 0o644,
            kind: EntryKind::Dir,
        };
        assert!(root.write(&entry).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn chown_is_recursive_changes_links_themselves_and_reads_the_roots_accounts() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    fs::create_dir_all(d.join("srv/data/sub")).unwrap();
    fs::create_dir_all(d.join("etc")).unwrap();
    fs::write(d.join("srv/data/sub/file"), "x").unwrap();
    let victim = tempfile::NamedTempFile::new().unwrap();
    symlink(victim.path(), d.join("srv/data/link")).unwrap();
    fs::write(
        d.join("etc/passwd"),
        "alice:x:4242:4343::/home/alice:/bin/sh\n",
    )
    .unwrap();
    fs::write(d.join("etc/group"), "staff:x:5151:\n").unwrap();
    let root = Root::open(d).unwrap();

    assert_eq!(root.chown(Path::new("srv/data"), "alice:").unwrap(), 4);
    for p in [
        "srv/data",
        "srv/data/sub",
        "srv/data/sub/file",
        "srv/data/link",
    ] {
        assert_eq!(owner(&d.join(p)), (4242, 4343), "{p}");
    }
    assert_eq!(
        owner(victim.path()),
        (0, 0),
        "chown followed a link out of the root"
    );
    root.chown(Path::new("srv/data/sub"), "1:staff").unwrap();
    assert_eq!(owner(&d.join("srv/data/sub/file")), (1, 5151));
    let err = root
        .chown(Path::new("srv/data"), "nobody-here")
        .unwrap_err();
    assert!(err.to_string().contains("give it as a number"), "{err}");
    let err = root.chown(Path::new("srv/missing"), "0:0").unwrap_err();
    assert!(err.to_string().contains("srv/missing"), "{err}");
}

/// A root holding the closure of a demo toplevel, copied and registered by this tool.
struct DemoRoot {
    dir: tempfile::TempDir,
    top: String,
}

impl DemoRoot {
    fn new(name: &str) -> Self {
        let top = toplevel(name);
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new(EXE)
            .env("NIX_REMOTE", "local")
            .args(["copy", "--to", "local", "--root"])
            .arg(dir.path())
            .arg(&top));
        Self { dir, top }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn closure(&self) -> Vec<StorePath> {
        run(Command::new("nix-store")
            .env("NIX_REMOTE", "local")
            .args(["-qR", &self.top]))
        .lines()
        .map(|p| StorePath::parse(p).unwrap())
        .collect()
    }

    fn spec(&self) -> InstallSpec {
        InstallSpec {
            root: self.path().to_owned(),
            system: StorePath::parse(&self.top).unwrap(),
            closure: self.closure(),
            chown: Vec::new(),
            copy_host_keys: false,
            no_check: None,
            boot_disks: Vec::new(),
        }
    }
}

#[test]
fn enter_runs_the_command_in_namespaces_of_its_own_and_leaves_nothing_mounted() {
    let root = DemoRoot::new("demo");
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    let refused = output(Command::new(EXE).arg("enter").arg("--root").arg(r));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("etc/NIXOS is missing"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    fs::write(r.join("etc/NIXOS"), "").unwrap();
    fs::create_dir_all(r.join("nix/var/nix/profiles")).unwrap();
    symlink(&root.top, r.join("nix/var/nix/profiles/system-1-link")).unwrap();
    symlink("system-1-link", r.join("nix/var/nix/profiles/system")).unwrap();

    let script = "echo pid=$$; readlink /run/current-system; tr '\\0' ' ' < /proc/1/cmdline; \
                  echo; ls /mnt/etc/NIXOS; ls /dev/null /sys/kernel > /dev/null && echo devsys; \
                  echo env=$NIXOS_INSTALL_BOOTLOADER; exit 7";
    let out = output(
        Command::new(EXE)
            .arg("enter")
            .arg("--root")
            .arg(r)
            .args([
                "--root-again-at",
                "/mnt",
                "--env",
                "NIXOS_INSTALL_BOOTLOADER=1",
            ])
            .arg("--")
            .arg(format!("{}/sw/bin/sh", root.top))
            .args(["-c", script]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("pid="), "{stdout}");
    // The default system is the profile's, followed inside the root; activate ran.
    assert_eq!(lines[1], root.top, "{stdout}");
    // A PID namespace of its own: its first process (PID 1) is enter's child, not init.
    assert!(lines[2].contains("nixos-anywhere-rs enter"), "{stdout}");
    assert_eq!(lines[3], "/mnt/etc/NIXOS");
    assert_eq!(lines[4], "devsys");
    assert_eq!(lines[5], "env=1");
    assert!(
        mounts_below(r).is_empty(),
        "left mounted on the host: {:?}",
        mounts_below(r)
    );
    // What activation made is in the root (its /run is the root's own here).
    assert!(r.join("etc/static").exists());
}

#[test]
fn nixos_installs_steps_refuse_what_would_not_boot_and_skip_what_is_done() {
    let root = DemoRoot::new("demo-no-bootloader");
    let r = root.path();
    let exe = PathBuf::from(EXE);

    // A closure the root lacks a path of: nothing is done.
    let mut spec = root.spec();
    let foreign = StorePath::parse(&toplevel("demo-bios")).unwrap();
    spec.closure.push(foreign.clone());
    let mut env = InstallEnv::new(spec, exe.clone());
    let err = install::run(&mut env, |_| {}).unwrap_err();
    assert_eq!(err.number, 1, "{err}");
    let text = err.to_string();
    assert!(text.contains(&foreign.to_string()), "{text}");
    assert!(!r.join("nix/var/nix/profiles/system").exists());
    assert!(!r.join("etc/NIXOS").exists());

    // The whole closure: everything up to the bootloader check, which finds no loader.
    let mut env = InstallEnv::new(root.spec(), exe.clone());
    let mut seen = Vec::new();
    let err = install::run(&mut env, |s| seen.push(s.clone())).unwrap_err();
    assert_eq!(
        err.description, "check that a boot loader is installed",
        "{err}"
    );
    assert!(err.to_string().contains("no boot loader"), "{err}");
    let profiles = r.join("nix/var/nix/profiles");
    assert_eq!(
        fs::read_link(profiles.join("system")).unwrap(),
        Path::new("system-1-link")
    );
    assert_eq!(
        fs::read_link(profiles.join("system-1-link")).unwrap(),
        Path::new(&root.top)
    );
    assert_eq!(
        fs::read_link(r.join("nix/var/nix/gcroots/profiles")).unwrap(),
        Path::new("/nix/var/nix/profiles")
    );
    assert_eq!(
        fs::read_link(r.join("etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );
    assert!(r.join("etc/NIXOS").exists());
    assert_eq!(mode(&r.join("tmp")), 0o1777);
    assert!(mounts_below(r).is_empty(), "{:?}", mounts_below(r));

    // A rerun finds the profile in place; the root was made 755 again.
    fs::set_permissions(r, fs::Permissions::from_mode(0o700)).unwrap();
    let mut env = InstallEnv::new(root.spec(), exe);
    let mut again = Vec::new();
    let _ = install::run(&mut env, |s| again.push(s.clone()));
    let outcome = |records: &[nixos_anywhere_rs::plan::StepRecord], what: &str| {
        records
            .iter()
            .find(|s| s.description.starts_with(what))
            .map(|s| s.outcome)
    };
    assert_eq!(
        outcome(&again, "set the system profile"),
        Some(Outcome::Skipped)
    );
    assert_eq!(
        outcome(&again, "give the root mode 755"),
        Some(Outcome::Ran)
    );
    assert_eq!(mode(r), 0o755);
    assert!(!profiles.join("system-2-link").exists());
}

#[test]
fn a_root_must_be_owned_by_root_and_searchable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("mnt");
    fs::create_dir(&r).unwrap();
    std::os::unix::fs::chown(&r, Some(1000), Some(1000)).unwrap();
    let spec = InstallSpec {
        root: r.clone(),
        system: StorePath::parse(&toplevel("demo")).unwrap(),
        closure: Vec::new(),
        chown: Vec::new(),
        copy_host_keys: false,
        no_check: None,
        boot_disks: Vec::new(),
    };
    let mut env = InstallEnv::new(spec.clone(), PathBuf::from(EXE));
    let err = install::run(&mut env, |_| {}).unwrap_err();
    assert!(err.to_string().contains("not root"), "{err}");
    std::os::unix::fs::chown(&r, Some(0), Some(0)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let mut env = InstallEnv::new(spec, PathBuf::from(EXE));
    let err = install::run(&mut env, |_| {}).unwrap_err();
    assert!(err.to_string().contains("searchable by others"), "{err}");
}

/// The tool's own evaluation of `disko.devices` (what `--flake` installs read) drops what
/// disko's module adds: on `demo-disko-internals` it gives `demo`'s layout.
#[test]
fn the_flake_evaluation_drops_functions_and_internals() {
    use nixos_anywhere_rs::cli::install::{Build, BuildOn, KeyValue, Phase, parse_flake};
    use nixos_anywhere_rs::run::inputs::{self, InputsRequest, LayoutInput};
    let option = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: value.into(),
    };
    let build = Build {
        on: BuildOn::Local,
        from: None,
        nix_options: vec![
            option("build-users-group", ""),
            option("sandbox", "false"),
            option("substituters", ""),
        ],
        print_build_logs: false,
        show_trace: false,
        ssh_store_settings: Vec::new(),
    };
    toplevel("demo");
    let layout = |name: &str| {
        let request = InputsRequest {
            source: parse_flake(&format!(
                "{}#{name}",
                repo().join("fixtures/demo").display()
            ))
            .unwrap(),
            phases: [Phase::Disko].into(),
            build: build.clone(),
        };
        let prepared = inputs::prepare(&request).unwrap();
        assert!(prepared.closure.is_empty(), "no install phase: no closure");
        match prepared.layout {
            Some(LayoutInput::Json(json)) => {
                serde_json::from_str::<serde_json::Value>(&json).unwrap()
            }
            other => panic!("{other:?}"),
        }
    };
    let stripped = layout("demo-disko-internals");
    assert_eq!(stripped, layout("demo"));
    assert_eq!(
        stripped["disk"]["main"]["content"]["partitions"]["ESP"]["_index"],
        1
    );
}
