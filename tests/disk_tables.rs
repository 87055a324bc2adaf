//! Partition tables identical to disko's: for every example in `disko-examples/` with a `gpt`
//! or legacy `table`, disko's own sgdisk/parted lines (from `NAME.create.sh`) run against one
//! sparse image, our writer against another of the same size, and `sfdisk --json` must agree
//! (numbers, start, size, type, name, attributes; GUIDs where the layout fixes them); for GPTs
//! the MBR sector's table (protective or hybrid) must match byte for byte.
//! Also: 4K-sector loop devices and BLKPG making partition nodes appear with the right sizes.
//!
//! Needs gdisk, parted, fdisk (sfdisk), util-linux: `scripts/setup`.

mod disk_support;

use std::path::{Path, PathBuf};

use disk_support::*;
use nixos_anywhere_rs::disk::device;
use nixos_anywhere_rs::disk::table::WriteTable;
use nixos_anywhere_rs::disk::table::spec::*;
use nixos_anywhere_rs::plan::{Probe, Step};
use serde_json::Value;

/// Runs disko's lines and ours for one table and compares them.
fn compare_one(dir: &Path, tmp: &Path, name: &str, i: usize, f: &Found) {
    compare_on(dir, tmp, name, i, f, None)
}

/// The same on image files, or (with a sector size) on loop devices over them.
fn compare_on(dir: &Path, tmp: &Path, name: &str, i: usize, f: &Found, sector_size: Option<u64>) {
    let script = std::fs::read_to_string(dir.join(format!("{name}.create.sh"))).unwrap();
    let theirs_img = tmp.join(format!("{name}-{i}-disko.img"));
    let ours_img = tmp.join(format!("{name}-{i}-ours.img"));
    sparse(&theirs_img, f.bytes);
    sparse(&ours_img, f.bytes);
    let loops = sector_size.map(|ss| (Loop::new(&theirs_img, ss), Loop::new(&ours_img, ss)));
    let (theirs, ours) = match &loops {
        Some((a, b)) => (a.0.clone(), b.0.clone()),
        None => (theirs_img.clone(), ours_img.clone()),
    };
    let commands = disko_table_commands(&script, &f.device);
    assert!(
        !commands.is_empty(),
        "{name}: no table commands for {}",
        f.device
    );
    if matches!(f.spec, TableSpec::Gpt(_)) {
        sh(&format!("sgdisk --clear '{}' >/dev/null", theirs.display()));
    }
    let quoted = format!("\"{}\"", f.device);
    for c in &commands {
        sh(&format!(
            "{} >/dev/null",
            c.replace(&quoted, &format!("'{}'", theirs.display()))
        ));
    }
    write_ours(&ours, &f.spec);
    let fixed = fixed_guids(&f.spec);
    assert_eq!(
        table_of(&ours, &fixed),
        table_of(&theirs, &fixed),
        "{name}: {} differs from disko's",
        f.device
    );
    if matches!(f.spec, TableSpec::Gpt(_)) {
        assert_eq!(
            head(&ours),
            head(&theirs),
            "{name}: {}: the MBR differs from sgdisk's",
            f.device
        );
    }
    // The step's probe sees the table it wrote.
    let step = WriteTable {
        device: ours.clone(),
        spec: f.spec.clone(),
    };
    assert_eq!(step.probe(&()).unwrap(), Probe::Done, "{name}");
    // ... and not on a blank image.
    let blank = tmp.join(format!("{name}-{i}-blank.img"));
    sparse(&blank, f.bytes);
    let step = WriteTable {
        device: blank.clone(),
        spec: f.spec.clone(),
    };
    assert_eq!(step.probe(&()).unwrap(), Probe::Needed, "{name}");
    drop(loops);
    for p in [theirs_img, ours_img, blank] {
        std::fs::remove_file(p).unwrap();
    }
}

fn example(name: &str) -> Vec<Found> {
    let path = examples_dir().join(format!("{name}.json"));
    find_tables(&serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
}

#[test]
fn four_k_sector_loop_devices_match_sgdisk_and_parted() {
    let tmp = scratch();
    for name in [
        "simple-efi",
        "swap",
        "gpt-bios-compat",
        "hybrid-mbr",
        "legacy-table",
        "negative-size",
    ] {
        for (i, f) in example(name).iter().enumerate() {
            compare_on(&examples_dir(), tmp.path(), name, i, f, Some(4096));
        }
    }
}

fn sysfs_size(node: &Path) -> u64 {
    let name = node.file_name().unwrap().to_string_lossy().into_owned();
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

#[test]
fn blkpg_makes_the_partition_nodes_with_their_sizes() {
    let tmp = scratch();
    let img = tmp.path().join("blkpg.img");
    sparse(&img, 2 << 30);
    let lo = Loop::new(&img, 512);
    // swap has four partitions; simple-efi two: writing one after the other must remove the
    // kernel's stale partitions 3 and 4 and resize 2.
    for name in ["swap", "simple-efi"] {
        let f = &example(name)[0];
        let planned = write_ours(&lo.0, &f.spec);
        let wanted = planned.kernel_partitions();
        let have = device::kernel_partitions(&lo.0).unwrap();
        assert_eq!(have, wanted, "{name}");
        for (n, _, len) in wanted {
            let node = device::partition_node(&lo.0, n);
            assert!(node.exists(), "{}", node.display());
            assert_eq!(sysfs_size(&node), len, "{}", node.display());
            let got = sh(&format!("blockdev --getsize64 '{}'", node.display()));
            assert_eq!(got.trim().parse::<u64>().unwrap(), len);
        }
    }
    assert!(!device::partition_node(&lo.0, 3).exists());
}

#[test]
fn every_example_table_matches_disko() {
    let dir = examples_dir();
    let tmp = scratch();
    let mut jobs: Vec<(String, usize, Found)> = Vec::new();
    let mut examples = 0;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json") && !n.ends_with(".nixos.json")
        })
        .collect();
    names.sort();
    for json_path in names {
        let name = json_path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let found = find_tables(&json);
        examples += usize::from(!found.is_empty());
        jobs.extend(
            found
                .into_iter()
                .enumerate()
                .map(|(i, f)| (name.clone(), i, f)),
        );
    }
    // sgdisk sleeps a second after each write: run the examples side by side.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((name, i, f)) = jobs.get(k) else {
                        break;
                    };
                    compare_one(&dir, tmp.path(), name, *i, f);
                }
            });
        }
    });
    // Every example but the ZFS/LVM-only ones has a gpt or table; each was compared.
    assert!(examples >= 30, "only {examples} examples with tables found");
    eprintln!("compared {} tables from {examples} examples", jobs.len());
}
