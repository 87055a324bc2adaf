//! Destroy's first half: find everything that holds a disk (from `lsblk --json`, children before
//! parents), release it, and stop at the first holder that will not let go, so a wipe never
//! runs under a live mount or an open device (nixos-anywhere #585, disko #989). A disk holding a
//! file system mounted outside the target root (the installer's own medium) is refused.

use std::path::Path;

use serde::Deserialize;

use super::exec::ExecError;
use crate::exec::Cmd;

#[derive(Debug, Deserialize)]
struct Lsblk {
    blockdevices: Vec<BlockDev>,
}

#[derive(Debug, Deserialize)]
struct BlockDev {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    fstype: Option<String>,
    #[serde(default)]
    mountpoints: Vec<Option<String>>,
    #[serde(default)]
    children: Vec<BlockDev>,
}

/// One thing to undo before the disk can be wiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Mount { device: String, target: String },
    Swap { device: String },
    Crypt { device: String },
    Lv { device: String },
    Pv { device: String },
    Md { device: String },
    ZfsMember { device: String },
}

impl Holder {
    /// Lets go of the device: a mount natively (`umount -R`; busybox's umount has no -R),
    /// the rest through their tools.
    fn release(&self) -> Result<(), ExecError> {
        if let Holder::Mount { target, .. } = self {
            crate::disk::unmount::unmount_tree(Path::new(target)).map_err(|e| ExecError::Io {
                path: target.clone(),
                source: e,
            })?;
            return Ok(());
        }
        for cmd in self.command()? {
            tracing::info!(command = %cmd, "releasing {}", self.describe());
            cmd.run()?;
        }
        Ok(())
    }

    fn command(&self) -> Result<Vec<Cmd>, ExecError> {
        Ok(match self {
            // Unmounted natively by `release`.
            Holder::Mount { .. } => Vec::new(),
            Holder::Swap { device } => vec![Cmd::new("swapoff").arg(device)],
            Holder::Crypt { device } => vec![Cmd::new("cryptsetup").arg("close").arg(device)],
            Holder::Lv { device } => vec![
                Cmd::new("lvm")
                    .arg("lvchange")
                    .arg("-a")
                    .arg("n")
                    .arg(device),
            ],
            Holder::Pv { device } => {
                let out = Cmd::new("lvm")
                    .args(["pvs", "--noheadings", "-o", "vg_name"])
                    .arg(device)
                    .output()?;
                let vg = String::from_utf8_lossy(&out).trim().to_owned();
                if vg.is_empty() {
                    Vec::new()
                } else {
                    vec![Cmd::new("lvm").args(["vgchange", "-a", "n"]).arg(vg)]
                }
            }
            Holder::Md { device } => vec![Cmd::new("mdadm").arg("--stop").arg(device)],
            Holder::ZfsMember { device } => {
                let out = Cmd::new("blkid")
                    .args(["-o", "value", "-s", "LABEL"])
                    .arg(device)
                    .output()?;
                let pool = String::from_utf8_lossy(&out).trim().to_owned();
                // A pool not imported holds nothing.
                let imported =
                    !pool.is_empty() && Cmd::new("zpool").arg("list").arg(&pool).run().is_ok();
                if imported {
                    vec![Cmd::new("zpool").arg("export").arg(pool)]
                } else {
                    Vec::new()
                }
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Holder::Mount { device, target } => format!("{device} mounted on {target}"),
            Holder::Swap { device } => format!("swap on {device}"),
            Holder::Crypt { device } => format!("open LUKS device {device}"),
            Holder::Lv { device } => format!("active LV {device}"),
            Holder::Pv { device } => format!("LVM physical volume {device}"),
            Holder::Md { device } => format!("md array {device}"),
            Holder::ZfsMember { device } => format!("zfs pool member {device}"),
        }
    }
}

fn under(root: &str, target: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty() || target == root || target.starts_with(&format!("{root}/"))
}

/// What holds `device`, children first. Errors when a file system on it is mounted outside
/// `root`: that disk is not ours to wipe.
pub fn holders(device: &str, root: &str) -> Result<Vec<Holder>, ExecError> {
    let out = Cmd::new("lsblk")
        .args(["--json", "--paths", "-o", "NAME,TYPE,FSTYPE,MOUNTPOINTS"])
        .arg(device)
        .output()?;
    let parsed: Lsblk = serde_json::from_slice(&out).map_err(|e| ExecError::Release {
        device: device.to_owned(),
        what: "lsblk's output".into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for dev in &parsed.blockdevices {
        walk(dev, device, root, &mut out)?;
    }
    Ok(out)
}

fn walk(d: &BlockDev, disk: &str, root: &str, out: &mut Vec<Holder>) -> Result<(), ExecError> {
    for c in &d.children {
        walk(c, disk, root, out)?;
    }
    for mp in d.mountpoints.iter().flatten() {
        if mp == "[SWAP]" {
            out.push(Holder::Swap {
                device: d.name.clone(),
            });
        } else if under(root, mp) {
            out.push(Holder::Mount {
                device: d.name.clone(),
                target: mp.clone(),
            });
        } else {
            return Err(ExecError::MountedOutsideRoot {
                disk: disk.to_owned(),
                device: d.name.clone(),
                target: mp.clone(),
                root: root.to_owned(),
            });
        }
    }
    let name = d.name.clone();
    match d.kind.as_deref() {
        Some("crypt") => out.push(Holder::Crypt {
            device: name.clone(),
        }),
        Some("lvm") => out.push(Holder::Lv {
            device: name.clone(),
        }),
        Some(k) if k.starts_with("raid") => out.push(Holder::Md {
            device: name.clone(),
        }),
        _ => {}
    }
    match d.fstype.as_deref() {
        Some("LVM2_member") => out.push(Holder::Pv { device: name }),
        Some("zfs_member") => out.push(Holder::ZfsMember { device: name }),
        _ => {}
    }
    Ok(())
}

/// Releases every holder of `device`, stopping at the first that fails.
pub fn release(device: &str, root: &str) -> Result<(), ExecError> {
    for h in holders(device, root)? {
        let failed = |message: String| ExecError::Release {
            device: device.to_owned(),
            what: h.describe(),
            message,
        };
        h.release().map_err(|e| failed(e.to_string()))?;
    }
    // Whatever the kernel still lists under the disk must be gone now.
    let left: Vec<String> = holders(device, root)?
        .into_iter()
        .filter(|h| !matches!(h, Holder::Pv { .. } | Holder::ZfsMember { .. }))
        .map(|h| h.describe())
        .collect();
    if !left.is_empty() {
        return Err(ExecError::Release {
            device: device.to_owned(),
            what: left.join(", "),
            message: "still held after releasing".into(),
        });
    }
    Ok(())
}

/// The partitions the kernel lists under `device` (for wiping each).
pub fn partitions(device: &str) -> Result<Vec<String>, ExecError> {
    let out = Cmd::new("lsblk")
        .args(["--json", "--paths", "-o", "NAME,TYPE"])
        .arg(device)
        .output()?;
    let parsed: Lsblk = serde_json::from_slice(&out).map_err(|e| ExecError::Release {
        device: device.to_owned(),
        what: "lsblk's output".into(),
        message: e.to_string(),
    })?;
    Ok(parsed
        .blockdevices
        .iter()
        .flat_map(|d| d.children.iter())
        .filter(|c| c.kind.as_deref() == Some("part"))
        .map(|c| c.name.clone())
        .collect())
}
