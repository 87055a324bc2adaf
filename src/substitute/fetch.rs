//! Executing a substitution plan: parallel downloads, decompressed as they arrive, fed in
//! dependency order to the store writer, which verifies and registers each path.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use super::cache::chain;
use super::narinfo::Compression;
use super::plan::{Fetch, Planned, Source, SourceKind, Substituter, SubstitutionPlan};
use super::spool::{SpoolReader, SpoolWriter, spool};
use crate::nar::hash::HashCounter;
use crate::store::{PathInfo, StoreError, StorePath, StoreRoot};

/// Where substituted paths go: a store writer that checks each NAR against its path info and
/// registers a path only once its references are valid ([`StoreRoot`] does both).
pub trait Destination: Send {
    fn receive(&mut self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), StoreError>;
    /// Registers whatever was received and not yet registered.
    fn flush(&mut self) -> Result<(), StoreError>;
    fn valid_paths(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>, StoreError>;
    /// A directory on the store's filesystem for the files that hold downloads until the
    /// writer takes them.
    fn spool_dir(&self) -> PathBuf;
    /// `info.path` will not be received: its download or spool failed before the writer
    /// reached it (a writer shared with a stream stops waiting for it).
    fn given_up(&mut self, _info: &PathInfo) {}
}

impl Destination for StoreRoot {
    fn receive(&mut self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), StoreError> {
        StoreRoot::receive(self, info, nar)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        StoreRoot::flush(self)
    }
    fn valid_paths(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>, StoreError> {
        StoreRoot::valid_paths(self, paths)
    }
    fn spool_dir(&self) -> PathBuf {
        self.path().join("nix/store")
    }
}

/// A writer shared with the operator's stream, which takes turns with substitution.
impl<D: Destination> Destination for Arc<Mutex<D>> {
    fn receive(&mut self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), StoreError> {
        self.lock().expect("store lock").receive(info, nar)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        self.lock().expect("store lock").flush()
    }
    fn valid_paths(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>, StoreError> {
        self.lock().expect("store lock").valid_paths(paths)
    }
    fn spool_dir(&self) -> PathBuf {
        self.lock().expect("store lock").spool_dir()
    }
    fn given_up(&mut self, info: &PathInfo) {
        self.lock().expect("store lock").given_up(info)
    }
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// NAR downloads in flight at once.
    pub parallel_downloads: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            parallel_downloads: 8,
        }
    }
}

/// What a substitution did, per source, and what failed (to be streamed instead).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FetchReport {
    pub paths_substituted: u64,
    pub nar_bytes: u64,
    pub sources: Vec<SourceReport>,
    pub failed: Vec<Failed>,
    pub seconds: f64,
    /// The paths now valid in the destination thanks to substitution.
    #[serde(skip)]
    pub substituted: BTreeSet<StorePath>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub url: String,
    #[serde(default)]
    pub kind: SourceKind,
    pub paths: u64,
    pub nar_bytes: u64,
    /// Bytes received from the network (compressed).
    pub file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub path: StorePath,
    pub source: String,
    pub reason: String,
}

/// One planned path as the writer will take it.
struct Job {
    planned: Planned,
    nar: Result<Option<SpoolReader>, String>,
}

impl Substituter {
    /// Substitutes what `plan` says into `dest`, and gives `dest` back with the report.
    /// Nothing here fails as a whole: a path that cannot be had is reported, not registered.
    pub async fn fetch<D: Destination + 'static>(
        &self,
        plan: &SubstitutionPlan,
        dest: D,
        opts: &FetchOptions,
    ) -> (D, FetchReport) {
        let start = Instant::now();
        let spool_dir = dest.spool_dir();
        let received: Vec<Arc<AtomicU64>> = self.sources.iter().map(|_| Arc::default()).collect();
        let broken: Vec<Arc<AtomicBool>> = self.sources.iter().map(|_| Arc::default()).collect();
        let mut jobs = Vec::with_capacity(plan.paths.len());
        let mut downloads = Vec::new();
        for planned in &plan.paths {
            let nar = match &planned.fetch {
                Fetch::Local => Ok(None),
                Fetch::Nar {
                    url,
                    compression,
                    file_size,
                } => match spool(&spool_dir) {
                    Ok((writer, reader)) => {
                        downloads.push(Download {
                            url: url.clone(),
                            compression: *compression,
                            file_size: *file_size,
                            info: planned.info.clone(),
                            writer,
                            received: received[planned.source].clone(),
                            broken: broken[planned.source].clone(),
                        });
                        Ok(Some(reader))
                    }
                    Err(e) => Err(format!("a spool file in {}: {e}", spool_dir.display())),
                },
            };
            jobs.push(Job {
                planned: planned.clone(),
                nar,
            });
        }

        // Downloads start in plan order, so the writer's next path is always among them.
        let client = self.client.clone();
        let limit = Arc::new(Semaphore::new(opts.parallel_downloads.max(1)));
        let dispatcher = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for download in downloads {
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let client = client.clone();
                running.spawn(async move {
                    download.run(&client).await;
                    drop(permit);
                });
            }
            while running.join_next().await.is_some() {}
        });

        let sources = self.sources.clone();
        let writer = tokio::task::spawn_blocking(move || write_all(dest, jobs, &sources));
        let (dest, outcomes) = writer.await.expect("the store writer does not panic");
        dispatcher.await.expect("downloads do not panic");

        let mut report = FetchReport {
            sources: self
                .sources
                .iter()
                .zip(&received)
                .map(|(s, r)| SourceReport {
                    url: s.url(),
                    kind: s.kind(),
                    file_bytes: r.load(Ordering::Relaxed),
                    ..SourceReport::default()
                })
                .collect(),
            ..FetchReport::default()
        };
        let planned: Vec<StorePath> = plan.paths.iter().map(|p| p.path.clone()).collect();
        let valid = dest.valid_paths(&planned).unwrap_or_default();
        for (planned, outcome) in plan.paths.iter().zip(outcomes) {
            let source = &mut report.sources[planned.source];
            if valid.contains(&planned.path) {
                source.paths += 1;
                source.nar_bytes += planned.nar_size;
                report.paths_substituted += 1;
                report.nar_bytes += planned.nar_size;
                report.substituted.insert(planned.path.clone());
            } else {
                let reason = outcome
                    .err()
                    .unwrap_or_else(|| "received but not registered".to_owned());
                tracing::warn!("not substituted: {}: {reason}", planned.path);
                report.failed.push(Failed {
                    path: planned.path.clone(),
                    source: source.kind.name(&source.url),
                    reason,
                });
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        (dest, report)
    }
}

