//! Turning a validated layout into steps, in disko's order: top-level devices toposorted, each
//! node's commands where disko's `_create`, `_mount` and `_unmount` snippets put them.

use std::collections::BTreeMap;

use super::step::{BtrfsSubvolumeSpec, BtrfsSwapFile, DiskStep, Key};
use crate::disk::layout::*;
use crate::disk::order::DeviceId;
use crate::disk::table::spec::{
    GptPartition as SpecPart, GptSpec, HybridMbr, HybridPartition, LegacyFormat, LegacyPartition,
    LegacySpec, TableSpec,
};
use crate::disk::{names, validate};

pub struct Planner<'a> {
    pub(super) layout: &'a Layout,
    pub(super) root: String,
    pub(super) steps: Vec<DiskStep>,
    /// Members handed to their parent (disko's `$disko_devices_dir` files): `lvm_vg`, `mdadm`,
    /// `zpool` name → devices in creation order; bcachefs gets argument lines.
    members: BTreeMap<(&'static str, String), Vec<Dev>>,
    bcachefs_args: BTreeMap<String, Vec<String>>,
}

/// Splits an argument the way disko's unquoted `${args}` expansion does.
fn words(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split_whitespace().map(str::to_owned))
        .collect()
}

impl<'a> Planner<'a> {
    pub fn new(layout: &'a Layout, root: &str) -> Self {
        let root = if root.len() > 1 {
            root.trim_end_matches('/')
        } else {
            root
        };
        Self {
            layout,
            root: root.to_owned(),
            steps: Vec::new(),
            members: BTreeMap::new(),
            bcachefs_args: BTreeMap::new(),
        }
    }

    pub fn into_steps(self) -> Vec<DiskStep> {
        self.steps
    }

    /// `<root><mountpoint>`; `/` is the root itself.
    pub(super) fn target(&self, mp: &str) -> String {
        if mp == "/" {
            self.root.clone()
        } else if self.root == "/" {
            mp.to_owned()
        } else {
            format!("{}{mp}", self.root)
        }
    }

    fn hook(&mut self, node: &str, hook: &str, script: &str) {
        if !script.trim().is_empty() {
            self.steps.push(DiskStep::Hook {
                node: node.to_owned(),
                hook: hook.to_owned(),
                script: script.to_owned(),
            });
        }
    }

    // ---- destroy ----

    pub fn destroy(&mut self) {
        self.steps.push(DiskStep::UnmountRoot {
            root: self.root.clone(),
        });
        for d in self.layout.disk.iter().filter(|d| d.destroy) {
            self.steps.push(DiskStep::Release {
                device: d.device.clone(),
                root: self.root.clone(),
            });
            self.steps.push(DiskStep::Wipe {
                device: d.device.clone(),
            });
        }
    }

    // ---- format ----

    pub fn format(&mut self, order: &[DeviceId]) {
        let layout = self.layout;
        for (kind, attr) in order {
            match kind.as_str() {
                "disk" => {
                    let d = layout
                        .disk
                        .iter()
                        .find(|d| &d.attr == attr)
                        .expect("listed");
                    self.hook(&d.path, "preCreateHook", &d.hooks.pre_create);
                    if let Some(c) = &d.content {
                        self.create(c);
                    }
                    self.hook(&d.path, "postCreateHook", &d.hooks.post_create);
                }
                "lvm_vg" => {
                    let vg = layout
                        .lvm_vg
                        .iter()
                        .find(|v| &v.attr == attr)
                        .expect("listed");
                    self.create_vg(vg);
                }
                "mdadm" => {
                    let md = layout
                        .mdadm
                        .iter()
                        .find(|v| &v.attr == attr)
                        .expect("listed");
                    self.hook(&md.path, "preCreateHook", &md.hooks.pre_create);
                    let devices = self.take_members("mdadm", &md.name);
                    self.steps.push(DiskStep::MdCreate {
                        name: md.name.clone(),
                        level: md.level,
                        metadata: md.metadata.clone(),
                        extra_args: md.extra_args.clone(),
                        devices,
                    });
                    if let Some(c) = &md.content {
                        self.create(c);
                    }
                    self.hook(&md.path, "postCreateHook", &md.hooks.post_create);
                }
                "zpool" => {
                    let pool = layout
                        .zpool
                        .iter()
                        .find(|v| &v.attr == attr)
                        .expect("listed");
                    self.create_zpool(pool);
                }
                "bcachefs_filesystems" => {
                    let fs = layout
                        .bcachefs_filesystems
                        .iter()
                        .find(|v| &v.attr == attr)
                        .expect("listed");
                    self.hook(&fs.path, "preCreateHook", &fs.hooks.pre_create);
                    let member_args = self.bcachefs_args.remove(&fs.name).unwrap_or_default();
                    self.steps.push(DiskStep::BcachefsFormat {
                        uuid: fs.uuid.clone(),
                        member_args,
                        extra_args: words(&fs.extra_format_args),
                        password_file: fs.password_file.clone(),
                    });
                    self.hook(&fs.path, "postCreateHook", &fs.hooks.post_create);
                }
                _ => {} // nodev: nothing to create
            }
        }
    }

