//! What a target is, as the agent finds it there: the facts every later phase decides on
//! (whether to kexec, which disk is which, whether to escalate privileges). Read from the kernel's
//! own files (`/proc`, `/sys/class/block`, `/etc/os-release`), never from a tool's human output.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Facts {
    /// `uname -m`: `x86_64`, `aarch64`, ...
    pub arch: String,
    /// The running kernel's release.
    pub kernel: String,
    pub os: OsRelease,
    /// A NixOS installer (`ID=nixos` and `VARIANT_ID=installer`): no kexec needed.
    pub is_installer: bool,
    /// The container manager, when the agent runs in one (`docker`, `lxc`, ...).
    pub container: Option<String>,
    pub uid: u32,
    pub has_sudo: bool,
    pub has_doas: bool,
    pub memory: Memory,
    /// `/proc/sys/kernel/random/boot_id`: new with every boot, a kexec included.
    pub boot_id: String,
    /// Whether this kernel would load another one.
    pub kexec: KexecSupport,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OsRelease {
    pub id: Option<String>,
    pub id_like: Option<String>,
    pub variant_id: Option<String>,
    pub pretty_name: Option<String>,
}

/// What stands in the way of `kexec --load`, as the kernel says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KexecSupport {
    /// `/proc/sys/kernel/kexec_load_disabled` is 1: no kexec until the next boot.
    pub load_disabled: bool,
    /// The kernel lockdown mode (`integrity`, `confidentiality`; Secure Boot turns it on), when
    /// it is not `none`: only kernels signed with a key the kernel trusts may be loaded.
    pub lockdown: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// A whole block device (not a partition), as `/sys/class/block` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    /// The kernel's name: `vda`, `nvme0n1`, `loop3`.
    pub name: String,
    /// `/dev/<name>`.
    pub device: PathBuf,
    pub size_bytes: u64,
    pub logical_sector_size: u32,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    /// Its `/dev/disk/by-id` names, so a person can tell which physical disk it is.
    pub by_id: Vec<String>,
    pub partitions: Vec<Partition>,
    /// Devices stacked on the disk itself (device-mapper, md).
    pub holders: Vec<String>,
    /// Where the disk itself is mounted (a file system without a partition table).
    pub mounts: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Partition {
    pub name: String,
    pub number: Option<u32>,
    pub size_bytes: u64,
    /// The GPT partition name, when the kernel knows it.
    pub label: Option<String>,
    pub holders: Vec<String>,
    pub mounts: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FactsError {
    path: PathBuf,
    source: std::io::Error,
}

impl Facts {
    /// Reads the facts of the machine this runs on.
    pub fn gather() -> Result<Self, FactsError> {
        let uname = rustix::system::uname();
        let os = OsRelease::read(Path::new("/etc/os-release"))
            .or_else(|_| OsRelease::read(Path::new("/usr/lib/os-release")))
            .unwrap_or_default();
        let mounts = Mounts::read()?;
        Ok(Self {
            arch: uname.machine().to_string_lossy().into_owned(),
            kernel: uname.release().to_string_lossy().into_owned(),
            is_installer: os.is_installer(),
            os,
            container: container(),
            uid: rustix::process::getuid().as_raw(),
            has_sudo: on_path("sudo"),
            has_doas: on_path("doas"),
            memory: Memory::read()?,
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|id| id.trim().to_owned())
                .unwrap_or_default(),
            kexec: KexecSupport::read(),
            disks: disks(Path::new("/sys/class/block"), &mounts)?,
            interfaces: interfaces(),
        })
    }

    /// The disk whose device is `device`, following `/dev/disk/by-*` links.
    pub fn disk(&self, device: &Path) -> Option<&Disk> {
        let real = fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
        self.disks.iter().find(|d| d.device == real)
    }
}

impl OsRelease {
    fn read(path: &Path) -> std::io::Result<Self> {
        let text = fs::read_to_string(path)?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut os = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned();
            match key.trim() {
                "ID" => os.id = Some(value),
                "ID_LIKE" => os.id_like = Some(value),
                "VARIANT_ID" => os.variant_id = Some(value),
                "PRETTY_NAME" => os.pretty_name = Some(value),
                _ => {}
            }
        }
        os
    }

    pub fn is_nixos(&self) -> bool {
        self.id.as_deref() == Some("nixos")
            || self
                .id_like
                .as_deref()
                .is_some_and(|l| l.split_whitespace().any(|w| w == "nixos"))
    }

    /// nixos-anywhere's test: NixOS, and the installation-device profile's `VARIANT_ID`.
    pub fn is_installer(&self) -> bool {
        self.is_nixos() && self.variant_id.as_deref() == Some("installer")
    }
}

