//! Real plans executed on host loop devices (needs root and `scripts/setup`): file systems
//! on whole disks and on GPT partitions, mount/unmount/remount, a rerun that must not reformat,
//! destroy while everything is mounted, and the refusals: a layout that does not fit the device,
//! a disk mounted outside the target root, a holder that will not let go.

use std::path::{Path, PathBuf};
use std::process::Command;

use nixos_anywhere_rs::disk::plan::{ExecError, Mode};
use nixos_anywhere_rs::disk::run::{self, DiskError, RunOptions};
use nixos_anywhere_rs::plan::{Outcome, StepRecord};
use serde_json::json;
use sha2::{Digest, Sha256};

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse file attached as a loop device, detached on drop.
struct Loop {
    dev: String,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(mib: u64) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "loop-device tests need root"
        );
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let dev = sh("losetup", &["--find", "--show", img.to_str().unwrap()])
            .trim()
            .to_owned();
        Self { dev, _dir: dir }
    }

    fn sha256(&self) -> String {
        let bytes = std::fs::read(&self.dev).unwrap();
        format!("{:x}", Sha256::digest(&bytes))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-q"])
            .arg(&self.dev)
            .status();
        let _ = Command::new("partx")
            .arg("-d")
            .arg(&self.dev)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A target root, unmounted recursively on drop.
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn s(&self) -> String {
        self.0.path().to_string_lossy().into_owned()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-q"])
            .arg(self.0.path())
            .status();
    }
}

fn go(layout: &serde_json::Value, mode: Mode, root: &Root) -> Result<Vec<StepRecord>, DiskError> {
    let opts = RunOptions {
        mode,
        root_mountpoint: root.s(),
        ..RunOptions::default()
    };
    run::run(&layout.to_string(), &opts, Default::default(), |_| {}).map(|(_, r)| r)
}

fn fstype(dev: &str) -> String {
    sh("blkid", &["-p", "-o", "value", "-s", "TYPE", dev])
        .trim()
        .to_owned()
}

fn mounted_at(p: &Path) -> Option<(String, String)> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE", "--mountpoint"])
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut w = text.split_whitespace();
    Some((w.next()?.to_owned(), w.next()?.to_owned()))
}

fn whole_disk(dev: &str, content: serde_json::Value) -> serde_json::Value {
    json!({"disk": {"main": {"type": "disk", "device": dev, "content": content}}})
}

/// ext4 and xfs on a whole disk: format, mount, unmount, mount, and a second format,mount that
/// keeps the data (disko's probe: an existing file system is not remade).
#[test]
fn whole_disk_filesystems_format_mount_and_survive_a_rerun() {
    for (format, args) in [("ext4", json!(["-L", "rootfs"])), ("xfs", json!([]))] {
        let disk = Loop::new(320);
        let root = Root::new();
        let layout = whole_disk(
            &disk.dev,
            json!({"type": "filesystem", "format": format, "extraArgs": args, "mountpoint": "/", "mountOptions": ["noatime"]}),
        );
        go(&layout, Mode::FormatMount, &root).unwrap();
        assert_eq!(fstype(&disk.dev), format);
        assert_eq!(mounted_at(root.path()).unwrap().1, format);
        if format == "ext4" {
            assert_eq!(
                sh("blkid", &["-p", "-o", "value", "-s", "LABEL", &disk.dev]).trim(),
                "rootfs"
            );
        }
        std::fs::write(root.path().join("kept"), "data").unwrap();
        go(&layout, Mode::Unmount, &root).unwrap();
        assert!(mounted_at(root.path()).is_none());
        go(&layout, Mode::Mount, &root).unwrap();
        let records = go(&layout, Mode::FormatMount, &root).unwrap();
        assert!(
            records.iter().all(|r| r.outcome == Outcome::Skipped),
            "{format}: {records:?}"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("kept")).unwrap(),
            "data"
        );
        go(&layout, Mode::Unmount, &root).unwrap();
    }
}