/// The store writer: takes the paths in plan (dependency) order, one at a time.
fn write_all<D: Destination>(
    mut dest: D,
    jobs: Vec<Job>,
    sources: &[Arc<Source>],
) -> (D, Vec<Result<(), String>>) {
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let info = &job.planned.info;
        let outcome = match (job.nar, &*sources[job.planned.source]) {
            (Err(e), _) => {
                dest.given_up(info);
                Err(e)
            }
            (Ok(Some(mut nar)), _) => dest.receive(info, &mut nar).map_err(|e| e.to_string()),
            (Ok(None), Source::Local(store)) => store
                .with_nar(&info.path, |nar| dest.receive(info, nar))
                .map_err(|e| e.to_string()),
            (Ok(None), Source::Http(_)) => unreachable!("every download has a spool"),
        };
        outcomes.push(outcome);
    }
    if let Err(e) = dest.flush() {
        tracing::warn!("registering substituted paths: {e}");
    }
    (dest, outcomes)
}

struct Download {
    url: String,
    compression: Compression,
    file_size: Option<u64>,
    info: PathInfo,
    writer: SpoolWriter,
    received: Arc<AtomicU64>,
    /// Set once a download from this source failed in transport (timeout, reset): the rest of
    /// its downloads fail at once instead of each waiting out the timeout.
    broken: Arc<AtomicBool>,
}

impl Download {
    async fn run(self, client: &reqwest::Client) {
        let Self {
            url,
            compression,
            file_size,
            info,
            writer,
            received,
            broken,
        } = self;
        if broken.load(Ordering::Relaxed) {
            return writer.finish(Err(format!(
                "{url}: not tried, an earlier download from this cache stopped answering"
            )));
        }
        let resp = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => return writer.finish(Err(format!("{url}: HTTP status {}", resp.status()))),
            Err(e) => {
                broken.store(true, Ordering::Relaxed);
                return writer.finish(Err(format!("{url}: {}", chain(&e))));
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let unpack = tokio::task::spawn_blocking(move || {
            let input = ChannelReader {
                rx,
                chunk: Bytes::new(),
            };
            decompress(compression, input, writer, &info);
        });
        let mut resp = resp;
        let mut total = 0u64;
        loop {
            let item = match resp.chunk().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    match file_size {
                        Some(size) if total > size => Err(format!(
                            "{url}: more than the {size} bytes its narinfo says"
                        )),
                        _ => Ok(chunk),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    broken.store(true, Ordering::Relaxed);
                    Err(format!("{url}: {}", chain(&e)))
                }
            };
            let stop = item.is_err();
            // The decompressor may have stopped (a bad NAR): its result says why.
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
        drop(tx);
        unpack.await.expect("the decompressor does not panic");
    }
}

/// Decompresses `input` into `out`, hashing and counting the NAR; ends `out` with the verdict.
fn decompress(
    compression: Compression,
    input: ChannelReader,
    mut out: SpoolWriter,
    info: &PathInfo,
) {
    let mut nar = Checked {
        out: &mut out,
        hash: HashCounter::default(),
        limit: info.nar_size,
    };
    let copied = match compression {
        Compression::None => io::copy(&mut { input }, &mut nar),
        Compression::Xz => io::copy(
            &mut liblzma::read::XzDecoder::new_multi_decoder(input),
            &mut nar,
        ),
        Compression::Bzip2 => io::copy(&mut bzip2::read::MultiBzDecoder::new(input), &mut nar),
        Compression::Zstd => zstd::stream::read::Decoder::new(input).and_then(|mut d| {
            d.window_log_max(31)?;
            io::copy(&mut d, &mut nar)
        }),
    };
    let (hash, size) = nar.hash.finish();
    let verdict = match copied {
        Err(e) => Err(format!("{compression:?} NAR of {}: {e}", info.path)),
        Ok(_) if hash != info.nar_hash || size != info.nar_size => Err(format!(
            "the downloaded NAR of {} has hash {hash} and {size} bytes, not {} and {} bytes",
            info.path, info.nar_hash, info.nar_size
        )),
        Ok(_) => Ok(()),
    };
    out.finish(verdict);
}

/// Hashes what passes and refuses to pass more than the NAR's size (a decompression bomb
/// stops here, not on a full disk).
struct Checked<'a> {
    out: &'a mut SpoolWriter,
    hash: HashCounter,
    limit: u64,
}

impl Write for Checked<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.hash.len() + data.len() as u64 > self.limit {
            return Err(io::Error::other(format!(
                "it decompresses to more than its {} bytes",
                self.limit
            )));
        }
        self.out.write_all(data)?;
        self.hash.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The bytes of a download, as a blocking [`Read`] for the decompressors.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