    fn take_members(&mut self, kind: &'static str, name: &str) -> Vec<Dev> {
        self.members
            .remove(&(kind, name.to_owned()))
            .unwrap_or_default()
    }

    fn create(&mut self, c: &Content) {
        self.hook(&c.path, "preCreateHook", &c.hooks.pre_create);
        let dev = c.dev.clone();
        match &c.kind {
            ContentKind::Gpt(g) => {
                self.steps.push(DiskStep::WriteTable {
                    device: dev,
                    spec: TableSpec::Gpt(gpt_spec(g)),
                });
                for p in &g.partitions {
                    if let Some(pc) = &p.content {
                        self.create(pc);
                    }
                }
            }
            ContentKind::Table(t) => {
                self.steps.push(DiskStep::WriteTable {
                    device: dev,
                    spec: TableSpec::Legacy(legacy_spec(t)),
                });
                for p in &t.partitions {
                    if let Some(pc) = &p.content {
                        self.create(pc);
                    }
                }
            }
            ContentKind::Filesystem(f) => self.steps.push(DiskStep::Mkfs {
                device: dev,
                format: f.format.clone(),
                args: f.extra_args.clone(),
                args_after_device: false,
            }),
            ContentKind::Swap(s) => {
                if !s.random_encryption {
                    self.steps.push(DiskStep::Mkswap {
                        device: dev,
                        args: s.extra_args.clone(),
                    });
                }
            }
            ContentKind::Luks(l) => {
                let key = luks_key(l);
                self.steps.push(DiskStep::LuksFormat {
                    device: dev.clone(),
                    name: l.name.clone(),
                    args: words(&l.extra_format_args),
                    key: key.clone(),
                });
                self.steps.push(DiskStep::LuksOpen {
                    device: dev.clone(),
                    name: l.name.clone(),
                    args: luks_open_args(l),
                    key: key.clone(),
                    persistent: true,
                });
                for k in &l.additional_key_files {
                    self.steps.push(DiskStep::LuksAddKey {
                        device: dev.clone(),
                        new_key_file: k.clone(),
                        key: key.clone(),
                    });
                }
                if let Some(inner) = &l.content {
                    self.create(inner);
                }
            }
            ContentKind::LvmPv { vg } => {
                self.steps.push(DiskStep::PvCreate {
                    device: dev.clone(),
                });
                self.members
                    .entry(("lvm_vg", vg.clone()))
                    .or_default()
                    .push(dev);
            }
            ContentKind::Mdraid { name } => {
                self.members
                    .entry(("mdadm", name.clone()))
                    .or_default()
                    .push(dev);
            }
            ContentKind::Zfs { pool } => {
                self.members
                    .entry(("zpool", pool.clone()))
                    .or_default()
                    .push(dev);
            }
            ContentKind::Bcachefs(b) => {
                let args = self.bcachefs_args.entry(b.filesystem.clone()).or_default();
                args.push(format!("--label={}", b.label));
                args.extend(words(&b.extra_format_args));
                args.push(dev.path.clone());
            }
            ContentKind::Btrfs(b) => {
                self.steps.push(DiskStep::Mkfs {
                    device: dev.clone(),
                    format: "btrfs".into(),
                    args: words(&b.extra_args),
                    args_after_device: true,
                });
                let mut swap_files: Vec<BtrfsSwapFile> = b
                    .swap
                    .iter()
                    .map(|s| BtrfsSwapFile {
                        path: s.path.clone(),
                        size: s.size.clone(),
                    })
                    .collect();
                let mut subvolumes = Vec::new();
                for sv in &b.subvolumes {
                    subvolumes.push(BtrfsSubvolumeSpec {
                        name: sv.name.clone(),
                        extra_args: words(&sv.extra_args),
                    });
                    for s in &sv.swap {
                        swap_files.push(BtrfsSwapFile {
                            path: format!("{}/{}", sv.name.trim_end_matches('/'), s.path),
                            size: s.size.clone(),
                        });
                    }
                }
                if !swap_files.is_empty() || !subvolumes.is_empty() {
                    self.steps.push(DiskStep::BtrfsSubvolumes {
                        device: dev,
                        swap_files,
                        subvolumes,
                    });
                }
            }
        }
        self.hook(&c.path, "postCreateHook", &c.hooks.post_create);
    }

