//! Partition tables: what the plan asks for ([`spec`]), where each partition lands
//! ([`sgdisk`] for GPT, [`parted`] for legacy tables), and the native writers that lay it on a
//! block device ([`gpt`], [`mbr`]), built in memory and written once ([`region`]).

pub mod error;
pub mod gpt;
pub mod guid;
pub mod mbr;
pub mod parted;
pub mod region;
pub mod sgdisk;
pub mod spec;
mod typecode;
pub mod write;

pub use error::TableError;
pub use write::{PlannedTable, WriteTable, plan};