/// f2fs with disko's example arguments. This host's kernel has no f2fs driver, so it is made
/// and probed here, not mounted (the installer guest mounts it).
#[test]
fn f2fs_is_made_with_its_arguments_and_not_remade() {
    let disk = Loop::new(128);
    let root = Root::new();
    let layout = whole_disk(
        &disk.dev,
        json!({"type": "filesystem", "format": "f2fs",
            "extraArgs": ["-O", "extra_attr,inode_checksum,sb_checksum,compression", "-l", "data"]}),
    );
    let first = go(&layout, Mode::Format, &root).unwrap();
    assert_eq!(first[0].outcome, Outcome::Ran);
    assert_eq!(fstype(&disk.dev), "f2fs");
    assert_eq!(
        sh("blkid", &["-p", "-o", "value", "-s", "LABEL", &disk.dev]).trim(),
        "data"
    );
    let again = go(&layout, Mode::Format, &root).unwrap();
    assert_eq!(again[0].outcome, Outcome::Skipped);
}

/// btrfs with subvolumes (nested, as in disko's example) and swap files, mounted by subvolume.
#[test]
fn btrfs_subvolumes_and_swap_files() {
    let disk = Loop::new(512);
    let root = Root::new();
    let layout = whole_disk(
        &disk.dev,
        json!({"type": "btrfs", "extraArgs": ["-f"], "swap": {"swapfile": {"size": "20M"}},
            "subvolumes": {
                "/rootfs": {"mountpoint": "/"},
                "/home": {"mountpoint": "/home", "mountOptions": ["compress=zstd"]},
                "/home/user": {},
                "/swap": {"mountpoint": "/.swapvol", "swap": {"swapfile": {"size": "20M"}}}}}),
    );
    go(&layout, Mode::FormatMount, &root).unwrap();
    assert_eq!(fstype(&disk.dev), "btrfs");
    let list = sh(
        "btrfs",
        &["subvolume", "list", root.path().to_str().unwrap()],
    );
    for sv in ["rootfs", "home", "home/user", "swap"] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!("path {sv}"))),
            "{sv} in {list}"
        );
    }
    assert!(root.path().join(".swapvol/swapfile").exists());
    assert!(mounted_at(&root.path().join("home")).is_some());
    // The top-level swap file lives beside the subvolumes, not in the mounted root subvolume.
    assert!(!root.path().join("swapfile").exists());
    go(&layout, Mode::Unmount, &root).unwrap();
}

/// mkswap on a whole disk; mount mode does not swapon (disko's mount script never does).
#[test]
fn swap_is_made_but_not_switched_on() {
    let disk = Loop::new(64);
    let root = Root::new();
    let layout = whole_disk(&disk.dev, json!({"type": "swap"}));
    go(&layout, Mode::FormatMount, &root).unwrap();
    assert_eq!(fstype(&disk.dev), "swap");
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(!swaps.contains(&disk.dev), "{swaps}");
}

