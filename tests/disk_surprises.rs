//! One regression test per surprise in disko-semantics.md §13 (and the destroy = false rule):
//! disko's behaviour reproduced on purpose, so nobody "fixes" it into an incompatibility.

use std::path::PathBuf;

use nixos_anywhere_rs::disk::layout::{self, ContentKind, Layout};
use nixos_anywhere_rs::disk::plan::table_tools::{hybrid_arg, sgdisk_new_args};
use nixos_anywhere_rs::disk::plan::{self, DiskEnv, DiskStep, Mode};
use nixos_anywhere_rs::disk::table::spec::TableSpec;
use nixos_anywhere_rs::disk::validate::Context;
use nixos_anywhere_rs::plan::{Probe, Step};
use serde_json::json;

fn example(name: &str) -> Layout {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("fixtures/disko-examples/{name}.json"));
    layout::parse(&std::fs::read_to_string(p).unwrap(), &[]).unwrap()
}

fn steps(l: &Layout, mode: Mode) -> Vec<DiskStep> {
    plan::plan(l, mode, "/mnt", &Context::default())
        .unwrap()
        .steps
}

fn gpt_specs(steps: &[DiskStep]) -> Vec<nixos_anywhere_rs::disk::table::spec::GptSpec> {
    steps
        .iter()
        .filter_map(|s| match s {
            DiskStep::WriteTable {
                spec: TableSpec::Gpt(g),
                ..
            } => Some(g.clone()),
            _ => None,
        })
        .collect()
}

/// §13.1: the mount script never runs swapon; unmount does run swapoff.
#[test]
fn mount_never_swaps_on_but_unmount_swaps_off() {
    let l = example("swap");
    let mount = steps(&l, Mode::Mount);
    let argvs: Vec<Vec<String>> = mount
        .iter()
        .filter_map(|s| s.argv(&|d| d.path.clone()))
        .collect();
    assert!(!argvs.iter().any(|a| a[0] == "swapon"), "{argvs:?}");
    assert!(mount.iter().all(|s| !matches!(s, DiskStep::Swapoff { .. })));
    let unmount = steps(&l, Mode::Unmount);
    let swapoffs: Vec<String> = unmount
        .iter()
        .filter_map(|s| match s {
            DiskStep::Swapoff { device } => Some(device.path.clone()),
            _ => None,
        })
        .collect();
    // plainSwap only: encryptedSwap has randomEncryption, which disko neither makes nor mounts.
    assert_eq!(swapoffs, ["/dev/disk/by-partlabel/disk-main-plainSwap"]);
    let mkswaps = steps(&l, Mode::Format)
        .iter()
        .filter(|s| matches!(s, DiskStep::Mkswap { .. }))
        .count();
    assert_eq!(mkswaps, 1);
}

/// §13.2: the hybrid MBR argument is what disko meant (`1`, or `1:EE`), not its broken
/// `1"/dev/sdb"` word.
#[test]
fn hybrid_mbr_argument_is_the_intended_one() {
    let with_ee = gpt_specs(&steps(&example("hybrid-mbr"), Mode::Format));
    assert_eq!(hybrid_arg(&with_ee[0]).as_deref(), Some("1:EE"));
    let mut l = json!({"disk": {"sdb": {"type": "disk", "device": "/dev/sdb", "content": {"type": "gpt",
        "partitions": {"ESP": {"size": "100M", "type": "EF00", "hybrid": {"mbrPartitionType": "0c"}},
                       "root": {"size": "100%"}}}}}});
    let parsed = layout::parse(&l.to_string(), &[]).unwrap();
    let spec = &gpt_specs(&steps(&parsed, Mode::Format))[0];
    assert_eq!(hybrid_arg(spec).as_deref(), Some("1"));
    assert!(spec.hybrid.as_ref().unwrap().efi_gpt_partition_first);
    l["disk"]["sdb"]["content"]["efiGptPartitionFirst"] = json!(false);
    let parsed = layout::parse(&l.to_string(), &[]).unwrap();
    assert_eq!(
        hybrid_arg(&gpt_specs(&steps(&parsed, Mode::Format))[0]).as_deref(),
        Some("1:EE")
    );
}

