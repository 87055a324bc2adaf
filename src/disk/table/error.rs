//! What can go wrong between a [`super::spec::TableSpec`] and the bytes on a device.

use std::path::PathBuf;

/// Errors of the partition-table layer. Each names the partition (by number and label) or the
/// device it is about, and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "partition {number} ({label}): {field} {value:?} is not an sgdisk position: use a number of \
         sectors, or a number with one of the suffixes K, M, G, T, P, E, optionally after + or -"
    )]
    BadSgdiskValue {
        number: u32,
        label: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "partition {number} ({label}): {field} {value:?} is not a parted position: use a number \
         with a unit (s, B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, %)"
    )]
    BadPartedValue {
        number: u32,
        label: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "partition {number} ({label}) does not fit: sectors {start}..={end} are not free on a disk \
         whose usable sectors are {first_usable}..={last_usable}; make the partitions before it \
         smaller, or use a larger disk"
    )]
    DoesNotFit {
        number: u32,
        label: String,
        start: u64,
        end: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partition {number} ({label}): no free space is left on the disk for it")]
    NoFreeSpace { number: u32, label: String },
    #[error("partition number {number} is used twice; give each partition its own number")]
    DuplicateNumber { number: u32 },
    #[error("partition number {number} is outside 1..={max} for this table")]
    NumberOutOfRange { number: u32, max: u32 },
    #[error("partition {number}: {what}")]
    Invalid { number: u32, what: String },
    #[error("the table is invalid: {0}")]
    Table(String),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] crate::disk::device::DeviceError),
    #[error("{path}: the GPT could not be written: {source}")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gptman::Error,
    },
}
