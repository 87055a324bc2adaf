//! Substitution on the agent's side: the plan, from the target's Nix configuration and the
//! tool's flags, and a transfer in which downloads and the operator's stream fill the one store
//! root at the same time.
//!
//! Both sides unpack and verify without the store writer, each into temporary names
//! ([`Unpacker`]), and take the writer only to put a checked path into place. Substitutes
//! reference only paths that are valid or substituted before them (the plan makes sure), so
//! downloads never wait for the stream. A streamed path that references a substitute waits for
//! it; if that substitute failed, the streamed path stays unpacked under its temporary name
//! until the operator has streamed the substitute too (the agent asks with [`Reply::Needed`]).
//! So a path is registered only when its references are valid, whichever way they came, and a
//! cut at any point leaves a consistent store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use super::receive::decode;
use super::{AgentError, PEER};
use crate::pipe::pipe;
use crate::proto::{BlockDecoder, Reply, WireError, frame};
use crate::store::{PathInfo, StoreError, StorePath, StoreRoot, Unpacked, Unpacker};
use crate::substitute::{
    Destination, FetchOptions, FetchReport, HttpOptions, NixConf, Overrides, PlanOverview,
    Settings, SubstituteError, Substituter, SubstitutionPlan,
};

/// Chunks of decompressed NAR in flight between the decoding and the unpacking thread.
const PIPE_DEPTH: usize = 8;

/// How often progress is reported back.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A plan the next `Receive` carries out, with the caches it was made from.
pub(super) struct Pending {
    substituter: Substituter,
    plan: SubstitutionPlan,
    runtime: tokio::runtime::Runtime,
}

/// The Nix configuration a Nix on this machine would read: `$NIX_CONF_DIR/nix.conf`, by default
/// `/etc/nix/nix.conf` (the running system's, not the store root's being installed).
fn nix_conf_path() -> PathBuf {
    std::env::var_os("NIX_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"))
        .join("nix.conf")
}

/// Plans the substitution of `paths` (the ones the store root `root` lacks, dependencies
/// first). A local store named as a substituter (an installer's `/`) is a source unless it is
/// `root` itself.
pub(super) fn plan(
    overrides: &Overrides,
    root: &Path,
    paths: &[PathInfo],
) -> Result<(Pending, PlanOverview), AgentError> {
    let conf_path = nix_conf_path();
    let conf = NixConf::read(&conf_path)?;
    let mut settings = Settings::resolve(&conf, overrides);
    let itself = settings.without_store_root(root);
    tracing::info!(
        conf = %conf_path.display(),
        substituters = ?settings.substituters,
        "planning substitution"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("substitute")
        .enable_all()
        .build()
        .map_err(|e| SubstituteError::Client(format!("starting the runtime: {e}")))?;
    let mut substituter =
        runtime.block_on(Substituter::open(&settings, &HttpOptions::default()))?;
    substituter.warnings.extend(itself.iter().map(|s| {
        format!(
            "substituter {s:?}: it is the store root {} being written; skipping it",
            root.display()
        )
    }));
    let plan = runtime.block_on(substituter.plan(paths));
    let overview = plan.overview();
    Ok((
        Pending {
            substituter,
            plan,
            runtime,
        },
        overview,
    ))
}

#[derive(Default)]
struct Counts {
    paths: AtomicU64,
    nar_bytes: AtomicU64,
    substituted_paths: AtomicU64,
    substituted_bytes: AtomicU64,
}

impl Counts {
    fn progress(&self) -> Reply {
        Reply::Progress {
            paths: self.paths.load(Ordering::Relaxed),
            nar_bytes: self.nar_bytes.load(Ordering::Relaxed),
            substituted_paths: self.substituted_paths.load(Ordering::Relaxed),
            substituted_bytes: self.substituted_bytes.load(Ordering::Relaxed),
        }
    }
}

struct State {
    store: StoreRoot,
    /// Planned substitutes neither in place nor given up yet.
    waiting: BTreeSet<StorePath>,
    /// Planned substitutes given up: the operator streams them last.
    failed: BTreeSet<StorePath>,
}

/// The store writer both sides share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    counts: Counts,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }
}

