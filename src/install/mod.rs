//! The install phase on the target, after the closure is in the root's store: what
//! `nixos-install --system` does, natively, as a plan of [`InstallStep`]s the agent executes,
//! each probed first so that a rerun on a half-installed machine skips what is done.
//!
//! The order is nixos-anywhere's: the closure checked whole (nothing is activated unless every
//! path is valid), `/mnt` back to 755 and the `--chown` list (the extra files are written
//! before this plan, see [`files`]), the host keys, the root's checks, the system profile and
//! the marker files, then the bootloader step in nixos-enter's environment ([`enter`]) and a
//! check that it left a boot loader on an ESP or in an MBR.

pub mod enter;
pub mod files;
pub mod reboot;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exec::{Cmd, CmdError};
use crate::plan::{Probe, Step, StepError, StepRecord};
use crate::store::{StoreError, StorePath, StoreRoot};
use files::{FilesError, Root};

/// What the tool asks of the install phase on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSpec {
    /// The installed root, `/mnt`.
    pub root: PathBuf,
    /// The toplevel.
    pub system: StorePath,
    /// The toplevel's closure: every path must be valid in the root's store.
    pub closure: Vec<StorePath>,
    /// `--chown PATH OWNER`, paths relative to the root.
    pub chown: Vec<(String, String)>,
    pub copy_host_keys: bool,
    /// `NIXOS_NO_CHECK`, passed on to switch-to-configuration when set.
    pub no_check: Option<String>,
    /// The layout's disks, whose MBR may hold the boot loader (BIOS systems).
    pub boot_disks: Vec<String>,
}

/// One step of the install phase.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum InstallStep {
    /// Every path of the closure is valid in the root's store.
    CheckClosure {
        paths: usize,
    },
    /// The root is mode 755 again (the extra files may have carried another mode).
    RootMode,
    Chown {
        path: String,
        owner: String,
    },
    HostKeys,
    /// The root is owned by root and every component of its path other-readable.
    CheckRoot,
    /// `nix/var/nix/{profiles,gcroots,temproots}`, `gcroots/profiles`, `/etc/NIXOS`,
    /// `/etc/mtab`, `/tmp` (1777).
    Layout,
    /// `profiles/system -> system-N-link -> TOPLEVEL`.
    SystemProfile {
        system: StorePath,
    },
    /// The system's own `switch-to-configuration boot`, in nixos-enter's environment.
    Bootloader {
        system: StorePath,
    },
    /// An ESP holds a boot loader, or a disk's MBR boot code.
    CheckBootloader,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{missing} of the {total} paths of the closure are not valid in {root}'s store (the \
         first: {first}); nothing was activated: run the install phase again to send them"
    )]
    Incomplete {
        root: String,
        missing: usize,
        total: usize,
        first: StorePath,
    },
    #[error("{0}")]
    Root(String),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the system's switch-to-configuration boot failed: {0}")]
    Bootloader(CmdError),
    #[error(
        "no boot loader after the bootloader step: {0}; the machine was not rebooted, since it \
         would not boot. Check the configuration's boot.loader settings"
    )]
    NoBootloader(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> InstallError {
    let path = path.display().to_string();
    move |source| InstallError::Io {
        path: path.clone(),
        source,
    }
}

/// What the steps act on.
pub struct InstallEnv {
    pub spec: InstallSpec,
    /// The executable that provides `enter` (the agent itself).
    pub enter_exe: PathBuf,
    /// What the bootloader check found, for the report.
    pub bootloader: Option<String>,
}

impl InstallEnv {
    pub fn new(spec: InstallSpec, enter_exe: PathBuf) -> Self {
        Self {
            spec,
            enter_exe,
            bootloader: None,
        }
    }
}

/// The install phase's steps, in order.
pub fn plan(spec: &InstallSpec) -> Vec<InstallStep> {
    let mut steps = vec![
        InstallStep::CheckClosure {
            paths: spec.closure.len(),
        },
        InstallStep::RootMode,
    ];
    steps.extend(spec.chown.iter().map(|(path, owner)| InstallStep::Chown {
        path: path.clone(),
        owner: owner.clone(),
    }));
    if spec.copy_host_keys {
        steps.push(InstallStep::HostKeys);
    }
    steps.extend([
        InstallStep::CheckRoot,
        InstallStep::Layout,
        InstallStep::SystemProfile {
            system: spec.system.clone(),
        },
        InstallStep::Bootloader {
            system: spec.system.clone(),
        },
        InstallStep::CheckBootloader,
    ]);
    steps
}

/// Plans and executes the install phase; `on_step` hears of each step as it ends.
pub fn run(
    env: &mut InstallEnv,
    on_step: impl FnMut(&StepRecord),
) -> Result<Vec<StepRecord>, Box<StepError<InstallError>>> {
    let steps = plan(&env.spec);
    crate::plan::execute(&steps, env, on_step).map_err(Box::new)
}

impl fmt::Display for InstallStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CheckClosure { paths } => {
                write!(f, "check that the {paths} paths of the closure are valid")
            }
            Self::RootMode => f.write_str("give the root mode 755"),
            Self::Chown { path, owner } => write!(f, "chown -R {owner} /{path}"),
            Self::HostKeys => f.write_str("copy the installer's SSH host keys"),
            Self::CheckRoot => f.write_str("check the root's owner and modes"),
            Self::Layout => f.write_str("create /nix/var/nix, /etc/NIXOS, /etc/mtab and /tmp"),
            Self::SystemProfile { system } => write!(f, "set the system profile to {system}"),
            Self::Bootloader { system } => {
                write!(f, "run {system}/bin/switch-to-configuration boot")
            }
            Self::CheckBootloader => f.write_str("check that a boot loader is installed"),
        }
    }
}

