//! From a [`TableSpec`] to a table on a device: plan every sector (pure), encode it in memory,
//! write it once and fsync, then tell the kernel with BLKPG and wait for the nodes.
//! [`WriteTable`] is that as a plan step, with a read-only probe.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::error::TableError;
use super::gpt::{self, GptEntry, GptTable};
use super::guid::{Guid, type_guid};
use super::mbr::{self, MbrEntry, MsdosTable};
use super::parted;
use super::region::Regions;
use super::spec::{LegacyFormat, LegacyPartType, LegacyPartition, LegacySpec, TableSpec};
use crate::disk::device::{self, Geometry};
use crate::disk::names;
use crate::plan::{Probe, Step};

/// A table with every sector, GUID and byte decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlannedTable {
    Gpt(GptTable),
    Msdos {
        sectors: u64,
        sector_size: u64,
        table: MsdosTable,
    },
}

const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// Plans `spec` for a device of this geometry.
pub fn plan(spec: &TableSpec, geo: Geometry) -> Result<PlannedTable, TableError> {
    let sectors = geo.sectors();
    match spec {
        TableSpec::Gpt(g) => Ok(PlannedTable::Gpt(gpt::plan(g, sectors, geo.sector_size)?)),
        TableSpec::Legacy(l) if l.format == LegacyFormat::Gpt => {
            legacy_gpt(l, sectors, geo.sector_size)
        }
        TableSpec::Legacy(l) => legacy_msdos(l, sectors, geo.sector_size),
    }
}

fn unsupported_flag(p: &LegacyPartition, flag: &str, table: &str) -> TableError {
    TableError::Invalid {
        number: p.number,
        what: format!(
            "the flag {flag:?} is not supported on an {table} table here (boot, esp, bios_grub, lvm, raid, swap, legacy_boot, hidden, msftdata on gpt; boot, esp, lvm, raid, swap, lba on msdos)"
        ),
    }
}

fn legacy_gpt(l: &LegacySpec, sectors: u64, ss: u64) -> Result<PlannedTable, TableError> {
    let placed = parted::resolve_gpt(&l.partitions, sectors, ss)?;
    let mut entries = Vec::new();
    for (p, at) in l.partitions.iter().zip(&placed) {
        let mut ty = match p.fs_type.as_deref() {
            Some(f) if f.starts_with("linux-swap") => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            Some("fat16" | "fat32" | "ntfs") => BASIC_DATA,
            _ => LINUX,
        };
        let mut attributes = 0u64;
        let flags = p
            .bootable
            .then_some("boot")
            .into_iter()
            .chain(p.flags.iter().map(String::as_str));
        for flag in flags {
            match flag {
                "boot" | "esp" => ty = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                "bios_grub" => ty = "21686148-6449-6E6F-744E-656564454649",
                "lvm" => ty = "E6D6D379-F507-44C2-A23C-238F2A3DF928",
                "raid" => ty = "A19D880F-05FC-4D3B-A006-743F0F84911E",
                "swap" => ty = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
                "msftdata" => ty = BASIC_DATA,
                "hidden" => attributes |= 1,
                "legacy_boot" => attributes |= 1 << 2,
                other => return Err(unsupported_flag(p, other, "gpt")),
            }
        }
        let name = p.name.clone().unwrap_or_default();
        gpt::check_name(at.number, &name)?;
        entries.push(GptEntry {
            number: at.number,
            first: at.first,
            last: at.last,
            type_guid: type_guid(ty).expect("a GUID"),
            guid: random()?,
            name,
            attributes,
        });
    }
    let bounds = super::sgdisk::GptBounds::new_table(sectors, ss);
    Ok(PlannedTable::Gpt(GptTable {
        bounds_sectors: sectors,
        sector_size: ss,
        first_usable: bounds.first_usable,
        last_usable: bounds.last_usable,
        disk_guid: random()?,
        entries,
        mbr: mbr::protective(sectors),
    }))
}

fn random() -> Result<Guid, TableError> {
    Guid::random().map_err(|e| TableError::Table(format!("no random numbers for GUIDs: {e}")))
}

