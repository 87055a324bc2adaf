//! Progress a person can watch: a bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    total_paths: u64,
    total_bytes: u64,
    paths: u64,
    bytes: u64,
    wire_bytes: u64,
    /// Paths and NAR bytes the target fetched from caches (planned: counted in the totals).
    substituted_paths: u64,
    substituted_bytes: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// Progress over `total_paths` store paths of `total_bytes` NAR bytes.
    pub fn new(total_paths: u64, total_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total_paths,
            total_bytes,
            paths: 0,
            bytes: 0,
            wire_bytes: 0,
            substituted_paths: 0,
            substituted_bytes: 0,
            started: now,
            last_line: now,
        }
    }

    /// A path of `nar_size` bytes is complete on the target.
    pub fn path_done(&mut self, nar_size: u64) {
        self.paths += 1;
        self.bytes += nar_size;
        self.update();
    }

    /// `paths` more paths are complete; `nar_bytes` NAR bytes are complete in all.
    pub fn advance(&mut self, paths: u64, nar_bytes: u64) {
        self.paths += paths;
        self.bytes = nar_bytes;
        self.update();
    }

    /// The target has fetched `paths` paths of `nar_bytes` from caches so far.
    pub fn substituted(&mut self, paths: u64, nar_bytes: u64) {
        self.substituted_paths = paths;
        self.substituted_bytes = nar_bytes;
        self.update();
    }

    /// Bytes that have crossed the wire so far, for the compression ratio.
    pub fn wire_bytes(&mut self, wire_bytes: u64) {
        self.wire_bytes = wire_bytes;
    }

    fn ratio(&self) -> String {
        if self.wire_bytes == 0 {
            String::new()
        } else {
            format!(
                ", compression {:.2}x",
                self.bytes as f64 / self.wire_bytes as f64
            )
        }
    }

    fn update(&mut self) {
        let from_caches = if self.substituted_paths > 0 {
            format!(
                " ({} streamed, {} substituted: {:.0} MiB)",
                self.paths,
                self.substituted_paths,
                mib(self.substituted_bytes)
            )
        } else {
            String::new()
        };
        let message = format!(
            "{}/{} paths{from_caches}{}",
            self.paths + self.substituted_paths,
            self.total_paths,
            self.ratio()
        );
        let done = self.bytes + self.substituted_bytes;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(message);
            }
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                eprintln!(
                    "progress: {message}, {:.0}/{:.0} MiB, {:.0} MiB/s",
                    mib(done),
                    mib(self.total_bytes),
                    mib(done) / secs.max(0.001)
                );
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
