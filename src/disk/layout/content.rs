//! Content nodes (`type = "gpt"`, `"filesystem"`, `"luks"`, ...), read with disko's defaults and
//! given the device their parent hands them.

use super::node::{LayoutError, Node, Result};
use super::*;
use crate::disk::names;
use crate::disk::table::spec::{LegacyFormat, LegacyPartType};

/// What a content node needs to know of the node holding it.
#[derive(Clone)]
pub struct Parent<'a> {
    /// disko's type of the holder (`disk`, `mdadm`, `luks`, `zfs_volume`, `lvm_vg`, `partition`).
    pub kind: &'a str,
    /// The holder's `name` (labels are `<kind>-<name>-<partition>`).
    pub name: &'a str,
}

pub fn hooks(n: &mut Node) -> Result<Hooks> {
    Ok(Hooks {
        pre_create: n.str_or("preCreateHook", "")?,
        post_create: n.str_or("postCreateHook", "")?,
        pre_mount: n.str_or("preMountHook", "")?,
        post_mount: n.str_or("postMountHook", "")?,
        pre_unmount: n.str_or("preUnmountHook", "")?,
        post_unmount: n.str_or("postUnmountHook", "")?,
    })
}

/// Checks a node's `type` when it states one (evaluated layouts always do).
pub fn expect_type(n: &mut Node, expected: &str) -> Result<()> {
    match n.opt_str("type")? {
        None => Ok(()),
        Some(t) if t == expected => Ok(()),
        Some(t) => Err(LayoutError::invalid(
            n.at("type"),
            format!("expected `{expected}`, found `{t}`"),
        )),
    }
}

pub fn content(mut n: Node, dev: Dev, parent: Parent) -> Result<Content> {
    let Some(ty) = n.opt_str("type")? else {
        return Err(LayoutError::invalid(
            n.at("type"),
            "is required: one of gpt, table, filesystem, swap, luks, lvm_pv, mdraid, zfs, btrfs, bcachefs",
        ));
    };
    n.drop_derived(&["device"]);
    let hooks = hooks(&mut n)?;
    let path = n.path.clone();
    let kind = match ty.as_str() {
        "gpt" | "table" if parent.kind == "partition" || parent.kind == "lvm_vg" => {
            return Err(LayoutError::invalid(
                n.at("type"),
                format!(
                    "a `{ty}` partition table cannot sit inside a {}",
                    parent.kind
                ),
            ));
        }
        "gpt" => ContentKind::Gpt(gpt(&mut n, &dev, &parent)?),
        "table" => ContentKind::Table(table(&mut n, &dev)?),
        "filesystem" => ContentKind::Filesystem(Filesystem {
            format: n.req_str("format")?,
            extra_args: n.strings_or("extraArgs", &[])?,
            mount_options: n.strings_or("mountOptions", &["defaults"])?,
            mountpoint: n.opt_str("mountpoint")?,
        }),
        "swap" => ContentKind::Swap(swap(&mut n)?),
        "luks" => ContentKind::Luks(Box::new(luks(&mut n)?)),
        "lvm_pv" => ContentKind::LvmPv {
            vg: n.req_str("vg")?,
        },
        "mdraid" => ContentKind::Mdraid {
            name: n.req_str("name")?,
        },
        "zfs" => ContentKind::Zfs {
            pool: n.req_str("pool")?,
        },
        "btrfs" => ContentKind::Btrfs(btrfs(&mut n)?),
        "bcachefs" => ContentKind::Bcachefs(BcachefsMember {
            filesystem: n.req_str("filesystem")?,
            label: n.str_or("label", "")?,
            extra_format_args: n.strings_or("extraFormatArgs", &[])?,
        }),
        other => {
            return Err(LayoutError::invalid(
                n.at("type"),
                format!(
                    "unknown content type `{other}`; expected one of gpt, table, filesystem, \
                     swap, luks, lvm_pv, mdraid, zfs, btrfs, bcachefs"
                ),
            ));
        }
    };
    n.finish()?;
    Ok(Content {
        path,
        dev,
        hooks,
        kind,
    })
}