fn legacy_msdos(l: &LegacySpec, sectors: u64, ss: u64) -> Result<PlannedTable, TableError> {
    let placed = parted::resolve_msdos(&l.partitions, sectors, ss)?;
    let mut table = MsdosTable {
        disk_id: 0,
        primary: [None; 4],
        logical: Vec::new(),
    };
    let mut id = [0u8; 4];
    getrandom::fill(&mut id)
        .map_err(|e| TableError::Table(format!("no random numbers for the disk id: {e}")))?;
    table.disk_id = u32::from_le_bytes(id);
    for (p, at) in l.partitions.iter().zip(&placed) {
        let mut ty = match (p.part_type, p.fs_type.as_deref()) {
            (LegacyPartType::Extended, _) => 0x0f,
            (_, Some(f)) if f.starts_with("linux-swap") => 0x82,
            (_, Some("fat16")) => 0x0e,
            (_, Some("fat32")) => 0x0c,
            (_, Some("ntfs")) => 0x07,
            _ => 0x83,
        };
        let mut bootable = false;
        let flags = p
            .bootable
            .then_some("boot")
            .into_iter()
            .chain(p.flags.iter().map(String::as_str));
        for flag in flags {
            match flag {
                "boot" => bootable = true,
                "esp" => ty = 0xef,
                "lvm" => ty = 0x8e,
                "raid" => ty = 0xfd,
                "swap" => ty = 0x82,
                "lba" => {}
                other => return Err(unsupported_flag(p, other, "msdos")),
            }
        }
        let entry = MbrEntry {
            bootable,
            type_byte: ty,
            first: at.first,
            sectors: at.last - at.first + 1,
        };
        match at.ebr {
            Some(ebr) => table.logical.push((ebr, entry)),
            None => table.primary[at.number as usize - 1] = Some(entry),
        }
    }
    Ok(PlannedTable::Msdos {
        sectors,
        sector_size: ss,
        table,
    })
}

impl PlannedTable {
    /// The table's bytes, in memory.
    pub fn encode(&self, path: &Path) -> Result<Regions, TableError> {
        match self {
            PlannedTable::Gpt(t) => gpt::encode(t).map_err(|source| TableError::Gpt {
                path: path.into(),
                source,
            }),
            PlannedTable::Msdos {
                sectors,
                sector_size,
                table,
            } => {
                let mut image = Regions::new(sectors * sector_size);
                table.encode(&mut image, *sector_size)?;
                Ok(image)
            }
        }
    }

    /// The partitions as the kernel should see them: `(number, start byte, length bytes)`.
    /// An extended partition shows as its first 1 KiB, as the kernel's own parser shows it.
    pub fn kernel_partitions(&self) -> Vec<(u32, u64, u64)> {
        match self {
            PlannedTable::Gpt(t) => t
                .entries
                .iter()
                .map(|e| {
                    (
                        e.number,
                        e.first * t.sector_size,
                        (e.last - e.first + 1) * t.sector_size,
                    )
                })
                .collect(),
            PlannedTable::Msdos {
                sector_size, table, ..
            } => {
                let ss = *sector_size;
                let mut out: Vec<(u32, u64, u64)> = table
                    .primary
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let e = (*e)?;
                        let len = if mbr::is_extended(e.type_byte) {
                            1024.max(ss)
                        } else {
                            e.sectors * ss
                        };
                        Some((i as u32 + 1, e.first * ss, len))
                    })
                    .collect();
                for (i, (_, e)) in table.logical.iter().enumerate() {
                    out.push((5 + i as u32, e.first * ss, e.sectors * ss));
                }
                out
            }
        }
    }

    /// Writes the table to `path` (open as `file`) in one pass, fsyncs, and on a block device
    /// makes the kernel's partitions match and waits for their nodes (and by-partlabel links
    /// where udev runs). Returns the partition nodes (none for an image file).
    pub fn write(
        &self,
        path: &Path,
        file: &File,
        deadline: Duration,
    ) -> Result<Vec<PathBuf>, TableError> {
        let image = self.encode(path)?;
        let geo = device::geometry(path, file)?;
        if geo.bytes != image.len() {
            return Err(TableError::Table(format!(
                "{} is {} bytes now, but the table was planned for {} bytes; plan again",
                path.display(),
                geo.bytes,
                image.len()
            )));
        }
        image.apply(file).map_err(|source| TableError::Io {
            path: path.into(),
            what: "writing the partition table failed",
            source,
        })?;
        if !geo.is_block_device {
            return Ok(Vec::new());
        }
        let nodes = device::sync_partitions(path, file, &self.kernel_partitions(), deadline)?;
        if let PlannedTable::Gpt(t) = self {
            let labels: Vec<String> = t
                .entries
                .iter()
                .map(|e| names::udev_escape(&e.name))
                .collect();
            device::wait_for_partlabels(&labels, deadline)?;
        }
        Ok(nodes)
    }
}