/// The substitution's view of the shared writer.
#[derive(Clone)]
struct Substitutes {
    shared: Arc<Shared>,
    unpacker: Arc<Unpacker>,
    spool_dir: PathBuf,
}

impl Substitutes {
    fn resolved(&self, path: &StorePath, nar_size: u64, ok: bool) {
        let mut state = self.shared.lock();
        state.waiting.remove(path);
        if ok {
            let counts = &self.shared.counts;
            counts.substituted_paths.fetch_add(1, Ordering::Relaxed);
            counts
                .substituted_bytes
                .fetch_add(nar_size, Ordering::Relaxed);
        } else {
            state.failed.insert(path.clone());
        }
        drop(state);
        self.shared.changed.notify_all();
    }
}

impl Destination for Substitutes {
    fn receive(&mut self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), StoreError> {
        let result = self
            .unpacker
            .unpack(info, nar)
            .and_then(|unpacked| self.shared.lock().store.commit(unpacked));
        self.resolved(&info.path, info.nar_size, result.is_ok());
        result
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.shared.lock().store.flush()
    }

    fn valid_paths(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>, StoreError> {
        self.shared.lock().store.valid_paths(paths)
    }

    fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone()
    }

    fn given_up(&mut self, info: &PathInfo) {
        self.resolved(&info.path, info.nar_size, false);
    }
}

/// Receives the NARs of `paths` from the block frames on `input` while `pending`'s downloads
/// run; then the NARs of the substitutes that failed, which the tool is asked for. Gives the
/// store writer back, whatever happened.
pub(super) fn receive(
    store: StoreRoot,
    pending: Pending,
    paths: &[PathInfo],
    input: &mut (impl Read + Send),
    output: &mut (impl Write + Send),
) -> (Option<StoreRoot>, Result<Reply, AgentError>) {
    let unpacker = match store.unpacker() {
        Ok(u) => Arc::new(u),
        Err(e) => return (Some(store), Err(e.into())),
    };
    let spool_dir = store.path().join("nix/store");
    let Pending {
        substituter,
        plan,
        runtime,
    } = pending;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            store,
            waiting: plan.substituted(),
            failed: BTreeSet::new(),
        }),
        changed: Condvar::new(),
        counts: Counts::default(),
    });
    let substitutes = Substitutes {
        shared: shared.clone(),
        unpacker: unpacker.clone(),
        spool_dir,
    };
    let output = Mutex::new(output);
    let first_total: u64 = paths.iter().map(|p| p.nar_size).sum();
    let (mut nar_in, nar_out) = pipe(PIPE_DEPTH);
    let (more_bytes_tx, more_bytes_rx) = mpsc::channel::<u64>();
    let (more_paths_tx, more_paths_rx) = mpsc::channel::<Vec<PathInfo>>();
    let finished = AtomicBool::new(false);

    let result = std::thread::scope(|scope| {
        let decoder = scope.spawn(move || -> Result<u64, WireError> {
            let mut blocks = BlockDecoder::new();
            let mut wire_bytes = 0;
            if !decode(
                input,
                &mut blocks,
                first_total,
                &mut nar_in,
                &mut wire_bytes,
            )? {
                return Ok(wire_bytes);
            }
            // The substitutes that failed follow, once the agent has named them.
            if let Ok(more) = more_bytes_rx.recv() {
                decode(input, &mut blocks, more, &mut nar_in, &mut wire_bytes)?;
            }
            Ok(wire_bytes)
        });

        let output = &output;
        let fetcher = scope.spawn(move || -> Result<FetchReport, AgentError> {
            let (substitutes, report) =
                runtime.block_on(substituter.fetch(&plan, substitutes, &FetchOptions::default()));
            drop(substitutes);
            let failed: BTreeSet<&StorePath> = report.failed.iter().map(|f| &f.path).collect();
            let needed: Vec<PathInfo> = plan
                .paths
                .iter()
                .filter(|p| failed.contains(&p.path))
                .map(|p| p.info.clone())
                .collect();
            let reply = Reply::Needed {
                paths: needed.iter().map(|i| i.path.clone()).collect(),
            };
            frame::write_message(&mut **output.lock().expect("output lock"), &reply, PEER)?;
            let _ = more_bytes_tx.send(needed.iter().map(|i| i.nar_size).sum());
            let _ = more_paths_tx.send(needed);
            Ok(report)
        });

        let finished = &finished;
        let counts = &shared.counts;
        let ticker = scope.spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(PROGRESS_EVERY);
                let mut out = output.lock().expect("output lock");
                if frame::write_message(&mut **out, &counts.progress(), PEER).is_err() {
                    return;
                }
            }
        });

        let streamed = stream(&shared, &unpacker, paths, nar_out, &more_paths_rx);
        finished.store(true, Ordering::Relaxed);
        let decoded = decoder.join().expect("the decoder does not panic");
        let fetched = fetcher.join().expect("the substitution does not panic");
        ticker.join().expect("the progress reporter does not panic");
        // A transport error explains a truncated NAR better than the truncation does.
        let wire_bytes = decoded?;
        let report = fetched?;
        streamed?;
        Ok((wire_bytes, report))
    });

    let Ok(shared) = Arc::try_unwrap(shared) else {
        unreachable!("every user of the shared writer has ended")
    };
    let mut store = shared.state.into_inner().expect("store lock").store;
    let reply = result.and_then(|(wire_bytes, report)| {
        let flushing = std::time::Instant::now();
        store.flush()?;
        store.sync()?;
        let counts = &shared.counts;
        Ok(Reply::Received {
            paths: counts.paths.load(Ordering::Relaxed),
            nar_bytes: counts.nar_bytes.load(Ordering::Relaxed),
            wire_bytes,
            sync_seconds: flushing.elapsed().as_secs_f64(),
            substituted: Some(report),
        })
    });
    if reply.is_err() {
        // Register what arrived whole, as a stream that fails does.
        let _ = store.flush();
    }
    (Some(store), reply)
}

