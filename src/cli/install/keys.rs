//! Secrets from the command line: disk-encryption keys and passwords. A key source given as a
//! pipe (`--disk-encryption-keys /tmp/k <(pass key)`) can be read only once, so [`KeySources`]
//! reads each source exactly once, however many remote paths name it, into a buffer that is
//! wiped when dropped. Nothing here ever prints a secret: `Debug` and `Serialize` say
//! `<redacted>`, and errors name paths only.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

use super::request::EncryptionKey;

/// A LUKS key file is at most 8 MiB (cryptsetup's limit); a larger source is a mistake, such
/// as `/dev/zero`, and reading it would never end.
pub const MAX_KEY_BYTES: usize = 8 << 20;

/// Bytes that are wiped from memory when dropped and never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Takes the string's own buffer, so no copy of it is left behind.
    pub fn from_string(text: String) -> Self {
        Self::new(text.into_bytes())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Reading a key source failed. Names the paths, never the content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "could not read the disk-encryption key for {remote} from {local}: {source}; \
         check that the file exists and is readable (a pipe such as <(...) can be read once)"
    )]
    Read {
        remote: PathBuf,
        local: PathBuf,
        source: io::Error,
    },
    #[error(
        "the disk-encryption key source {local} (for {remote}) holds more than {} MiB: \
         that is no key file; give the file or pipe that holds the key",
        MAX_KEY_BYTES >> 20
    )]
    TooLarge { remote: PathBuf, local: PathBuf },
}

/// One key read, with the path it goes to in the installer.
#[derive(Debug)]
pub struct ReadKey {
    pub remote: PathBuf,
    pub key: Arc<Secret>,
}

/// Reads key sources, each at most once: a second request for the same file or pipe (the same
/// device and inode, under any name) gets the bytes read the first time.
#[derive(Debug, Default)]
pub struct KeySources {
    read: HashMap<(u64, u64), Arc<Secret>>,
}

impl KeySources {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every key of `keys`, in order.
    pub fn read_all(&mut self, keys: &[EncryptionKey]) -> Result<Vec<ReadKey>, KeyError> {
        keys.iter()
            .map(|k| {
                Ok(ReadKey {
                    remote: k.remote.clone(),
                    key: self.read(&k.remote, &k.local)?,
                })
            })
            .collect()
    }

    /// The bytes of `local`, read now or the first time it was asked for.
    pub fn read(&mut self, remote: &Path, local: &Path) -> Result<Arc<Secret>, KeyError> {
        let failed = |source| KeyError::Read {
            remote: remote.to_owned(),
            local: local.to_owned(),
            source,
        };
        // Known by its identity before it is opened: a FIFO opened a second time would wait
        // for a writer that is gone. The opened file must then be the one looked at.
        let meta = std::fs::metadata(local).map_err(failed)?;
        let id = (meta.dev(), meta.ino());
        if let Some(key) = self.read.get(&id) {
            return Ok(Arc::clone(key));
        }
        let file = File::open(local).map_err(failed)?;
        let opened = file.metadata().map_err(failed)?;
        if (opened.dev(), opened.ino()) != id {
            return Err(failed(io::Error::other(
                "it was replaced while being opened",
            )));
        }
        let key = match read_to_end(file) {
            Ok(key) => Arc::new(key),
            Err(ReadFailure::TooLarge) => {
                return Err(KeyError::TooLarge {
                    remote: remote.to_owned(),
                    local: local.to_owned(),
                });
            }
            Err(ReadFailure::Io(e)) => return Err(failed(e)),
        };
        self.read.insert(id, Arc::clone(&key));
        Ok(key)
    }
}

enum ReadFailure {
    Io(io::Error),
    TooLarge,
}

/// Reads all of `source` into a wiped buffer. The buffer grows by hand, copying into a new one
/// and wiping the old, since a `Vec` growing by itself would leave the old bytes in freed memory.
fn read_to_end(mut source: impl Read) -> Result<Secret, ReadFailure> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match source.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        let len = buf.len() + n;
        if len > MAX_KEY_BYTES {
            return Err(ReadFailure::TooLarge);
        }
        if len > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(len)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Secret(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        let s = Secret::from_string("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), b"hunter2");
    }

    #[test]
    fn growing_keeps_every_byte_and_the_limit_holds() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let got = read_to_end(&data[..]).ok().unwrap();
        assert_eq!(got.expose(), &data[..]);
        let huge = io::repeat(0).take(MAX_KEY_BYTES as u64 + 1);
        assert!(matches!(read_to_end(huge), Err(ReadFailure::TooLarge)));
    }
}
