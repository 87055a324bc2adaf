//! The sending half of the closure streamer: NARs straight from the local store, cut into
//! blocks, compressed in parallel on a rayon pool, and written in order as [`crate::wire`]
//! frames. With [`Compression::Auto`] the zstd level follows whichever of link and CPU is the
//! bottleneck.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::nar;
use crate::store::StorePath;
use crate::wire::{self, RAW_BLOCK, ZSTD_BLOCK};

/// NAR bytes per block: small enough that two cores share the work evenly, large enough that
/// zstd keeps most of its ratio.
pub const BLOCK: usize = 4 << 20;

/// Blocks in flight between the NAR reader and the channel (bounds the sender's memory).
const IN_FLIGHT: usize = 6;

/// The levels `auto` moves between; 0 sends blocks uncompressed.
const LADDER: &[i32] = &[0, 1, 2, 3, 5, 7, 9];

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

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("reading {path} from the local store: {source}")]
    Read {
        path: StorePath,
        source: std::io::Error,
    },
    #[error("writing to the agent: {0}")]
    Write(#[source] std::io::Error),
}

/// Streams the NARs of `paths`, in order, to `out` as block frames. `on_block` is called with
/// the running NAR and wire byte counts after each block is written.
pub async fn send_nars<W: AsyncWrite + Unpin>(
    paths: Vec<StorePath>,
    compression: Compression,
    out: &mut W,
    mut on_block: impl FnMut(u64, u64),
) -> Result<SendStats, SendError> {
    let ladder_start = match compression {
        Compression::None => 0,
        Compression::Level(_) | Compression::Auto => 1,
    };
    let level_index = Arc::new(AtomicUsize::new(ladder_start));
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
        let mut cutter = BlockCutter {
            buf: Vec::with_capacity(BLOCK),
            queue: blocks_tx,
            level: || {
                fixed_level.unwrap_or_else(|| LADDER[level_for_reader.load(Ordering::Relaxed)])
            },
        };
        for path in paths {
            nar::dump(Path::new(&path.to_absolute()), &mut cutter)
                .map_err(|source| SendError::Read { path, source })?;
        }
        cutter.finish();
        Ok(())
    });

    let mut stats = SendStats::default();
    let threads = rayon::current_num_threads();
    let mut auto =
        (compression == Compression::Auto).then(|| AutoLevel::new(ladder_start, threads));
    loop {
        let waiting = Instant::now();
        let Some(pending) = blocks_rx.recv().await else {
            break;
        };
        let Ok(block) = pending.await else { break }; // the reader failed; its error follows
        let waited_for_block = waiting.elapsed();
        let writing = Instant::now();
        out.write_all(&block.frame)
            .await
            .map_err(SendError::Write)?;
        let waited_for_link = writing.elapsed();

        stats.nar_bytes += block.nar_len as u64;
        stats.wire_bytes += block.frame.len() as u64;
        stats.waited_for_blocks += waited_for_block;
        stats.waited_for_link += waited_for_link;
        match stats.levels.iter_mut().find(|(l, _)| *l == block.level) {
            Some((_, n)) => *n += 1,
            None => stats.levels.push((block.level, 1)),
        }
        if let Some(auto) = &mut auto
            && let Some(index) = auto.observe(
                Instant::now(),
                block.nar_len as u64,
                block.took,
                waited_for_block,
                waited_for_link,
            )
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
    frame: Vec<u8>,
    nar_len: usize,
    level: i32,
    /// How long compressing it took (zero when sent raw).
    took: Duration,
}

/// Cuts the NAR stream into blocks and queues each for compression.
struct BlockCutter<L> {
    buf: Vec<u8>,
    queue: mpsc::Sender<oneshot::Receiver<Block>>,
    level: L,
}

impl<L: Fn() -> i32> BlockCutter<L> {
    fn dispatch(&mut self) -> std::io::Result<()> {
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let level = (self.level)();
        let (tx, rx) = oneshot::channel();
        rayon::spawn(move || {
            let _ = tx.send(encode_block(bytes, level));
        });
        self.queue
            .blocking_send(rx)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "writer stopped"))
    }

    fn finish(mut self) {
        if !self.buf.is_empty() {
            // The writer may have stopped; its error is the one reported.
            let _ = self.dispatch();
        }
    }
}

impl<L: Fn() -> i32> std::io::Write for BlockCutter<L> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Encodes NAR bytes as a frame: zstd at `level`, or raw when `level` is 0 or compression
/// does not pay.
fn encode_block(bytes: Vec<u8>, level: i32) -> Block {
    let nar_len = bytes.len();
    let started = Instant::now();
    if level > 0 {
        let compressed = COMPRESSOR.with_borrow_mut(|slot| {
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
            }
            let (_, compressor) = slot.as_mut()?;
            compressor.compress(&bytes).ok()
        });
        if let Some(compressed) = compressed.filter(|c| c.len() + 4 < nar_len) {
            let mut frame = Vec::with_capacity(9 + compressed.len());
            frame.extend_from_slice(&wire::header(ZSTD_BLOCK, compressed.len() + 4));
            frame.extend_from_slice(&(nar_len as u32).to_le_bytes());
            frame.extend_from_slice(&compressed);
            let took = started.elapsed();
            return Block {
                frame,
                nar_len,
                level,
                took,
            };
        }
    }
    let mut frame = Vec::with_capacity(5 + nar_len);
    frame.extend_from_slice(&wire::header(RAW_BLOCK, nar_len));
    frame.extend_from_slice(&bytes);
    Block {
        frame,
        nar_len,
        level: 0,
        took: Duration::ZERO,
    }
}

