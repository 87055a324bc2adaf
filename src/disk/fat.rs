//! FAT12/16/32 file systems, formatted natively with `fatfs`, choosing the FAT type and the
//! cluster size exactly as `mkfs.vfat` (dosfstools 4.2) does for the same size and the
//! `extraArgs` disko passes (`-F`, `-n`, `-s`). The layout differs from mkfs.vfat's in ways
//! that do not matter to readers (`fatfs` reserves 8 sectors, aligns nothing, sets no hidden
//! sectors); the type and cluster size, which decide what firmware and kernels accept, match.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error(
        "vfat extraArgs {args:?}: {what}; natively formatted vfat understands -F 12|16|32, \
         -n LABEL and -s SECTORS_PER_CLUSTER"
    )]
    Args { args: Vec<String>, what: String },
    #[error("{path}: {what}")]
    Geometry { path: PathBuf, what: String },
    #[error("{path}: formatting vfat failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What `mkfs.vfat`'s options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FatOptions {
    /// `-F`: 12, 16 or 32.
    pub fat_bits: Option<u8>,
    /// `-n`: the volume label, at most 11 bytes.
    pub label: Option<String>,
    /// `-s`: sectors per cluster, a power of two up to 128.
    pub sectors_per_cluster: Option<u32>,
}

impl FatOptions {
    /// Reads disko's `extraArgs` for a vfat file system.
    pub fn from_mkfs_args(args: &[String]) -> Result<FatOptions, FatError> {
        let bad = |what: String| FatError::Args {
            args: args.to_vec(),
            what,
        };
        let mut o = FatOptions::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.as_str() {
                a if a.len() > 2
                    && (a.starts_with("-F") || a.starts_with("-n") || a.starts_with("-s")) =>
                {
                    (&a[..2], Some(a[2..].to_string()))
                }
                a => (a, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| bad(format!("{flag} needs a value")))
            };
            match flag {
                "-F" => {
                    let v = value()?;
                    o.fat_bits = Some(match v.as_str() {
                        "12" => 12,
                        "16" => 16,
                        "32" => 32,
                        _ => return Err(bad(format!("-F {v}: the FAT size is 12, 16 or 32"))),
                    });
                }
                "-n" => {
                    let v = value()?;
                    if v.len() > 11
                        || !v.bytes().all(|b| {
                            (0x20..0x7f).contains(&b) && !b"\"*+,./:;<=>?[\\]|".contains(&b)
                        })
                    {
                        return Err(bad(format!(
                            "-n {v:?}: a FAT label is at most 11 printable ASCII bytes without \"*+,./:;<=>?[\\]|"
                        )));
                    }
                    o.label = Some(v);
                }
                "-s" => {
                    let v = value()?;
                    match v.parse::<u32>() {
                        Ok(n) if n.is_power_of_two() && n <= 128 => o.sectors_per_cluster = Some(n),
                        _ => {
                            return Err(bad(format!(
                                "-s {v}: sectors per cluster is a power of two from 1 to 128"
                            )));
                        }
                    }
                }
                other => return Err(bad(format!("{other} is not supported"))),
            }
        }
        Ok(o)
    }
}

/// The FAT type and cluster size mkfs.vfat would choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FatParams {
    pub fat_bits: u8,
    pub sectors_per_cluster: u32,
    pub sector_size: u32,
    /// The cluster count mkfs.vfat computes.
    pub clusters: u64,
}

const MAX_CLUST_12: u64 = 4084;
const MIN_CLUST_16: u64 = 4087;
const MAX_CLUST_16: u64 = 65524;
const MIN_CLUST_32: u64 = 65525;
const MAX_CLUST_32: u64 = 268_435_446;

