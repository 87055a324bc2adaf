//! `umount -R`, natively: busybox's umount (on many installers) has no `-R`, and the kernel
//! needs nothing but the mount points, deepest first.

use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// The mount points at or below `root`, deepest first (a point mounted twice appears twice).
pub fn mounts_below(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(crate::facts::unescape_octal(p)))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(points)
}

/// Unmounts everything at or below `root`, deepest first; returns what it unmounted. A mount
/// that is busy is an error naming it (nothing is detached lazily here).
pub fn unmount_tree(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for point in mounts_below(root)? {
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