impl KexecSupport {
    fn read() -> Self {
        let load_disabled = fs::read_to_string("/proc/sys/kernel/kexec_load_disabled")
            .is_ok_and(|v| v.trim() == "1");
        let lockdown = fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|modes| Self::active_lockdown(&modes));
        Self {
            load_disabled,
            lockdown,
        }
    }

    /// The bracketed mode of `none [integrity] confidentiality`, unless it is `none`.
    fn active_lockdown(modes: &str) -> Option<String> {
        let start = modes.find('[')? + 1;
        let len = modes[start..].find(']')?;
        Some(modes[start..start + len].to_owned()).filter(|mode| mode != "none")
    }
}

impl Memory {
    fn read() -> Result<Self, FactsError> {
        let path = Path::new("/proc/meminfo");
        let text = read(path)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Ok(Self {
            total_bytes: field("MemTotal"),
            available_bytes: field("MemAvailable"),
        })
    }
}

/// The systemd convention (`/run/systemd/container`), then PID 1's `container=` variable.
fn container() -> Option<String> {
    if let Ok(name) = fs::read_to_string("/run/systemd/container") {
        return Some(name.trim().to_owned()).filter(|n| !n.is_empty());
    }
    let environ = fs::read("/proc/1/environ").ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"container="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
}

/// Whether an executable `program` is on `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program)).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    })
}

/// Mount points by the `major:minor` of their source device, from `/proc/self/mountinfo`.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn read() -> Result<Self, FactsError> {
        let text = read(Path::new("/proc/self/mountinfo"))?;
        let mounts = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let dev = fields.nth(2)?.to_owned();
                let point = fields.nth(1)?;
                Some((dev, PathBuf::from(unescape_octal(point))))
            })
            .collect();
        Ok(Self(mounts))
    }

    fn of(&self, dev: &str) -> Vec<PathBuf> {
        self.0
            .iter()
            .filter(|(d, _)| d == dev)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whole disks under `class` (normally `/sys/class/block`), each with its partitions.
fn disks(class: &Path, mounts: &Mounts) -> Result<Vec<Disk>, FactsError> {
    let by_id = by_id_names();
    let entries = fs::read_dir(class).map_err(|source| FactsError {
        path: class.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .filter(|name| !class.join(name).join("partition").exists())
        .filter_map(|name| disk(&class.join(&name), name, mounts, &by_id))
        .collect())
}

/// The block device at `device` (a kernel node such as `/dev/vda`, or a link to one): usually
/// a whole disk, but a layout may name a partition as its disk too.
pub fn disk_at(device: &Path) -> Result<Option<Disk>, FactsError> {
    let real = fs::canonicalize(device).map_err(|source| FactsError {
        path: device.to_owned(),
        source,
    })?;
    let Some(name) = real.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let mounts = Mounts::read()?;
    let dir = Path::new("/sys/class/block").join(&name);
    Ok(disk(&dir, name, &mounts, &by_id_names()))
}

/// The block device whose sysfs directory is `dir`; `None` for an empty one (a loop device with
/// no file behind it, a drive without a medium).
fn disk(dir: &Path, name: String, mounts: &Mounts, by_id: &[(String, PathBuf)]) -> Option<Disk> {
    let sectors = number(&dir.join("size")).filter(|s| *s > 0)?;
    let device = PathBuf::from("/dev").join(&name);
    let sector = number(&dir.join("queue/logical_block_size")).unwrap_or(512);
    // Partitions made through BLKPG (no partition parser in the kernel) carry no name in
    // sysfs: read the GPT's own entries then.
    let mut gpt = None;
    let mut partitions = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let part_dir = entry.path();
        if !part_dir.join("partition").exists() {
            continue;
        }
        let part = entry.file_name().to_string_lossy().into_owned();
        partitions.push(Partition {
            number: number(&part_dir.join("partition")).map(|n| n as u32),
            size_bytes: number(&part_dir.join("size")).unwrap_or(0) * 512,
            label: uevent(&part_dir, "PARTNAME").or_else(|| {
                let number = number(&part_dir.join("partition"))? as usize;
                let names = gpt.get_or_insert_with(|| gpt_names(&device, sector));
                names.get(number.checked_sub(1)?).cloned().flatten()
            }),
            holders: list(&part_dir.join("holders")),
            mounts: mounts.of(&text(&part_dir.join("dev")).unwrap_or_default()),
            name: part,
        });
    }
    partitions.sort_by_key(|p| p.number);
    Some(Disk {
        by_id: by_id
            .iter()
            .filter(|(_, target)| *target == device)
            .map(|(link, _)| link.clone())
            .collect(),
        // /sys/class/block/*/size counts 512-byte units whatever the sector size.
        size_bytes: sectors * 512,
        logical_sector_size: sector as u32,
        model: text(&dir.join("device/model")),
        serial: text(&dir.join("device/serial")).or_else(|| text(&dir.join("serial"))),
        removable: number(&dir.join("removable")) == Some(1),
        read_only: number(&dir.join("ro")) == Some(1),
        holders: list(&dir.join("holders")),
        mounts: mounts.of(&text(&dir.join("dev")).unwrap_or_default()),
        partitions,
        device,
        name,
    })
}

/// The partition names in the GPT on `device` (entry `i` at index `i`), read from the primary
/// header and its entries; empty when there is none or it cannot be read.
fn gpt_names(device: &Path, sector: u64) -> Vec<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<Vec<Option<String>>> {
        let mut disk = fs::File::open(device)?;
        let mut header = vec![0u8; sector as usize];
        disk.seek(SeekFrom::Start(sector))?;
        disk.read_exact(&mut header)?;
        if &header[..8] != b"EFI PART" {
            return Ok(Vec::new());
        }
        let field = |at: usize, len: usize| {
            header[at..at + len]
                .iter()
                .rev()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b))
        };
        let (entries_lba, count, size) = (field(72, 8), field(80, 4), field(84, 4));
        // Bounds from the GPT specification: at least 128 bytes an entry, a table of a few MiB.
        if !(128..=4096).contains(&size) || count > 4096 || size * count > 16 << 20 {
            return Ok(Vec::new());
        }
        let mut table = vec![0u8; (size * count) as usize];
        disk.seek(SeekFrom::Start(entries_lba * sector))?;
        disk.read_exact(&mut table)?;
        Ok(table
            .chunks(size as usize)
            .map(|entry| {
                if entry[..16].iter().all(|b| *b == 0) {
                    return None; // an unused entry
                }
                let units: Vec<u16> = entry[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect();
                Some(String::from_utf16_lossy(&units))
            })
            .collect())
    };
    read().unwrap_or_default()
}