/// dosfstools 4.2's `establish_params` and cluster search (`mkfs.fat.c`), for a fixed disk
/// of `bytes` with `sector_size`-byte sectors, 2 FATs, 512 root entries, aligned structures.
pub fn choose(bytes: u64, sector_size: u64, o: &FatOptions) -> Option<FatParams> {
    let total = bytes / sector_size;
    // CHS guess for a device without geometry (an image file, most virtual disks).
    let sec_per_track: u64 = if total <= 524_288 {
        if total <= 4096 { 16 } else { 32 }
    } else {
        63
    };
    let mut size_fat = o.fat_bits.map_or(0, u64::from);
    let mut cluster: u64 = 4;
    if size_fat == 0 && bytes >= 512 << 20 {
        size_fat = 32;
    }
    if size_fat == 32 {
        let sectors = bytes / sector_size;
        cluster = if sectors > 32 * 1024 * 1024 * 2 {
            64
        } else if sectors > 16 * 1024 * 1024 * 2 {
            32
        } else if sectors > 8 * 1024 * 1024 * 2 {
            16
        } else if sectors > 260 * 1024 * 2 {
            8
        } else {
            1
        };
    }
    let reserved: u64 = if size_fat == 32 { 32 } else { 1 };
    let mut align = true;
    let mut num_sectors = total.min(u32::MAX as u64);
    num_sectors = num_sectors / sec_per_track * sec_per_track;
    let nr_fats: u64 = 2;
    let root_dir_sectors = (512 * 32u64).div_ceil(sector_size);
    if num_sectors <= 8192 {
        align = false;
    }
    let align_object = |n: u64, c: u64| if align { (n + c - 1) & !(c - 1) } else { n };
    let max_cluster_size = match o.sectors_per_cluster {
        Some(s) => {
            cluster = u64::from(s);
            u64::from(s)
        }
        None => 128,
    };
    let ss = sector_size;
    let (mut c12, mut c16, mut c32);
    loop {
        let fatdata32 = num_sectors.checked_sub(align_object(reserved, cluster))?;
        let fatdata1216 = fatdata32.saturating_sub(align_object(root_dir_sectors, cluster));
        c12 = 2 * (fatdata1216 * ss + nr_fats * 3) / (2 * cluster * ss + nr_fats * 3);
        let fl12 = align_object((((c12 + 2) * 3 + 1) >> 1).div_ceil(ss), cluster);
        c12 = fatdata1216.saturating_sub(nr_fats * fl12) / cluster;
        let max12 = ((fl12 * 2 * ss) / 3).min(MAX_CLUST_12);
        if c12 > max12 {
            c12 = 0;
        }
        c16 = (fatdata1216 * ss + nr_fats * 4) / (cluster * ss + nr_fats * 2);
        let fl16 = align_object(((c16 + 2) * 2).div_ceil(ss), cluster);
        c16 = fatdata1216.saturating_sub(nr_fats * fl16) / cluster;
        let max16 = ((fl16 * ss) / 2).min(MAX_CLUST_16);
        if c16 > max16 || (c16 != 0 && c16 < MIN_CLUST_16) {
            c16 = 0;
        }
        c32 = (fatdata32 * ss + nr_fats * 8) / (cluster * ss + nr_fats * 4);
        let fl32 = align_object(((c32 + 2) * 4).div_ceil(ss), cluster);
        c32 = fatdata32.saturating_sub(nr_fats * fl32) / cluster;
        let max32 = ((fl32 * ss) / 4).min(MAX_CLUST_32);
        if c32 > max32 || (c32 != 0 && c32 < MIN_CLUST_32 && o.fat_bits != Some(32)) {
            c32 = 0;
        }
        if (c12 != 0 && (size_fat == 0 || size_fat == 12))
            || (c16 != 0 && (size_fat == 0 || size_fat == 16))
            || (c32 != 0 && size_fat == 32)
        {
            break;
        }
        cluster <<= 1;
        if cluster > max_cluster_size {
            return None;
        }
    }
    if size_fat == 0 {
        size_fat = if c16 > c12 { 16 } else { 12 };
    }
    let clusters = match size_fat {
        12 => c12,
        16 => c16,
        _ => c32,
    };
    Some(FatParams {
        fat_bits: size_fat as u8,
        sectors_per_cluster: cluster as u32,
        sector_size: ss as u32,
        clusters,
    })
}

/// Formats the whole of `file` (a partition node or an image) as vfat. Returns the parameters
/// and the random volume id.
pub fn format(
    path: &Path,
    file: &mut File,
    sector_size: u64,
    o: &FatOptions,
) -> Result<(FatParams, u32), FatError> {
    let io_err = |source| FatError::Io {
        path: path.into(),
        source,
    };
    let bytes = file.seek(SeekFrom::End(0)).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let params = choose(bytes, sector_size, o).ok_or_else(|| FatError::Geometry {
        path: path.into(),
        what: format!(
            "{bytes} bytes cannot hold a FAT{} file system{}; use a larger partition or other -F/-s",
            o.fat_bits.map_or(String::new(), |b| b.to_string()),
            o.sectors_per_cluster.map_or(String::new(), |s| format!(" with {s} sectors per cluster"))
        ),
    })?;
    if params.fat_bits == 32 && params.clusters < MIN_CLUST_32 {
        // mkfs.vfat makes these with a warning; readers that go by the cluster count (as the
        // FAT specification says, and `fatfs`) see FAT12/16 there.
        return Err(FatError::Geometry {
            path: path.into(),
            what: format!(
                "FAT32 needs at least {MIN_CLUST_32} clusters, and {bytes} bytes give {}; drop -F 32, use a smaller -s, or a larger partition",
                params.clusters
            ),
        });
    }
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| io_err(io::Error::other(e)))?;
    let volume_id = u32::from_le_bytes(id);
    let fat_type = match params.fat_bits {
        12 => fatfs::FatType::Fat12,
        16 => fatfs::FatType::Fat16,
        _ => fatfs::FatType::Fat32,
    };
    let mut opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fat_type)
        .bytes_per_sector(sector_size as u16)
        .bytes_per_cluster(params.sectors_per_cluster * sector_size as u32)
        .volume_id(volume_id);
    if let Some(label) = &o.label {
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        opts = opts.volume_label(l);
    }
    fatfs::format_volume(&mut *file, opts).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok((params, volume_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| {
            FatOptions::from_mkfs_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            a(&["-F", "32", "-n", "ESP", "-s8"]).unwrap(),
            FatOptions {
                fat_bits: Some(32),
                label: Some("ESP".into()),
                sectors_per_cluster: Some(8)
            }
        );
        assert!(a(&["-F", "24"]).unwrap_err().to_string().contains("-F 24"));
        assert!(a(&["-n", "MUCH TOO LONG"]).is_err());
        assert!(a(&["-s", "3"]).is_err());
        assert!(a(&["-I"]).is_err());
        assert!(a(&["-n"]).is_err());
    }
}
