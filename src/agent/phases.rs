//! The install's requests on the agent's side: the disk-encryption keys, the disk layer, the
//! extra files, nixos-install's steps and the reboot. Each step's end goes back to the tool as a
//! [`Reply::Step`], so that a person watches the run move.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{AgentError, PEER};
use crate::disk::plan::Mode;
use crate::disk::run::{self as disk_run, RunOptions};
use crate::install::files::{FileEntry, Root};
use crate::install::{self, InstallEnv, InstallSpec, reboot};
use crate::plan::StepRecord;
use crate::proto::{KeyFile, Reply, WireError, frame};

/// tmpfs and ramfs: where a key may be written (it never reaches a disk).
const RAM_FILE_SYSTEMS: [i64; 2] = [0x0102_1994, 0x8584_58f6];

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("the disk-encryption key path {0} is not absolute")]
    KeyPath(PathBuf),
    #[error(
        "{dir} is not in RAM (tmpfs): the disk-encryption key for {path} would reach a disk; \
         name a path under /tmp or /run on the installer"
    )]
    KeyNotInRam { dir: PathBuf, path: PathBuf },
    #[error("writing the disk-encryption key {path}: {source}")]
    KeyWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] disk_run::DiskError),
    #[error(transparent)]
    Files(#[from] install::files::FilesError),
    #[error("install: {0}")]
    Install(Box<crate::plan::StepError<install::InstallError>>),
    #[error("reboot: {0}")]
    Reboot(#[from] reboot::RebootError),
    #[error("this executable: {0}")]
    SelfPath(std::io::Error),
}

/// Writes each key with mode 0600 in a directory only root may enter, refusing any place that
/// is not RAM.
pub fn write_keys(keys: &[KeyFile]) -> Result<Reply, PhaseError> {
    for key in keys {
        let path = &key.path;
        let dir = path
            .parent()
            .filter(|_| path.is_absolute())
            .ok_or_else(|| PhaseError::KeyPath(path.clone()))?;
        let fail = |source| PhaseError::KeyWrite {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        let fs = rustix::fs::statfs(dir).map_err(|e| fail(e.into()))?;
        if !RAM_FILE_SYSTEMS.contains(&(fs.f_type as i64)) {
            return Err(PhaseError::KeyNotInRam {
                dir: dir.to_owned(),
                path: path.clone(),
            });
        }
        let tmp = path.with_extension("nixos-anywhere-rs.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(&key.key).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
    }
    Ok(Reply::KeysWritten { count: keys.len() })
}

/// Runs the disk layer here, each step reported as it ends.
pub fn disko(
    layout: &str,
    mode: Mode,
    root_mountpoint: &str,
    output: &mut impl Write,
) -> Result<Reply, AgentError> {
    let opts = RunOptions {
        mode,
        root_mountpoint: root_mountpoint.to_owned(),
        ..RunOptions::default()
    };
    let mut steps = StepReports::new(output);
    let (plan, _) = disk_run::run(layout, &opts, BTreeMap::new(), |r| steps.report(r))
        .map_err(PhaseError::from)?;
    steps.result?;
    Ok(Reply::Disked {
        steps: plan.steps.len(),
    })
}

/// Sends each step's record to the tool as it ends; the first failure to send is kept (the
/// steps go on: what they do must not stop half-way because the tool went away).
struct StepReports<'w, W> {
    output: &'w mut W,
    result: Result<(), WireError>,
}

impl<'w, W: Write> StepReports<'w, W> {
    fn new(output: &'w mut W) -> Self {
        Self {
            output,
            result: Ok(()),
        }
    }

    fn report(&mut self, record: &StepRecord) {
        if self.result.is_ok() {
            self.result = frame::write_message(self.output, &Reply::Step(record.clone()), PEER)
                .and_then(|()| {
                    self.output
                        .flush()
                        .map_err(|source| WireError::Io { peer: PEER, source })
                });
        }
    }
}

pub fn put_files(root: &Path, entries: &[FileEntry]) -> Result<Reply, PhaseError> {
    let root = Root::open(root)?;
    for entry in entries {
        root.write(entry)?;
    }
    Ok(Reply::FilesWritten {
        entries: entries.len(),
    })
}

/// nixos-install's steps, each reported as it ends.
pub fn install(spec: InstallSpec, output: &mut impl Write) -> Result<Reply, AgentError> {
    let exe = std::env::current_exe().map_err(PhaseError::SelfPath)?;
    let mut env = InstallEnv::new(spec, exe);
    let mut steps = StepReports::new(output);
    let records = install::run(&mut env, |r| steps.report(r)).map_err(PhaseError::Install)?;
    steps.result?;
    Ok(Reply::Installed {
        steps: records.len(),
        bootloader: env.bootloader.unwrap_or_default(),
        peak_rss_kib: peak_rss_kib(),
        lowest_available_kib: LOWEST_AVAILABLE_KIB.load(Ordering::Relaxed),
    })
}

/// The lowest `MemAvailable` seen while this agent ran, in KiB (`u64::MAX`: not watched).
static LOWEST_AVAILABLE_KIB: AtomicU64 = AtomicU64::new(u64::MAX);

/// Samples the machine's available memory four times a second, for the install's report (how
/// close a small machine came to the OOM killer).
pub(super) fn watch_memory() {
    let sample = || {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let _ = std::thread::Builder::new()
        .name("memory".into())
        .spawn(move || {
            while let Some(kib) = sample() {
                LOWEST_AVAILABLE_KIB.fetch_min(kib, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        });
}

/// This process's peak resident memory, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