fn gpt(n: &mut Node, dev: &Dev, parent: &Parent) -> Result<Gpt> {
    let efi_gpt_partition_first = n.bool_or("efiGptPartitionFirst", true)?;
    let mut parts = Vec::new();
    for (attr, mut p) in n.attrs("partitions")? {
        p.drop_derived(&["_index", "device"]);
        let name = p.str_or("name", &attr)?;
        let size = p.str_or("size", "0")?;
        let content_is_swap = p.child_type("content").is_some_and(|t| t == "swap");
        let type_code = p.str_or("type", if content_is_swap { "8200" } else { "8300" })?;
        let start = p.str_or("start", "0")?;
        let default_end = if size == "100%" {
            "-0".to_owned()
        } else {
            format!("+{size}")
        };
        let end = p.str_or("end", &default_end)?;
        let alignment = match p.opt_int("alignment")? {
            Some(a) if a < 0 => {
                return Err(LayoutError::invalid(
                    p.at("alignment"),
                    "must not be negative",
                ));
            }
            Some(a) => a as u64,
            None => u64::from(start.ends_with('s') || end.ends_with('s')),
        };
        let default_priority = if size == "100%" {
            9001
        } else if type_code == "EF02" {
            100
        } else {
            1000
        };
        let priority = p.opt_int("priority")?.unwrap_or(default_priority);
        let uuid = p.opt_str("uuid")?;
        let attributes = attributes(&mut p)?;
        let label = match p.opt_str("label")? {
            Some(l) => l,
            None => names::gpt_label(parent.kind, parent.name, &name),
        };
        let hybrid = match p.child("hybrid")? {
            None => None,
            Some(mut h) => {
                let hy = Hybrid {
                    mbr_partition_type: h.opt_str("mbrPartitionType")?,
                    mbr_bootable_flag: h.bool_or("mbrBootableFlag", false)?,
                };
                h.finish()?;
                Some(hy)
            }
        };
        let content_node = p.child("content")?;
        let part = GptPartition {
            path: p.path.clone(),
            attr,
            name,
            index: 0,
            type_code,
            size,
            start,
            end,
            alignment,
            priority,
            uuid,
            attributes,
            label,
            hybrid,
            dev: Dev::plain(""),
            content: None,
        };
        p.finish()?;
        parts.push((part, content_node));
    }
    // disko: a stable sort by priority over attribute-name order; `_index` is the position of the
    // first partition of that `name` in the sorted list.
    parts.sort_by_key(|(p, _)| p.priority);
    let names: Vec<String> = parts.iter().map(|(p, _)| p.name.clone()).collect();
    let mut partitions = Vec::with_capacity(parts.len());
    for (mut part, content_node) in parts {
        let index = names
            .iter()
            .position(|x| *x == part.name)
            .expect("name is listed") as u32
            + 1;
        let path = if let Some(u) = &part.uuid {
            format!("/dev/disk/by-partuuid/{u}")
        } else if parent.kind == "mdadm" {
            format!("/dev/disk/by-id/md-name-any:{}-part{index}", parent.name)
        } else {
            format!("/dev/disk/by-partlabel/{}", names::udev_escape(&part.label))
        };
        part.index = index;
        part.dev = Dev {
            path,
            partition_of: Some((dev.path.clone(), index)),
        };
        part.content = content_node
            .map(|c| {
                content(
                    c,
                    part.dev.clone(),
                    Parent {
                        kind: "partition",
                        name: &part.name,
                    },
                )
            })
            .transpose()?;
        partitions.push(part);
    }
    Ok(Gpt {
        efi_gpt_partition_first,
        partitions,
    })
}

fn attributes(p: &mut Node) -> Result<Vec<u8>> {
    let at = p.at("attributes");
    let Some(v) = p.take("attributes") else {
        return Ok(Vec::new());
    };
    let serde_json::Value::Array(items) = v else {
        return Err(LayoutError::invalid(
            at,
            "expected a list of GPT attribute bit numbers",
        ));
    };
    let mut bits = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_u64() {
            Some(b) if b < 64 => {
                // disko de-duplicates the bits.
                if !bits.contains(&(b as u8)) {
                    bits.push(b as u8);
                }
            }
            _ => {
                return Err(LayoutError::invalid(
                    format!("{at}[{i}]"),
                    "a GPT attribute is a bit number from 0 to 63",
                ));
            }
        }
    }
    Ok(bits)
}

fn table(n: &mut Node, dev: &Dev) -> Result<Table> {
    let format = match n.str_or("format", "gpt")?.as_str() {
        "gpt" => LegacyFormat::Gpt,
        "msdos" => LegacyFormat::Msdos,
        other => {
            return Err(LayoutError::invalid(
                n.at("format"),
                format!("expected `gpt` or `msdos`, found `{other}`"),
            ));
        }
    };
    let at = n.at("partitions");
    let items = match n.take("partitions") {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => {
            return Err(LayoutError::invalid(
                at,
                "a legacy `table` lists its partitions",
            ));
        }
    };
    let mut partitions = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let mut p = Node::new(format!("{at}[{i}]"), item)?;
        p.drop_derived(&["_index"]);
        let index = i as u32 + 1;
        let part_type = match p.str_or("part-type", "primary")?.as_str() {
            "primary" => LegacyPartType::Primary,
            "logical" => LegacyPartType::Logical,
            "extended" => LegacyPartType::Extended,
            other => {
                return Err(LayoutError::invalid(
                    p.at("part-type"),
                    format!("expected primary, logical or extended, found `{other}`"),
                ));
            }
        };
        let Some(path) = names::device_numbering(&dev.path, index) else {
            return Err(LayoutError::invalid(
                p.path.clone(),
                format!(
                    "disko cannot number the partitions of `{}` (it knows /dev/sd*, /dev/vd*, \
                     /dev/xvd*, /dev/nvme*, /dev/mmcblk*, /dev/loop*, /dev/md/*, /dev/mapper/*, \
                     /dev/disk/*, /dev/zvol/*)",
                    dev.path
                ),
            ));
        };
        let pdev = Dev {
            path,
            partition_of: Some((dev.path.clone(), index)),
        };
        let fs_type = p.opt_str("fs-type")?;
        let name = p.opt_str("name")?;
        let start = p.str_or("start", "0%")?;
        let end = p.str_or("end", "100%")?;
        let flags = p.strings_or("flags", &[])?;
        let bootable = p.bool_or("bootable", false)?;
        let pname = name.clone().unwrap_or_default();
        let content = p
            .child("content")?
            .map(|c| {
                content(
                    c,
                    pdev.clone(),
                    Parent {
                        kind: "partition",
                        name: &pname,
                    },
                )
            })
            .transpose()?;
        let path = p.path.clone();
        p.finish()?;
        partitions.push(TablePartition {
            path,
            index,
            part_type,
            fs_type,
            name,
            start,
            end,
            flags,
            bootable,
            dev: pdev,
            content,
        });
    }
    Ok(Table { format, partitions })
}