/// The plan step that lays a table on a device.
#[derive(Debug, Clone, Serialize)]
pub struct WriteTable {
    pub device: PathBuf,
    pub spec: TableSpec,
}

impl Step for WriteTable {
    type Env = ();
    type Error = TableError;

    fn describe(&self) -> String {
        let (kind, n) = match &self.spec {
            TableSpec::Gpt(g) => ("GPT", g.partitions.len()),
            TableSpec::Legacy(l) => (
                if l.format == LegacyFormat::Gpt {
                    "GPT (parted)"
                } else {
                    "msdos"
                },
                l.partitions.len(),
            ),
        };
        format!(
            "write a {kind} partition table with {n} partitions on {}",
            self.device.display()
        )
    }

    /// Done when the device already holds a table with exactly these partitions (numbers,
    /// sectors, types, names, attributes, and GUIDs where the layout fixes them).
    fn probe(&self, _: &()) -> Result<Probe, TableError> {
        let file = File::open(&self.device).map_err(|source| TableError::Io {
            path: self.device.clone(),
            what: "cannot open it",
            source,
        })?;
        let geo = device::geometry(&self.device, &file)?;
        let planned = plan(&self.spec, geo)?;
        Ok(if holds(&file, &planned, &self.spec)? {
            Probe::Done
        } else {
            Probe::Needed
        })
    }

    fn execute(&self, _: &mut ()) -> Result<(), TableError> {
        let file = device::open(&self.device)?;
        let geo = device::geometry(&self.device, &file)?;
        let planned = plan(&self.spec, geo)?;
        planned.write(&self.device, &file, Duration::from_secs(30))?;
        Ok(())
    }
}

/// Whether `file` holds the planned table (random GUIDs and the disk id aside).
fn holds(file: &File, planned: &PlannedTable, spec: &TableSpec) -> Result<bool, TableError> {
    match planned {
        PlannedTable::Gpt(t) => {
            let mut f = file;
            let Ok(have) = gptman::GPT::read_from(&mut f, t.sector_size) else {
                return Ok(false);
            };
            let used: Vec<_> = have.iter().filter(|(_, e)| e.is_used()).collect();
            if used.len() != t.entries.len() {
                return Ok(false);
            }
            let fixed = |n: u32| match spec {
                TableSpec::Gpt(g) => g
                    .partitions
                    .iter()
                    .any(|p| p.number == n && p.guid.is_some()),
                TableSpec::Legacy(_) => false,
            };
            Ok(t.entries.iter().all(|e| {
                used.iter().any(|(n, h)| {
                    *n == e.number
                        && h.starting_lba == e.first
                        && h.ending_lba == e.last
                        && h.partition_type_guid == e.type_guid.0
                        && h.partition_name.as_str() == e.name
                        && h.attribute_bits == e.attributes
                        && (!fixed(e.number) || h.unique_partition_guid == e.guid.0)
                })
            }))
        }
        PlannedTable::Msdos {
            sectors,
            sector_size,
            table,
        } => {
            // Compare everything but the random disk id.
            let mut same_id = table.clone();
            let mut id = [0u8; 4];
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut id, 440)
                .map_err(|source| TableError::Io {
                    path: PathBuf::new(),
                    what: "cannot read its MBR",
                    source,
                })?;
            same_id.disk_id = u32::from_le_bytes(id);
            let mut image = Regions::new(sectors * sector_size);
            same_id.encode(&mut image, *sector_size)?;
            image.matches(file).map_err(|source| TableError::Io {
                path: PathBuf::new(),
                what: "cannot read its table",
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_disko() {
        assert_eq!(
            names::udev_escape("disk-vdb-name with spaces"),
            "disk-vdb-name\\x20with\\x20spaces"
        );
        assert_eq!(names::udev_escape("a^b,c"), "a\\x5Eb,c");
    }
}
