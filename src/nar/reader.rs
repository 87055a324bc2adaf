//! A pull parser for untrusted NAR bytes.
//!
//! [`NarReader::next_entry`] yields one [`Entry`] at a time; after an [`Entry::File`] the file's bytes
//! are handed out by [`NarReader::contents_to`] (whatever is left unread is skipped by the next
//! call).
//! Every length is checked before anything is allocated, every name and ordering rule is checked
//! before the entry is returned, and every byte consumed is hashed, so that when the archive ends
//! [`NarReader::finish`] gives the NAR hash and size of exactly what was parsed.

use std::io::{self, BufRead, Read};

use super::hash::{HashCounter, NarHash};
use super::{MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, padding};

/// One step of a NAR walk. `name` is `None` for the archive's root node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory starts; its entries follow until the matching [`Entry::DirectoryEnd`].
    Directory {
        name: Option<Vec<u8>>,
    },
    /// A regular file of `size` bytes, to be read with [`NarReader::contents_to`].
    File {
        name: Option<Vec<u8>>,
        executable: bool,
        size: u64,
    },
    Symlink {
        name: Option<Vec<u8>>,
        target: Vec<u8>,
    },
    DirectoryEnd,
}

#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("reading the NAR stream: {0}")]
    Io(#[source] io::Error),
    #[error("invalid NAR at byte {offset}: {problem}")]
    Malformed { offset: u64, problem: Problem },
}