    fn create_vg(&mut self, vg: &LvmVg) {
        self.hook(&vg.path, "preCreateHook", &vg.hooks.pre_create);
        self.steps.push(DiskStep::Modprobe {
            module: "dm-snapshot".into(),
        });
        for lv in &vg.lvs {
            if let Some(t) = &lv.lvm_type
                && t != "thinlv"
            {
                self.steps.push(DiskStep::Modprobe {
                    module: format!("dm-{t}"),
                });
            }
        }
        let pvs = self.take_members("lvm_vg", &vg.name);
        self.steps.push(DiskStep::VgCreate {
            name: vg.name.clone(),
            pvs,
        });
        for lv in &vg.lvs {
            let thin = lv.lvm_type.as_deref() == Some("thinlv");
            let (flag, size) = if thin {
                ("-V", lv.size.clone())
            } else if lv.size.contains('%') {
                let s = if lv.size.ends_with('%') {
                    format!("{}FREE", lv.size)
                } else {
                    lv.size.clone()
                };
                ("-l", s)
            } else {
                ("-L", lv.size.clone())
            };
            let mut args = vec![
                "--yes".to_owned(),
                flag.into(),
                size,
                "-n".into(),
                lv.name.clone(),
            ];
            if thin {
                args.push(format!(
                    "--thinpool={}",
                    lv.pool.clone().unwrap_or_default()
                ));
            } else if let Some(t) = &lv.lvm_type {
                args.push(format!("--type={t}"));
            }
            args.extend(lv.extra_args.iter().cloned());
            args.push(vg.name.clone());
            self.steps.push(DiskStep::LvCreate {
                vg: vg.name.clone(),
                name: lv.name.clone(),
                args,
            });
        }
        for lv in &vg.lvs {
            if let Some(c) = &lv.content {
                self.create(c);
            }
        }
        self.hook(&vg.path, "postCreateHook", &vg.hooks.post_create);
    }

    fn create_zpool(&mut self, pool: &Zpool) {
        self.hook(&pool.path, "preCreateHook", &pool.hooks.pre_create);
        let devices = self.take_members("zpool", &pool.name);
        let mut args = vec![
            "-f".to_owned(),
            pool.name.clone(),
            "-R".into(),
            self.root.clone(),
        ];
        if pool
            .root_fs_options
            .iter()
            .any(|(k, v)| k == "canmount" && v == "off")
        {
            args.extend(["-m".into(), "none".into()]);
        }
        for (k, v) in &pool.options {
            args.extend(["-o".into(), format!("{k}={v}")]);
        }
        for (k, v) in &pool.root_fs_options {
            args.extend(["-O".into(), format!("{k}={v}")]);
        }
        match &pool.mode {
            ZpoolMode::Plain(mode) => {
                if !mode.is_empty() {
                    args.push(mode.clone());
                }
                args.extend(devices.iter().map(|d| d.path.clone()));
            }
            ZpoolMode::Topology(t) => args.extend(topology_args(t)),
        }
        self.steps.push(DiskStep::ZpoolCreate {
            name: pool.name.clone(),
            args,
        });
        for ds in &pool.datasets {
            self.hook(&ds.path, "preCreateHook", &ds.hooks.pre_create);
            match &ds.kind {
                DatasetKind::Fs { mountpoint } => {
                    let mut opts = ds.options.clone();
                    if let Some(mp) = mountpoint
                        && !opts.iter().any(|(k, _)| k == "mountpoint")
                    {
                        opts.push(("mountpoint".into(), mp.clone()));
                        opts.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    }
                    let mut args = vec!["-up".to_owned(), ds.full_name.clone()];
                    for (k, v) in opts {
                        args.extend(["-o".into(), format!("{k}={v}")]);
                    }
                    self.steps.push(DiskStep::ZfsCreate {
                        name: ds.full_name.clone(),
                        args,
                    });
                }
                DatasetKind::Volume {
                    size,
                    extra_args,
                    content,
                } => {
                    let mut args = vec![ds.full_name.clone()];
                    for (k, v) in &ds.options {
                        args.extend(["-o".into(), format!("{k}={v}")]);
                    }
                    args.extend(["-V".into(), size.clone()]);
                    args.extend(words(extra_args));
                    self.steps.push(DiskStep::ZfsCreate {
                        name: ds.full_name.clone(),
                        args,
                    });
                    if let Some(c) = content {
                        self.create(c);
                    }
                }
            }
            self.hook(&ds.path, "postCreateHook", &ds.hooks.post_create);
        }
        self.hook(&pool.path, "postCreateHook", &pool.hooks.post_create);
    }
}

