//! What the machine says about a block device: size, sector size, model, serial, by-id name. The
//! plan shows these beside each disk it will wipe (two NVMe disks that swap names between boots
//! must not be confused, disko #1124), and validation checks the layout's sizes against them.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// The path as the layout names it (`/dev/disk/by-id/...`, `/dev/vda`).
    pub path: String,
    /// The kernel's node it resolves to (`/dev/vda`).
    pub node: String,
    pub size_bytes: u64,
    pub logical_sector_size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// The first `/dev/disk/by-id` name of the device, when udev made one.
    pub by_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("{path}: {source}; is the device present (ls -l {path})?")]
    Resolve {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} ({node}) is not a block device the kernel lists in /sys/class/block")]
    NotBlock { path: String, node: String },
}

/// Reads the facts of `path` from `/sys/class/block` (through [`crate::facts`]).
pub fn read(path: &str) -> Result<DeviceFacts, FactsError> {
    let resolve = |source| FactsError::Resolve {
        path: path.to_owned(),
        source,
    };
    let node = std::fs::canonicalize(path).map_err(resolve)?;
    let node = node.to_string_lossy().into_owned();
    let disk = crate::facts::disk_at(Path::new(path))
        .map_err(|e| resolve(std::io::Error::other(e.to_string())))?
        .ok_or_else(|| FactsError::NotBlock {
            path: path.to_owned(),
            node: node.clone(),
        })?;
    Ok(DeviceFacts {
        path: path.to_owned(),
        by_id: disk.by_id.first().map(|n| format!("/dev/disk/by-id/{n}")),
        node,
        size_bytes: disk.size_bytes,
        logical_sector_size: u64::from(disk.logical_sector_size),
        model: disk.model,
        serial: disk.serial,
    })
}

impl std::fmt::Display for DeviceFacts {
    /// `"/dev/vda (/dev/vda): 10.0 GiB, model QEMU HARDDISK, serial QM00001"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path)?;
        if self.node != self.path {
            write!(f, " ({})", self.node)?;
        }
        write!(
            f,
            ": {:.1} GiB ({} bytes, {}-byte sectors)",
            self.size_bytes as f64 / (1u64 << 30) as f64,
            self.size_bytes,
            self.logical_sector_size
        )?;
        if let Some(m) = &self.model {
            write!(f, ", model {m}")?;
        }
        if let Some(s) = &self.serial {
            write!(f, ", serial {s}")?;
        }
        if let Some(b) = &self.by_id
            && b != &self.path
        {
            write!(f, ", {b}")?;
        }
        Ok(())
    }
}
