//! A partition table as the disk plan asks for it: the layout's own values (sgdisk's or parted's
//! start/end syntax), already numbered and named as disko names them. Turning these into sectors
//! on a real device, with the partitioning tool's exact rules, is the table writers' job.

use serde::{Deserialize, Serialize};

/// One partition table to write on one block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TableSpec {
    /// disko's `gpt` content, laid out with sgdisk's rules.
    Gpt(GptSpec),
    /// disko's legacy `table` content, laid out with parted's rules.
    Legacy(LegacySpec),
}

/// disko's `gpt`: partitions in creation order (`_index` order, after disko's priority sort).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptSpec {
    pub partitions: Vec<GptPartition>,
    /// A hybrid MBR mirroring some of the partitions, when any partition has `hybrid` set.
    pub hybrid: Option<HybridMbr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptPartition {
    /// The partition number (`_index`), 1-based.
    pub number: u32,
    /// The GPT partition name, as disko derives it (`disk-<disk>-<part>`, or the 36-character
    /// hash when longer than 36 bytes).
    pub label: String,
    /// An sgdisk short type code (`8300`, `EF00`) or a full type GUID.
    pub type_code: String,
    /// sgdisk start: `0` (the first free aligned sector), a sector count, or `<n>[KMGTP]`.
    pub start: String,
    /// sgdisk end: `+<size>`, `-<size>` (that much before the end of the free block), or `-0`.
    pub end: String,
    /// `--set-alignment` in sectors; 0 keeps sgdisk's default.
    pub alignment: u64,
    /// A fixed partition GUID; `None` for a random one.
    pub guid: Option<String>,
    /// GPT attribute bits to set.
    pub attributes: Vec<u8>,
}

/// A hybrid MBR (sgdisk `-h`): the GPT partitions it mirrors, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HybridMbr {
    pub partitions: Vec<HybridPartition>,
    /// disko's `efiGptPartitionFirst`: the protective `EE` entry comes first in the MBR.
    pub efi_gpt_partition_first: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HybridPartition {
    /// The GPT partition number mirrored.
    pub number: u32,
    /// The MBR type byte in hex (`0c`), when the layout sets one.
    pub mbr_type: Option<String>,
    pub bootable: bool,
}

/// disko's legacy `table` (parted): partitions in list order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacySpec {
    pub format: LegacyFormat,
    pub partitions: Vec<LegacyPartition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyFormat {
    Gpt,
    Msdos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyPartition {
    /// The partition number (the 1-based list position).
    pub number: u32,
    /// msdos only.
    pub part_type: LegacyPartType,
    /// parted's file-system hint (`fat32`, `linux-swap`), which only sets a type.
    pub fs_type: Option<String>,
    /// gpt only: the name as disko writes it (udev-escaped, so a space is the text `\x20`).
    pub name: Option<String>,
    /// parted start and end: `1M`, `500MiB`, `100%`, ...
    pub start: String,
    pub end: String,
    pub flags: Vec<String>,
    pub bootable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyPartType {
    Primary,
    Extended,
    Logical,
}