pub(super) fn luks_key(l: &Luks) -> Key {
    let from_settings = l.settings.contains_key("keyFile");
    if !from_settings && !l.ask_password && l.password_file.is_some() {
        return Key::PasswordFile {
            path: l.password_file.clone().expect("checked"),
        };
    }
    match validate::luks_key_file(l) {
        None => Key::Ask,
        Some(path) => {
            let num = |k: &str| {
                l.settings.get(k).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            };
            Key::File {
                path,
                size: if from_settings {
                    num("keyFileSize")
                } else {
                    None
                },
                offset: if from_settings {
                    num("keyFileOffset")
                } else {
                    None
                },
            }
        }
    }
}

pub(super) fn luks_open_args(l: &Luks) -> Vec<String> {
    let flag = |k: &str| l.settings.get(k).and_then(|v| v.as_bool()) == Some(true);
    let mut a = Vec::new();
    if flag("allowDiscards") {
        a.push("--allow-discards".to_owned());
    }
    if flag("bypassWorkqueues") {
        a.push("--perf-no_read_workqueue".to_owned());
        a.push("--perf-no_write_workqueue".to_owned());
    }
    a.extend(words(&l.extra_open_args));
    a
}

fn topology_args(t: &Topology) -> Vec<String> {
    let member = |m: &String| {
        if m.starts_with('/') {
            m.clone()
        } else {
            format!("/dev/disk/by-partlabel/disk-{m}-zfs")
        }
    };
    let mut out = Vec::new();
    let group = |name: &str, vdevs: &[Vdev], out: &mut Vec<String>| {
        let mut sorted: Vec<&Vdev> = vdevs.iter().filter(|v| v.mode.is_empty()).collect();
        sorted.extend(vdevs.iter().filter(|v| !v.mode.is_empty()));
        if sorted.is_empty() {
            return;
        }
        if !name.is_empty() {
            out.push(name.to_owned());
        }
        for v in sorted {
            if !v.mode.is_empty() {
                out.push(v.mode.clone());
            }
            out.extend(v.members.iter().map(member));
        }
    };
    group("", &t.vdev, &mut out);
    if !t.spare.is_empty() {
        out.push("spare".into());
        out.extend(t.spare.iter().map(member));
    }
    group("log", &t.log, &mut out);
    group("dedup", &t.dedup, &mut out);
    group("special", &t.special, &mut out);
    if !t.cache.is_empty() {
        out.push("cache".into());
        out.extend(t.cache.iter().map(member));
    }
    out
}

fn gpt_spec(g: &Gpt) -> GptSpec {
    let hybrid: Vec<HybridPartition> = g
        .partitions
        .iter()
        .filter_map(|p| {
            p.hybrid.as_ref().map(|h| HybridPartition {
                number: p.index,
                mbr_type: h.mbr_partition_type.clone(),
                bootable: h.mbr_bootable_flag,
            })
        })
        .collect();
    GptSpec {
        partitions: g
            .partitions
            .iter()
            .map(|p| SpecPart {
                number: p.index,
                label: p.label.clone(),
                type_code: p.type_code.clone(),
                start: p.start.clone(),
                end: p.end.clone(),
                alignment: p.alignment,
                guid: p.uuid.clone(),
                attributes: p.attributes.clone(),
            })
            .collect(),
        hybrid: (!hybrid.is_empty()).then_some(HybridMbr {
            partitions: hybrid,
            efi_gpt_partition_first: g.efi_gpt_partition_first,
        }),
    }
}

fn legacy_spec(t: &Table) -> LegacySpec {
    LegacySpec {
        format: t.format,
        partitions: t
            .partitions
            .iter()
            .map(|p| LegacyPartition {
                number: p.index,
                part_type: p.part_type,
                fs_type: p.fs_type.clone(),
                name: match t.format {
                    LegacyFormat::Gpt => Some(names::udev_escape(p.name.as_deref().unwrap_or(""))),
                    LegacyFormat::Msdos => None,
                },
                start: p.start.clone(),
                end: p.end.clone(),
                flags: p.flags.clone(),
                bootable: p.bootable,
            })
            .collect(),
    }
}
