//! The disk layer: disko's layouts read into typed data, validated whole, planned into steps,
//! then executed on block devices (partition tables natively, file systems and device-mapper
//! layers with the installer's own tools).

pub mod table;

pub mod blkpg;
pub mod device;
pub mod fat;
