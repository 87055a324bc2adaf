//! A bounded, in-process byte pipe between two threads: the writer's chunks wait in a queue of
//! fixed depth, so a fast producer blocks instead of filling memory.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::{Buf, Bytes};

/// Bytes per chunk handed across.
const CHUNK: usize = 256 * 1024;

/// A pipe holding at most `depth` chunks (of 256 KiB) in flight.
pub fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(depth);
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        PipeReader {
            rx,
            chunk: Bytes::new(),
        },
    )
}

pub struct PipeWriter {
    tx: SyncSender<Bytes>,
    buf: Vec<u8>,
}

pub struct PipeReader {
    rx: Receiver<Bytes>,
    chunk: Bytes,
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(Bytes::from(full))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))
    }
}

impl PipeWriter {
    /// Hands over a whole buffer without copying it (after anything written before it).
    pub fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.send()?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let chunk = self.fill_buf()?;
        let n = out.len().min(chunk.len());
        out[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Reads in place: the buffer is the chunk the writer handed over.
impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.chunk = chunk,
                Err(_) => break, // the writer is gone: the end
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        self.chunk.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_bytes_in_order_and_ends() {
        let (mut w, mut r) = pipe(2);
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(1000) {
                w.write_all(piece).unwrap();
            }
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, data);
    }
}
