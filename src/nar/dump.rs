//! Serialising a filesystem tree to NAR, as `nix-store --dump` does.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::hash::{HashingWriter, NarHash};
use super::{MAGIC, padding};

/// Size of the buffer file contents are copied through.
const COPY_BUFFER: usize = 256 * 1024;

/// Writes the NAR of `path` (not following a symlink at `path` itself) to `out`, streaming file
/// contents. Returns the number of NAR bytes written.
pub fn dump(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut out = Dumper {
        out,
        written: 0,
        buffer: vec![0; COPY_BUFFER],
    };
    out.str(MAGIC)?;
    out.node(path)?;
    Ok(out.written)
}

/// The NAR hash and size of `path`, as Nix registers them.
pub fn dump_hash(path: &Path) -> io::Result<(NarHash, u64)> {
    let mut hashing = HashingWriter::new(io::sink());
    dump(path, &mut hashing)?;
    Ok(hashing.hash.finish())
}

struct Dumper<'a, W> {
    out: &'a mut W,
    written: u64,
    buffer: Vec<u8>,
}

impl<W: Write> Dumper<'_, W> {
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn len(&mut self, len: u64) -> io::Result<()> {
        self.raw(&len.to_le_bytes())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        self.raw(&[0; 8][..padding(len)])
    }

    fn str(&mut self, s: &[u8]) -> io::Result<()> {
        self.len(s.len() as u64)?;
        self.raw(s)?;
        self.pad(s.len() as u64)
    }

    fn node(&mut self, path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| with_path(e, path))?;
        self.str(b"(")?;
        self.str(b"type")?;
        let kind = meta.file_type();
        if kind.is_file() {
            self.str(b"regular")?;
            if meta.permissions().mode() & 0o100 != 0 {
                self.str(b"executable")?;
                self.str(b"")?;
            }
            self.str(b"contents")?;
            self.contents(path, meta.len())?;
        } else if kind.is_dir() {
            self.str(b"directory")?;
            let mut names: Vec<_> = fs::read_dir(path)
                .and_then(|dir| {
                    dir.map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<_, _>>()
                })
                .map_err(|e| with_path(e, path))?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.str(b"entry")?;
                self.str(b"(")?;
                self.str(b"name")?;
                self.str(name.as_bytes())?;
                self.str(b"node")?;
                self.node(&path.join(&name))?;
                self.str(b")")?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| with_path(e, path))?;
            self.str(b"symlink")?;
            self.str(b"target")?;
            self.str(target.as_os_str().as_bytes())?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a NAR holds only files, directories and symlinks",
                    path.display()
                ),
            ));
        }
        self.str(b")")
    }

    /// Streams a file's contents, checking that it still has the size `lstat` reported, since
    /// the length was written first.
    fn contents(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.len(len)?;
        let mut file = File::open(path).map_err(|e| with_path(e, path))?;
        let mut left = len;
        while left > 0 {
            let want = self
                .buffer
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file
                .read(&mut self.buffer[..want])
                .map_err(|e| with_path(e, path))?;
            if n == 0 {
                return Err(changed(path));
            }
            self.out.write_all(&self.buffer[..n])?;
            self.written += n as u64;
            left -= n as u64;
        }
        if file.read(&mut [0])? != 0 {
            return Err(changed(path));
        }
        self.pad(len)
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn changed(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{}: file changed size while being archived",
        path.display()
    ))
}
