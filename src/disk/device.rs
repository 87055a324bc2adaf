//! The block device (or image file) a table goes on: its size and logical sector size, the
//! names of its partition nodes, and waiting for the kernel and udev to show them, each with a
//! deadline rather than a fixed sleep.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::blkpg;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: the kernel could not {what} partition {number}: {source}; if it is busy, release \
         what holds it (mounts, swap, LUKS, LVM, md) and run again"
    )]
    Kernel {
        path: PathBuf,
        what: &'static str,
        number: u32,
        #[source]
        source: io::Error,
    },
    #[error("{path} did not appear within {secs} s{hint}")]
    Timeout {
        path: PathBuf,
        secs: u64,
        hint: &'static str,
    },
}

/// What the table writers need to know about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    pub bytes: u64,
    pub sector_size: u64,
    pub is_block_device: bool,
}

impl Geometry {
    pub fn sectors(&self) -> u64 {
        self.bytes / self.sector_size
    }
}

/// Opens a device (or an image file) for reading and writing.
pub fn open(path: &Path) -> Result<File, DeviceError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| DeviceError::Io {
            path: path.into(),
            what: "cannot open it for writing",
            source,
        })
}

/// Size and logical sector size (512 for an image file).
pub fn geometry(path: &Path, file: &File) -> Result<Geometry, DeviceError> {
    let io_err = |what, source| DeviceError::Io {
        path: path.into(),
        what,
        source,
    };
    let meta = file.metadata().map_err(|e| io_err("cannot stat it", e))?;
    let is_block_device = meta.file_type().is_block_device();
    let (bytes, sector_size) = if is_block_device {
        let mut f = file;
        let bytes = f
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("cannot find its size", e))?;
        let ss = rustix::fs::ioctl_blksszget(file)
            .map_err(|e| io_err("cannot read its sector size", e.into()))?;
        (bytes, u64::from(ss))
    } else {
        (meta.len(), 512)
    };
    Ok(Geometry {
        bytes,
        sector_size,
        is_block_device,
    })
}

/// The kernel's name for partition `n` of `device`: `sda1`, but `loop0p1`, `nvme0n1p1`,
/// `md127p1` when the device name ends in a digit.
pub fn partition_node(device: &Path, n: u32) -> PathBuf {
    let name = device.as_os_str().to_string_lossy();
    if name.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{name}p{n}"))
    } else {
        PathBuf::from(format!("{name}{n}"))
    }
}

/// Polls for `path` until it exists or the deadline passes, backing off from 5 ms to 100 ms.
pub fn wait_for(path: &Path, deadline: Duration, hint: &'static str) -> Result<(), DeviceError> {
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if path.exists() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(DeviceError::Timeout {
                path: path.into(),
                secs: deadline.as_secs(),
                hint,
            });
        }
        std::thread::sleep(pause.min(until.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The kernel's current partitions of a block device, `(number, start byte, length bytes)`,
/// from sysfs.
pub fn kernel_partitions(device: &Path) -> io::Result<Vec<(u32, u64, u64)>> {
    let real = std::fs::canonicalize(device)?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/sys/class/block").join(&name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let p = entry.path();
        let Ok(number) = std::fs::read_to_string(p.join("partition")) else {
            continue;
        };
        let read = |f: &str| -> io::Result<u64> {
            std::fs::read_to_string(p.join(f))?
                .trim()
                .parse()
                .map_err(|_| io::Error::other(format!("bad {f} in sysfs")))
        };
        let number: u32 = number
            .trim()
            .parse()
            .map_err(|_| io::Error::other("bad partition number in sysfs"))?;
        out.push((number, read("start")? * 512, read("size")? * 512));
    }
    out.sort();
    Ok(out)
}

/// Makes the kernel's partitions of `device` exactly `wanted` (`(number, start byte, length
/// bytes)`) with BLKPG: partitions that differ or are gone are deleted, missing ones added;
/// then waits for every node. Returns the partition nodes.
pub fn sync_partitions(
    device: &Path,
    file: &File,
    wanted: &[(u32, u64, u64)],
    deadline: Duration,
) -> Result<Vec<PathBuf>, DeviceError> {
    let have = kernel_partitions(device).map_err(|source| DeviceError::Io {
        path: device.into(),
        what: "cannot list its partitions in sysfs",
        source,
    })?;
    for &(n, start, len) in &have {
        if !wanted.contains(&(n, start, len)) {
            blkpg::delete_partition(file, n).map_err(|source| DeviceError::Kernel {
                path: device.into(),
                what: "remove",
                number: n,
                source,
            })?;
        }
    }
    let mut nodes = Vec::new();
    for &(n, start, len) in wanted {
        if !have.contains(&(n, start, len)) {
            blkpg::add_partition(file, n, start, len).map_err(|source| DeviceError::Kernel {
                path: device.into(),
                what: "add",
                number: n,
                source,
            })?;
        }
        nodes.push(partition_node(device, n));
    }
    for node in &nodes {
        wait_for(node, deadline, " (is devtmpfs mounted on /dev?)")?;
    }
    Ok(nodes)
}

/// Where udev runs, waits for the `/dev/disk/by-partlabel/<escaped label>` links too.
pub fn wait_for_partlabels(
    escaped_labels: &[String],
    deadline: Duration,
) -> Result<(), DeviceError> {
    if !Path::new("/run/udev/control").exists() {
        return Ok(());
    }
    for label in escaped_labels {
        wait_for(
            &Path::new("/dev/disk/by-partlabel").join(label),
            deadline,
            " (udev did not make the by-partlabel link)",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(
            partition_node(Path::new("/dev/sda"), 2),
            PathBuf::from("/dev/sda2")
        );
        assert_eq!(
            partition_node(Path::new("/dev/loop7"), 1),
            PathBuf::from("/dev/loop7p1")
        );
        assert_eq!(
            partition_node(Path::new("/dev/nvme0n1"), 3),
            PathBuf::from("/dev/nvme0n1p3")
        );
    }

    #[test]
    fn waiting_gives_up_at_the_deadline() {
        let start = Instant::now();
        let e = wait_for(
            Path::new("/nonexistent/node"),
            Duration::from_millis(50),
            "",
        )
        .unwrap_err();
        assert!(matches!(e, DeviceError::Timeout { .. }));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
