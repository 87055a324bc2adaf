//! The `auto` compression level: the highest zstd level that keeps the link full, and none where
//! compressing only costs, decided from what each window of sent blocks measured.

use std::time::{Duration, Instant};

/// The levels `auto` moves between; 0 sends blocks uncompressed.
pub(super) const LADDER: &[i32] = &[0, 1, 2, 3, 5, 7, 9];

/// Chooses the zstd level while sending: the highest level that keeps the link full, and none
/// where compressing only costs.
///
/// It starts at level 1 and looks at windows of blocks (the first one, a burst into empty
/// buffers, only warms up, unless even that burst is too fast for compression to pay). While
/// the writer waits for the channel and the wire carries about as much as it did at the lower
/// levels lately, the link is the bottleneck: fewer bytes on it move more NAR, so it climbs, as
/// long as the compression pool (timed per block) could still do at least twice the rate
/// reached (more steps when it could do far more, so a slow link gets a high level within
/// seconds). Where the wire moves faster than a gigabit link can
/// ([`AutoLevel::FAST_WIRE`]), it first tries sending raw once. It steps down, and avoids the
/// level it left for a while ([`AutoLevel::REMEMBER`]), when the writer waits for compressed
/// blocks (the pool is the bottleneck) or when the wire carries clearly less than it did at a
/// lower level: then the receiver, not the link, set the pace (loopback, or a fast link to a
/// slow machine), and compressing only adds work.
pub(super) struct AutoLevel {
    index: usize,
    window: Window,
    /// When the writer last took a block.
    last_block: Option<Instant>,
    windows: u32,
    /// Per ladder index: the NAR and wire rates last measured there, and when.
    measured: [Option<Measured>; LADDER.len()],
    /// Per ladder index: when it was left for being too slow.
    avoided: [Option<Stamp>; LADDER.len()],
    /// Threads compressing blocks.
    threads: usize,
}

#[derive(Clone, Copy)]
struct Measured {
    nar_rate: f64,
    wire_rate: f64,
    when: Stamp,
}

/// When something was learnt: the window's number, and its end.
#[derive(Clone, Copy)]
struct Stamp {
    window: u32,
    at: Instant,
}

impl Stamp {
    /// Still counts: within the last [`AutoLevel::REMEMBER`] windows or
    /// [`AutoLevel::REMEMBER_TIME`], whichever lasts longer.
    fn recent(self, now: Stamp) -> bool {
        now.window - self.window < AutoLevel::REMEMBER
            || now.at.duration_since(self.at) < AutoLevel::REMEMBER_TIME
    }
}

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    nar_bytes: u64,
    wire_bytes: u64,
    blocks: u32,
    compress_time: Duration,
    waited_for_blocks: Duration,
    waited_for_link: Duration,
}

impl AutoLevel {
    /// The ladder index `auto` starts at: level 1.
    pub(super) const START: usize = 1;
    /// A window is at least this many blocks over at least this long...
    const WINDOW_BLOCKS: u32 = 4;
    const WINDOW_TIME: Duration = Duration::from_millis(300);
    /// ... or this many blocks however short: more than the buffers between the two ends hold
    /// (the agent's queue, a pipe, the SSH window), so a fast link is judged in a tenth of a
    /// second rather than after hundreds of MiB at the wrong level.
    const WINDOW_MAX_BLOCKS: u32 = 16;
    /// A measurement or an avoided level counts for this many windows and this long, whichever
    /// lasts longer; then that level may be tried again.
    const REMEMBER: u32 = 8;
    const REMEMBER_TIME: Duration = Duration::from_millis(2400);
    /// The link is full while the wire carries at least this share of what it carried at lower
    /// levels lately.
    const FULL: f64 = 0.85;
    /// A wire this fast (bytes per second, beyond a gigabit link) may carry more raw than the
    /// compressed stream the sender's CPU can make: worth one raw window to find out.
    const FAST_WIRE: f64 = 128.0 * 1024.0 * 1024.0;
    /// A level is slower than another when its NAR rate is lower by more than this share.
    const MARGIN: f64 = 0.03;

    pub(super) fn new(index: usize, threads: usize) -> Self {
        Self {
            index,
            window: Window::default(),
            last_block: None,
            windows: 0,
            measured: [None; LADDER.len()],
            avoided: [None; LADDER.len()],
            threads,
        }
    }

