//! Partition tables: what the plan asks for ([`spec`]), and the native writers that lay it on a
//! block device.

pub mod spec;
