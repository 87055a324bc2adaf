//! A GPT planned in full (every LBA, GUID, name and attribute decided) and encoded with
//! `gptman`: primary and backup headers and entry arrays, with the protective or hybrid MBR.
//!
//! `gptman` 3.x rather than the `gpt` crate 4.1: `gptman` keeps each partition in the slot of
//! its number (sgdisk's numbering; `gpt` packs used entries into consecutive slots), and checks
//! overlaps, bounds and duplicate GUIDs when it writes. We check the same before encoding, so the
//! error names the partition.

use super::error::TableError;
use super::guid::{Guid, type_guid};
use super::mbr::{self, MbrEntry};
use super::region::Regions;
use super::sgdisk::{self, Extent, GptBounds};
use super::spec::{GptSpec, HybridMbr};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptEntry {
    pub number: u32,
    pub first: u64,
    pub last: u64,
    #[serde(serialize_with = "as_text")]
    pub type_guid: Guid,
    #[serde(serialize_with = "as_text")]
    pub guid: Guid,
    pub name: String,
    pub attributes: u64,
}

fn as_text<S: serde::Serializer>(g: &Guid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(g)
}

/// A GPT with nothing left to decide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptTable {
    pub bounds_sectors: u64,
    pub sector_size: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    #[serde(serialize_with = "as_text")]
    pub disk_guid: Guid,
    pub entries: Vec<GptEntry>,
    /// The MBR in sector 0: the protective one, or a hybrid.
    pub mbr: [Option<MbrEntry>; 4],
}

/// Checks a partition name: GPT holds 36 UTF-16 code units.
pub fn check_name(number: u32, name: &str) -> Result<(), TableError> {
    let units = name.encode_utf16().count();
    if units > 36 {
        return Err(TableError::Invalid {
            number,
            what: format!(
                "the name {name:?} is {units} UTF-16 units long; a GPT name holds at most 36"
            ),
        });
    }
    Ok(())
}

