//! The disk phase's closed set of steps. Each holds plain data (so the plan prints and
//! serialises before anything runs) and knows the command line disko would run for it, written
//! with disko's device paths; execution runs the same argv on the kernel's own device node.

use serde::Serialize;

use crate::disk::layout::Dev;
use crate::disk::table::spec::TableSpec;

/// Where a LUKS key comes from. Never the secret itself: a file path, or a passphrase the caller
/// hands over at execution (fed on standard input, never in argv).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    File {
        path: String,
        size: Option<String>,
        offset: Option<String>,
    },
    /// `passwordFile`: the file's content without its trailing newlines (disko feeds
    /// `echo -n "$(cat FILE)"`), on standard input.
    PasswordFile { path: String },
    /// `askPassword`: the operator's passphrase for this LUKS name.
    Ask,
}

impl Key {
    /// `--key-file PATH [--keyfile-size N] [--keyfile-offset N]`, or `--key-file -` (stdin).
    pub fn args(&self) -> Vec<String> {
        match self {
            Key::File { path, size, offset } => {
                let mut a = vec!["--key-file".to_owned(), path.clone()];
                if let Some(s) = size {
                    a.extend(["--keyfile-size".to_owned(), s.clone()]);
                }
                if let Some(o) = offset {
                    a.extend(["--keyfile-offset".to_owned(), o.clone()]);
                }
                a
            }
            Key::PasswordFile { .. } | Key::Ask => vec!["--key-file".to_owned(), "-".to_owned()],
        }
    }
}

