//! The sending half of the closure streamer: NARs straight from their store, cut into
//! blocks, compressed in parallel on a rayon pool, and written in order as [`crate::proto`]
//! frames. With [`Compression::Auto`] the zstd level follows whichever of link and CPU is the
//! bottleneck.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::auto::{AutoLevel, BlockTimes, LADDER};
use crate::proto::block::{self, BlockBuffer};
use crate::store::{NarSource, StoreError, StorePath};

/// Blocks in flight between the NAR reader and the channel (bounds the sender's memory).
const IN_FLIGHT: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Level(i32),
    Auto,
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" | "0" => Ok(Self::None),
            level => match level.parse::<i32>() {
                Ok(n) if (1..=19).contains(&n) => Ok(Self::Level(n)),
                _ => Err(format!(
                    "{s:?}: expected auto, none or a zstd level from 1 to 19"
                )),
            },
        }
    }
}

/// What the sender measured.
#[derive(Debug, Clone, Default)]
pub struct SendStats {
    pub nar_bytes: u64,
    pub wire_bytes: u64,
    /// Time the writer waited for compressed blocks (CPU-bound) and for the channel (link-bound).
    pub waited_for_blocks: Duration,
    pub waited_for_link: Duration,
    /// Blocks sent at each zstd level (0: uncompressed).
    pub levels: Vec<(i32, u64)>,
}

