//! BLKPG: telling the kernel about partitions one by one, which works where the kernel has no
//! partition-table parser for the device (loop devices on a kernel built without them, as on
//! this project's build host) and never depends on a re-read of the whole table succeeding
//! while some partition is busy. The ioctl and its structs are in neither `nix` nor `libc`, so
//! they are declared here from `<linux/blkpg.h>`.

use std::fs::File;
use std::io;
use std::os::raw::{c_char, c_int, c_longlong, c_void};

use rustix::ioctl::{Setter, ioctl, opcode};

const BLKPG_ADD_PARTITION: c_int = 1;
const BLKPG_DEL_PARTITION: c_int = 2;

/// `struct blkpg_partition`.
#[repr(C)]
struct BlkpgPartition {
    start: c_longlong,
    length: c_longlong,
    pno: c_int,
    devname: [c_char; 64],
    volname: [c_char; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

/// `BLKPG` is declared `_IO(0x12, 105)` although it takes a pointer.
const BLKPG: rustix::ioctl::Opcode = opcode::none(0x12, 105);

fn call(device: &File, op: c_int, pno: u32, start: u64, length: u64) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: c_longlong::try_from(start)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        length: c_longlong::try_from(length)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        pno: c_int::try_from(pno).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG takes a pointer to a `blkpg_ioctl_arg` whose `data` points to a
    // `blkpg_partition` of `datalen` bytes; both live until the call returns.
    unsafe { ioctl(device, Setter::<BLKPG, BlkpgIoctlArg>::new(arg)) }.map_err(io::Error::from)
}

/// Adds partition `pno` covering `length` bytes from byte `start`.
pub fn add_partition(device: &File, pno: u32, start: u64, length: u64) -> io::Result<()> {
    call(device, BLKPG_ADD_PARTITION, pno, start, length)
}

/// Removes partition `pno` (EBUSY while it is mounted or open exclusively; ENXIO if absent).
pub fn delete_partition(device: &File, pno: u32) -> io::Result<()> {
    call(device, BLKPG_DEL_PARTITION, pno, 0, 0)
}
