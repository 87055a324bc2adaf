//! Extra files (`--extra-files DIR`): read on this machine into entries that keep each file's
//! mode, sent in batches, written into the installed root by the agent, owned by root; then the
//! `--chown` list; and the installer's host keys with `--copy-host-keys`.
//!
//! Everything is written relative to an open directory of the root with `RESOLVE_IN_ROOT`: a
//! symbolic link among the extra files (or already in the root) that points to `/etc` resolves
//! inside the installed root, never onto the installer.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Uid};
use serde::{Deserialize, Serialize};

/// File content travels in pieces of at most this much, so that a batch fits one message.
pub const CHUNK: usize = 1 << 20;

/// One file, directory or link of the extra files, by its path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated, without `.` or `..` components.
    pub path: String,
    /// Permission bits (with setuid, setgid, sticky), as on this machine.
    pub mode: u32,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    /// A piece of a file's content at `offset`; the piece at offset 0 creates (or truncates)
    /// the file.
    File {
        offset: u64,
        #[serde(with = "base64")]
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading the extra files at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the extra file {path} has a name that is not UTF-8; rename it (the installed system's \
         files are named in UTF-8)"
    )]
    NotUtf8 { path: PathBuf },
    #[error("the extra file {path} is neither a file, a directory nor a link; leave it out")]
    Special { path: PathBuf },
    #[error("the path {0:?} is not a plain relative path inside the installed root")]
    BadPath(String),
    #[error("writing {path} in {root}: {source}")]
    Write {
        root: String,
        path: String,
        source: std::io::Error,
    },
    #[error("--chown {path} {owner}: {problem}")]
    Chown {
        path: String,
        owner: String,
        problem: String,
    },
}

/// Reads the tree at `dir` into entries, parents before children, content in [`CHUNK`]s. The
/// directory itself is not an entry: the root keeps its own mode.
pub fn read_tree(dir: &Path) -> Result<Vec<FileEntry>, FilesError> {
    let mut entries = Vec::new();
    walk(dir, dir, &mut entries)?;
    Ok(entries)
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), FilesError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Read { path, source }
    };
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(read(dir))?
        .collect::<Result<_, _>>()
        .map_err(read(dir))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let meta = std::fs::symlink_metadata(&path).map_err(read(&path))?;
        let rel = path.strip_prefix(base).expect("below the base");
        let rel = rel
            .to_str()
            .ok_or_else(|| FilesError::NotUtf8 { path: path.clone() })?
            .to_owned();
        let mode = meta.mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            out.push(FileEntry {
                path: rel,
                mode,
                kind: EntryKind::Dir,
            });
            walk(base, &path, out)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(read(&path))?;
            let target = target
                .to_str()
                .ok_or_else(|| FilesError::NotUtf8 { path: path.clone() })?
                .to_owned();
            out.push(FileEntry {
                path: rel,
                mode,
                kind: EntryKind::Symlink { target },
            });
        } else if kind.is_file() {
            let file = File::open(&path).map_err(read(&path))?;
            let mut offset = 0u64;
            loop {
                let mut data = vec![0; CHUNK];
                let n = file.read_at(&mut data, offset).map_err(read(&path))?;
                data.truncate(n);
                // An empty file is one empty piece.
                if n == 0 && offset > 0 {
                    break;
                }
                out.push(FileEntry {
                    path: rel.clone(),
                    mode,
                    kind: EntryKind::File { offset, data },
                });
                offset += n as u64;
                if n < CHUNK {
                    break;
                }
            }
        } else {
            return Err(FilesError::Special { path });
        }
    }
    Ok(())
}

/// Splits entries into batches of about [`CHUNK`] bytes of content each.
pub fn batches(entries: Vec<FileEntry>) -> Vec<Vec<FileEntry>> {
    let mut batches = vec![Vec::new()];
    let mut size = 0;
    for entry in entries {
        let len = match &entry.kind {
            EntryKind::File { data, .. } => data.len(),
            _ => entry.path.len(),
        };
        if size + len > CHUNK && !batches.last().expect("one").is_empty() {
            batches.push(Vec::new());
            size = 0;
        }
        size += len;
        batches.last_mut().expect("one").push(entry);
    }
    batches.retain(|b| !b.is_empty());
    batches
}