/// §13.3: a legacy GPT table's partition names are written udev-escaped: a space is the four
/// characters `\x20`.
#[test]
fn legacy_gpt_names_hold_literal_escapes() {
    let s = steps(&example("legacy-table-with-whitespace"), Mode::Format);
    let names: Vec<String> = s
        .iter()
        .filter_map(|s| match s {
            DiskStep::WriteTable {
                spec: TableSpec::Legacy(l),
                ..
            } => Some(
                l.partitions
                    .iter()
                    .filter_map(|p| p.name.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        names.iter().any(|n| n == "name\\x20with\\x20spaces"),
        "{names:?}"
    );
}

/// §13.4: re-running format re-randomises partition GUIDs (`R`) unless the layout fixes them.
#[test]
fn rerun_relabel_rerandomises_guids_unless_fixed() {
    let specs = gpt_specs(&steps(&example("complex"), Mode::Format));
    let relabels: Vec<Vec<String>> = specs
        .iter()
        .flat_map(|g| sgdisk_new_args(g).into_iter().map(|(_, r)| r))
        .collect();
    assert!(relabels.iter().any(|r| r[0] == "--partition-guid=1:R"));
    assert!(
        relabels
            .iter()
            .any(|r| r[0] == "--partition-guid=1:f0f0f0f0-f0f0-f0f0-f0f0-f0f0f0f0f0f0")
    );
}

/// §13.5: `size` defaults to "0", so end "+0", which fills the free block, and priority stays
/// 1000 (not 9001).
#[test]
fn size_zero_fills_but_keeps_priority_1000() {
    let l = json!({"disk": {"d": {"type": "disk", "device": "/dev/vdb", "content": {"type": "gpt",
        "partitions": {"a": {"end": "-1G"}, "b": {}, "z": {"size": "100%"}}}}}});
    let l = layout::parse(&l.to_string(), &[]).unwrap();
    let ContentKind::Gpt(g) = &l.disk[0].content.as_ref().unwrap().kind else {
        panic!()
    };
    let b = g.partitions.iter().find(|p| p.name == "b").unwrap();
    assert_eq!(
        (b.size.as_str(), b.end.as_str(), b.priority, b.index),
        ("0", "+0", 1000, 2)
    );
    let z = g.partitions.iter().find(|p| p.name == "z").unwrap();
    assert_eq!((z.end.as_str(), z.priority, z.index), ("-0", 9001, 3));
    // "+0" is not an empty partition: after it, not even 2 MiB are left of a 3 GiB disk.
    let fill = nixos_anywhere_rs::disk::size::FitPart {
        start: &b.start,
        end: &b.end,
        alignment: 0,
    };
    let two_mib = nixos_anywhere_rs::disk::size::FitPart {
        start: "0",
        end: "+2M",
        alignment: 0,
    };
    let err =
        nixos_anywhere_rs::disk::size::check_gpt_fit(3 << 30, 512, &[fill, two_mib]).unwrap_err();
    assert_eq!(err.index, 1);
}

/// §13.6: the 36-byte limit counts UTF-8 bytes and the by-partlabel path escapes per byte.
#[test]
fn label_limit_in_bytes_and_per_byte_escape() {
    let l = example("gpt-name-with-whitespace");
    let ContentKind::Gpt(g) = &l.disk[0].content.as_ref().unwrap().kind else {
        panic!()
    };
    let special = g.partitions.iter().find(|p| p.name.contains('^')).unwrap();
    assert_eq!(special.label, "bda9ca5ea830ae986b7f25657727a441c6d7");
    let spaced = g.partitions.iter().find(|p| p.name.contains(' ')).unwrap();
    assert_eq!(
        spaced.dev.path,
        "/dev/disk/by-partlabel/disk-vdb-name\\x20with\\x20spaces"
    );
    let j = json!({"disk": {"d": {"type": "disk", "device": "/dev/vdb", "content": {"type": "gpt",
        "partitions": {"ééééééééééééééé": {"size": "1M"}}}}}});
    // 7 + 30 bytes = 37 > 36 although only 22 characters: hashed.
    let l = layout::parse(&j.to_string(), &[]).unwrap();
    let ContentKind::Gpt(g) = &l.disk[0].content.as_ref().unwrap().kind else {
        panic!()
    };
    assert_eq!(g.partitions[0].label.len(), 36);
    assert!(!g.partitions[0].label.starts_with("disk-"));
}

/// §13.7: LV priorities are 1000, 1251 (100%), 501 (thin pool), 752 (100% thin pool).
#[test]
fn lvm_priorities_are_the_real_defaults() {
    let j = json!({"disk": {"d": {"type": "disk", "device": "/dev/vdb", "content": {"type": "lvm_pv", "vg": "vg"}}},
        "lvm_vg": {"vg": {"type": "lvm_vg", "lvs": {
            "a": {"size": "10M"}, "b": {"size": "100%FREE"},
            "c": {"size": "10M", "lvm_type": "thin-pool"}, "d": {"size": "100%", "lvm_type": "thin-pool"}}}}});
    let l = layout::parse(&j.to_string(), &[]).unwrap();
    let got: Vec<(String, i64)> = l.lvm_vg[0]
        .lvs
        .iter()
        .map(|lv| (lv.name.clone(), lv.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("c".into(), 501),
            ("d".into(), 752),
            ("a".into(), 1000),
            ("b".into(), 1251)
        ]
    );
}

/// §13.8: `filesystem` puts extraArgs before the device, one word each; btrfs after it, split.
#[test]
fn extra_args_placement_differs_by_type() {
    let f2fs = steps(&example("f2fs"), Mode::Format);
    let a = f2fs.iter().find_map(|s| match s {
        DiskStep::Mkfs { format, .. } if format == "f2fs" => s.argv(&|d| d.path.clone()),
        _ => None,
    });
    let a = a.unwrap();
    assert_eq!(a[1], "-O");
    assert_eq!(a.last().unwrap(), "/dev/disk/by-partlabel/disk-main-root");
    let raid = steps(&example("luks-btrfs-raid"), Mode::Format);
    let b = raid
        .iter()
        .find_map(|s| match s {
            DiskStep::Mkfs { format, .. } if format == "btrfs" => s.argv(&|d| d.path.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        b,
        [
            "mkfs.btrfs",
            "/dev/mapper/p2",
            "-d",
            "raid1",
            "/dev/mapper/p1"
        ]
    );
}

/// §13.9: luksAddKey runs on every format run (its probe never says done), and LUKS settings
/// are kept verbatim for the installed system.
#[test]
fn luks_add_key_always_runs() {
    let s = steps(&example("complex"), Mode::Format);
    let add = s
        .iter()
        .find(|s| matches!(s, DiskStep::LuksAddKey { .. }))
        .unwrap();
    assert_eq!(add.probe(&DiskEnv::default()).unwrap(), Probe::Needed);
    let l = example("complex");
    let luks: Vec<_> = nixos_anywhere_rs::disk::validate::contents(&l)
        .into_iter()
        .filter_map(|(_, c)| match &c.kind {
            ContentKind::Luks(l) => Some(l.settings.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(luks[1]["keyFileOffset"], 2);
}

/// A disk with `destroy = false` is never released or wiped, while the others are.
#[test]
fn destroy_false_is_never_wiped() {
    let j = json!({"disk": {
        "keep": {"type": "disk", "device": "/dev/vdc", "destroy": false, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/data"}},
        "main": {"type": "disk", "device": "/dev/vdb", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}});
    let l = layout::parse(&j.to_string(), &[]).unwrap();
    let p = plan::plan(&l, Mode::DestroyFormatMount, "/mnt", &Context::default()).unwrap();
    let touched: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            DiskStep::Release { device, .. } | DiskStep::Wipe { device } => Some(device.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(touched, ["/dev/vdb", "/dev/vdb"]);
    let shown = p.to_string();
    assert!(
        shown.contains("disk keep: /dev/vdc (not found on this machine) [kept (destroy = false)]"),
        "{shown}"
    );
    assert!(
        shown.contains("disk main: /dev/vdb (not found on this machine) [WILL BE WIPED]"),
        "{shown}"
    );
}