/// What is wrong with a malformed NAR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the stream ends before the archive does")]
    Truncated,
    #[error("not a NAR: it does not start with \"nix-archive-1\"")]
    BadMagic,
    #[error("expected {expected}, found {found}")]
    Unexpected { expected: String, found: String },
    #[error("padding bytes are not zero")]
    NonZeroPadding,
    #[error("the {what} is {len} bytes long, more than the {max} allowed")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("unknown node type {0}")]
    UnknownType(String),
    #[error("entry name {name} is not allowed: {why}")]
    BadName { name: String, why: &'static str },
    #[error("entry {name} does not sort strictly after {previous} (unsorted or duplicate)")]
    NotSorted { name: String, previous: String },
    #[error("symlink target is {0}")]
    BadTarget(&'static str),
    #[error("directories nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the archive is larger than the {limit} bytes declared for it")]
    OverLimit { limit: u64 },
    #[error("bytes follow the end of the archive")]
    TrailingBytes,
}

enum State {
    Start,
    /// Inside a file's contents: `left` bytes to go, then padding for `size`.
    Contents {
        left: u64,
        size: u64,
    },
    /// Between entries of the innermost open directory, or after the root node if none is open.
    Between,
    Done,
}

/// Pull parser over a NAR stream; see the module documentation.
pub struct NarReader<R> {
    inner: R,
    hash: HashCounter,
    limit: u64,
    state: State,
    /// One element per open directory: the last entry name seen in it.
    open: Vec<Option<Vec<u8>>>,
}

impl<R: Read> NarReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, u64::MAX)
    }

    /// A reader that rejects the archive as soon as it would exceed `limit` bytes: the declared
    /// `narSize` of a path, so that a lying size claim costs nothing.
    pub fn with_limit(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hash: HashCounter::default(),
            limit,
            state: State::Start,
            open: Vec::new(),
        }
    }

    /// The next entry, or `None` once the root node is complete.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, NarError> {
        match self.state {
            State::Start => {
                self.expect_magic()?;
                return self.node(None).map(Some);
            }
            State::Contents { left, size } => {
                self.skip(left)?;
                self.padding(size)?;
                self.close_node()?;
            }
            State::Between => {}
            State::Done => return Ok(None),
        }
        if self.open.is_empty() {
            self.state = State::Done;
            return Ok(None);
        }
        let token = self.token(&["entry", ")"])?;
        if token == ")" {
            self.open.pop();
            self.close_entry()?;
            return Ok(Some(Entry::DirectoryEnd));
        }
        self.expect("(")?;
        self.expect("name")?;
        let name = self.string("entry name", MAX_NAME_LEN)?;
        self.check_name(&name)?;
        self.expect("node")?;
        self.node(Some(name)).map(Some)
    }

    /// The hash and size of the archive, once [`next_entry`](Self::next_entry) has returned `None`.
    pub fn finish(self) -> Result<(NarHash, u64), NarError> {
        assert!(
            matches!(self.state, State::Done),
            "NarReader::finish before the end"
        );
        Ok(self.hash.finish())
    }

    /// Like [`finish`](Self::finish), and also checks that the stream itself ends here.
    pub fn finish_at_eof(mut self) -> Result<(NarHash, u64), NarError> {
        let mut byte = [0u8];
        loop {
            match self.inner.read(&mut byte) {
                Ok(0) => return self.finish(),
                Ok(_) => return Err(self.malformed(Problem::TrailingBytes)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NarError::Io(e)),
            }
        }
    }

    /// Bytes of NAR consumed so far.
    pub fn position(&self) -> u64 {
        self.hash.len()
    }

    /// The stream the archive is read from: after `finish`, whatever follows it.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn node(&mut self, name: Option<Vec<u8>>) -> Result<Entry, NarError> {
        self.expect("(")?;
        self.expect("type")?;
        match self.token(&["regular", "symlink", "directory"])? {
            "regular" => {
                let executable = self.token(&["executable", "contents"])? == "executable";
                if executable {
                    self.expect("")?;
                    self.expect("contents")?;
                }
                let size = self.u64()?;
                if size > self.limit.saturating_sub(self.hash.len()) {
                    return Err(self.malformed(Problem::OverLimit { limit: self.limit }));
                }
                self.state = State::Contents { left: size, size };
                Ok(Entry::File {
                    name,
                    executable,
                    size,
                })
            }
            "symlink" => {
                self.expect("target")?;
                let target = self.string("symlink target", MAX_TARGET_LEN)?;
                if target.is_empty() {
                    return Err(self.malformed(Problem::BadTarget("empty")));
                }
                if target.contains(&0) {
                    return Err(self.malformed(Problem::BadTarget("holding a NUL byte")));
                }
                self.close_node()?;
                Ok(Entry::Symlink { name, target })
            }
            _ => {
                if self.open.len() >= MAX_DEPTH {
                    return Err(self.malformed(Problem::TooDeep));
                }
                self.open.push(None);
                self.state = State::Between;
                Ok(Entry::Directory { name })
            }
        }
    }

    /// After a file or symlink node's body: its `)`, then the enclosing entry's `)`.
    fn close_node(&mut self) -> Result<(), NarError> {
        self.expect(")")?;
        self.close_entry()
    }

    fn close_entry(&mut self) -> Result<(), NarError> {
        if !self.open.is_empty() {
            self.expect(")")?;
        }
        self.state = State::Between;
        Ok(())
    }

    fn check_name(&mut self, name: &[u8]) -> Result<(), NarError> {
        let why = match name {
            [] => Some("empty"),
            b"." | b".." => Some("a relative directory reference"),
            _ if name.contains(&b'/') => Some("it holds a slash"),
            _ if name.contains(&0) => Some("it holds a NUL byte"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(self.malformed(Problem::BadName {
                name: shown(name),
                why,
            }));
        }
        let previous = self
            .open
            .last_mut()
            .expect("an entry is read only inside a directory");
        if let Some(prev) = previous.as_deref()
            && prev >= name
        {
            let problem = Problem::NotSorted {
                name: shown(name),
                previous: shown(prev),
            };
            return Err(self.malformed(problem));
        }
        *self.open.last_mut().expect("checked above") = Some(name.to_vec());
        Ok(())
    }

    fn expect_magic(&mut self) -> Result<(), NarError> {
        let len = self
            .u64()
            .map_err(|e| self.replace_truncated(e, Problem::BadMagic))?;
        if len != MAGIC.len() as u64 {
            return Err(self.malformed(Problem::BadMagic));
        }
        let mut buf = [0u8; 16];
        self.exact(&mut buf[..16])?;
        if &buf[..MAGIC.len()] != MAGIC {
            return Err(self.malformed(Problem::BadMagic));
        }
        if buf[MAGIC.len()..].iter().any(|b| *b != 0) {
            return Err(self.malformed(Problem::NonZeroPadding));
        }
        Ok(())
    }

    /// Reads a short string that must be one of `choices`.
    fn token(&mut self, choices: &[&'static str]) -> Result<&'static str, NarError> {
        let expected = choices.join("\" or \"");
        let max = choices.iter().map(|c| c.len()).max().unwrap_or(0) as u64;
        let len = self.u64()?;
        if len > max {
            let found = format!("a string of {len} bytes");
            return Err(self.unexpected(&expected, found));
        }
        let mut buf = [0u8; 16];
        let bytes = &mut buf[..len as usize];
        self.exact(bytes)?;
        self.padding(len)?;
        let bytes = &buf[..len as usize];
        match choices.iter().find(|c| c.as_bytes() == bytes) {
            Some(choice) => Ok(choice),
            None if choices.len() == 3 && choices[0] == "regular" => {
                Err(self.malformed(Problem::UnknownType(shown(bytes))))
            }
            None => Err(self.unexpected(&expected, shown(bytes))),
        }
    }

    fn expect(&mut self, token: &'static str) -> Result<(), NarError> {
        self.token(&[token]).map(drop)
    }

    fn unexpected(&self, expected: &str, found: String) -> NarError {
        let expected = format!("\"{expected}\"");
        self.malformed(Problem::Unexpected { expected, found })
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, NarError> {
        let len = self.u64()?;
        if len > max as u64 {
            return Err(self.malformed(Problem::TooLong {
                what,
                len,
                max: max as u64,
            }));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        self.padding(len)?;
        Ok(buf)
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut buf = [0u8; 8];
        self.exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let mut buf = [0u8; 8];
        let pad = &mut buf[..padding(len)];
        self.exact(pad)?;
        if pad.iter().any(|b| *b != 0) {
            return Err(self.malformed(Problem::NonZeroPadding));
        }
        Ok(())
    }

    fn skip(&mut self, mut left: u64) -> Result<(), NarError> {
        let mut buf = [0u8; 8192];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.exact(&mut buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        if buf.len() as u64 > self.limit.saturating_sub(self.hash.len()) {
            return Err(self.malformed(Problem::OverLimit { limit: self.limit }));
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.hash.update(buf);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.malformed(Problem::Truncated))
            }
            Err(e) => Err(NarError::Io(e)),
        }
    }

    fn replace_truncated(&self, e: NarError, problem: Problem) -> NarError {
        match e {
            NarError::Malformed {
                problem: Problem::Truncated,
                ..
            } => self.malformed(problem),
            other => other,
        }
    }

    fn malformed(&self, problem: Problem) -> NarError {
        NarError::Malformed {
            offset: self.hash.len(),
            problem,
        }
    }
}

impl<R: BufRead> NarReader<R> {
    /// Hands the rest of the contents of the file just returned by
    /// [`next_entry`](Self::next_entry) to `sink`, piece by piece, straight from the underlying
    /// reader's buffer: no copy, and each piece hashed while it is still in the CPU's cache.
    pub fn contents_to<E: From<NarError>>(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        /// Hashed, then written, while in cache.
        const PIECE: usize = 256 * 1024;
        let State::Contents { mut left, size } = self.state else {
            panic!("NarReader::contents_to outside a regular file");
        };
        while left > 0 {
            let buf = self.inner.fill_buf().map_err(NarError::Io)?;
            if buf.is_empty() {
                return Err(self.malformed(Problem::Truncated).into());
            }
            let n = buf
                .len()
                .min(PIECE)
                .min(usize::try_from(left).unwrap_or(PIECE));
            let piece = &buf[..n];
            self.hash.update(piece);
            sink(piece)?;
            self.inner.consume(n);
            left -= n as u64;
            self.state = State::Contents { left, size };
        }
        Ok(())
    }
}

impl NarError {
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            NarError::Malformed { problem, .. } => Some(problem),
            NarError::Io(_) => None,
        }
    }
}

/// A name or token as it can be shown in an error: escaped and cut short.
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let mut text = format!("\"{}\"", cut.escape_ascii());
    if bytes.len() > cut.len() {
        text.push_str("...");
    }
    text
}
