//! A file-backed pipe for one NAR: a download appends to it as bytes arrive, the store writer
//! reads behind it, waiting when it catches up.
//!
//! The store writer must take paths in dependency order, one at a time, while downloads run in
//! parallel and finish in any order. The path at the head of the order is therefore unpacked as
//! its bytes arrive; the ones behind it pile up in their files (on the target's disk, not in
//! memory) until the writer reaches them. The file is unlinked as soon as it is created, so
//! nothing is left behind whatever happens.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes read from the file at once.
const READ_CHUNK: usize = 256 * 1024;

/// Keeps names unique within this process; the pid keeps them unique between processes.
static NEXT: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct State {
    written: u64,
    /// `Some` once the writer is done: `Ok` if the bytes are complete and checked.
    end: Option<Result<(), String>>,
    /// The reader is gone: the writer should stop.
    abandoned: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Creates an anonymous spool file in `dir` (it should be on the store's filesystem).
pub fn spool(dir: &Path) -> io::Result<(SpoolWriter, SpoolReader)> {
    let name = dir.join(format!(
        // The store writer's temporary prefix, so a store opened later removes a leftover.
        ".nixos-anywhere-rs-tmp-spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    let file = Arc::new(file);
    let shared = Arc::new(Shared::default());
    Ok((
        SpoolWriter {
            file: file.clone(),
            shared: shared.clone(),
            written: 0,
            finished: false,
        },
        SpoolReader {
            file,
            shared,
            offset: 0,
            buf: Vec::new(),
            pos: 0,
        },
    ))
}

pub struct SpoolWriter {
    file: Arc<File>,
    shared: Arc<Shared>,
    written: u64,
    finished: bool,
}

impl SpoolWriter {
    /// Ends the spool: `Ok` lets the reader see the end, `Err` makes its next read fail.
    pub fn finish(mut self, result: Result<(), String>) {
        self.end(result);
    }

    fn end(&mut self, result: Result<(), String>) {
        self.finished = true;
        let mut state = self.shared.state.lock().expect("spool lock");
        state.end.get_or_insert(result);
        self.shared.changed.notify_all();
    }
}

impl io::Write for SpoolWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.shared.state.lock().expect("spool lock").abandoned {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the store writer no longer wants this path",
            ));
        }
        self.file.write_all_at(data, self.written)?;
        self.written += data.len() as u64;
        let mut state = self.shared.state.lock().expect("spool lock");
        state.written = self.written;
        self.shared.changed.notify_all();
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Err("the download stopped before the end".to_owned()));
        }
    }
}

pub struct SpoolReader {
    file: Arc<File>,
    shared: Arc<Shared>,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl BufRead for SpoolReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos < self.buf.len() {
            return Ok(&self.buf[self.pos..]);
        }
        let available = {
            let mut state = self.shared.state.lock().expect("spool lock");
            while state.written == self.offset && state.end.is_none() {
                state = self.shared.changed.wait(state).expect("spool lock");
            }
            if state.written == self.offset
                && let Some(Err(reason)) = &state.end
            {
                return Err(io::Error::other(reason.clone()));
            }
            state.written - self.offset
        };
        let n = available.min(READ_CHUNK as u64) as usize;
        self.buf.resize(n, 0);
        self.file.read_exact_at(&mut self.buf, self.offset)?;
        self.offset += n as u64;
        self.pos = 0;
        Ok(&self.buf)
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = out.len().min(data.len());
        out[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        self.shared.state.lock().expect("spool lock").abandoned = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reader_follows_the_writer_and_sees_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = spool(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "unlinked"
        );
        let data: Vec<u8> = (0..READ_CHUNK * 3 + 5).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(7777) {
                w.write_all(piece).unwrap();
            }
            w.finish(Ok(()));
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_failed_or_dropped_writer_fails_the_reader_and_a_dropped_reader_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = spool(dir.path()).unwrap();
        w.write_all(b"partial").unwrap();
        w.finish(Err("NAR hash mismatch".into()));
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"partial");
        assert!(err.to_string().contains("mismatch"));

        let (w, mut r) = spool(dir.path()).unwrap();
        drop(w);
        assert!(r.read(&mut [0; 8]).is_err());

        let (mut w, r) = spool(dir.path()).unwrap();
        drop(r);
        assert_eq!(w.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
