//! The top level of `disko.devices`: disks, volume groups, arrays, pools, nodev mounts and
//! bcachefs file systems.

use serde_json::Value;

use super::content::{Parent, content, expect_type, hooks};
use super::node::{LayoutError, Node, Result, attrs_of};
use super::*;
use crate::disk::names;

const KINDS: [&str; 6] = [
    "bcachefs_filesystems",
    "disk",
    "lvm_vg",
    "mdadm",
    "nodev",
    "zpool",
];

/// Reads a layout: the `disko.devices` attribute set as JSON (or a document with it under
/// `disko.devices`). `disk_overrides` replaces disks' devices by attribute name, as
/// `disko-install --disk NAME DEVICE` does; a name the layout lacks is an error.
pub fn parse(json: &str, disk_overrides: &[(String, String)]) -> Result<Layout> {
    let mut value: Value =
        serde_json::from_str(json).map_err(|e| LayoutError::Json(e.to_string()))?;
    if let Some(inner) = value.pointer("/disko/devices") {
        value = inner.clone();
    }
    let mut top = Node::new("", value)?;
    let mut kinds: Vec<Vec<(String, Node)>> = Vec::new();
    for kind in KINDS {
        let members = match top.take(kind) {
            None => Vec::new(),
            Some(Value::Object(map)) => attrs_of(kind, map)?,
            Some(_) => return Err(LayoutError::invalid(kind, "expected an attribute set")),
        };
        kinds.push(members);
    }
    top.finish()?;
    let [bcachefs, disks, vgs, mds, nodevs, pools] =
        <[_; 6]>::try_from(kinds).unwrap_or_else(|_| unreachable!("six kinds"));

    for (name, _) in disk_overrides {
        if !disks.iter().any(|(attr, _)| attr == name) {
            let known: Vec<&str> = disks.iter().map(|(a, _)| a.as_str()).collect();
            return Err(LayoutError::invalid(
                format!("disk.{name}"),
                format!(
                    "--disk names a disk the layout does not have (it has: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(Layout {
        bcachefs_filesystems: bcachefs
            .into_iter()
            .map(|(a, n)| bcachefs_fs(a, n))
            .collect::<Result<_>>()?,
        disk: disks
            .into_iter()
            .map(|(a, n)| {
                let over = disk_overrides
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == a)
                    .map(|(_, d)| d.clone());
                disk(a, n, over)
            })
            .collect::<Result<_>>()?,
        lvm_vg: vgs
            .into_iter()
            .map(|(a, n)| lvm_vg(a, n))
            .collect::<Result<_>>()?,
        mdadm: mds
            .into_iter()
            .map(|(a, n)| mdadm(a, n))
            .collect::<Result<_>>()?,
        nodev: nodevs
            .into_iter()
            .map(|(a, n)| nodev(a, n))
            .collect::<Result<_>>()?,
        zpool: pools
            .into_iter()
            .map(|(a, n)| zpool(a, n))
            .collect::<Result<_>>()?,
    })
}

fn disk(attr: String, mut n: Node, device_override: Option<String>) -> Result<Disk> {
    expect_type(&mut n, "disk")?;
    let path = n.path.clone();
    let name = n.str_or("name", &names::disk_name(&attr))?;
    let given = n.req_str("device")?;
    let device = device_override.unwrap_or(given);
    let destroy = n.bool_or("destroy", true)?;
    let image_name = n.str_or("imageName", &name)?;
    let image_size = n.str_or("imageSize", "2G")?;
    let hooks = hooks(&mut n)?;
    let content = n
        .child("content")?
        .map(|c| {
            content(
                c,
                Dev::plain(device.clone()),
                Parent {
                    kind: "disk",
                    name: &name,
                },
            )
        })
        .transpose()?;
    n.finish()?;
    Ok(Disk {
        path,
        attr,
        name,
        device,
        destroy,
        image_name,
        image_size,
        content,
        hooks,
    })
}

fn lvm_vg(attr: String, mut n: Node) -> Result<LvmVg> {
    expect_type(&mut n, "lvm_vg")?;
    let path = n.path.clone();
    let name = n.str_or("name", &attr)?;
    let hooks = hooks(&mut n)?;
    let mut lvs = Vec::new();
    for (lv_attr, mut l) in n.attrs("lvs")? {
        let lv_name = l.str_or("name", &lv_attr)?;
        let size = l.req_str("size")?;
        let lvm_type = l.opt_str("lvm_type")?;
        let default_priority = if lvm_type.as_deref() == Some("thin-pool") {
            501
        } else {
            1000
        } + if size.contains("100%") { 251 } else { 0 };
        let priority = l.opt_int("priority")?.unwrap_or(default_priority);
        let dev = Dev::plain(format!("/dev/{name}/{lv_name}"));
        let lv = Lv {
            path: l.path.clone(),
            size,
            lvm_type,
            pool: l.opt_str("pool")?,
            extra_args: l.strings_or("extraArgs", &[])?,
            priority,
            content: l
                .child("content")?
                .map(|c| {
                    content(
                        c,
                        dev,
                        Parent {
                            kind: "lvm_vg",
                            name: &lv_name,
                        },
                    )
                })
                .transpose()?,
            name: lv_name,
        };
        l.finish()?;
        lvs.push(lv);
    }
    lvs.sort_by_key(|l| l.priority);
    n.finish()?;
    Ok(LvmVg {
        path,
        attr,
        name,
        lvs,
        hooks,
    })
}

fn mdadm(attr: String, mut n: Node) -> Result<Mdadm> {
    expect_type(&mut n, "mdadm")?;
    let path = n.path.clone();
    let name = n.str_or("name", &attr)?;
    let level = n.opt_int("level")?.unwrap_or(1);
    let metadata = n.str_or("metadata", "default")?;
    let extra_args = n.strings_or("extraArgs", &[])?;
    let hooks = hooks(&mut n)?;
    let content = n
        .child("content")?
        .map(|c| {
            content(
                c,
                Dev::plain(format!("/dev/md/{name}")),
                Parent {
                    kind: "mdadm",
                    name: &name,
                },
            )
        })
        .transpose()?;
    n.finish()?;
    Ok(Mdadm {
        path,
        attr,
        name,
        level,
        metadata,
        extra_args,
        content,
        hooks,
    })
}

fn nodev(attr: String, mut n: Node) -> Result<Nodev> {
    expect_type(&mut n, "nodev")?;
    let path = n.path.clone();
    let fs_type = n.req_str("fsType")?;
    let default_device = match fs_type.as_str() {
        "proc" | "sysfs" | "tmpfs" | "ramfs" | "devtmpfs" | "devpts" => fs_type.as_str(),
        _ => "none",
    };
    let device = n.str_or("device", default_device)?;
    let mountpoint = Some(n.str_or("mountpoint", &attr)?);
    let mount_options = n.strings_or("mountOptions", &["defaults"])?;
    let hooks = hooks(&mut n)?;
    n.finish()?;
    Ok(Nodev {
        path,
        attr,
        fs_type,
        device,
        mountpoint,
        mount_options,
        hooks,
    })
}

fn zpool(attr: String, mut n: Node) -> Result<Zpool> {
    expect_type(&mut n, "zpool")?;
    let path = n.path.clone();
    let name = n.str_or("name", &attr)?;
    let mode_at = n.at("mode");
    let mode = match n.take("mode") {
        None => ZpoolMode::Plain(String::new()),
        Some(Value::String(s)) => ZpoolMode::Plain(s),
        Some(v @ Value::Object(_)) => {
            let mut m = Node::new(mode_at, v)?;
            let t = m.child("topology")?.ok_or_else(|| {
                LayoutError::invalid(m.at("topology"), "a mode attribute set needs `topology`")
            })?;
            m.finish()?;
            ZpoolMode::Topology(topology(t)?)
        }
        Some(_) => {
            return Err(LayoutError::invalid(
                mode_at,
                "expected a string or a topology",
            ));
        }
    };
    let options = n.options("options")?;
    let root_fs_options = n.options("rootFsOptions")?;
    let mountpoint = n.opt_str("mountpoint")?;
    let mount_options = n.strings_or("mountOptions", &["defaults"])?;
    let hooks = hooks(&mut n)?;
    let mut datasets = Vec::new();
    for (ds_attr, mut d) in n.attrs("datasets")? {
        let ty = d.req_str("type")?;
        d.drop_derived(&["_name", "_createFilesystem"]);
        if ty == "zfs_fs" && ds_attr == "__root" {
            // The pool itself, which disko never `zfs create`s: its options are rootFsOptions.
            continue;
        }
        let ds_name = d.str_or("name", &ds_attr)?;
        let full_name = format!("{name}/{ds_name}");
        let ds_hooks = super::content::hooks(&mut d)?;
        let options = d.options("options")?;
        let mount_options = d.strings_or("mountOptions", &["defaults"])?;
        let kind = match ty.as_str() {
            "zfs_fs" => DatasetKind::Fs {
                mountpoint: d.opt_str("mountpoint")?,
            },
            "zfs_volume" => {
                let dev = Dev::plain(format!("/dev/zvol/{full_name}"));
                DatasetKind::Volume {
                    size: d.req_str("size")?,
                    extra_args: d.strings_or("extraArgs", &[])?,
                    content: d
                        .child("content")?
                        .map(|c| {
                            content(
                                c,
                                dev,
                                Parent {
                                    kind: "zfs_volume",
                                    name: &ds_name,
                                },
                            )
                        })
                        .transpose()?
                        .map(Box::new),
                }
            }
            other => {
                return Err(LayoutError::invalid(
                    d.at("type"),
                    format!("expected zfs_fs or zfs_volume, found `{other}`"),
                ));
            }
        };
        datasets.push(Dataset {
            path: d.path.clone(),
            name: ds_name,
            full_name,
            options,
            mount_options,
            hooks: ds_hooks,
            kind,
        });
        d.finish()?;
    }
    n.finish()?;
    Ok(Zpool {
        path,
        attr,
        name,
        mode,
        options,
        root_fs_options,
        mountpoint,
        mount_options,
        datasets,
        hooks,
    })
}

fn topology(mut t: Node) -> Result<Topology> {
    expect_type(&mut t, "topology")?;
    let vdevs = |t: &mut Node, key: &str| -> Result<Vec<Vdev>> {
        let at = t.at(key);
        let Some(v) = t.take(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = v else {
            return Err(LayoutError::invalid(at, "expected a list of vdevs"));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let mut n = Node::new(format!("{at}[{i}]"), item)?;
                let v = Vdev {
                    mode: n.str_or("mode", "")?,
                    members: n.strings_or("members", &[])?,
                };
                n.finish()?;
                Ok(v)
            })
            .collect()
    };
    let topo = Topology {
        vdev: vdevs(&mut t, "vdev")?,
        spare: t.strings_or("spare", &[])?,
        log: vdevs(&mut t, "log")?,
        dedup: vdevs(&mut t, "dedup")?,
        special: vdevs(&mut t, "special")?,
        cache: t.strings_or("cache", &[])?,
    };
    t.finish()?;
    Ok(topo)
}

fn bcachefs_fs(attr: String, mut n: Node) -> Result<BcachefsFs> {
    expect_type(&mut n, "bcachefs_filesystem")?;
    let path = n.path.clone();
    let name = n.str_or("name", &attr)?;
    let uuid = n.str_or("uuid", &names::bcachefs_uuid(&name))?;
    let mount_options = n.strings_or("mountOptions", &["X-mount.mkdir"])?;
    let mountpoint = n.opt_str("mountpoint")?;
    let password_file = n.opt_str("passwordFile")?;
    let extra_format_args = n.strings_or("extraFormatArgs", &[])?;
    let hooks = hooks(&mut n)?;
    let mut subvolumes = Vec::new();
    for (sv_attr, mut s) in n.attrs("subvolumes")? {
        expect_type(&mut s, "bcachefs_subvolume")?;
        let sv_name = s.str_or("name", &sv_attr)?;
        let subdir = format!("X-mount.subdir={}", sv_name.trim_start_matches('/'));
        let mut default = ["X-mount.mkdir", subdir.as_str()];
        default.sort();
        let sv = BcachefsSubvolume {
            path: s.path.clone(),
            mountpoint: s.opt_str("mountpoint")?,
            mount_options: s.strings_or("mountOptions", &default)?,
            name: sv_name,
        };
        s.finish()?;
        subvolumes.push(sv);
    }
    n.finish()?;
    Ok(BcachefsFs {
        path,
        attr,
        name,
        uuid,
        mount_options,
        mountpoint,
        password_file,
        extra_format_args,
        subvolumes,
        hooks,
    })
}
