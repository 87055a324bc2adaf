//! The facts the agent reports about disks, on a real loop device with a GPT, partition nodes
//! made through BLKPG (`partx -a`), and a mounted file system.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use nixos_anywhere_rs::facts::Facts;
use support::run;

/// A loop device over a sparse file, detached (with its partitions) on drop.
struct Loop {
    device: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new(size: u64) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self {
            device,
            _file: file,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("-d").arg(&self.device).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_shows_its_size_partitions_labels_and_mounts() {
    let disk = Loop::new(64 << 20);
    run(Command::new("sgdisk")
        .args(["-n1:0:+8M", "-c1:disk-main-ESP", "-t1:EF00"])
        .args(["-n2:0:0", "-c2:disk-main-root"])
        .arg(&disk.device));
    // -u, not -a: partitions a previous user of this loop device made through BLKPG outlive
    // its detach, and -u replaces them with the table just written.
    run(Command::new("partx").arg("-u").arg(&disk.device));
    let root_part = PathBuf::from(format!("{}p2", disk.device.display()));
    run(Command::new("mkfs.ext4").arg("-q").arg(&root_part));
    let mnt = tempfile::tempdir().unwrap();
    run(Command::new("mount").arg(&root_part).arg(mnt.path()));
    let _mounted = Mounted(mnt.path().to_owned());

    let facts = Facts::gather().unwrap();
    let found = facts
        .disk(&disk.device)
        .unwrap_or_else(|| panic!("{} not among {:?}", disk.device.display(), facts.disks));
    assert_eq!(found.size_bytes, 64 << 20);
    assert_eq!(found.logical_sector_size, 512);
    let parts: Vec<(Option<u32>, Option<&str>, u64)> = found
        .partitions
        .iter()
        .map(|p| (p.number, p.label.as_deref(), p.size_bytes))
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0], (Some(1), Some("disk-main-ESP"), 8 << 20));
    assert_eq!(parts[1].0, Some(2));
    assert_eq!(parts[1].1, Some("disk-main-root"));
    assert_eq!(found.partitions[1].mounts, [mnt.path().to_owned()]);
    assert!(found.partitions[0].mounts.is_empty());
    assert!(found.mounts.is_empty() && found.holders.is_empty());
    // The facts are what the agent sends: they survive the wire format.
    let json = serde_json::to_string(&facts).unwrap();
    let back: Facts = serde_json::from_str(&json).unwrap();
    assert_eq!(back, facts);
    assert!(Path::new(&found.device).exists());
}
