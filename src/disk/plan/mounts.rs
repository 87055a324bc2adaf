//! The mount and unmount halves of the plan: devices opened in device order, then file systems
//! in NixOS's mount order (§10); unmount in reverse attribute-name order of the mount points and
//! swap devices, then the devices in reverse device order (§7).

use super::build::{Planner, luks_key, luks_open_args};
use super::step::DiskStep;
use crate::disk::layout::*;
use crate::disk::order::{self, DeviceId, FsEntry};
use crate::disk::validate;

/// One mount disko's `_mount` runs, keyed for NixOS's `fsBefore`.
struct MountEntry {
    fs: FsEntry,
    steps: Vec<DiskStep>,
}

impl Planner<'_> {
    // ---- mount ----

    pub fn mount(&mut self, order: &[DeviceId]) -> Result<(), LayoutError> {
        // 1. The devices' own snippets, in device order: VG activation or pool import, then the
        //    LUKS devices on it opened.
        let layout = self.layout;
        let by_top: Vec<(DeviceId, &Content)> = validate::contents(layout);
        for id in order {
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
        // Then the devices, in reverse device order: what sits on a device (LUKS, innermost first)
        // is closed before the device itself is stopped.
        for id in order.iter().rev() {
            for (_, c) in contents.iter().rev().filter(|(top, _)| top == id) {
                if let ContentKind::Luks(l) = &c.kind {
                    self.steps.push(DiskStep::LuksClose {
                        name: l.name.clone(),
                    });
                }
            }
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
