//! The disk layer: disko's layouts read into typed data, validated whole, planned into steps,
//! then executed on block devices (partition tables natively, file systems and device-mapper
//! layers with the installer's own tools).

pub mod blkpg;
pub mod device;
pub mod facts;
pub mod fat;
pub mod layout;
pub mod names;
pub mod order;
pub mod plan;
pub mod run;
pub mod size;
pub mod table;
pub mod unmount;
pub mod validate;