/// A swap file in a btrfs file system, its path relative to the top-level subvolume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BtrfsSwapFile {
    pub path: String,
    pub size: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BtrfsSubvolumeSpec {
    pub name: String,
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum DiskStep {
    /// destroy: `umount -R` everything under the target root.
    UnmountRoot {
        root: String,
    },
    /// destroy: release what holds a disk (mounts under the root, swap, LVM, md, LUKS, pools),
    /// children first; refuse a disk holding a file system mounted outside the root.
    Release {
        device: String,
        root: String,
    },
    /// destroy: `wipefs --all -f` the disk's partitions and the disk, zero the MBR boot code.
    Wipe {
        device: String,
    },
    /// format: a partition table, as the table writers lay it down.
    WriteTable {
        device: Dev,
        spec: TableSpec,
    },
    /// `mkfs.<format>`: `extraArgs` before the device, except for btrfs (after, word-split).
    Mkfs {
        device: Dev,
        format: String,
        args: Vec<String>,
        args_after_device: bool,
    },
    Mkswap {
        device: Dev,
        args: Vec<String>,
    },
    LuksFormat {
        device: Dev,
        name: String,
        args: Vec<String>,
        key: Key,
    },
    LuksOpen {
        device: Dev,
        name: String,
        args: Vec<String>,
        key: Key,
        persistent: bool,
    },
    /// Runs on every format, as disko's does (§13.9).
    LuksAddKey {
        device: Dev,
        new_key_file: String,
        key: Key,
    },
    LuksClose {
        name: String,
    },
    Modprobe {
        module: String,
    },
    PvCreate {
        device: Dev,
    },
    VgCreate {
        name: String,
        pvs: Vec<Dev>,
    },
    /// `lvcreate` with its whole argument list.
    LvCreate {
        vg: String,
        name: String,
        args: Vec<String>,
    },
    /// `vgchange -a y` (disko activates every VG).
    VgActivate {
        name: String,
    },
    VgDeactivate {
        name: String,
    },
    MdCreate {
        name: String,
        level: i64,
        metadata: String,
        extra_args: Vec<String>,
        devices: Vec<Dev>,
    },
    MdStop {
        name: String,
    },
    /// Mounts the top level on a temporary directory, creates what is missing, unmounts.
    BtrfsSubvolumes {
        device: Dev,
        swap_files: Vec<BtrfsSwapFile>,
        subvolumes: Vec<BtrfsSubvolumeSpec>,
    },
    /// `zpool create` with its whole argument list (members included).
    ZpoolCreate {
        name: String,
        args: Vec<String>,
    },
    ZpoolImport {
        name: String,
        root: String,
    },
    ZpoolExport {
        name: String,
    },
    /// `zfs create` with its whole argument list.
    ZfsCreate {
        name: String,
        args: Vec<String>,
    },
    ZfsLoadKey {
        name: String,
    },
    /// `bcachefs format <members' lines> --uuid=U <extraFormatArgs> [--encrypted < passwordFile]`.
    BcachefsFormat {
        uuid: String,
        member_args: Vec<String>,
        extra_args: Vec<String>,
        password_file: Option<String>,
    },
    /// Creates `target` (disko's `X-mount.mkdir`, done natively), then mounts.
    Mount {
        device: Dev,
        target: String,
        fstype: String,
        options: Vec<String>,
    },
    Umount {
        target: String,
    },
    Swapoff {
        device: Dev,
    },
    /// A layout hook (shell text), run with `bash -c` where disko runs it.
    Hook {
        node: String,
        hook: String,
        script: String,
    },
}

impl DiskStep {
    /// The command line disko runs for this step, with disko's device paths (`resolve` may map
    /// them to kernel nodes). `None` for steps that are not one command.
    pub fn argv(&self, resolve: &dyn Fn(&Dev) -> String) -> Option<Vec<String>> {
        let s = |x: &str| x.to_owned();
        let v = match self {
            DiskStep::Mkfs {
                device,
                format,
                args,
                args_after_device,
            } => {
                let mut v = vec![format!("mkfs.{format}")];
                if *args_after_device {
                    v.push(resolve(device));
                    v.extend(args.iter().cloned());
                } else {
                    v.extend(args.iter().cloned());
                    v.push(resolve(device));
                }
                v
            }
            DiskStep::Mkswap { device, args } => {
                let mut v = vec![s("mkswap")];
                v.extend(args.iter().cloned());
                v.push(resolve(device));
                v
            }
            DiskStep::LuksFormat {
                device, args, key, ..
            } => {
                let mut v = vec![s("cryptsetup"), s("-q"), s("luksFormat"), resolve(device)];
                v.extend(args.iter().cloned());
                v.extend(key.args());
                v
            }
            DiskStep::LuksOpen {
                device,
                name,
                args,
                key,
                persistent,
            } => {
                let mut v = vec![s("cryptsetup"), s("open"), resolve(device), name.clone()];
                v.extend(args.iter().cloned());
                v.extend(key.args());
                if *persistent {
                    v.push(s("--persistent"));
                }
                v
            }
            DiskStep::LuksAddKey {
                device,
                new_key_file,
                key,
            } => {
                let mut v = vec![
                    s("cryptsetup"),
                    s("luksAddKey"),
                    resolve(device),
                    new_key_file.clone(),
                ];
                v.extend(key.args());
                v
            }
            DiskStep::LuksClose { name } => vec![s("cryptsetup"), s("close"), name.clone()],
            DiskStep::Modprobe { module } => vec![s("modprobe"), module.clone()],
            DiskStep::PvCreate { device } => vec![s("pvcreate"), resolve(device)],
            DiskStep::VgCreate { name, pvs } => {
                let mut v = vec![s("vgcreate"), name.clone()];
                v.extend(pvs.iter().map(resolve));
                v
            }
            DiskStep::LvCreate { args, .. } => {
                let mut v = vec![s("lvcreate")];
                v.extend(args.iter().cloned());
                v
            }
            DiskStep::VgActivate { .. } => vec![s("vgchange"), s("-a"), s("y")],
            DiskStep::VgDeactivate { name } => vec![s("vgchange"), s("-a"), s("n"), name.clone()],
            DiskStep::MdCreate {
                name,
                level,
                metadata,
                extra_args,
                devices,
            } => {
                let mut v = vec![
                    s("mdadm"),
                    s("--create"),
                    format!("/dev/md/{name}"),
                    format!("--level={level}"),
                    format!("--raid-devices={}", devices.len()),
                    format!("--metadata={metadata}"),
                    s("--force"),
                    s("--homehost=any"),
                ];
                v.extend(extra_args.iter().cloned());
                v.extend(devices.iter().map(resolve));
                v
            }
            DiskStep::MdStop { name } => vec![s("mdadm"), s("--stop"), format!("/dev/md/{name}")],
            DiskStep::ZpoolCreate { args, .. } => {
                let mut v = vec![s("zpool"), s("create")];
                v.extend(args.iter().cloned());
                v
            }
            DiskStep::ZpoolImport { name, root } => {
                vec![
                    s("zpool"),
                    s("import"),
                    s("-l"),
                    s("-R"),
                    root.clone(),
                    name.clone(),
                ]
            }
            DiskStep::ZpoolExport { name } => vec![s("zpool"), s("export"), name.clone()],
            DiskStep::ZfsCreate { args, .. } => {
                let mut v = vec![s("zfs"), s("create")];
                v.extend(args.iter().cloned());
                v
            }
            DiskStep::ZfsLoadKey { name } => vec![s("zfs"), s("load-key"), name.clone()],
            DiskStep::BcachefsFormat {
                uuid,
                member_args,
                extra_args,
                password_file,
            } => {
                let mut v = vec![s("bcachefs"), s("format")];
                v.extend(member_args.iter().cloned());
                v.push(format!("--uuid={uuid}"));
                v.extend(extra_args.iter().cloned());
                if password_file.is_some() {
                    v.push(s("--encrypted"));
                }
                v
            }
            DiskStep::Mount {
                device,
                target,
                fstype,
                options,
            } => {
                let mut v = vec![s("mount"), s("-t"), fstype.clone()];
                for o in options {
                    v.extend([s("-o"), o.clone()]);
                }
                v.extend([resolve(device), target.clone()]);
                v
            }
            DiskStep::Umount { target } => vec![s("umount"), target.clone()],
            DiskStep::Swapoff { device } => vec![s("swapoff"), resolve(device)],
            DiskStep::UnmountRoot { root } => vec![s("umount"), s("-R"), root.clone()],
            DiskStep::Release { .. }
            | DiskStep::Wipe { .. }
            | DiskStep::WriteTable { .. }
            | DiskStep::BtrfsSubvolumes { .. }
            | DiskStep::Hook { .. } => return None,
        };
        Some(v)
    }

    /// One line for a person.
    pub fn description(&self) -> String {
        let path = |d: &Dev| d.path.clone();
        match self {
            DiskStep::UnmountRoot { root } => format!("unmount everything under {root}"),
            DiskStep::Release { device, .. } => {
                format!("release what holds {device} (mounts, swap, LVM, md, LUKS, pools)")
            }
            DiskStep::Wipe { device } => format!("wipe every signature on {device}"),
            DiskStep::WriteTable { device, spec } => match spec {
                TableSpec::Gpt(g) => format!(
                    "write a GPT with {} partition(s) on {}: {}",
                    g.partitions.len(),
                    device.path,
                    g.partitions
                        .iter()
                        .map(|p| format!(
                            "{} {} {}..{} type {}",
                            p.number, p.label, p.start, p.end, p.type_code
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TableSpec::Legacy(l) => format!(
                    "write a {:?} table with {} partition(s) on {}",
                    l.format,
                    l.partitions.len(),
                    device.path
                ),
            },
            DiskStep::BtrfsSubvolumes {
                device,
                swap_files,
                subvolumes,
            } => format!(
                "create btrfs subvolumes [{}] and swap files [{}] on {}",
                subvolumes
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                swap_files
                    .iter()
                    .map(|s| s.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                path(device)
            ),
            DiskStep::Hook { node, hook, .. } => format!("run {hook} of {node}"),
            other => other
                .argv(&|d| d.path.clone())
                .map(|v| crate::disk::plan::shell_line(&v))
                .unwrap_or_default(),
        }
    }
}
