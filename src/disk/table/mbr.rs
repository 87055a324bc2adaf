//! MBR sectors: the protective MBR of a GPT, a hybrid MBR (sgdisk `-h`), and legacy msdos
//! tables with an extended partition and its chain of EBRs.
//!
//! Written here rather than with `mbrman` 0.6.1, which computes an EBR's byte offset as a
//! 32-bit product, so an EBR at or past 4 GiB lands in the wrong place; the arithmetic below is
//! in u64 throughout and each LBA is checked to fit the 32-bit fields before anything is built.

use super::error::TableError;
use super::region::Regions;

/// One of the four slots of an MBR (or of an EBR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MbrEntry {
    pub bootable: bool,
    pub type_byte: u8,
    /// Absolute first LBA (relative offsets for EBRs are computed when encoding).
    pub first: u64,
    pub sectors: u64,
}

/// CHS as sgdisk writes it: 255 heads, 63 sectors per track, all ones past cylinder 1023.
fn chs(lba: u64) -> [u8; 3] {
    let cylinder = lba / (255 * 63);
    if cylinder > 1023 {
        return [0xff, 0xff, 0xff];
    }
    let head = (lba / 63) % 255;
    let sector = lba % 63 + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 2) & 0xc0) as u8),
        cylinder as u8,
    ]
}

fn encode_entry(slot: &mut [u8], entry: &MbrEntry, relative_to: u64) {
    let first = entry.first - relative_to;
    slot[0] = if entry.bootable { 0x80 } else { 0 };
    slot[1..4].copy_from_slice(&chs(entry.first));
    slot[4] = entry.type_byte;
    slot[5..8].copy_from_slice(&chs(entry.first + entry.sectors.max(1) - 1));
    slot[8..12].copy_from_slice(&(first.min(u32::MAX as u64) as u32).to_le_bytes());
    slot[12..16].copy_from_slice(&(entry.sectors.min(u32::MAX as u64) as u32).to_le_bytes());
}

/// The 66 bytes from offset 446: four entries and the signature. Boot code and the disk
/// signature before it are left as they are, as sgdisk and parted leave them.
fn table_bytes(entries: &[Option<MbrEntry>], relative_to: u64) -> [u8; 66] {
    let mut out = [0u8; 66];
    for (i, e) in entries.iter().enumerate().take(4) {
        if let Some(e) = e {
            encode_entry(&mut out[16 * i..16 * i + 16], e, relative_to);
        }
    }
    out[64] = 0x55;
    out[65] = 0xaa;
    out
}

/// The protective MBR sgdisk writes: one `EE` entry from LBA 1 to the end of the disk (the size
/// capped at 2³²−1 sectors).
pub fn protective(sectors: u64) -> [Option<MbrEntry>; 4] {
    [
        Some(MbrEntry {
            bootable: false,
            type_byte: 0xee,
            first: 1,
            sectors: sectors - 1,
        }),
        None,
        None,
        None,
    ]
}

/// Puts an MBR (sector 0 entries) into the image.
pub fn put_mbr(image: &mut Regions, entries: &[Option<MbrEntry>; 4]) {
    image.put(446, &table_bytes(entries, 0));
}

/// A legacy msdos table: primaries (and at most one extended) in slots 1–4 by number, logical
/// partitions 5, 6, ... each behind its own EBR.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MsdosTable {
    pub disk_id: u32,
    /// Slots 1–4.
    pub primary: [Option<MbrEntry>; 4],
    /// Logical partitions in order, each with the LBA of its EBR.
    pub logical: Vec<(u64, MbrEntry)>,
}

impl MsdosTable {
    /// Checks every LBA fits the 32-bit fields and encodes the MBR and the EBR chain.
    pub fn encode(&self, image: &mut Regions, sector_size: u64) -> Result<(), TableError> {
        let fits = |what: String, lba: u64| {
            if lba > u32::MAX as u64 {
                Err(TableError::Table(format!(
                    "{what} reaches sector {lba}, past what an msdos table can address (2^32 sectors); use a GPT"
                )))
            } else {
                Ok(())
            }
        };
        for (i, e) in self.primary.iter().enumerate() {
            if let Some(e) = e {
                fits(format!("partition {}", i + 1), e.first + e.sectors)?;
            }
        }
        image.put(440, &self.disk_id.to_le_bytes());
        image.put(444, &[0, 0]);
        put_mbr(image, &self.primary);
        let Some(ext) = self
            .primary
            .iter()
            .flatten()
            .find(|e| is_extended(e.type_byte))
        else {
            return Ok(());
        };
        for (i, (ebr, part)) in self.logical.iter().enumerate() {
            fits(format!("partition {}", i + 5), part.first + part.sectors)?;
            let this = MbrEntry {
                first: part.first,
                ..*part
            };
            let next = self
                .logical
                .get(i + 1)
                .map(|(next_ebr, next_part)| MbrEntry {
                    bootable: false,
                    type_byte: 0x05,
                    first: *next_ebr,
                    sectors: next_part.first + next_part.sectors - next_ebr,
                });
            let mut bytes = [0u8; 66];
            encode_entry(&mut bytes[0..16], &this, *ebr);
            if let Some(next) = next {
                encode_entry(&mut bytes[16..32], &next, ext.first);
            }
            bytes[64] = 0x55;
            bytes[65] = 0xaa;
            // An EBR is a whole sector: zero it, then the table at 446.
            image.put(ebr * sector_size, &vec![0u8; sector_size as usize]);
            image.put(ebr * sector_size + 446, &bytes);
        }
        Ok(())
    }
}

pub fn is_extended(type_byte: u8) -> bool {
    matches!(type_byte, 0x05 | 0x0f | 0x85)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_sgdisk() {
        // Values read back from sgdisk 1.0.9's hybrid and protective MBRs on a 2 GiB image.
        assert_eq!(chs(2048), [0x20, 0x21, 0x00]);
        assert_eq!(chs(67583), [0x34, 0x30, 0x04]);
        assert_eq!(chs(1), [0x00, 0x02, 0x00]);
        assert_eq!(chs(4_194_303), [0x15, 0x50, 0x05]);
        assert_eq!(chs(6_000_000_000), [0xff, 0xff, 0xff]);
    }

    #[test]
    fn ebr_past_four_gib_is_placed_by_u64_arithmetic() {
        let ext = MbrEntry {
            bootable: false,
            type_byte: 0x0f,
            first: 2048,
            sectors: 20_000_000,
        };
        let l1 = MbrEntry {
            bootable: false,
            type_byte: 0x83,
            first: 4096,
            sectors: 10_000_000,
        };
        let l2 = MbrEntry {
            bootable: false,
            type_byte: 0x83,
            first: 10_004_097,
            sectors: 100_000,
        };
        let t = MsdosTable {
            disk_id: 1,
            primary: [Some(ext), None, None, None],
            logical: vec![(2048, l1), (10_004_096, l2)],
        };
        let mut image = Regions::new(20_002_048 * 512);
        t.encode(&mut image, 512).unwrap();
        let ranges = image.ranges();
        let second = ranges
            .iter()
            .find(|(o, _)| *o == 10_004_096 * 512)
            .expect("second EBR at its byte offset");
        assert_eq!(second.1[446 + 8..446 + 12], 1u32.to_le_bytes());
    }
}
