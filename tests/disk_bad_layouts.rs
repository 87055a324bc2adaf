//! Malformed layouts (fixtures/bad-layouts): each is rejected before anything is touched, with
//! an error naming the exact node. One file per class of check; the table says which node and
//! what the message must say.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nixos_anywhere_rs::disk::facts::DeviceFacts;
use nixos_anywhere_rs::disk::layout::{self, LayoutError};
use nixos_anywhere_rs::disk::validate::{self, Context};

fn check(file: &str) -> Result<(), LayoutError> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bad-layouts")
        .join(format!("{file}.json"));
    let json = std::fs::read_to_string(&path).unwrap();
    let l = layout::parse(&json, &[])?;
    // A 1 GiB disk with 512-byte sectors, as the machine would report /dev/vdb.
    let facts = DeviceFacts {
        path: "/dev/vdb".into(),
        node: "/dev/vdb".into(),
        size_bytes: 1 << 30,
        logical_sector_size: 512,
        model: Some("QEMU HARDDISK".into()),
        serial: Some("QM00002".into()),
        by_id: None,
    };
    let cx = Context {
        facts: BTreeMap::from([("/dev/vdb".to_owned(), facts)]),
        require_devices: false,
        unattended: true,
    };
    validate::validate(&l, &cx)
}

