//! Unpacking an untrusted NAR below a directory, safely.
//!
//! Every file is created relative to an open directory descriptor, with `O_EXCL | O_NOFOLLOW`,
//! under a name the reader has already checked (non-empty, no `/`, not `.` or `..`, strictly
//! increasing): nothing can be written outside the destination or through a symlink, even one
//! the archive itself created. On any failure everything created is removed again.

use std::ffi::OsStr;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, Timespec, Timestamps};

use super::reader::{Entry, NarError, NarReader};

/// Whether to give the unpacked tree the store's canonical metadata: mtime 1, files 0444 or
/// 0555, directories 0555, as Nix does for every valid store path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonical {
    No,
    Yes,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: the destination must not exist; remove it or choose another", .0.display())]
    Exists(PathBuf),
}

/// Unpacks the NAR from `reader` to `dest`, which must not exist; its parent must. On error
/// `dest` does not exist afterwards. The caller checks the archive's end (and hash) with
/// [`NarReader::finish`]; if that fails, it removes `dest` with [`remove_tree`].
pub fn restore<R: BufRead>(
    reader: &mut NarReader<R>,
    dest: &Path,
    canonical: Canonical,
) -> Result<(), RestoreError> {
    let io_err = |source| RestoreError::Io {
        path: dest.to_owned(),
        source,
    };
    let name = dest.file_name().ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "destination has no file name",
        ))
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_fd = open_dir(CWD, parent).map_err(|e| RestoreError::Io {
        path: parent.to_owned(),
        source: e.into(),
    })?;
    restore_into(reader, parent_fd.as_fd(), name.as_bytes(), canonical).map_err(|e| match e {
        RestoreError::Io { path, source } => RestoreError::Io {
            path: parent.join(path),
            source,
        },
        RestoreError::Exists(path) => RestoreError::Exists(parent.join(path)),
        other => other,
    })
}

/// Unpacks the NAR from `reader` as `name` inside the directory `parent`; see [`restore`].
/// Paths in errors are relative to `parent`.
pub fn restore_into<R: BufRead>(
    reader: &mut NarReader<R>,
    parent: BorrowedFd<'_>,
    name: &[u8],
    canonical: Canonical,
) -> Result<(), RestoreError> {
    let mut unpacker = Unpacker {
        canonical,
        open: Vec::new(),
        path: PathBuf::from(OsStr::from_bytes(name)),
        created_root: false,
    };
    let result = unpacker.run(reader, parent, name);
    drop(unpacker.open);
    if result.is_err() && unpacker.created_root {
        // Best effort: the error that made us clean up is the one to report.
        let _ = remove_tree(parent, name);
    }
    result
}

struct Unpacker {
    canonical: Canonical,
    /// Descriptors of the directories being filled, innermost last.
    open: Vec<OwnedFd>,
    /// Path of the entry being written, relative to the parent, for error messages.
    path: PathBuf,
    created_root: bool,
}

impl Unpacker {
    fn run<R: BufRead>(
        &mut self,
        reader: &mut NarReader<R>,
        parent: BorrowedFd<'_>,
        root_name: &[u8],
    ) -> Result<(), RestoreError> {
        while let Some(entry) = reader.next_entry()? {
            match entry {
                Entry::Directory { name } => {
                    let name = self.enter(name.as_deref(), root_name);
                    let made =
                        rustix::fs::mkdirat(self.dir_fd(parent), name, Mode::from_raw_mode(0o755));
                    self.created(made)?;
                    let fd = open_dir(self.dir_fd(parent), name).map_err(|e| self.io(e))?;
                    self.open.push(fd);
                }
                Entry::File {
                    name, executable, ..
                } => {
                    let name = self.enter(name.as_deref(), root_name);
                    let mode = match (self.canonical, executable) {
                        (Canonical::Yes, true) => 0o555,
                        (Canonical::Yes, false) => 0o444,
                        (Canonical::No, true) => 0o755,
                        (Canonical::No, false) => 0o644,
                    };
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
                    let fd = rustix::fs::openat(
                        self.dir_fd(parent),
                        name,
                        flags | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode),
                    );
                    let fd = self.created(fd)?;
                    self.write_contents(reader, fd)?;
                    self.leave();
                }
                Entry::Symlink { name, target } => {
                    let name = self.enter(name.as_deref(), root_name);
                    let made = rustix::fs::symlinkat(target.as_slice(), self.dir_fd(parent), name);
                    self.created(made)?;
                    if self.canonical == Canonical::Yes {
                        let (dir, at) = (self.dir_fd(parent), AtFlags::SYMLINK_NOFOLLOW);
                        rustix::fs::utimensat(dir, name, &store_times(), at)
                            .map_err(|e| self.io(e))?;
                    }
                    self.leave();
                }
                Entry::DirectoryEnd => {
                    let fd = self.open.pop().expect("the reader balances directories");
                    if self.canonical == Canonical::Yes {
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o555))
                            .and_then(|()| rustix::fs::futimens(&fd, &store_times()))
                            .map_err(|e| self.io(e))?;
                    }
                    self.leave();
                }
            }
        }
        Ok(())
    }

    /// Marks the root as created once its first syscall succeeds, so cleanup never removes a
    /// destination that existed before.
    fn created<T>(&mut self, result: rustix::io::Result<T>) -> Result<T, RestoreError> {
        match result {
            Ok(value) => {
                if self.open.is_empty() {
                    self.created_root = true;
                }
                Ok(value)
            }
            Err(rustix::io::Errno::EXIST) if self.open.is_empty() => {
                Err(RestoreError::Exists(self.path.clone()))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    fn write_contents<R: BufRead>(
        &mut self,
        reader: &mut NarReader<R>,
        fd: OwnedFd,
    ) -> Result<(), RestoreError> {
        let mut file = std::fs::File::from(fd);
        reader.contents_to(|piece| file.write_all(piece).map_err(|e| self.io_std(e)))?;
        if self.canonical == Canonical::Yes {
            rustix::fs::futimens(&file, &store_times()).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn enter<'n>(&mut self, name: Option<&'n [u8]>, root_name: &'n [u8]) -> &'n [u8] {
        match name {
            Some(name) => {
                self.path.push(OsStr::from_bytes(name));
                name
            }
            None => root_name,
        }
    }

    fn leave(&mut self) {
        if !self.open.is_empty() {
            self.path.pop();
        }
    }

    fn dir_fd<'a>(&'a self, parent: BorrowedFd<'a>) -> BorrowedFd<'a> {
        self.open.last().map_or(parent, |fd| fd.as_fd())
    }

    fn io(&self, e: rustix::io::Errno) -> RestoreError {
        self.io_std(e.into())
    }

    fn io_std(&self, source: io::Error) -> RestoreError {
        RestoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// mtime (and atime) 1, which Nix gives every store path.
fn store_times() -> Timestamps {
    let one = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: one,
        last_modification: one,
    }
}

fn open_dir<P: rustix::path::Arg>(dir: impl AsFd, path: P) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, path, flags, Mode::empty())
}

/// Removes `name` inside `parent` and everything below it, without following symlinks, making
/// read-only directories writable first (store paths are 0555).
pub fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?);
    }
    rustix::fs::chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
    let dir = open_dir(parent, name)?;
    let mut children = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push(child.to_vec());
        }
    }
    for child in children {
        remove_tree(dir.as_fd(), &child)?;
    }
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}