impl Step for InstallStep {
    type Env = InstallEnv;
    type Error = InstallError;

    fn describe(&self) -> String {
        self.to_string()
    }

    fn probe(&self, env: &InstallEnv) -> Result<Probe, InstallError> {
        let root = &env.spec.root;
        Ok(match self {
            Self::RootMode => {
                let mode = std::fs::metadata(root).map_err(io(root))?.mode() & 0o7777;
                if mode == 0o755 {
                    Probe::Done
                } else {
                    Probe::Needed
                }
            }
            Self::SystemProfile { system } => {
                let profile = root.join("nix/var/nix/profiles/system");
                let current = std::fs::read_link(&profile).ok().and_then(|generation| {
                    std::fs::read_link(profile.with_file_name(generation)).ok()
                });
                if current.as_deref() == Some(Path::new(&system.to_absolute())) {
                    Probe::Done
                } else {
                    Probe::Needed
                }
            }
            _ => Probe::Needed,
        })
    }

    fn execute(&self, env: &mut InstallEnv) -> Result<(), InstallError> {
        let spec = &env.spec;
        let root = spec.root.as_path();
        match self {
            Self::CheckClosure { .. } => {
                let have = StoreRoot::valid_paths_at(root, &spec.closure)?;
                if have.len() != spec.closure.len() {
                    let first = spec
                        .closure
                        .iter()
                        .find(|p| !have.contains(*p))
                        .unwrap_or(&spec.system)
                        .clone();
                    return Err(InstallError::Incomplete {
                        root: root.display().to_string(),
                        missing: spec.closure.len() - have.len(),
                        total: spec.closure.len(),
                        first,
                    });
                }
            }
            Self::RootMode => {
                std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(root))?;
            }
            Self::Chown { path, owner } => {
                let n = Root::open(root)?.chown(Path::new(path), owner)?;
                tracing::info!("chown -R {owner} /{path}: {n} entries");
            }
            Self::HostKeys => {
                let copied = files::copy_host_keys(&Root::open(root)?, Path::new("/etc/ssh"))?;
                tracing::info!("copied the host keys {}", copied.join(", "));
            }
            Self::CheckRoot => check_root(root)?,
            Self::Layout => layout(root)?,
            Self::SystemProfile { system } => set_profile(root, system)?,
            Self::Bootloader { system } => {
                let top = PathBuf::from(system.to_absolute());
                let mut cmd = Cmd::new(&env.enter_exe)
                    .arg("enter")
                    .arg("--root")
                    .arg(root);
                cmd = cmd
                    .arg("--system")
                    .arg(&top)
                    .args(["--root-again-at", "/mnt"]);
                cmd = cmd.args(["--env", "NIXOS_INSTALL_BOOTLOADER=1"]);
                cmd = cmd
                    .arg("--env")
                    .arg(format!("mountPoint={}", root.display()));
                if let Some(value) = &spec.no_check {
                    cmd = cmd.arg("--env").arg(format!("NIXOS_NO_CHECK={value}"));
                }
                cmd = cmd
                    .arg("--")
                    .arg(top.join("bin/switch-to-configuration"))
                    .arg("boot");
                let out = cmd.output().map_err(InstallError::Bootloader)?;
                for line in String::from_utf8_lossy(&out).lines() {
                    tracing::info!("switch-to-configuration: {line}");
                }
            }
            Self::CheckBootloader => {
                env.bootloader = Some(check_bootloader(root, &spec.boot_disks)?);
            }
        }
        Ok(())
    }
}