    /// Records one block, compressed for level `asked`; returns a new ladder index when the
    /// level should change. Blocks compressed for another level (in flight when it changed)
    /// do not count.
    pub(super) fn observe(&mut self, now: Instant, asked: i32, sent: BlockTimes) -> Option<usize> {
        // The very first block only starts the clock; a window runs from the block before its
        // first one, so it times all of its blocks.
        let previous_block = self.last_block.replace(now)?;
        if asked != LADDER[self.index] {
            return None;
        }
        let w = &mut self.window;
        let started = *w.started.get_or_insert(previous_block);
        w.nar_bytes += sent.nar_bytes;
        w.wire_bytes += sent.wire_bytes;
        w.blocks += 1;
        w.compress_time += sent.compress_time;
        w.waited_for_blocks += sent.waited_for_block;
        w.waited_for_link += sent.waited_for_link;
        let elapsed = now.duration_since(started);
        let long_enough = elapsed >= Self::WINDOW_TIME || w.blocks >= Self::WINDOW_MAX_BLOCKS;
        if w.blocks < Self::WINDOW_BLOCKS || !long_enough {
            return None;
        }
        let secs = elapsed.as_secs_f64();
        let (nar_rate, wire_rate) = (w.nar_bytes as f64 / secs, w.wire_bytes as f64 / secs);
        let link_bound = w.waited_for_link > w.waited_for_blocks;
        // What the pool could compress per second at this level; unknown when sending raw.
        let pool_rate = match w.compress_time.as_secs_f64() {
            0.0 => None,
            secs => Some(w.nar_bytes as f64 / secs * self.threads as f64),
        };
        self.window = Window::default();
        self.windows += 1;
        // The first window is a burst into empty buffers (socket, SSH window), not the link. It
        // only counts where even a burst is fast enough to try raw at once.
        if self.windows == 1 && !self.may_try_raw(wire_rate) {
            return None;
        }
        self.measured[self.index] = Some(Measured {
            nar_rate,
            wire_rate,
            when: self.stamp(now),
        });
        let next = self.next_index(now, nar_rate, wire_rate, link_bound, pool_rate);
        (next != self.index).then(|| {
            tracing::debug!(
                from = LADDER[self.index],
                to = LADDER[next],
                nar_rate,
                wire_rate,
                link_bound,
                "zstd level"
            );
            self.index = next;
            next
        })
    }

    /// Raw is worth a window from level 1 when the wire there moves faster than a gigabit link.
    fn may_try_raw(&self, wire_rate: f64) -> bool {
        LADDER[self.index] == 1 && wire_rate >= Self::FAST_WIRE
    }

    fn stamp(&self, now: Instant) -> Stamp {
        Stamp {
            window: self.windows,
            at: now,
        }
    }

    /// Where to go from the current level, given the window just measured there.
    fn next_index(
        &mut self,
        now: Instant,
        nar_rate: f64,
        wire_rate: f64,
        link_bound: bool,
        pool_rate: Option<f64>,
    ) -> usize {
        let (current, stamp) = (self.index, self.stamp(now));
        let recent = |i: usize| self.measured[i].filter(|m| m.when.recent(stamp));
        let best_wire_below = (0..current)
            .filter_map(|i| recent(i).map(|m| m.wire_rate))
            .fold(wire_rate, f64::max);
        let link_full = wire_rate >= Self::FULL * best_wire_below;
        if link_bound && link_full {
            let steps = match pool_rate.map(|p| p / nar_rate) {
                None => 1,
                Some(headroom) if headroom >= 32.0 => 3,
                Some(headroom) if headroom >= 8.0 => 2,
                Some(headroom) if headroom >= 2.0 => 1,
                Some(_) => 0,
            };
            let avoided = |i: usize| self.avoided[i].is_some_and(|when| when.recent(stamp));
            // Measured lately at `i`: a lower NAR rate, or a wire clearly emptier than now (then
            // the link was not what held it back there).
            let worse = |i: usize| {
                recent(i).is_some_and(|m| {
                    m.nar_rate < nar_rate * (1.0 - Self::MARGIN)
                        || m.wire_rate < Self::FULL * wire_rate
                })
            };
            if self.may_try_raw(wire_rate) && recent(0).is_none() && !avoided(0) {
                0
            } else {
                // The furthest step up neither avoided nor measured worse lately.
                (1..=steps)
                    .rev()
                    .map(|k| (current + k).min(LADDER.len() - 1))
                    .find(|&i| i != current && !avoided(i) && !worse(i))
                    .unwrap_or(current)
            }
        } else if current > 0 {
            self.avoided[current] = Some(stamp);
            current - 1
        } else {
            current
        }
    }
}

