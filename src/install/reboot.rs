//! The reboot phase on the target: take the installed system's file systems down cleanly
//! (unmount under the root, deepest first; swap off; ZFS pools exported, or a ZFS root would
//! not import without force), flush everything, then reboot detached, so that the agent can
//! answer and the SSH session end before the machine goes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::UnmountFlags;

use crate::exec::{Cmd, CmdError};

/// How long the detached reboot waits, so that the agent's answer reaches the tool.
const REBOOT_DELAY_SECS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error("exporting the ZFS pools: {0}")]
    Zpool(CmdError),
    #[error("starting the reboot: {0}")]
    Start(std::io::Error),
}

/// What was taken down before the reboot.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TakenDown {
    pub unmounted: Vec<PathBuf>,
    /// Unmounted only lazily (something kept them busy); flushed before.
    pub detached: Vec<PathBuf>,
    pub swaps_off: Vec<String>,
    pub pools_exported: bool,
}

/// Unmounts everything under `root`, turns swap off, exports ZFS pools, syncs, and starts a
/// detached reboot.
pub fn reboot(root: &Path) -> Result<TakenDown, RebootError> {
    let mut done = take_down(root)?;
    rustix::fs::sync();
    if crate::facts::on_path("zpool") {
        // Pools are exported after their file systems are unmounted.
        Cmd::new("zpool")
            .args(["export", "-a"])
            .run()
            .map_err(RebootError::Zpool)?;
        done.pools_exported = true;
    }
    rustix::fs::sync();
    let script = format!(
        "sleep {REBOOT_DELAY_SECS}; reboot || busybox reboot || echo b > /proc/sysrq-trigger"
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A session of its own: the end of the SSH session does not take it along.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(RebootError::Start)?;
    Ok(done)
}

/// Unmounts and turns swap off, without rebooting.
pub fn take_down(root: &Path) -> Result<TakenDown, RebootError> {
    let mut done = TakenDown::default();
    let mounts = crate::disk::unmount::mounts_below(root)
        .map_err(|e| RebootError::Read("/proc/self/mountinfo", e))?;
    for crate::disk::unmount::Mount { point, .. } in mounts {
        match rustix::mount::unmount(&point, UnmountFlags::empty()) {
            Ok(()) => done.unmounted.push(point),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => {
                tracing::warn!("{} is busy ({e}); detaching it lazily", point.display());
                rustix::fs::sync();
                if rustix::mount::unmount(&point, UnmountFlags::DETACH).is_ok() {
                    done.detached.push(point);
                }
            }
        }
    }
    let swaps =
        std::fs::read_to_string("/proc/swaps").map_err(|e| RebootError::Read("/proc/swaps", e))?;
    for line in swaps.lines().skip(1) {
        let Some(dev) = line.split_whitespace().next() else {
            continue;
        };
        let dev = crate::facts::unescape_octal(dev);
        match swapoff(&dev) {
            Ok(()) => done.swaps_off.push(dev),
            Err(e) => tracing::warn!("swapoff {dev}: {e}"),
        }
    }
    Ok(done)
}

fn swapoff(dev: &str) -> std::io::Result<()> {
    let path = std::ffi::CString::new(dev).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::swapoff(path.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