/// A GPT with partitions on a loop device (the kernel learns them through BLKPG), formatted on
/// the kernel's own partition nodes; then destroy,format,mount while everything is mounted.
#[test]
fn gpt_partitions_then_destroy_while_mounted() {
    let disk = Loop::new(400);
    let root = Root::new();
    let layout = json!({"disk": {"main": {"type": "disk", "device": disk.dev, "content": {"type": "gpt", "partitions": {
        "boot": {"size": "64M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/boot"}},
        "bios": {"size": "1M", "type": "EF02"},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/"}}}}}}});
    go(&layout, Mode::FormatMount, &root).unwrap();
    let table: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["--json", &disk.dev])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    // disko's order: EF02 first (priority 100), then boot, then the 100% root.
    assert_eq!(
        names,
        ["disk-main-bios", "disk-main-boot", "disk-main-root"]
    );
    assert_eq!(parts[0]["type"], "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(parts[1]["start"], 4096);
    assert_eq!(parts[1]["size"], 131072);
    assert_eq!(fstype(&format!("{}p3", disk.dev)), "xfs");
    assert_eq!(mounted_at(&root.path().join("boot")).unwrap().1, "ext4");
    std::fs::write(root.path().join("old"), "x").unwrap();
    // format,mount again adds nothing and wipes nothing (nixos-anywhere #622): every step is
    // found done, the table included.
    let again = go(&layout, Mode::FormatMount, &root).unwrap();
    assert!(
        again.iter().all(|r| r.outcome == Outcome::Skipped),
        "{again:?}"
    );
    assert!(root.path().join("old").exists());
    // destroy,format,mount with everything still mounted: released, wiped, made anew.
    go(&layout, Mode::DestroyFormatMount, &root).unwrap();
    assert!(
        !root.path().join("old").exists(),
        "the wipe made a new file system"
    );
    assert_eq!(mounted_at(root.path()).unwrap().1, "xfs");
    assert_eq!(mounted_at(&root.path().join("boot")).unwrap().1, "ext4");
    go(&layout, Mode::Unmount, &root).unwrap();
}

/// A layout that does not fit the real device is refused before a byte is written.
#[test]
fn layout_too_big_for_the_device_touches_nothing() {
    let disk = Loop::new(100);
    let root = Root::new();
    sh("mkfs.ext4", &["-q", &disk.dev]);
    let before = disk.sha256();
    let layout = json!({"disk": {"main": {"type": "disk", "device": disk.dev, "content": {"type": "gpt", "partitions": {
        "root": {"size": "200M", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/"}}}}}}});
    let err = go(&layout, Mode::DestroyFormatMount, &root).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DiskError::Layout(_)), "{text}");
    assert!(
        text.contains("disk.main.content.partitions.root.size") && text.contains("does not fit"),
        "{text}"
    );
    assert_eq!(disk.sha256(), before);
}

/// A disk holding a file system mounted outside the target root (the installer's own medium)
/// is refused, and left as it was.
#[test]
fn disk_mounted_outside_the_root_is_refused() {
    let disk = Loop::new(64);
    let root = Root::new();
    let outside = Root::new();
    sh("mkfs.ext4", &["-q", &disk.dev]);
    sh("mount", &[&disk.dev, outside.path().to_str().unwrap()]);
    std::fs::write(outside.path().join("mine"), "x").unwrap();
    let layout = whole_disk(
        &disk.dev,
        json!({"type": "filesystem", "format": "xfs", "mountpoint": "/"}),
    );
    let err = go(&layout, Mode::DestroyFormatMount, &root).unwrap_err();
    assert!(
        matches!(&err, DiskError::Step(e) if matches!(e.source, ExecError::MountedOutsideRoot { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("outside the target root"), "{err}");
    assert_eq!(fstype(&disk.dev), "ext4");
    assert!(outside.path().join("mine").exists());
}

/// A holder that will not let go (a busy mount under the root) stops destroy before the wipe.
#[test]
fn destroy_stops_before_wiping_when_a_holder_stays() {
    let disk = Loop::new(128);
    let root = Root::new();
    let layout = whole_disk(
        &disk.dev,
        json!({"type": "filesystem", "format": "ext4", "mountpoint": "/"}),
    );
    go(&layout, Mode::FormatMount, &root).unwrap();
    std::fs::write(root.path().join("still-here"), "x").unwrap();
    let busy: PathBuf = root.path().to_path_buf();
    let mut holder = Command::new("sleep")
        .arg("60")
        .current_dir(&busy)
        .spawn()
        .unwrap();
    let err = go(&layout, Mode::DestroyFormatMount, &root).unwrap_err();
    let _ = holder.kill();
    let _ = holder.wait();
    let text = err.to_string();
    assert!(matches!(err, DiskError::Step(_)), "{text}");
    assert!(
        text.contains("unmounting") && text.contains("busy"),
        "{text}"
    );
    assert_eq!(fstype(&disk.dev), "ext4", "nothing was wiped");
    assert!(root.path().join("still-here").exists());
}

/// A dry run shows which physical disk each layout disk is (size, sector size) and what will be
/// wiped, and touches nothing.
#[test]
fn dry_run_names_the_physical_disk_and_touches_nothing() {
    let disk = Loop::new(96);
    let root = Root::new();
    let before = disk.sha256();
    let layout = whole_disk(
        &disk.dev,
        json!({"type": "filesystem", "format": "ext4", "mountpoint": "/"}),
    );
    let opts = RunOptions {
        mode: Mode::DestroyFormatMount,
        root_mountpoint: root.s(),
        dry_run: true,
        ..RunOptions::default()
    };
    let (plan, records) = run::run(&layout.to_string(), &opts, Default::default(), |_| {}).unwrap();
    assert!(records.is_empty());
    let shown = plan.to_string();
    let line = format!(
        "disk main: {}: 0.1 GiB ({} bytes, 512-byte sectors)",
        disk.dev,
        96u64 << 20
    );
    assert!(
        shown.contains(&line) && shown.contains("[WILL BE WIPED]"),
        "{shown}"
    );
    let as_json = serde_json::to_value(&plan).unwrap();
    assert_eq!(as_json["disks"][0]["facts"]["size_bytes"], 96u64 << 20);
    assert_eq!(as_json["steps"][0]["step"], "unmount_root");
    assert_eq!(disk.sha256(), before);
}