/// nixos-install's checks: the root is owned by root, and every component of its path is
/// other-readable and searchable (the system's services run as other users).
fn check_root(root: &Path) -> Result<(), InstallError> {
    let meta = std::fs::metadata(root).map_err(io(root))?;
    if meta.uid() != 0 || meta.gid() != 0 {
        return Err(InstallError::Root(format!(
            "{} is owned by {}:{}, not root: chown root:root it",
            root.display(),
            meta.uid(),
            meta.gid()
        )));
    }
    for dir in root.ancestors() {
        let mode = std::fs::metadata(dir).map_err(io(dir))?.mode();
        if mode & 0o005 != 0o005 {
            return Err(InstallError::Root(format!(
                "{} has mode {:o}: every directory above the installed system must be \
                 readable and searchable by others (chmod o+rx)",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), InstallError> {
    if !path.is_dir() {
        std::fs::create_dir_all(path).map_err(io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    Ok(())
}

/// A symbolic link `at -> target`, replacing what is there, through a temporary name.
fn link(target: &Path, at: &Path) -> Result<(), InstallError> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = at.with_file_name(format!(
        ".{}.tmp",
        at.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, at).map_err(io(at))
}

fn layout(root: &Path) -> Result<(), InstallError> {
    for dir in [
        "nix/var/nix/profiles",
        "nix/var/nix/gcroots",
        "nix/var/nix/temproots",
        "etc",
    ] {
        make_dir(&root.join(dir), 0o755)?;
    }
    link(
        Path::new("/nix/var/nix/profiles"),
        &root.join("nix/var/nix/gcroots/profiles"),
    )?;
    let marker = root.join("etc/NIXOS");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .map_err(io(&marker))?;
    link(Path::new("/proc/mounts"), &root.join("etc/mtab"))?;
    let tmp = root.join("tmp");
    make_dir(&tmp, 0o1777)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).map_err(io(&tmp))
}

/// `nix-env -p /nix/var/nix/profiles/system --set SYSTEM` in the root: the generation that
/// already holds the system, else a new one after the highest; then `system` points to it.
fn set_profile(root: &Path, system: &StorePath) -> Result<(), InstallError> {
    let profiles = root.join("nix/var/nix/profiles");
    make_dir(&profiles, 0o755)?;
    let top = PathBuf::from(system.to_absolute());
    let mut highest = 0;
    let mut existing = None;
    for entry in std::fs::read_dir(&profiles).map_err(io(&profiles))? {
        let name = entry.map_err(io(&profiles))?.file_name();
        let name = name.to_string_lossy();
        let Some(n) = name
            .strip_prefix("system-")
            .and_then(|r| r.strip_suffix("-link"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        highest = highest.max(n);
        if std::fs::read_link(profiles.join(name.as_ref())).is_ok_and(|t| t == top) {
            existing = Some(n);
        }
    }
    let generation = existing.unwrap_or(highest + 1);
    let name = format!("system-{generation}-link");
    link(&top, &profiles.join(&name))?;
    link(Path::new(&name), &profiles.join("system"))
}

/// What the bootloader step left: a loader on a vfat file system mounted under the root (an
/// ESP), or boot code in the MBR of one of `disks`. Returns where it is.
pub fn check_bootloader(root: &Path, disks: &[String]) -> Result<String, InstallError> {
    let mut looked = Vec::new();
    for esp in vfat_mounts_below(root)? {
        if let Some(loader) = efi_loader(&esp) {
            return Ok(format!("EFI loader {}", loader.display()));
        }
        looked.push(format!("the ESP at {} holds no EFI loader", esp.display()));
    }
    for disk in disks {
        let mut code = [0u8; 440];
        let read = std::fs::File::open(disk)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut code, 0));
        match read {
            Ok(()) if code.iter().any(|&b| b != 0) => {
                let grub = code.windows(4).any(|w| w == b"GRUB");
                let what = if grub { "GRUB" } else { "boot code" };
                return Ok(format!("{what} in the MBR of {disk}"));
            }
            Ok(()) => looked.push(format!("the MBR of {disk} holds no boot code")),
            Err(e) => looked.push(format!("{disk}: {e}")),
        }
    }
    if looked.is_empty() {
        looked.push(format!(
            "no vfat file system is mounted under {} and the layout names no disk",
            root.display()
        ));
    }
    Err(InstallError::NoBootloader(looked.join("; ")))
}

fn vfat_mounts_below(root: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mounts = crate::disk::unmount::mounts_below(root).map_err(io(root))?;
    Ok(mounts
        .into_iter()
        .filter(|m| m.fstype == "vfat")
        .map(|m| m.point)
        .collect())
}

/// A boot loader on the ESP at `esp`: the removable-media path firmware boots without an NVRAM
/// entry, or a known loader's own file (systemd-boot, GRUB, shim).
fn efi_loader(esp: &Path) -> Option<PathBuf> {
    let efi = find_ci(esp, "EFI")?;
    for vendor in std::fs::read_dir(&efi).ok()?.flatten() {
        let Ok(files) = std::fs::read_dir(vendor.path()) else {
            continue;
        };
        let removable = vendor.file_name().eq_ignore_ascii_case("BOOT");
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().to_ascii_lowercase();
            let loader = name.ends_with(".efi")
                && ((removable && name.starts_with("boot"))
                    || ["systemd-boot", "grub", "shim"]
                        .iter()
                        .any(|l| name.starts_with(l)));
            if loader && file.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
                return Some(file.path());
            }
        }
    }
    None
}

/// `dir/name`, whatever the case of `name` there (FAT is case-insensitive, names differ).
fn find_ci(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

/// The arguments of `nixos-anywhere-rs enter` as the [`enter::Enter`] they describe.
pub fn env_pair(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}