fn swap(n: &mut Node) -> Result<Swap> {
    let s = Swap {
        extra_args: n.strings_or("extraArgs", &[])?,
        mount_options: n.strings_or("mountOptions", &["defaults"])?,
        priority: n.opt_int("priority")?,
        discard_policy: n.opt_str("discardPolicy")?,
        random_encryption: n.bool_or("randomEncryption", false)?,
        resume_device: n.bool_or("resumeDevice", false)?,
    };
    if let Some(p) = &s.discard_policy
        && !["once", "pages", "both"].contains(&p.as_str())
    {
        return Err(LayoutError::invalid(
            n.at("discardPolicy"),
            format!("expected once, pages or both, found `{p}`"),
        ));
    }
    Ok(s)
}

fn luks(n: &mut Node) -> Result<Luks> {
    let name = n.req_str("name")?;
    let settings_at = n.at("settings");
    let settings = match n.take("settings") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => {
            return Err(LayoutError::invalid(
                settings_at,
                "expected an attribute set",
            ));
        }
    };
    let key_file = n.opt_str("keyFile")?;
    let password_file = n.opt_str("passwordFile")?;
    let has_key = key_file.is_some() || password_file.is_some() || settings.contains_key("keyFile");
    let ask_password = n.bool_or("askPassword", !has_key)?;
    let dev = Dev::plain(format!("/dev/mapper/{name}"));
    let additional_key_files = n.strings_or("additionalKeyFiles", &[])?;
    let initrd_unlock = n.bool_or("initrdUnlock", true)?;
    let extra_format_args = n.strings_or("extraFormatArgs", &[])?;
    let extra_open_args = n.strings_or("extraOpenArgs", &[])?;
    let content = n
        .child("content")?
        .map(|c| {
            content(
                c,
                dev,
                Parent {
                    kind: "luks",
                    name: &name,
                },
            )
        })
        .transpose()?;
    Ok(Luks {
        name,
        settings,
        key_file,
        password_file,
        ask_password,
        additional_key_files,
        initrd_unlock,
        extra_format_args,
        extra_open_args,
        content,
    })
}

fn btrfs(n: &mut Node) -> Result<Btrfs> {
    let extra_args = n.strings_or("extraArgs", &[])?;
    let mount_options = n.strings_or("mountOptions", &["defaults"])?;
    let mountpoint = n.opt_str("mountpoint")?;
    let swap = swap_files(n)?;
    let mut subvolumes = Vec::new();
    for (attr, mut s) in n.attrs("subvolumes")? {
        expect_type(&mut s, "btrfs_subvol")?;
        let sv = Subvolume {
            path: s.path.clone(),
            name: s.str_or("name", &attr)?,
            extra_args: s.strings_or("extraArgs", &[])?,
            mount_options: s.strings_or("mountOptions", &["defaults"])?,
            mountpoint: s.opt_str("mountpoint")?,
            swap: swap_files(&mut s)?,
        };
        s.finish()?;
        subvolumes.push(sv);
    }
    Ok(Btrfs {
        extra_args,
        mount_options,
        mountpoint,
        swap,
        subvolumes,
    })
}

fn swap_files(n: &mut Node) -> Result<Vec<SwapFile>> {
    let mut out = Vec::new();
    for (attr, mut s) in n.attrs("swap")? {
        let f = SwapFile {
            path: s.str_or("path", &attr)?,
            size: s.req_str("size")?,
            priority: s.opt_int("priority")?,
            options: s.strings_or("options", &["defaults"])?,
        };
        s.finish()?;
        out.push(f);
    }
    Ok(out)
}

impl Node {
    /// The `type` of a child node, without consuming it.
    fn child_type(&self, key: &str) -> Option<String> {
        self.peek(key)
            .and_then(|v| v.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }
}