#[rstest::rstest]
#[case::args_not_a_list(
    "args-not-a-list",
    "disk.main.content.partitions.root.content.extraArgs",
    "expected a list of strings"
)]
#[case::bad_discard_policy(
    "bad-discard-policy",
    "disk.main.content.partitions.root.content.discardPolicy",
    "expected once, pages or both"
)]
#[case::bad_filesystem_format(
    "bad-filesystem-format",
    "disk.main.content.partitions.root.content.format",
    "is not a file system type"
)]
#[case::bad_gpt_attribute(
    "bad-gpt-attribute",
    "disk.main.content.partitions.ESP.attributes[0]",
    "bit number from 0 to 63"
)]
#[case::bad_lv_size("bad-lv-size", "lvm_vg.pool.lvs.root.size", "is not an LV size")]
#[case::bad_partition_uuid(
    "bad-partition-uuid",
    "disk.main.content.partitions.ESP.uuid",
    "is not a GUID"
)]
#[case::bad_raid_level("bad-raid-level", "mdadm.r.level", "RAID level 3")]
#[case::bad_sgdisk_start(
    "bad-sgdisk-start",
    "disk.main.content.partitions.root.start",
    "is not an sgdisk start"
)]
#[case::bad_type_code(
    "bad-type-code",
    "disk.main.content.partitions.ESP.type",
    "is not a GPT type"
)]
#[case::bad_zvol_size("bad-zvol-size", "zpool.z.datasets.v.size", "is not a volume size")]
#[case::dependency_cycle("dependency-cycle", "lvm_vg.pool", "cycle: lvm_vg.pool -> mdadm.r")]
#[case::does_not_fit_device(
    "does-not-fit-device",
    "disk.main.content.partitions.ESP.size",
    "does not fit on /dev/vdb"
)]
#[case::duplicate_btrfs_subvolume(
    "duplicate-btrfs-subvolume",
    "disk.main.content.partitions.root.content.subvolumes.root.name",
    "declared twice"
)]
#[case::duplicate_disk_name("duplicate-disk-name", "disk.other.name", "has the same name `main`")]
#[case::duplicate_luks_name(
    "duplicate-luks-name",
    "disk.main.content.partitions.root.content.name",
    "LUKS name `crypted` is also used"
)]
#[case::duplicate_partition_name(
    "duplicate-partition-name",
    "disk.main.content.partitions.ESP.name",
    "has the same name `ESP`"
)]
#[case::legacy_table_unknown_device_kind(
    "legacy-table-unknown-device-kind",
    "disk.main.content.partitions[0]",
    "cannot number the partitions of `/dev/hda`"
)]
#[case::logical_partition_in_gpt(
    "logical-partition-in-gpt",
    "disk.main.content.partitions[0].part-type",
    "only in an msdos table"
)]
#[case::luks_without_key_unattended(
    "luks-without-key-unattended",
    "disk.main.content.partitions.root.content.askPassword",
    "no terminal can answer"
)]
#[case::member_of_missing_array(
    "member-of-missing-array",
    "disk.main.content.partitions.root.content.name",
    "no mdadm array named `raid1`"
)]
#[case::member_of_missing_bcachefs(
    "member-of-missing-bcachefs",
    "disk.main.content.partitions.root.content.filesystem",
    "no bcachefs_filesystems entry named `fs`"
)]
#[case::member_of_missing_pool(
    "member-of-missing-pool",
    "disk.main.content.partitions.root.content.pool",
    "no zpool named `zroot`"
)]
#[case::missing_device("missing-device", "disk.main.device", "is required")]
#[case::mount_point_clash(
    "mount-point-clash",
    "disk.main.content.partitions.root.content.mountpoint",
    "is also the mount point of"
)]
#[case::mount_point_not_a_string(
    "mount-point-not-a-string",
    "disk.main.content.partitions.root.content.mountpoint",
    "expected a string"
)]
#[case::not_json("not-json", "", "not valid JSON")]
#[case::pv_to_missing_vg(
    "pv-to-missing-vg",
    "disk.main.content.partitions.root.content.vg",
    "no lvm_vg named `pool`"
)]
#[case::relative_device("relative-device", "disk.main.device", "is not an absolute path")]
#[case::relative_mount_point(
    "relative-mount-point",
    "disk.main.content.partitions.ESP.content.mountpoint",
    "is not an absolute mount point"
)]
#[case::same_device_twice(
    "same-device-twice",
    "disk.other.device",
    "names the same device `/dev/vdb`"
)]
#[case::size_decimal(
    "size-decimal",
    "disk.main.content.partitions.ESP.size",
    "`1.5G` is not a partition size"
)]
#[case::size_lowercase(
    "size-lowercase",
    "disk.main.content.partitions.ESP.size",
    "`512m` is not a partition size"
)]
#[case::size_percent(
    "size-percent",
    "disk.main.content.partitions.ESP.size",
    "`50%` is not a partition size"
)]
#[case::thinlv_without_pool(
    "thinlv-without-pool",
    "lvm_vg.pool.lvs.root.pool",
    "needs `pool` naming a thin-pool"
)]
#[case::two_full_partitions(
    "two-full-partitions",
    "disk.main.content.partitions.root.size",
    "only one partition of a table can be 100%"
)]
#[case::unknown_content_type(
    "unknown-content-type",
    "disk.main.content.partitions.root.content.type",
    "unknown content type `ext4fs`"
)]
#[case::unknown_field(
    "unknown-field",
    "disk.main.content.partitions.root.sise",
    "unknown field `sise`"
)]
#[case::unknown_top_level_kind("unknown-top-level-kind", "disks", "unknown field `disks`")]
#[case::vg_without_pv("vg-without-pv", "lvm_vg.pool", "has no lvm_pv member")]
fn rejected_naming_the_node(#[case] file: &str, #[case] path: &str, #[case] fragment: &str) {
    let err = check(file).expect_err("a bad layout must be rejected");
    assert_eq!(err.path(), path, "{file}: {err}");
    let text = err.to_string();
    assert!(text.contains(fragment), "{file}: {text}");
    if !path.is_empty() {
        assert!(
            text.contains(path.split('[').next().unwrap()),
            "{file}: the message names the node: {text}"
        );
    }
}

/// Every file in fixtures/bad-layouts is in the table above, and the table covers at least 25.
#[test]
fn every_fixture_has_a_case() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad-layouts");
    let n = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(
        n, 39,
        "a fixture without a case (or a case without a fixture)"
    );
    assert!(n >= 25);
}
