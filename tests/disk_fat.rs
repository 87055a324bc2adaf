//! Native vfat against `mkfs.vfat` (dosfstools 4.2): for a range of sizes and the `extraArgs`
//! disko passes (`-F`, `-n`, `-s`), the same FAT type (`blkid -p`), the same cluster size (the
//! boot sector) and label, and our file system passes `fsck.fat -n`. Where mkfs.vfat refuses a
//! combination, we refuse it too.
//!
//! Needs dosfstools, util-linux, file: `scripts/setup`.

use std::path::Path;
use std::process::Command;

use nixos_anywhere_rs::disk::fat::{self, FatOptions};

fn blkid(path: &Path, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn boot_sector(path: &Path) -> (u16, u8) {
    let data = std::fs::read(path).unwrap();
    (u16::from_le_bytes([data[11], data[12]]), data[13])
}

#[test]
fn same_fat_type_and_cluster_size_as_mkfs_vfat() {
    let tmp = tempfile::tempdir_in(if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })
    .unwrap();
    let mib = 1u64 << 20;
    let sizes = [
        2 * mib,
        8 * mib,
        16 * mib,
        33 * mib,
        64 * mib,
        100 * mib,
        128 * mib,
        256 * mib,
        300 * mib,
        511 * mib,
        512 * mib,
        1024 * mib,
    ];
    let arg_sets: [&[&str]; 7] = [
        &[],
        &["-F", "32"],
        &["-F", "16"],
        &["-F", "12"],
        &["-s", "8"],
        &["-n", "ESP"],
        &["-F", "32", "-s", "1", "-n", "boot"],
    ];
    let (mut compared, mut refused) = (0, 0);
    for &size in &sizes {
        for args in arg_sets {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let theirs = tmp.path().join("mkfs.img");
            let ours = tmp.path().join("ours.img");
            for p in [&theirs, &ours] {
                let _ = std::fs::remove_file(p);
                std::fs::File::create(p).unwrap().set_len(size).unwrap();
            }
            let mkfs = Command::new("mkfs.vfat")
                .args(&args)
                .arg(&theirs)
                .output()
                .unwrap();
            let options = FatOptions::from_mkfs_args(&args).unwrap();
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&ours)
                .unwrap();
            let ours_result = fat::format(&ours, &mut file, 512, &options);
            let case = format!("{} MiB {args:?}", size / mib);
            if !mkfs.status.success() {
                assert!(
                    ours_result.is_err(),
                    "{case}: mkfs.vfat refused ({}), we did not",
                    String::from_utf8_lossy(&mkfs.stderr)
                );
                refused += 1;
                continue;
            }
            if let Err(e) = &ours_result
                && e.to_string()
                    .contains("FAT32 needs at least 65525 clusters")
            {
                {
                    // mkfs.vfat makes an undersized FAT32 (and says so); we refuse it.
                    assert!(
                        String::from_utf8_lossy(&mkfs.stderr).contains("WARNING")
                            || String::from_utf8_lossy(&mkfs.stdout).contains("WARNING"),
                        "{case}: {e}"
                    );
                    refused += 1;
                    continue;
                }
            }
            let (params, _id) = ours_result
                .unwrap_or_else(|e| panic!("{case}: mkfs.vfat formats it, we failed: {e}"));
            assert_eq!(
                blkid(&ours, "VERSION"),
                blkid(&theirs, "VERSION"),
                "{case}: FAT type"
            );
            assert_eq!(
                boot_sector(&ours),
                boot_sector(&theirs),
                "{case}: sector and cluster size"
            );
            assert_eq!(
                u32::from(boot_sector(&ours).1),
                params.sectors_per_cluster,
                "{case}"
            );
            assert_eq!(
                blkid(&ours, "LABEL"),
                blkid(&theirs, "LABEL"),
                "{case}: label"
            );
            assert_eq!(blkid(&ours, "TYPE"), "vfat", "{case}");
            let fsck = Command::new("fsck.fat")
                .arg("-n")
                .arg(&ours)
                .output()
                .unwrap();
            assert!(
                fsck.status.success(),
                "{case}: fsck.fat -n: {}",
                String::from_utf8_lossy(&fsck.stdout)
            );
            let file_s = Command::new("file").arg("-s").arg(&ours).output().unwrap();
            assert!(
                String::from_utf8_lossy(&file_s.stdout).contains("FAT ("),
                "{case}: file -s"
            );
            compared += 1;
        }
    }
    eprintln!("{compared} formats compared, {refused} refused by both");
    assert!(compared >= 55, "{compared}");
}
