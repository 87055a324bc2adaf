//! A device image in memory, sparse: the writers encode a whole table into it (the `gptman`
//! writer seeks about, to the backup header at the end of the disk among others), then it goes
//! to the device in one pass of positioned writes and one fsync. Nothing reaches the device
//! until the whole table has been built and checked.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Byte ranges written so far, in write order (a later write wins where they overlap).
#[derive(Debug, Clone)]
pub struct Regions {
    len: u64,
    pos: u64,
    chunks: Vec<(u64, Vec<u8>)>,
}

impl Regions {
    /// An empty image of a device of `len` bytes: reads give zeros where nothing was written.
    pub fn new(len: u64) -> Regions {
        Regions {
            len,
            pos: 0,
            chunks: Vec::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `bytes` at `offset` (the in-memory image only).
    pub fn put(&mut self, offset: u64, bytes: &[u8]) {
        self.chunks.push((offset, bytes.to_vec()));
    }

    /// The written ranges, merged: `(offset, bytes)` in offset order.
    pub fn ranges(&self) -> Vec<(u64, Vec<u8>)> {
        let mut starts: Vec<(u64, u64)> = self
            .chunks
            .iter()
            .map(|(o, b)| (*o, *o + b.len() as u64))
            .collect();
        starts.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in starts {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
            .into_iter()
            .map(|(s, e)| {
                let mut buf = vec![0u8; (e - s) as usize];
                self.overlay(s, &mut buf);
                (s, buf)
            })
            .collect()
    }

    fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (o, bytes) in &self.chunks {
            let (cs, ce) = (*o, *o + bytes.len() as u64);
            let (s, e) = (cs.max(offset), ce.min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - cs) as usize..(e - cs) as usize]);
            }
        }
    }

    /// Writes every range to `file` at its offset, then fsyncs it.
    pub fn apply(&self, file: &File) -> io::Result<()> {
        for (offset, bytes) in self.ranges() {
            file.write_all_at(&bytes, offset)?;
        }
        file.sync_all()
    }

    /// Whether `file` already holds exactly these bytes in every written range.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        for (offset, bytes) in self.ranges() {
            let mut have = vec![0u8; bytes.len()];
            file.read_exact_at(&mut have, offset)?;
            if have != bytes {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Write for Regions {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the device",
            ));
        }
        self.put(self.pos, buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Regions {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        buf[..n].fill(0);
        self.overlay(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Regions {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_writes_win_and_ranges_merge() {
        let mut r = Regions::new(100);
        r.put(10, &[1, 1, 1, 1]);
        r.put(12, &[2, 2, 2, 2]);
        r.put(50, &[3]);
        assert_eq!(
            r.ranges(),
            vec![(10, vec![1, 1, 2, 2, 2, 2]), (50, vec![3])]
        );
        r.seek(SeekFrom::End(-1)).unwrap();
        assert!(r.write(&[0, 0]).is_err());
        let mut buf = [9u8; 4];
        r.seek(SeekFrom::Start(9)).unwrap();
        r.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [0, 1, 1, 2]);
    }
}