/// The parts of a relative path, checked: no root, no `.`, no `..`, nothing empty.
fn components(path: &str) -> Result<(Option<&str>, &str), FilesError> {
    let bad = || FilesError::BadPath(path.to_owned());
    if path.is_empty() || path.contains('\0') {
        return Err(bad());
    }
    for c in Path::new(path).components() {
        if !matches!(c, Component::Normal(_)) {
            return Err(bad());
        }
    }
    if path.split('/').any(|part| part.is_empty() || part == ".") {
        return Err(bad());
    }
    Ok(match path.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, path),
    })
}

/// The installed root, open for writing entries below it.
pub struct Root {
    name: String,
    dir: OwnedFd,
}

impl Root {
    pub fn open(root: &Path) -> Result<Self, FilesError> {
        let name = root.display().to_string();
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FilesError::Write {
            root: name.clone(),
            path: ".".into(),
            source: e.into(),
        })?;
        Ok(Self { name, dir })
    }

    fn fail(&self, path: &str) -> impl Fn(rustix::io::Errno) -> FilesError {
        let root = self.name.clone();
        let path = path.to_owned();
        move |e| FilesError::Write {
            root: root.clone(),
            path: path.clone(),
            source: e.into(),
        }
    }

    /// A directory below the root, resolved as if the root were `/`.
    fn dir_at(&self, rel: Option<&str>) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.dir,
            rel.unwrap_or("."),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Writes one entry, owned by root, with its mode.
    pub fn write(&self, entry: &FileEntry) -> Result<(), FilesError> {
        let (parent, name) = components(&entry.path)?;
        let fail = self.fail(&entry.path);
        let parent = self.dir_at(parent).map_err(&fail)?;
        let mode = Mode::from_raw_mode(entry.mode & 0o7777);
        let root = Some(Uid::ROOT);
        let root_group = Some(Gid::ROOT);
        match &entry.kind {
            EntryKind::Dir => {
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
                let dir = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(&fail)?;
                rustix::fs::fchown(&dir, root, root_group).map_err(&fail)?;
                rustix::fs::fchmod(&dir, mode).map_err(&fail)?;
            }
            EntryKind::File { offset, data } => {
                let mut flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if *offset == 0 {
                    // Whatever was there (a link, say) is replaced, not written through.
                    remove_non_dir(&parent, name).map_err(&fail)?;
                    flags |= OFlags::CREATE | OFlags::EXCL;
                }
                let fd = rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(&fail)?;
                let file = File::from(fd);
                file.write_all_at(data, *offset)
                    .map_err(|source| FilesError::Write {
                        root: self.name.clone(),
                        path: entry.path.clone(),
                        source,
                    })?;
                if *offset == 0 {
                    rustix::fs::fchown(file.as_fd(), root, root_group).map_err(&fail)?;
                    rustix::fs::fchmod(file.as_fd(), mode).map_err(&fail)?;
                }
            }
            EntryKind::Symlink { target } => {
                remove_non_dir(&parent, name).map_err(&fail)?;
                rustix::fs::symlinkat(target.as_str(), &parent, name).map_err(&fail)?;
                rustix::fs::chownat(&parent, name, root, root_group, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(&fail)?;
            }
        }
        Ok(())
    }

    /// `chown -R OWNER PATH` inside the root, never following a link.
    pub fn chown(&self, path: &Path, owner: &str) -> Result<u64, FilesError> {
        let text = path.display().to_string();
        let chown_err = |problem: String| FilesError::Chown {
            path: text.clone(),
            owner: owner.to_owned(),
            problem,
        };
        let (uid, gid) = self.resolve_owner(owner).map_err(&chown_err)?;
        let (parent, name) = components(&text)?;
        let parent = self
            .dir_at(parent)
            .map_err(|e| chown_err(format!("{} is not there ({e})", text)))?;
        let mut changed = 0;
        chown_tree(&parent, name, uid, gid, &mut changed).map_err(|e| chown_err(format!("{e}")))?;
        Ok(changed)
    }

    /// `uid`, `uid:gid`, `user`, `user:group`, `user:` (the user's group), `:group`: names
    /// from the installed root's account files when it has them (activation writes them from
    /// the configuration), else from the installer's.
    fn resolve_owner(&self, owner: &str) -> Result<(Option<Uid>, Option<Gid>), String> {
        let (user, group) = match owner.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (owner, None),
        };
        let mut uid = None;
        let mut user_gid = None;
        if !user.is_empty() {
            let (u, g) = match user.parse::<u32>() {
                Ok(n) => (n, None),
                Err(_) => {
                    let entry = self.account("passwd", user)?;
                    let parse = |i: usize| entry.get(i).and_then(|f| f.parse::<u32>().ok());
                    match (parse(2), parse(3)) {
                        (Some(u), Some(g)) => (u, Some(g)),
                        _ => return Err(format!("the passwd entry of {user} is malformed")),
                    }
                }
            };
            uid = Some(Uid::from_raw(u));
            user_gid = g;
        }
        let gid = match group {
            None => None,
            Some("") => Some(user_gid.ok_or("`user:` needs a user name, not a number")?),
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .account("group", g)?
                    .get(2)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| format!("the group entry of {g} is malformed"))?,
            }),
        };
        Ok((uid, gid.map(Gid::from_raw)))
    }

    /// The fields of `name`'s line in `etc/FILE` of the root, else of the installer.
    fn account(&self, file: &str, name: &str) -> Result<Vec<String>, String> {
        let in_root = self.dir_at(Some("etc")).ok().and_then(|etc| {
            rustix::fs::openat(&etc, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
        });
        let texts = [
            in_root.and_then(|fd| std::io::read_to_string(File::from(fd)).ok()),
            std::fs::read_to_string(format!("/etc/{file}")).ok(),
        ];
        for text in texts.into_iter().flatten() {
            if let Some(line) = text.lines().find(|l| l.split(':').next() == Some(name)) {
                return Ok(line.split(':').map(str::to_owned).collect());
            }
        }
        Err(format!(
            "no {} named {name} in the installed system's or the installer's /etc/{file}; \
             give it as a number",
            if file == "passwd" { "user" } else { "group" }
        ))
    }
}