/// `/dev/disk/by-id` links and the devices they resolve to.
fn by_id_names() -> Vec<(String, PathBuf)> {
    let mut names: Vec<(String, PathBuf)> = fs::read_dir("/dev/disk/by-id")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = fs::canonicalize(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect();
    names.sort();
    names
}

fn interfaces() -> Vec<Interface> {
    let mut interfaces: Vec<Interface> = Vec::new();
    for entry in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mac = text(&entry.path().join("address")).filter(|m| m != "00:00:00:00:00:00");
        interfaces.push(Interface {
            name,
            mac,
            addresses: Vec::new(),
        });
    }
    if let Ok(addrs) = if_addrs::get_if_addrs() {
        for addr in addrs {
            if let Some(i) = interfaces.iter_mut().find(|i| i.name == addr.name) {
                i.addresses.push(addr.ip().to_string());
            }
        }
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    interfaces
}

fn read(path: &Path) -> Result<String, FactsError> {
    fs::read_to_string(path).map_err(|source| FactsError {
        path: path.to_owned(),
        source,
    })
}

fn text(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

fn number(path: &Path) -> Option<u64> {
    text(path)?.parse().ok()
}

fn uevent(dir: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join("uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        names.insert(entry.file_name().to_string_lossy().into_owned());
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_is_the_bracketed_mode_unless_none() {
        let mode = |text| KexecSupport::active_lockdown(text);
        assert_eq!(mode("[none] integrity confidentiality\n"), None);
        assert_eq!(
            mode("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            mode("none integrity [confidentiality]").as_deref(),
            Some("confidentiality")
        );
        assert_eq!(mode(""), None);
    }

    #[test]
    fn reads_os_release_as_nixos_anywhere_does() {
        let installer = OsRelease::parse(
            "NAME=NixOS\nID=nixos\nVARIANT_ID=installer\nPRETTY_NAME=\"NixOS 25.11 (Xantusia)\"\n",
        );
        assert!(installer.is_installer());
        assert_eq!(
            installer.pretty_name.as_deref(),
            Some("NixOS 25.11 (Xantusia)")
        );
        let nixos = OsRelease::parse("ID=nixos\n");
        assert!(nixos.is_nixos() && !nixos.is_installer());
        let like = OsRelease::parse("ID=foo\nID_LIKE=\"debian nixos\"\n");
        assert!(like.is_nixos());
        let debian = OsRelease::parse("ID=debian\nVARIANT_ID=installer\n");
        assert!(!debian.is_installer());
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_octal(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn gathers_this_machine() {
        let facts = Facts::gather().unwrap();
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(facts.memory.total_bytes > facts.memory.available_bytes);
        assert!(
            facts
                .interfaces
                .iter()
                .any(|i| i.name == "lo" && i.addresses.iter().any(|a| a == "127.0.0.1"))
        );
        assert_eq!(facts.uid, rustix::process::getuid().as_raw());
    }
}
