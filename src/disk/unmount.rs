//! `umount -R`, natively: busybox's umount (on many installers) has no `-R`, and the kernel
//! needs nothing but the mount points, deepest first.

use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// A mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts at or below `root`, deepest first (a point mounted twice appears twice).
pub fn mounts_below(root: &Path) -> std::io::Result<Vec<Mount>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<Mount> = info
        .lines()
        .filter_map(|line| {
            let point = PathBuf::from(crate::facts::unescape_octal(line.split(' ').nth(4)?));
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?.to_owned();
            point.starts_with(root).then_some(Mount { point, fstype })
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
    Ok(mounts)
}

/// Unmounts everything at or below `root`, deepest first; returns what it unmounted. A mount
/// that is busy is an error naming it (nothing is detached lazily here).
pub fn unmount_tree(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for Mount { point, .. } in mounts_below(root)? {
        match rustix::mount::unmount(&point, UnmountFlags::empty()) {
            Ok(()) => done.push(point),
            // Gone already (under another that went first).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("unmounting {}: {e}", point.display()),
                ));
            }
        }
    }
    Ok(done)
}
