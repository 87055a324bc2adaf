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

/// Reads the facts of `path` from `/sys/class/block`.
pub fn read(path: &str) -> Result<DeviceFacts, FactsError> {
    let resolved = std::fs::canonicalize(path).map_err(|source| FactsError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    let node = resolved.to_string_lossy().into_owned();
    let name = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = Path::new("/sys/class/block").join(&name);
    let read = |rel: &str| {
        std::fs::read_to_string(sys.join(rel))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let Some(sectors) = read("size").and_then(|s| s.parse::<u64>().ok()) else {
        return Err(FactsError::NotBlock {
            path: path.to_owned(),
            node,
        });
    };
    let logical_sector_size = read("queue/logical_block_size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    Ok(DeviceFacts {
        path: path.to_owned(),
        by_id: by_id(&resolved),
        node,
        // /sys/class/block/*/size counts 512-byte units whatever the sector size.
        size_bytes: sectors * 512,
        logical_sector_size,
        model: read("device/model"),
        serial: read("device/serial").or_else(|| read("serial")),
    })
}

fn by_id(node: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/disk/by-id")
        .ok()?
        .flatten()
        .filter(|e| std::fs::canonicalize(e.path()).ok().as_deref() == Some(node))
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
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
