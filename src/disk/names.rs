//! The names disko derives, byte for byte: an installed system finds its disks through them
//! (`fileSystems."/".device = "/dev/disk/by-partlabel/disk-main-root"`), so a native partitioner
//! that names anything differently leaves a machine that does not boot.

use sha2::{Digest, Sha256};

/// A GPT partition's name: `<parent type>-<parent name>-<partition>`, or, when that is longer
/// than 36 *bytes* (UTF-8, as Nix's `stringLength` counts), the first 36 hex digits of its
/// SHA-256.
pub fn gpt_label(parent_type: &str, parent_name: &str, partition: &str) -> String {
    let label = format!("{parent_type}-{parent_name}-{partition}");
    if label.len() > 36 {
        let digest = Sha256::digest(label.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex[..36].to_owned()
    } else {
        label
    }
}

/// disko's `hexEscapeUdevSymlink`: per byte, keep `[0-9A-Za-z#+,-./:=@_]` (its class `+-.` is a
/// range, so `,` stays), write every other byte as `\xHH` in upper case. Non-ASCII UTF-8 is
/// escaped byte by byte, unlike udev, because the installed `fileSystems` entry has disko's form.
pub fn udev_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"#+,-./:=@_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// A disk's default `name`: its attribute name with every `/` replaced by `_`.
pub fn disk_name(attr: &str) -> String {
    attr.replace('/', "_")
}

/// disko's `deviceNumbering`: the path of partition `n` of `device` for legacy `table`s. `None`
/// where disko's evaluation aborts (a device kind it does not know).
pub fn device_numbering(device: &str, n: u32) -> Option<String> {
    let ends_in_digit = device.bytes().last().is_some_and(|b| b.is_ascii_digit());
    let starts = |p: &str| device.starts_with(p);
    if starts("/dev/sd") || starts("/dev/vd") || starts("/dev/xvd") {
        Some(format!("{device}{n}"))
    } else if starts("/dev/disk/") || starts("/dev/zvol/") {
        Some(format!("{device}-part{n}"))
    } else if starts("/dev/nvme") || starts("/dev/mmcblk") || starts("/dev/loop") {
        Some(format!("{device}p{n}"))
    } else if starts("/dev/md/") {
        Some(if ends_in_digit {
            format!("{device}p{n}")
        } else {
            format!("{device}{n}")
        })
    } else if starts("/dev/mapper/") {
        Some(format!("{device}{n}"))
    } else {
        None
    }
}

/// The kernel's name for partition `n` of the whole-disk node `node` (`/dev/sda` → `/dev/sda2`,
/// `/dev/loop0` → `/dev/loop0p2`, `/dev/nvme0n1` → `/dev/nvme0n1p2`): a disk name ending in a
/// digit gets a `p`, as the kernel's `disk_name()` does.
pub fn kernel_partition(node: &str, n: u32) -> String {
    if node.bytes().last().is_some_and(|b| b.is_ascii_digit()) {
        format!("{node}p{n}")
    } else {
        format!("{node}{n}")
    }
}

/// A bcachefs file system's default UUID: the first 32 hex digits of `sha256(name)`, grouped
/// 8-4-4-4-12.
pub fn bcachefs_uuid(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hash_past_36_bytes_only() {
        assert_eq!(gpt_label("disk", "main", "ESP"), "disk-main-ESP");
        // The two checked by evaluation (disko-semantics §3.2).
        assert_eq!(
            gpt_label("disk", "vdb", "name^with\\some@special#chars"),
            "bda9ca5ea830ae986b7f25657727a441c6d7"
        );
        // Exactly 36 bytes stays.
        let part = "x".repeat(36 - "disk-d-".len());
        assert_eq!(gpt_label("disk", "d", &part).len(), 36);
        assert!(gpt_label("disk", "d", &part).starts_with("disk-d-"));
    }

    /// §13.6: the limit counts UTF-8 bytes, not characters, and escaping is per byte.
    #[test]
    fn label_limit_counts_bytes_and_escape_is_per_byte() {
        // 30 bytes of ASCII prefix + "é" (2 bytes) x 3 = 36 bytes but 33 characters: kept.
        let part = format!("{}ééé", "p".repeat(36 - 7 - 6));
        assert_eq!(gpt_label("disk", "d", &part), format!("disk-d-{part}"));
        // One more "é": 38 bytes, 34 characters: hashed.
        let part = format!("{part}é");
        assert_eq!(gpt_label("disk", "d", &part).len(), 36);
        assert!(!gpt_label("disk", "d", &part).starts_with("disk-"));
        assert_eq!(udev_escape("a é"), "a\\x20\\xC3\\xA9");
        assert_eq!(
            udev_escape("disk-vdb-name with spaces"),
            "disk-vdb-name\\x20with\\x20spaces"
        );
        assert_eq!(udev_escape("a,b+c^d"), "a,b+c\\x5Ed");
    }

    #[test]
    fn numbering_follows_disko() {
        assert_eq!(device_numbering("/dev/sda", 2).unwrap(), "/dev/sda2");
        assert_eq!(
            device_numbering("/dev/disk/by-id/x", 2).unwrap(),
            "/dev/disk/by-id/x-part2"
        );
        assert_eq!(
            device_numbering("/dev/nvme0n1", 1).unwrap(),
            "/dev/nvme0n1p1"
        );
        assert_eq!(device_numbering("/dev/md/r1", 1).unwrap(), "/dev/md/r1p1");
        assert_eq!(
            device_numbering("/dev/md/root", 1).unwrap(),
            "/dev/md/root1"
        );
        assert_eq!(device_numbering("/dev/loop3", 1).unwrap(), "/dev/loop3p1");
        assert_eq!(device_numbering("/dev/hda", 1), None);
        assert_eq!(kernel_partition("/dev/loop0", 2), "/dev/loop0p2");
        assert_eq!(kernel_partition("/dev/sdb", 2), "/dev/sdb2");
    }

    #[test]
    fn bcachefs_uuid_matches_disko() {
        // From disko-examples/bcachefs.json.
        assert_eq!(
            bcachefs_uuid("mounted_subvolumes_in_multi"),
            "88d9c058-757d-c06e-0fb7-a612f2db8a7a"
        );
    }
}