fn remove_non_dir(parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn chown_tree(
    parent: &OwnedFd,
    name: &str,
    uid: Option<Uid>,
    gid: Option<Gid>,
    changed: &mut u64,
) -> rustix::io::Result<()> {
    rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    *changed += 1;
    let dir = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        // A file or a link: done.
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_string_lossy().into_owned();
        if child != "." && child != ".." {
            names.push(child);
        }
    }
    for child in names {
        chown_tree(&dir, &child, uid, gid, changed)?;
    }
    Ok(())
}

/// Copies the installer's `/etc/ssh/ssh_host_*` into the root's `etc/ssh`, except those the
/// root has already (from the extra files, say); returns the names copied.
pub fn copy_host_keys(root: &Root, from: &Path) -> Result<Vec<String>, FilesError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Read { path, source }
    };
    let mut names: Vec<String> = std::fs::read_dir(from)
        .map_err(read(from))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    names.sort();
    for dir in ["etc", "etc/ssh"] {
        if root.dir_at(Some(dir)).is_err() {
            root.write(&FileEntry {
                path: dir.into(),
                mode: 0o755,
                kind: EntryKind::Dir,
            })?;
        }
    }
    let etc_ssh = root.dir_at(Some("etc/ssh")).map_err(root.fail("etc/ssh"))?;
    let mut copied = Vec::new();
    for name in names {
        if rustix::fs::statat(&etc_ssh, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            continue;
        }
        let path = from.join(&name);
        let meta = std::fs::metadata(&path).map_err(read(&path))?;
        let data = std::fs::read(&path).map_err(read(&path))?;
        root.write(&FileEntry {
            path: format!("etc/ssh/{name}"),
            mode: meta.mode() & 0o7777,
            kind: EntryKind::File { offset: 0, data },
        })?;
        copied.push(name);
    }
    Ok(copied)
}

/// File content as base64 in the JSON messages.
mod base64 {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        for bad in ["", "/etc", "../x", "a/../b", "a//b", "./a", "a/.", "a\0b"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
        assert_eq!(components("a/b/c").unwrap(), (Some("a/b"), "c"));
        assert_eq!(components("c").unwrap(), (None, "c"));
    }

    #[test]
    fn batches_keep_order_and_size() {
        let entry = |i: usize, len: usize| FileEntry {
            path: format!("f{i}"),
            mode: 0o644,
            kind: EntryKind::File {
                offset: 0,
                data: vec![0; len],
            },
        };
        let entries: Vec<_> = (0..5).map(|i| entry(i, CHUNK / 2)).collect();
        let b = batches(entries.clone());
        assert_eq!(b.len(), 3);
        assert_eq!(b.concat(), entries);
    }
}