/// The operator's paths: first `paths`, then the failed substitutes `more` names.
fn stream(
    shared: &Shared,
    unpacker: &Unpacker,
    paths: &[PathInfo],
    mut nar: impl BufRead,
    more: &mpsc::Receiver<Vec<PathInfo>>,
) -> Result<(), AgentError> {
    // Streamed paths unpacked whose references include a failed substitute, in order.
    let mut deferred: BTreeMap<StorePath, Unpacked> = BTreeMap::new();
    let mut deferred_order: Vec<StorePath> = Vec::new();
    let counts = &shared.counts;
    let mut place = |unpacked: Unpacked| -> Result<(), AgentError> {
        let info = unpacked.info().clone();
        let mut state = shared.lock();
        loop {
            let missing = state.store.missing_references(&info)?;
            if missing.iter().any(|r| state.waiting.contains(r)) {
                state = shared.changed.wait(state).expect("store lock");
                continue;
            }
            let later = |r: &StorePath| state.failed.contains(r) || deferred.contains_key(r);
            if !missing.is_empty() && missing.iter().all(later) {
                tracing::debug!(path = %info.path, "waits for a substitute that failed");
                deferred_order.push(info.path.clone());
                deferred.insert(info.path.clone(), unpacked);
            } else {
                state.store.commit(unpacked)?;
                counts.paths.fetch_add(1, Ordering::Relaxed);
                counts.nar_bytes.fetch_add(info.nar_size, Ordering::Relaxed);
            }
            return Ok(());
        }
    };
    for info in paths {
        place(unpacker.unpack(info, &mut nar)?)?;
    }
    // The substitution ended; what it could not do comes next on the stream.
    let rest = more.recv().unwrap_or_default();
    for info in &rest {
        place(unpacker.unpack(info, &mut nar)?)?;
    }
    drop(nar);
    let mut state = shared.lock();
    for path in deferred_order {
        let unpacked = deferred.remove(&path).expect("deferred once");
        let nar_size = unpacked.info().nar_size;
        state.store.commit(unpacked)?;
        counts.paths.fetch_add(1, Ordering::Relaxed);
        counts.nar_bytes.fetch_add(nar_size, Ordering::Relaxed);
    }
    Ok(())
}