/// Plans a fresh GPT for `spec` on a device of `sectors` logical sectors of `sector_size` bytes.
pub fn plan(spec: &GptSpec, sectors: u64, sector_size: u64) -> Result<GptTable, TableError> {
    let bounds = GptBounds::new_table(sectors, sector_size);
    if sectors <= 2 * (bounds.first_usable - 1) + 1 {
        return Err(TableError::Table(format!(
            "a disk of {sectors} sectors is too small for a GPT"
        )));
    }
    let extents = sgdisk::resolve(&spec.partitions, bounds, &[])?;
    let mut entries = Vec::new();
    for p in &spec.partitions {
        let Extent { first, last, .. } = *extents
            .iter()
            .find(|e| e.number == p.number)
            .expect("resolved");
        let type_guid = type_guid(&p.type_code).ok_or_else(|| TableError::Invalid {
            number: p.number,
            what: format!(
                "type {:?} is neither an sgdisk type code (see `sgdisk -L`) nor a GUID",
                p.type_code
            ),
        })?;
        let guid = match &p.guid {
            Some(text) => Guid::parse(text).ok_or_else(|| TableError::Invalid {
                number: p.number,
                what: format!("uuid {text:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
            })?,
            None => random()?,
        };
        let mut attributes = 0u64;
        for &bit in &p.attributes {
            if bit > 63 {
                return Err(TableError::Invalid {
                    number: p.number,
                    what: format!("attribute bit {bit} is outside 0..=63"),
                });
            }
            attributes |= 1 << bit;
        }
        check_name(p.number, &p.label)?;
        entries.push(GptEntry {
            number: p.number,
            first,
            last,
            type_guid,
            guid,
            name: p.label.clone(),
            attributes,
        });
    }
    let mut guids: Vec<Guid> = entries.iter().map(|e| e.guid).collect();
    guids.sort_by_key(|g| g.0);
    if let Some(w) = guids.windows(2).find(|w| w[0] == w[1]) {
        return Err(TableError::Table(format!(
            "two partitions have the GUID {}; GUIDs must be unique",
            w[0]
        )));
    }
    entries.sort_by_key(|e| e.number);
    let mbr = match &spec.hybrid {
        Some(h) => hybrid(h, &entries)?,
        None => mbr::protective(sectors),
    };
    Ok(GptTable {
        bounds_sectors: sectors,
        sector_size,
        first_usable: bounds.first_usable,
        last_usable: bounds.last_usable,
        disk_guid: random()?,
        entries,
        mbr,
    })
}

fn random() -> Result<Guid, TableError> {
    Guid::random().map_err(|e| TableError::Table(format!("no random numbers for GUIDs: {e}")))
}

/// The MBR type sgdisk gives a mirrored partition, from its GPT type.
fn default_mbr_type(type_guid: &Guid) -> u8 {
    let text = type_guid.to_string();
    match text.as_str() {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => 0xef,
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => 0x07,
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => 0x82,
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => 0x8e,
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => 0xfd,
        _ => 0x83,
    }
}

/// The hybrid MBR `sgdisk -h N[:N...][:EE]` builds (with disko's intended argument, not its
/// broken `1"/dev/sdb"`), then the `sfdisk --part-type` and `--activate` disko runs on it.
/// The `EE` entry covers LBA 1 up to the first mirrored partition; it comes first unless
/// `efiGptPartitionFirst` is false.
fn hybrid(h: &HybridMbr, entries: &[GptEntry]) -> Result<[Option<MbrEntry>; 4], TableError> {
    if h.partitions.is_empty() || h.partitions.len() > 3 {
        return Err(TableError::Table(format!(
            "a hybrid MBR mirrors 1 to 3 partitions, not {}",
            h.partitions.len()
        )));
    }
    let mut mirrored = Vec::new();
    for hp in &h.partitions {
        let e = entries
            .iter()
            .find(|e| e.number == hp.number)
            .ok_or_else(|| TableError::Invalid {
                number: hp.number,
                what: "the hybrid MBR mirrors a partition that is not in the table".into(),
            })?;
        if e.last > u32::MAX as u64 {
            return Err(TableError::Invalid {
                number: hp.number,
                what: "ends past 2^32 sectors, which an MBR cannot address; it cannot be mirrored"
                    .into(),
            });
        }
        let type_byte = match &hp.mbr_type {
            Some(t) => u8::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| {
                TableError::Invalid {
                    number: hp.number,
                    what: format!("mbrPartitionType {t:?} is not a hex byte such as 0c"),
                }
            })?,
            None => default_mbr_type(&e.type_guid),
        };
        mirrored.push(MbrEntry {
            bootable: hp.bootable,
            type_byte,
            first: e.first,
            sectors: e.last - e.first + 1,
        });
    }
    let lowest = mirrored.iter().map(|m| m.first).min().expect("non-empty");
    let ee = MbrEntry {
        bootable: false,
        type_byte: 0xee,
        first: 1,
        sectors: lowest - 1,
    };
    let mut slots: Vec<Option<MbrEntry>> = Vec::new();
    if h.efi_gpt_partition_first {
        slots.push(Some(ee));
        slots.extend(mirrored.into_iter().map(Some));
    } else {
        slots.extend(mirrored.into_iter().map(Some));
        slots.push(Some(ee));
    }
    slots.resize(4, None);
    Ok([slots[0], slots[1], slots[2], slots[3]])
}

/// Encodes the table into an image of the device (nothing touches the device here).
pub fn encode(table: &GptTable) -> Result<Regions, gptman::Error> {
    let mut image = Regions::new(table.bounds_sectors * table.sector_size);
    let mut gpt = gptman::GPT::new_from(&mut image, table.sector_size, table.disk_guid.0)?;
    gpt.header.first_usable_lba = table.first_usable;
    gpt.header.last_usable_lba = table.last_usable;
    for e in &table.entries {
        gpt[e.number] = gptman::GPTPartitionEntry {
            partition_type_guid: e.type_guid.0,
            unique_partition_guid: e.guid.0,
            starting_lba: e.first,
            ending_lba: e.last,
            attribute_bits: e.attributes,
            partition_name: e.name.as_str().into(),
        };
    }
    // The rest of LBA 1 and of the backup header's sector is zero, whatever was there before.
    let ss = table.sector_size as usize;
    image.put(table.sector_size, &vec![0u8; ss]);
    image.put(
        (table.bounds_sectors - 1) * table.sector_size,
        &vec![0u8; ss],
    );
    gpt.write_into(&mut image)?;
    mbr::put_mbr(&mut image, &table.mbr);
    Ok(image)
}