impl SendStats {
    /// Adds what a later stream over the same channel measured.
    pub fn add(&mut self, more: SendStats) {
        self.nar_bytes += more.nar_bytes;
        self.wire_bytes += more.wire_bytes;
        self.waited_for_blocks += more.waited_for_blocks;
        self.waited_for_link += more.waited_for_link;
        for (level, n) in more.levels {
            match self.levels.iter_mut().find(|(l, _)| *l == level) {
                Some((_, m)) => *m += n,
                None => self.levels.push((level, n)),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Read(StoreError),
    #[error("writing to the agent: {0}")]
    Write(#[source] std::io::Error),
}

/// Where block frames go, each handed over whole: an SSH channel's stdin queues the buffer
/// itself; any other [`AsyncWrite`] copies it (the default).
pub trait FrameSink: AsyncWrite + Unpin {
    fn send_frame(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> {
        async move { self.write_all(&frame).await }
    }
}

/// A local child process (the agent in tests) reads its frames from a pipe.
impl FrameSink for tokio::process::ChildStdin {}

/// Streams the NARs of `paths`, in order, read from `source`, to `out` as block frames.
/// `on_block` is called with the running NAR and wire byte counts after each block is written.
pub async fn send_nars<W: FrameSink>(
    source: NarSource,
    paths: Vec<StorePath>,
    compression: Compression,
    out: &mut W,
    mut on_block: impl FnMut(u64, u64),
) -> Result<SendStats, SendError> {
    // `auto` starts at level 1, which pays on any link slower than ~100 MiB/s.
    let start = match compression {
        Compression::Auto => AutoLevel::START,
        _ => 0,
    };
    let level_index = Arc::new(AtomicUsize::new(start));
    let fixed_level = match compression {
        Compression::Level(n) => Some(n),
        Compression::None => Some(0),
        Compression::Auto => None,
    };
    let (blocks_tx, mut blocks_rx) = mpsc::channel::<oneshot::Receiver<Block>>(IN_FLIGHT);

    // The reader thread serialises NARs and hands each full block to rayon to compress; the
    // receivers go into the bounded queue in order, so the writer sends them in order.
    let level_for_reader = Arc::clone(&level_index);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), SendError> {
        let mut cutter = BlockCutter::new(blocks_tx, || {
            fixed_level.unwrap_or_else(|| LADDER[level_for_reader.load(Ordering::Relaxed)])
        });
        for path in paths {
            source.dump(&path, &mut cutter).map_err(SendError::Read)?;
        }
        cutter.finish();
        Ok(())
    });

    let mut stats = SendStats::default();
    let threads = rayon::current_num_threads();
    let mut auto = (compression == Compression::Auto).then(|| AutoLevel::new(start, threads));
    loop {
        let waiting = Instant::now();
        let Some(pending) = blocks_rx.recv().await else {
            break;
        };
        let Ok(block) = pending.await else { break }; // the reader failed; its error follows
        let waited_for_block = waiting.elapsed();
        let wire_len = block.frame.len() as u64;
        let writing = Instant::now();
        out.send_frame(block.frame)
            .await
            .map_err(SendError::Write)?;
        let waited_for_link = writing.elapsed();

        stats.nar_bytes += block.nar_len as u64;
        stats.wire_bytes += wire_len;
        stats.waited_for_blocks += waited_for_block;
        stats.waited_for_link += waited_for_link;
        match stats.levels.iter_mut().find(|(l, _)| *l == block.level) {
            Some((_, n)) => *n += 1,
            None => stats.levels.push((block.level, 1)),
        }
        let times = BlockTimes {
            nar_bytes: block.nar_len as u64,
            wire_bytes: wire_len,
            compress_time: block.took,
            waited_for_block,
            waited_for_link,
        };
        if let Some(auto) = &mut auto
            && let Some(index) = auto.observe(Instant::now(), block.asked, times)
        {
            level_index.store(index, Ordering::Relaxed);
        }
        on_block(stats.nar_bytes, stats.wire_bytes);
    }
    out.flush().await.map_err(SendError::Write)?;
    reader.await.expect("the NAR reader does not panic")?;
    Ok(stats)
}

/// One encoded block: a whole frame, ready to write.
struct Block {
    frame: Bytes,
    nar_len: usize,
    /// The level it went out at (0: raw, also when compression did not pay)...
    level: i32,
    /// ... and the level it was meant for.
    asked: i32,
    /// How long compressing it took (zero when not tried).
    took: Duration,
}

/// Cuts the NAR stream into blocks and queues each for compression.
struct BlockCutter<L> {
    buf: BlockBuffer,
    /// The NAR bytes of the block dispatched before, the prefix the next one may refer to.
    previous: Option<Bytes>,
    queue: mpsc::Sender<oneshot::Receiver<Block>>,
    level: L,
}

impl<L: Fn() -> i32> BlockCutter<L> {
    fn new(queue: mpsc::Sender<oneshot::Receiver<Block>>, level: L) -> Self {
        Self {
            buf: BlockBuffer::new(),
            previous: None,
            queue,
            level,
        }
    }

    fn dispatch(&mut self) -> std::io::Result<()> {
        let raw_frame = std::mem::take(&mut self.buf).seal();
        let previous = self.previous.replace(block::raw_nar(&raw_frame));
        let level = (self.level)();
        let (tx, rx) = oneshot::channel();
        rayon::spawn(move || {
            let _ = tx.send(encode_block(raw_frame, previous.as_deref(), level));
        });
        self.queue
            .blocking_send(rx)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "writer stopped"))
    }

    fn finish(mut self) {
        if self.buf.nar_len() > 0 {
            // The writer may have stopped; its error is the one reported.
            let _ = self.dispatch();
        }
    }
}

impl<L: Fn() -> i32> std::io::Write for BlockCutter<L> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.buf.fill(data);
        if self.buf.is_full() {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes a block: `raw_frame` as it is when `level` is 0 or compression does not pay, else
/// a zstd frame at `level` that may refer back into `previous`, the NAR bytes of the block
/// before (see [`block`]).
fn encode_block(raw_frame: Bytes, previous: Option<&[u8]>, level: i32) -> Block {
    let nar = block::raw_nar(&raw_frame);
    let nar_len = nar.len();
    let started = Instant::now();
    let compressed = (level > 0).then(|| block::compress(&nar, previous, level));
    let took = started.elapsed();
    match compressed.flatten() {
        Some(frame) => Block {
            frame: Bytes::from(frame),
            nar_len,
            level,
            asked: level,
            took,
        },
        None => Block {
            frame: raw_frame,
            nar_len,
            level: 0,
            asked: level,
            took: if level > 0 { took } else { Duration::ZERO },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compression() {
        assert_eq!("auto".parse(), Ok(Compression::Auto));
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("3".parse(), Ok(Compression::Level(3)));
        assert!("20".parse::<Compression>().is_err());
        assert!("fast".parse::<Compression>().is_err());
    }
}
