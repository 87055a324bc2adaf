//! Writing paths into a store root: a directory `R` that holds `R/nix/store` and
//! `R/nix/var/nix/db`, such as `/mnt` during an install.
//!
//! A path is unpacked under a temporary name in the store directory, its NAR hash and size are
//! checked against its path info, then it is renamed into place and registered. Registration is
//! batched (one transaction per batch); a path renamed into place but not yet registered is
//! invalid to Nix and is replaced on the next attempt, so an interruption at any point leaves a
//! consistent store.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, Read};
use std::os::fd::BorrowedFd;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use super::db::{Db, Registration};
use super::drv;
use super::{PathInfo, StoreError, StorePath};
use crate::nar::{Canonical, NarReader, remove_tree, restore_into};

/// Prefix of the temporary names paths are unpacked under.
const TEMP_PREFIX: &str = ".nixos-anywhere-rs-tmp-";

/// Register at least this often, so that an interrupted transfer keeps most of its work.
const BATCH_PATHS: usize = 256;
const BATCH_AGE: Duration = Duration::from_secs(2);

/// An open store root, locked for writing by this process.
pub struct StoreRoot {
    root: PathBuf,
    store: OwnedFd,
    db: Db,
    /// Paths renamed into place and waiting to be registered, in order.
    pending: Vec<(PathInfo, Vec<(String, StorePath)>)>,
    pending_since: Option<Instant>,
    /// Held for the life of the writer: Nix's `big-lock`, exclusively.
    _lock: File,
}

/// Keeps temporary names unique within this process; the pid keeps them unique between
/// processes.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Unpacks NARs into a store root's store directory under temporary names, without its
/// writer: several can unpack at once (the operator's stream and downloads) while the writer
/// puts checked paths into place and registers them, one at a time, in dependency order.
pub struct Unpacker {
    root: PathBuf,
    store: OwnedFd,
}

/// A path unpacked and checked against its path info under a temporary name; not in place
/// and not valid until [`StoreRoot::commit`]. Dropped uncommitted, it is removed.
pub struct Unpacked {
    info: PathInfo,
    temp: String,
    drv_outputs: Vec<(String, StorePath)>,
    store: Option<OwnedFd>,
}

impl Unpacked {
    pub fn info(&self) -> &PathInfo {
        &self.info
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            let _ = remove_tree(store.as_fd(), self.temp.as_bytes());
        }
    }
}

impl Unpacker {
    /// Unpacks the NAR of `info.path` from `nar`, reading exactly `info.nar_size` bytes, and
    /// checks it against `info`. On error nothing of it remains.
    pub fn unpack(&self, info: &PathInfo, nar: impl BufRead) -> Result<Unpacked, StoreError> {
        unpack(self.store.as_fd(), &self.root, info, nar)
    }
}

fn unpack(
    store: BorrowedFd<'_>,
    root: &Path,
    info: &PathInfo,
    nar: impl BufRead,
) -> Result<Unpacked, StoreError> {
    let temp = format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    );
    let mut reader = NarReader::with_limit(nar, info.nar_size);
    restore_into(&mut reader, store, temp.as_bytes(), Canonical::Yes).map_err(|source| {
        StoreError::Nar {
            path: info.path.clone(),
            source,
        }
    })?;
    // restore_into cleaned up after its own errors; dropping this removes the tree after the
    // later checks' (and whenever it is not committed).
    let owned = store
        .try_clone_to_owned()
        .map_err(|e| StoreError::io(&root.join("nix/store"), e))?;
    let mut unpacked = Unpacked {
        info: info.clone(),
        temp,
        drv_outputs: Vec::new(),
        store: Some(owned),
    };
    let (actual, actual_size) = reader.finish().expect("restore reads to the end");
    if actual != info.nar_hash || actual_size != info.nar_size {
        return Err(StoreError::HashMismatch {
            path: info.path.clone(),
            expected: info.nar_hash,
            actual,
            expected_size: info.nar_size,
            actual_size,
        });
    }
    unpacked.drv_outputs = drv_outputs(store, info, &unpacked.temp)?;
    Ok(unpacked)
}

impl StoreRoot {
    /// Opens the store root at `root`, creating its directories and database if needed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store_dir = root.join("nix/store");
        let db_dir = root.join("nix/var/nix/db");
        for dir in [&store_dir, &db_dir] {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let lock_path = db_dir.join("big-lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!(
                "waiting for another process to release {}",
                lock_path.display()
            );
            rustix::fs::flock(&lock, FlockOperation::LockExclusive)
                .map_err(|e| StoreError::io(&lock_path, e.into()))?;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let store = rustix::fs::open(&store_dir, flags, Mode::empty())
            .map_err(|e| StoreError::io(&store_dir, e.into()))?;
        let db = Db::open(&db_dir)?;
        let mut root = Self {
            root: root.to_owned(),
            store,
            db,
            pending: Vec::new(),
            pending_since: None,
            _lock: lock,
        };
        root.remove_stale_temporaries()?;
        Ok(root)
    }