/// What sending one block took.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BlockTimes {
    pub(super) nar_bytes: u64,
    pub(super) wire_bytes: u64,
    /// Compressing it, on its pool thread.
    pub(super) compress_time: Duration,
    /// The writer waiting for it (compression the bottleneck)...
    pub(super) waited_for_block: Duration,
    /// ... and for the channel to take it (the link the bottleneck).
    pub(super) waited_for_link: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a simulated transfer behaves at a level: its NAR rate, milliseconds to compress a
    /// block of 1 MiB, and whether the writer waits for the link (else for blocks).
    #[derive(Clone, Copy)]
    struct At {
        mib_per_s: f64,
        compress_ms: u64,
        link_bound: bool,
    }

    /// The compression ratio of the simulation at `level`.
    fn ratio(level: i32) -> f64 {
        if level == 0 {
            1.0
        } else {
            1.9 + 0.03 * level as f64
        }
    }

    /// Feeds `seconds` of 1 MiB blocks as `at(level)` says for the level `auto` is at; returns
    /// the level at the end of each second.
    fn drive(auto: &mut AutoLevel, seconds: usize, at: impl Fn(i32) -> At) -> Vec<i32> {
        let start = Instant::now();
        let mut now = start;
        let ms = Duration::from_millis;
        let mut trace = Vec::new();
        while trace.len() < seconds {
            let level = LADDER[auto.index];
            let At {
                mib_per_s,
                compress_ms,
                link_bound,
            } = at(level);
            now += Duration::from_secs_f64(1.0 / mib_per_s);
            let (for_block, for_link) = if link_bound { (0, 20) } else { (20, 0) };
            let times = BlockTimes {
                nar_bytes: 1 << 20,
                wire_bytes: ((1 << 20) as f64 / ratio(level)) as u64,
                compress_time: ms(if level == 0 { 0 } else { compress_ms }),
                waited_for_block: ms(for_block),
                waited_for_link: ms(for_link),
            };
            auto.observe(now, level, times);
            if now.duration_since(start).as_secs() as usize > trace.len() {
                trace.push(LADDER[auto.index]);
            }
        }
        trace
    }

    /// A link that carries `wire` MiB/s whatever the level, with `compress_ms` per block.
    fn link(wire: f64, compress_ms: u64) -> impl Fn(i32) -> At {
        move |level| At {
            mib_per_s: wire * ratio(level),
            compress_ms,
            link_bound: true,
        }
    }

    fn auto() -> AutoLevel {
        AutoLevel::new(AutoLevel::START, 2)
    }

    /// A 4 MiB block at `level` that went out as `wire_mib`, the writer having waited on the
    /// link.
    fn link_bound_block(level: i32, wire_mib: f64) -> BlockTimes {
        BlockTimes {
            nar_bytes: 4 << 20,
            wire_bytes: (wire_mib * (1 << 20) as f64) as u64,
            compress_time: Duration::from_millis(if level == 0 { 0 } else { 6 }),
            waited_for_block: Duration::ZERO,
            waited_for_link: Duration::from_millis(5),
        }
    }

    #[test]
    fn auto_level_follows_the_bottleneck() {
        let top = *LADDER.last().unwrap();
        // A 100 Mbit/s link and cheap compression (2 ms a block: two threads could do 1000
        // MiB/s): it climbs to the top within seconds and stays.
        let trace = drive(&mut auto(), 12, link(11.5, 2));
        assert_eq!(trace[4..], [top; 8], "{trace:?}");
        // Link-bound, but compression could barely keep up (40 ms a block: 50 MiB/s with two
        // threads, 44 MiB/s reached): it stays at 1, and does not try raw on a link this slow.
        assert_eq!(drive(&mut auto(), 6, link(23.0, 40)), [1; 6]);
        // CPU-bound: it descends to uncompressed.
        let cpu = At {
            mib_per_s: 50.0,
            compress_ms: 2,
            link_bound: false,
        };
        let trace = drive(&mut AutoLevel::new(3, 2), 6, |_| cpu);
        assert_eq!(trace[2..], [0; 4], "{trace:?}");
    }

    /// The writer waits for the channel, but compressed blocks go slower than raw ones: the
    /// receiver's CPU is the limit, as on loopback. It tries raw, stays there, and tries level
    /// 1 again only once that is old news.
    #[test]
    fn auto_level_sends_raw_when_the_receiver_is_the_limit() {
        let trace = drive(&mut auto(), 12, |level| At {
            mib_per_s: 500.0 - 100.0 * level.min(1) as f64 - 20.0 * level as f64,
            compress_ms: 2,
            link_bound: true,
        });
        let raw = trace.iter().filter(|&&l| l == 0).count();
        assert!(raw >= 10, "{trace:?}");
    }

    /// Content sets the pace too: the raw window may move fewer NAR bytes than the level-1
    /// window before it, yet the wire carried far more raw, so level 1 was not the link's
    /// limit and it stays raw.
    #[test]
    fn auto_level_weighs_the_wire_not_only_the_nar_rate() {
        let mut auto = auto();
        let mut now = Instant::now();
        let mut window = |auto: &mut AutoLevel, nar_mib_s: f64, wire_mib_s: f64| {
            let level = LADDER[auto.index];
            let (mut next, windows) = (None, auto.windows);
            // Blocks of 4 MiB until one window ends.
            while auto.windows == windows {
                now += Duration::from_secs_f64(4.0 / nar_mib_s);
                let times = link_bound_block(level, 4.0 * wire_mib_s / nar_mib_s);
                next = auto.observe(now, level, times).or(next);
            }
            LADDER[next.unwrap_or(auto.index)]
        };
        assert_eq!(
            window(&mut auto, 460.0, 240.0),
            0,
            "level 1 at 240 MiB/s, even in the warm-up: try raw"
        );
        assert_eq!(
            window(&mut auto, 420.0, 420.0),
            0,
            "raw: slower NAR, far fuller wire"
        );
    }

    /// On loopback the receiver sets the pace at hundreds of MiB/s: raw is tried right after
    /// the warm-up, a few dozen MiB, not after 300 ms of level 1.
    #[test]
    fn auto_level_tries_raw_soon_on_a_fast_link() {
        let mut auto = auto();
        let mut now = Instant::now();
        let mut compressed = 0;
        while auto.index != 0 {
            now += Duration::from_secs_f64(4.0 / 450.0); // 4 MiB blocks at 450 MiB/s
            let level = LADDER[auto.index];
            auto.observe(now, level, link_bound_block(level, 2.0));
            compressed += 1;
            assert!(
                compressed <= 20,
                "still compressing after {compressed} blocks"
            );
        }
    }

    /// On a gigabit link (~110 MiB/s of wire) it does not try raw: compression doubles the
    /// NAR rate there.
    #[test]
    fn auto_level_compresses_on_a_gigabit_link() {
        let trace = drive(&mut auto(), 12, link(110.0, 2));
        assert!(!trace.contains(&0), "{trace:?}");
        assert!(trace[4..].iter().all(|&l| l >= 3), "{trace:?}");
    }

    /// The first 40 MiB fill empty buffers (socket, SSH window) at four times the link's
    /// rate: that burst does not count as the link, and later windows at higher levels are not
    /// taken for a link left idle.
    #[test]
    fn auto_level_ignores_the_first_burst() {
        let blocks = std::cell::Cell::new(0);
        let steady = link(11.5, 2);
        let trace = drive(&mut auto(), 12, |level| {
            blocks.set(blocks.get() + 1);
            let at = steady(level);
            match blocks.get() {
                ..=40 => At {
                    mib_per_s: 4.0 * at.mib_per_s,
                    ..at
                },
                _ => at,
            }
        });
        assert!(!trace.contains(&0), "{trace:?}");
        assert_eq!(trace[4..], [*LADDER.last().unwrap(); 8], "{trace:?}");
    }

    /// Each level up saves wire bytes until compression becomes the bottleneck above 5: it
    /// settles on 5, probing above now and then for one window.
    #[test]
    fn auto_level_settles_below_the_cpu_limit() {
        let slow = link(16.0, 10);
        let trace = drive(&mut auto(), 20, |level| match level {
            ..=5 => slow(level),
            _ => At {
                mib_per_s: 30.0,
                compress_ms: 60,
                link_bound: false,
            },
        });
        let at_5 = trace[6..].iter().filter(|&&l| l == 5).count();
        assert!(at_5 >= 11, "{trace:?}");
    }
}