/// Chooses the zstd level while sending. It climbs while the link is the bottleneck (the writer
/// waits for the channel) and the compression pool could still do at least twice the NAR rate
/// reached (measured from each block's own compression time: each step up is slower); it
/// descends while compression is the bottleneck (the writer waits for blocks); and it steps back
/// when a move made the NAR throughput worse.
struct AutoLevel {
    index: usize,
    window: Window,
    /// The level and NAR throughput of the previous window, to undo a move that did not pay.
    previous: Option<(usize, f64)>,
    /// Windows to stay put after undoing a move.
    hold: u32,
    /// Threads compressing blocks.
    threads: usize,
}

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    nar_bytes: u64,
    blocks: u32,
    compress_time: Duration,
    waited_for_blocks: Duration,
    waited_for_link: Duration,
}

impl AutoLevel {
    const WINDOW_BLOCKS: u32 = 24;
    const WINDOW_TIME: Duration = Duration::from_millis(300);

    fn new(index: usize, threads: usize) -> Self {
        Self {
            index,
            window: Window::default(),
            previous: None,
            hold: 0,
            threads,
        }
    }

    /// Records one block; returns a new ladder index when the level should change.
    fn observe(
        &mut self,
        now: Instant,
        nar_bytes: u64,
        compress_time: Duration,
        for_block: Duration,
        for_link: Duration,
    ) -> Option<usize> {
        let w = &mut self.window;
        let started = *w.started.get_or_insert(now);
        w.nar_bytes += nar_bytes;
        w.blocks += 1;
        w.compress_time += compress_time;
        w.waited_for_blocks += for_block;
        w.waited_for_link += for_link;
        let elapsed = now.duration_since(started);
        if w.blocks < Self::WINDOW_BLOCKS || elapsed < Self::WINDOW_TIME {
            return None;
        }
        let rate = w.nar_bytes as f64 / elapsed.as_secs_f64();
        let link_bound = w.waited_for_link > w.waited_for_blocks;
        // What the pool could compress per second at this level; unbounded when sending raw.
        let pool_rate = match w.compress_time.as_secs_f64() {
            0.0 => f64::INFINITY,
            secs => w.nar_bytes as f64 / secs * self.threads as f64,
        };
        let headroom = pool_rate >= 2.0 * rate;
        self.window = Window::default();

        let current = self.index;
        let next = match self.previous {
            _ if self.hold > 0 => {
                self.hold -= 1;
                current
            }
            Some((before, before_rate)) if before != current && rate < before_rate * 0.97 => {
                self.hold = 8;
                before
            }
            _ if link_bound && headroom => (current + 1).min(LADDER.len() - 1),
            _ if link_bound => current,
            _ => current.saturating_sub(1),
        };
        self.previous = Some((current, rate));
        (next != current).then(|| {
            tracing::debug!(
                from = LADDER[current],
                to = LADDER[next],
                rate,
                link_bound,
                "zstd level"
            );
            self.index = next;
            next
        })
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

    #[test]
    fn blocks_decode_to_their_bytes() {
        let text: Vec<u8> = b"all work and no play "
            .iter()
            .cycle()
            .take(BLOCK)
            .copied()
            .collect();
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (bytes, level) in [(text.clone(), 3), (text, 0), (noise, 3)] {
            let block = encode_block(bytes.clone(), level);
            let mut input = block.frame.as_slice();
            let Some(wire::Frame::Block { kind, payload }) =
                wire::read_frame(&mut input, "t").unwrap()
            else {
                panic!("a block frame")
            };
            assert_eq!(wire::unpack_block(kind, payload, "t").unwrap(), bytes);
        }
    }

    /// Feeds one window of 1 MiB blocks per element of `windows` (its duration in seconds), each
    /// block taking `compress_ms` to compress, and returns the level reached.
    fn drive(
        auto: &mut AutoLevel,
        windows: &[f64],
        compress_ms: u64,
        for_block: u64,
        for_link: u64,
    ) -> i32 {
        let mut now = Instant::now();
        let ms = Duration::from_millis;
        for secs in windows {
            let step = Duration::from_secs_f64(secs / AutoLevel::WINDOW_BLOCKS as f64);
            for _ in 0..AutoLevel::WINDOW_BLOCKS {
                now += step;
                auto.observe(now, 1 << 20, ms(compress_ms), ms(for_block), ms(for_link));
            }
        }
        LADDER[auto.index]
    }

    #[test]
    fn auto_level_follows_the_bottleneck() {
        // Windows of 24 MiB in 0.5 s (48 MiB/s): with 2 ms per block, two threads could
        // compress 1000 MiB/s, plenty of headroom.
        // Link-bound at a steady rate: it climbs.
        assert!(drive(&mut AutoLevel::new(1, 2), &[0.5; 4], 2, 0, 20) >= 5);
        // Link-bound, but compression could barely keep up (40 ms a block: 50 MiB/s with two
        // threads): it stays.
        assert_eq!(drive(&mut AutoLevel::new(1, 2), &[0.5; 4], 40, 0, 20), 1);
        // CPU-bound: it descends to uncompressed.
        assert_eq!(drive(&mut AutoLevel::new(3, 2), &[0.5; 4], 2, 20, 0), 0);
        // Link-bound, but the climb from level 1 to 2 halved the throughput: it steps back and
        // holds.
        let mut auto = AutoLevel::new(1, 2);
        assert_eq!(drive(&mut auto, &[0.5, 1.0], 2, 0, 20), 1);
        assert_eq!(drive(&mut auto, &[0.5; 3], 2, 0, 20), 1);
    }
}