    /// Which of `paths` are valid in the store root at `root`, read without changing anything
    /// there: no directory, lock or database is created, nothing is removed.
    pub fn valid_paths_at<'p>(
        root: &Path,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        match Db::open_read_only(&root.join("nix/var/nix/db"))? {
            Some(db) => db.valid_paths(paths),
            None => Ok(BTreeSet::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Which of `paths` are valid (registered) here.
    pub fn valid_paths<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut valid = self.db.valid_paths(paths)?;
        valid.extend(self.pending.iter().map(|(info, _)| info.path.clone()));
        Ok(valid)
    }

    /// Unpacks the NAR of `info.path` from `nar`, reading exactly `info.nar_size` bytes, checks
    /// it against `info`, and moves it into place. It is registered by the next
    /// [`flush`](Self::flush) (which this calls now and then). On error nothing of the path
    /// remains and `nar` is left at an unknown position.
    pub fn receive(&mut self, info: &PathInfo, nar: impl BufRead) -> Result<(), StoreError> {
        self.check_references(info)?;
        let unpacked = unpack(self.store.as_fd(), &self.root, info, nar)?;
        self.commit(unpacked)
    }

    /// An unpacker into this root's store, to use without this writer (see [`Unpacker`]).
    pub fn unpacker(&self) -> Result<Unpacker, StoreError> {
        let store = self
            .store
            .try_clone()
            .map_err(|e| StoreError::io(&self.root.join("nix/store"), e))?;
        Ok(Unpacker {
            root: self.root.clone(),
            store,
        })
    }

    /// The references of `info` that are not valid here (nor waiting to be registered).
    pub fn missing_references(&self, info: &PathInfo) -> Result<Vec<StorePath>, StoreError> {
        let mut missing = Vec::new();
        for reference in info.references.iter().filter(|r| **r != info.path) {
            let pending = self.pending.iter().any(|(p, _)| p.path == *reference);
            if !pending && !self.db.is_valid(reference)? {
                missing.push(reference.clone());
            }
        }
        Ok(missing)
    }

    /// Moves an unpacked path into place, once its references are valid; it is registered
    /// by the next [`flush`](Self::flush) (which this calls now and then).
    pub fn commit(&mut self, mut unpacked: Unpacked) -> Result<(), StoreError> {
        self.check_references(&unpacked.info)?;
        self.move_into_place(&unpacked.temp, &unpacked.info.path)?;
        unpacked.store = None; // in place now: nothing to remove
        let info = unpacked.info.clone();
        self.pending
            .push((info, std::mem::take(&mut unpacked.drv_outputs)));
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if self.pending.len() >= BATCH_PATHS || since.elapsed() >= BATCH_AGE {
            self.flush()?;
        }
        Ok(())
    }

    /// Registers every path received so far, in one transaction.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<Registration<'_>> = self
            .pending
            .iter()
            .map(|(info, outputs)| Registration {
                info,
                drv_outputs: outputs.clone(),
            })
            .collect();
        self.db.register(&batch)?;
        tracing::debug!(paths = self.pending.len(), "registered");
        self.pending.clear();
        self.pending_since = None;
        Ok(())
    }

    /// Flushes the store root's file systems (store and database) to the disk, so that what is
    /// registered survives a reboot or kexec that follows at once.
    pub fn sync(&self) -> Result<(), StoreError> {
        let store_dir = self.root.join("nix/store");
        rustix::fs::syncfs(&self.store).map_err(|e| StoreError::io(&store_dir, e.into()))?;
        let db_dir = self.root.join("nix/var/nix/db");
        let db = rustix::fs::open(
            &db_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io(&db_dir, e.into()))?;
        let same_fs = rustix::fs::fstat(&db).ok().map(|s| s.st_dev)
            == rustix::fs::fstat(&self.store).ok().map(|s| s.st_dev);
        if !same_fs {
            rustix::fs::syncfs(&db).map_err(|e| StoreError::io(&db_dir, e.into()))?;
        }
        Ok(())
    }

    fn check_references(&self, info: &PathInfo) -> Result<(), StoreError> {
        match self.missing_references(info)?.into_iter().next() {
            Some(reference) => Err(StoreError::MissingReference {
                path: info.path.clone(),
                reference,
            }),
            None => Ok(()),
        }
    }

    /// Renames the checked temporary tree to its store path. Something already there is not
    /// valid (that was checked before sending), so it is the remains of an interrupted run.
    fn move_into_place(&self, temp: &str, path: &StorePath) -> Result<(), StoreError> {
        let store = self.store.as_fd();
        let final_name = path.base_name();
        if rustix::fs::statat(store, final_name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            tracing::debug!(%path, "replacing an unregistered leftover");
            remove_tree(store, final_name.as_bytes())
                .map_err(|e| StoreError::io(&path.under_root(&self.root), e))?;
        }
        rustix::fs::renameat(store, temp, store, final_name)
            .map_err(|e| StoreError::io(&path.under_root(&self.root), e.into()))
    }

    /// Removes what an interrupted earlier run of this tool left under temporary names.
    fn remove_stale_temporaries(&mut self) -> Result<(), StoreError> {
        let store_dir = self.root.join("nix/store");
        let entries = std::fs::read_dir(&store_dir).map_err(|e| StoreError::io(&store_dir, e))?;
        for entry in entries {
            let name = entry
                .map_err(|e| StoreError::io(&store_dir, e))?
                .file_name();
            if name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                remove_tree(self.store.as_fd(), name.as_encoded_bytes())
                    .map_err(|e| StoreError::io(&store_dir.join(&name), e))?;
            }
        }
        Ok(())
    }
}

fn drv_outputs(
    store: BorrowedFd<'_>,
    info: &PathInfo,
    temp: &str,
) -> Result<Vec<(String, StorePath)>, StoreError> {
    if !info.path.is_derivation() {
        return Ok(Vec::new());
    }
    let bad = || StoreError::BadDerivation {
        path: info.path.clone(),
    };
    let fd = rustix::fs::openat(
        store,
        temp,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| bad())?;
    let mut text = Vec::new();
    File::from(fd)
        .take(64 << 20)
        .read_to_end(&mut text)
        .map_err(|_| bad())?;
    drv::derivation_outputs(&text).ok_or_else(bad)
}
