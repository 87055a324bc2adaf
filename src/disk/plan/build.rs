//! Turning a validated layout into steps, in disko's order: top-level devices toposorted, each
//! node's commands where disko's `_create`, `_mount` and `_unmount` snippets put them.

use std::collections::BTreeMap;

use super::step::{BtrfsSubvolumeSpec, BtrfsSwapFile, DiskStep, Key};
use crate::disk::layout::*;
use crate::disk::order::{self, DeviceId, FsEntry};
use crate::disk::table::spec::{
    GptPartition as SpecPart, GptSpec, HybridMbr, HybridPartition, LegacyFormat, LegacyPartition,
    LegacySpec, TableSpec,
};
use crate::disk::{names, validate};

pub struct Planner<'a> {
    layout: &'a Layout,
    root: String,
    steps: Vec<DiskStep>,
    /// Members handed to their parent (disko's `$disko_devices_dir` files): `lvm_vg`, `mdadm`,
    /// `zpool` name → devices in creation order; bcachefs gets argument lines.
    members: BTreeMap<(&'static str, String), Vec<Dev>>,
    bcachefs_args: BTreeMap<String, Vec<String>>,
}

/// One mount disko's `_mount` runs, keyed for NixOS's `fsBefore`.
struct MountEntry {
    fs: FsEntry,
    steps: Vec<DiskStep>,
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
    fn target(&self, mp: &str) -> String {
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

    // ---- mount ----

    pub fn mount(&mut self, order: &[DeviceId]) -> Result<(), LayoutError> {
        // 1. The devices' own snippets, in device order: LUKS open, VG activation, pool import.
        let layout = self.layout;
        let by_top: Vec<(DeviceId, &Content)> = validate::contents(layout);
        for id in order {
            for (_, c) in by_top.iter().filter(|(top, _)| top == id) {
                if let ContentKind::Luks(l) = &c.kind {
                    self.steps.push(DiskStep::LuksOpen {
                        device: c.dev.clone(),
                        name: l.name.clone(),
                        args: luks_open_args(l),
                        key: luks_key(l),
                        persistent: false,
                    });
                }
            }
            match id.0.as_str() {
                "lvm_vg" => {
                    let vg = layout
                        .lvm_vg
                        .iter()
                        .find(|v| v.attr == id.1)
                        .expect("listed");
                    self.steps.push(DiskStep::VgActivate {
                        name: vg.name.clone(),
                    });
                }
                "zpool" => {
                    let p = layout
                        .zpool
                        .iter()
                        .find(|v| v.attr == id.1)
                        .expect("listed");
                    self.steps.push(DiskStep::ZpoolImport {
                        name: p.name.clone(),
                        root: self.root.clone(),
                    });
                    for ds in &p.datasets {
                        if ds.option("keylocation").is_some_and(|k| k != "none") {
                            self.steps.push(DiskStep::ZfsLoadKey {
                                name: ds.full_name.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        // 2. The file systems, in NixOS's mount order.
        let entries = self.mount_entries();
        let fs: Vec<FsEntry> = entries.iter().map(|e| e.fs.clone()).collect();
        let order = order::mount_order(&fs).map_err(|cycle| {
            LayoutError::invalid(
                "",
                format!(
                    "the mount points depend on each other: {}",
                    cycle.join(", ")
                ),
            )
        })?;
        let mut entries: Vec<Option<MountEntry>> = entries.into_iter().map(Some).collect();
        for i in order {
            let e = entries[i].take().expect("each index once");
            self.steps.extend(e.steps);
        }
        Ok(())
    }

    fn mount_step(&self, device: Dev, mp: &str, fstype: &str, options: Vec<String>) -> MountEntry {
        MountEntry {
            fs: FsEntry {
                mount_point: mp.to_owned(),
                device: device.path.clone(),
            },
            steps: vec![DiskStep::Mount {
                device,
                target: self.target(mp),
                fstype: fstype.to_owned(),
                options,
            }],
        }
    }

    fn mount_entries(&self) -> Vec<MountEntry> {
        let mut out = Vec::new();
        let with_hooks = |mut e: MountEntry, path: &str, hooks: &Hooks| {
            if !hooks.pre_mount.trim().is_empty() {
                e.steps
                    .insert(0, hook_step(path, "preMountHook", &hooks.pre_mount));
            }
            if !hooks.post_mount.trim().is_empty() {
                e.steps
                    .push(hook_step(path, "postMountHook", &hooks.post_mount));
            }
            e
        };
        for (_, c) in validate::contents(self.layout) {
            match &c.kind {
                ContentKind::Filesystem(f) => {
                    if let Some(mp) = &f.mountpoint {
                        let e =
                            self.mount_step(c.dev.clone(), mp, &f.format, f.mount_options.clone());
                        out.push(with_hooks(e, &c.path, &c.hooks));
                    }
                }
                ContentKind::Btrfs(b) => {
                    if let Some(mp) = &b.mountpoint {
                        let e =
                            self.mount_step(c.dev.clone(), mp, "btrfs", b.mount_options.clone());
                        out.push(with_hooks(e, &c.path, &c.hooks));
                    }
                    for sv in &b.subvolumes {
                        if let Some(mp) = &sv.mountpoint {
                            let mut opts = sv.mount_options.clone();
                            opts.push(format!("subvol={}", sv.name));
                            out.push(self.mount_step(c.dev.clone(), mp, "btrfs", opts));
                        }
                    }
                }
                _ => {}
            }
        }
        for n in &self.layout.nodev {
            if let Some(mp) = &n.mountpoint {
                let device = if n.mount_options.iter().any(|o| o == "bind") {
                    self.target(&n.device)
                } else {
                    n.device.clone()
                };
                let e =
                    self.mount_step(Dev::plain(device), mp, &n.fs_type, n.mount_options.clone());
                out.push(with_hooks(e, &n.path, &n.hooks));
            }
        }
        for p in &self.layout.zpool {
            let zfs_opts = |mount_options: &[String], legacy: bool| {
                let mut o = mount_options.to_vec();
                if !legacy {
                    o.push("zfsutil".into());
                }
                o
            };
            let opt = |opts: &[(String, String)], key: &str| {
                opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
            };
            let mounts = |opts: &[(String, String)]| {
                opt(opts, "mountpoint").as_deref() != Some("none")
                    && opt(opts, "canmount").as_deref() != Some("off")
            };
            if let Some(mp) = &p.mountpoint
                && mounts(&p.root_fs_options)
            {
                let legacy = opt(&p.root_fs_options, "mountpoint").as_deref() == Some("legacy");
                let e = self.mount_step(
                    Dev::plain(p.name.clone()),
                    mp,
                    "zfs",
                    zfs_opts(&p.mount_options, legacy),
                );
                out.push(e);
            }
            for ds in &p.datasets {
                if let DatasetKind::Fs {
                    mountpoint: Some(mp),
                } = &ds.kind
                    && mounts(&ds.options)
                {
                    let legacy = ds.option("mountpoint") == Some("legacy");
                    let e = self.mount_step(
                        Dev::plain(ds.full_name.clone()),
                        mp,
                        "zfs",
                        zfs_opts(&ds.mount_options, legacy),
                    );
                    out.push(with_hooks(e, &ds.path, &ds.hooks));
                }
            }
        }
        for b in &self.layout.bcachefs_filesystems {
            let dev = Dev::plain(format!("/dev/disk/by-uuid/{}", b.uuid));
            if let Some(mp) = &b.mountpoint {
                let e = self.mount_step(dev.clone(), mp, "bcachefs", b.mount_options.clone());
                out.push(with_hooks(e, &b.path, &b.hooks));
            }
            for sv in &b.subvolumes {
                if let Some(mp) = &sv.mountpoint {
                    // disko always mounts a subvolume through its subdirectory.
                    let subdir = format!("X-mount.subdir={}", sv.name.trim_start_matches('/'));
                    let mut opts = sv.mount_options.clone();
                    if !opts.contains(&subdir) {
                        opts.push(subdir);
                    }
                    out.push(self.mount_step(dev.clone(), mp, "bcachefs", opts));
                }
            }
        }
        out
    }

    // ---- unmount ----

    pub fn unmount(&mut self, order: &[DeviceId]) {
        // File systems and swap, in reverse byte order of their keys (mount points, swap paths).
        let mut keyed: Vec<(String, DiskStep)> = self
            .mount_entries()
            .into_iter()
            .map(|e| {
                let target = self.target(&e.fs.mount_point);
                (e.fs.mount_point, DiskStep::Umount { target })
            })
            .collect();
        let contents = validate::contents(self.layout);
        for (_, c) in &contents {
            if let ContentKind::Swap(s) = &c.kind
                && !s.random_encryption
            {
                keyed.push((
                    c.dev.path.clone(),
                    DiskStep::Swapoff {
                        device: c.dev.clone(),
                    },
                ));
            }
        }
        keyed.sort_by(|a, b| b.0.as_bytes().cmp(a.0.as_bytes()));
        self.steps.extend(keyed.into_iter().map(|(_, s)| s));
        // Then the devices, in reverse device order, each one's LUKS closed innermost first.
        for id in order.iter().rev() {
            match id.0.as_str() {
                "lvm_vg" => {
                    let vg = self
                        .layout
                        .lvm_vg
                        .iter()
                        .find(|v| v.attr == id.1)
                        .expect("listed");
                    self.steps.push(DiskStep::VgDeactivate {
                        name: vg.name.clone(),
                    });
                }
                "zpool" => {
                    let p = self
                        .layout
                        .zpool
                        .iter()
                        .find(|v| v.attr == id.1)
                        .expect("listed");
                    self.steps.push(DiskStep::ZpoolExport {
                        name: p.name.clone(),
                    });
                }
                "mdadm" => {
                    let md = self
                        .layout
                        .mdadm
                        .iter()
                        .find(|v| v.attr == id.1)
                        .expect("listed");
                    self.steps.push(DiskStep::MdStop {
                        name: md.name.clone(),
                    });
                }
                _ => {}
            }
            for (_, c) in contents.iter().rev().filter(|(top, _)| top == id) {
                if let ContentKind::Luks(l) = &c.kind {
                    self.steps.push(DiskStep::LuksClose {
                        name: l.name.clone(),
                    });
                }
            }
        }
    }
}

fn hook_step(node: &str, hook: &str, script: &str) -> DiskStep {
    DiskStep::Hook {
        node: node.to_owned(),
        hook: hook.to_owned(),
        script: script.to_owned(),
    }
}

fn luks_key(l: &Luks) -> Key {
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

fn luks_open_args(l: &Luks) -> Vec<String> {
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
        hybrid: (!hybrid.is_empty()).then(|| HybridMbr {
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
