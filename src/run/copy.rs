//! Copying closures into a store root, like `nix copy`: plan what is missing (read-only), then
//! send it.
//!
//! The plan is plain data: the closure in dependency order and the paths the destination lacks,
//! found without changing anything there, so `--dry-run` prints it and stops. Execution streams
//! NARs from the source store (the local one, or `--from`'s) into the destination's
//! [`StoreRoot`], which verifies, registers and syncs each one.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tracing::Instrument;

use crate::pipe::pipe;
use crate::progress::{Progress, mib};
use crate::remote::{Agent, ClientError, RemoteError};
use crate::ssh::{SshOptions, Target};
use crate::store::{NarSource, PathInfo, StoreError, StorePath, StoreRoot};
use crate::substitute::{Overrides, PlanOverview, SourceKind, SourceReport};
use crate::transfer::{self, Compression};

/// Where a copy goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A store root on this machine.
    Local,
    /// A store root on an SSH target, through the agent.
    Ssh {
        target: Target,
        opts: Box<SshOptions>,
    },
}

/// Everything a copy needs, as the command line gave it.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub destination: Destination,
    /// The store root there: a directory holding `nix/store` and `nix/var/nix/db`.
    pub root: PathBuf,
    /// Where the closure is read from.
    pub source: NarSource,
    /// The closure to copy, dependencies first, as the source has it.
    pub closure: Vec<PathInfo>,
    pub compression: Compression,
    /// Let the target fetch what binary caches hold (`--substitute-on-destination`), with
    /// these additions to its Nix configuration; SSH destinations only.
    pub substitute: Option<Overrides>,
    /// Plan, print, change nothing.
    pub dry_run: bool,
}

/// The closure to copy and what of it the destination lacks.
#[derive(Debug, Clone, Serialize)]
pub struct CopyPlan {
    pub destination: String,
    pub root: PathBuf,
    /// The paths to send, dependencies first.
    pub send: Vec<PlannedPath>,
    /// The paths the destination holds already.
    pub skip: Vec<PlannedPath>,
    pub nar_bytes_to_send: u64,
    /// With substitution: which of `send` the target's caches hold (those are downloaded
    /// there, the rest streamed from here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitution: Option<PlanOverview>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedPath {
    pub path: StorePath,
    pub nar_size: u64,
}

impl CopyPlan {
    fn new(
        destination: String,
        root: &Path,
        closure: &[PathInfo],
        valid: &BTreeSet<StorePath>,
    ) -> Self {
        let planned = |i: &PathInfo| PlannedPath {
            path: i.path.clone(),
            nar_size: i.nar_size,
        };
        let (skip, send): (Vec<_>, Vec<_>) = closure.iter().partition(|i| valid.contains(&i.path));
        Self {
            destination,
            root: root.to_owned(),
            nar_bytes_to_send: send.iter().map(|i| i.nar_size).sum(),
            send: send.into_iter().map(planned).collect(),
            skip: skip.into_iter().map(planned).collect(),
            substitution: None,
        }
    }

    /// Of the paths to send, those the substitution plan leaves to the stream, in order.
    fn streamed(&self, closure: &[PathInfo]) -> Vec<PathInfo> {
        let substituted: BTreeSet<&StorePath> = self
            .substitution
            .iter()
            .flat_map(|s| s.paths.iter().map(|p| &p.path))
            .collect();
        self.missing(closure)
            .into_iter()
            .filter(|i| !substituted.contains(&i.path))
            .collect()
    }

    /// The path infos of the paths to send, in order.
    fn missing(&self, closure: &[PathInfo]) -> Vec<PathInfo> {
        let send: BTreeSet<&StorePath> = self.send.iter().map(|p| &p.path).collect();
        closure
            .iter()
            .filter(|i| send.contains(&i.path))
            .cloned()
            .collect()
    }
}

impl fmt::Display for CopyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copy to {}:{}: {} of {} paths to send ({:.1} MiB of NAR), {} already there",
            self.destination,
            self.root.display(),
            self.send.len(),
            self.send.len() + self.skip.len(),
            mib(self.nar_bytes_to_send),
            self.skip.len()
        )?;
        let mut from_cache = std::collections::BTreeMap::new();
        if let Some(sub) = &self.substitution {
            for w in &sub.warnings {
                writeln!(f, "  warning: {w}")?;
            }
            for source in &sub.sources {
                write!(
                    f,
                    "  from {}: {} paths ({:.1} MiB of NAR",
                    source.kind.name(&source.url),
                    source.paths,
                    mib(source.nar_bytes),
                )?;
                match source.kind {
                    SourceKind::Cache => {
                        writeln!(f, ", {:.1} MiB to download)", mib(source.file_bytes))?
                    }
                    SourceKind::Local => writeln!(f, ", nothing to download)")?,
                }
            }
            for p in &sub.paths {
                let source = &sub.sources[p.source];
                from_cache.insert(&p.path, source.kind.name(&source.url));
            }
        }
        for p in &self.send {
            match from_cache.get(&p.path) {
                Some(url) => writeln!(
                    f,
                    "  substitute {} ({:.1} MiB) from {url}",
                    p.path,
                    mib(p.nar_size)
                )?,
                None => writeln!(f, "  send {} ({:.1} MiB)", p.path, mib(p.nar_size))?,
            }
        }
        Ok(())
    }
}

/// What a copy did (or, for a dry run, would do), as `--json` prints it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub paths_sent: u64,
    pub paths_skipped: u64,
    pub nar_bytes: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    /// Flushing the destination's file system to the disk, at the end.
    pub sync_seconds: f64,
    /// Blocks sent at each zstd level (0: uncompressed), over SSH.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zstd_levels: Vec<(i32, u64)>,
    /// Paths the target fetched from its substituters, binary caches and local stores (not in
    /// `paths_sent`), and their NAR bytes.
    pub paths_substituted: u64,
    pub substituted_nar_bytes: u64,
    /// Per substituter: paths, NAR bytes and bytes downloaded (none from a local store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<SourceReport>,
    /// Planned substitutes that failed and were streamed instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub substitution_failed: Vec<StorePath>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nar = mib(self.nar_bytes);
        write!(
            f,
            "copied {} paths ({:.1} MiB of NAR, {:.1} MiB on the wire), {} already present, in {:.2} s ({:.0} MiB/s)",
            self.paths_sent,
            nar,
            mib(self.wire_bytes),
            self.paths_skipped,
            self.seconds,
            nar / self.seconds.max(0.001),
        )?;
        if self.paths_substituted > 0 || !self.caches.is_empty() {
            write!(
                f,
                "; the target fetched {} paths ({:.1} MiB of NAR) from its substituters",
                self.paths_substituted,
                mib(self.substituted_nar_bytes)
            )?;
            for c in self.caches.iter().filter(|c| c.paths > 0) {
                write!(f, ", {} from {}", c.paths, c.kind.name(&c.url))?;
                if c.kind == SourceKind::Cache {
                    write!(f, " ({:.1} MiB downloaded)", mib(c.file_bytes))?;
                }
            }
            if !self.substitution_failed.is_empty() {
                write!(
                    f,
                    ", {} streamed after their download failed",
                    self.substitution_failed.len()
                )?;
            }
        }
        Ok(())
    }
}

/// What `run` returns: the plan of a dry run, or the summary of a copy.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Planned(CopyPlan),
    Copied(Summary),
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl From<ClientError> for CopyError {
    fn from(e: ClientError) -> Self {
        Self::Remote(RemoteError::Client(e))
    }
}

/// Plans the copy, and unless it is a dry run, carries it out.
pub async fn run(request: CopyRequest) -> Result<Outcome, CopyError> {
    let span = tracing::info_span!("copy", root = %request.root.display());
    let Destination::Ssh { target, opts } = &request.destination else {
        let local = move || span.in_scope(|| copy_to_local(&request));
        let outcome = tokio::task::spawn_blocking(local)
            .await
            .expect("the local copy does not panic");
        return Ok(outcome?);
    };
    copy_over_ssh(&request, target, opts)
        .instrument(span.clone())
        .await
}

/// Copies from the source store into the store root `request.root` on this machine.
pub fn copy_to_local(request: &CopyRequest) -> Result<Outcome, StoreError> {
    let started = Instant::now();
    let valid = StoreRoot::valid_paths_at(&request.root, request.closure.iter().map(|i| &i.path))?;
    let plan = CopyPlan::new("local".into(), &request.root, &request.closure, &valid);
    if request.dry_run {
        return Ok(Outcome::Planned(plan));
    }
    let mut dest = StoreRoot::open(&request.root)?;
    // Opened and locked now: what another writer added since the plan counts as well.
    let valid = dest.valid_paths(request.closure.iter().map(|i| &i.path))?;
    let plan = CopyPlan::new("local".into(), &request.root, &request.closure, &valid);
    tracing::info!("{}", plan.to_string().lines().next().unwrap_or_default());
    let missing = plan.missing(&request.closure);
    let mut progress = Progress::new(missing.len() as u64, plan.nar_bytes_to_send);

    // One thread serialises NARs from the source while this one unpacks them: reading and
    // hashing overlap with writing, and the pipe bounds what is in flight.
    let (mut writer, reader) = pipe(16);
    let paths: Vec<StorePath> = missing.iter().map(|i| i.path.clone()).collect();
    let source = request.source.clone();
    let producer = std::thread::spawn(move || -> Result<(), StoreError> {
        for path in &paths {
            source.dump(path, &mut writer)?;
        }
        Ok(())
    });
    let mut done = 0;
    let received = transfer::receive_all(&mut dest, &missing, reader, |paths, nar_bytes| {
        progress.advance(paths - done, nar_bytes);
        done = paths;
        Ok(())
    });
    let produced = producer.join().expect("the NAR producer does not panic");
    progress.finish();
    // A broken pipe only means the receiving side stopped first; its error is the one to show.
    match produced {
        Err(StoreError::Source { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let received = received?;
    Ok(Outcome::Copied(Summary {
        paths_sent: received.paths,
        paths_skipped: plan.skip.len() as u64,
        nar_bytes: received.nar_bytes,
        wire_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        sync_seconds: received.sync_seconds,
        ..Summary::default()
    }))
}

/// Copies over SSH into the store root `request.root` on `target`, through the agent: one
/// channel, one stream, only the paths the target lacks.
async fn copy_over_ssh(
    request: &CopyRequest,
    target: &Target,
    opts: &SshOptions,
) -> Result<Outcome, CopyError> {
    let started = Instant::now();
    let (session, mut agent) = super::connect(target, opts).await?;
    let outcome = match with_agent(request, target, &mut agent, started).await {
        Ok(outcome) => {
            agent.finish().await?;
            outcome
        }
        // The agent's exit status and stderr say what its reply could not.
        Err(e) => return Err(agent.abandon(e).await.into()),
    };
    // Best effort: everything is done; a failed goodbye changes nothing on the target.
    let _ = session.close().await;
    Ok(outcome)
}

async fn with_agent(
    request: &CopyRequest,
    target: &Target,
    agent: &mut Agent,
    started: Instant,
) -> Result<Outcome, RemoteError> {
    let paths: Vec<StorePath> = request.closure.iter().map(|i| i.path.clone()).collect();
    let root = &request.root;
    let valid = agent.client.query_valid(root, &paths).await?;
    let mut plan = CopyPlan::new(target.to_string(), root, &request.closure, &valid);
    if request.dry_run {
        if let Some(overrides) = &request.substitute {
            let missing = plan.missing(&request.closure);
            plan.substitution = Some(
                agent
                    .client
                    .plan_substitution(overrides, root, &missing)
                    .await?,
            );
        }
        return Ok(Outcome::Planned(plan));
    }
    stream_closure(
        agent,
        &target.to_string(),
        root,
        &request.source,
        &request.closure,
        request.compression,
        request.substitute.as_ref(),
        started,
    )
    .await
    .map(Outcome::Copied)
}

/// Opens the store root `root` on the agent's machine and streams what of `closure` it lacks
/// (asked again once the store is locked) from `source`, with a progress bar. With
/// `substitute`, the target first plans what its caches hold of that, and downloads it while
/// the rest is streamed; what it fails to download is streamed after.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_closure(
    agent: &mut Agent,
    destination: &str,
    root: &Path,
    source: &NarSource,
    closure: &[PathInfo],
    compression: Compression,
    substitute: Option<&Overrides>,
    started: Instant,
) -> Result<Summary, RemoteError> {
    let paths: Vec<StorePath> = closure.iter().map(|i| i.path.clone()).collect();
    agent.client.open_store(root).await?;
    // Opened and locked now: the answer counts what another writer added since.
    let valid = agent.client.query_valid(root, &paths).await?;
    let mut plan = CopyPlan::new(destination.to_owned(), root, closure, &valid);
    let missing = plan.missing(closure);
    if let Some(overrides) = substitute
        && !missing.is_empty()
    {
        let sub = agent
            .client
            .plan_substitution(overrides, root, &missing)
            .await?;
        for w in &sub.warnings {
            tracing::warn!("{w}");
        }
        plan.substitution = Some(sub);
    }
    let mut lines = plan.to_string();
    if let Some(sub) = &plan.substitution {
        lines = format!(
            "{}, {} of them from the target's caches ({:.1} MiB of NAR)",
            lines.lines().next().unwrap_or_default(),
            sub.paths.len(),
            mib(sub.nar_bytes())
        );
    }
    tracing::info!("{}", lines.lines().next().unwrap_or_default());
    let streamed = plan.streamed(closure);
    let mut progress = Progress::new(missing.len() as u64, plan.nar_bytes_to_send);
    let substituting = plan
        .substitution
        .as_ref()
        .is_some_and(|s| !s.paths.is_empty());
    let transfer = if substituting {
        Some(
            agent
                .client
                .receive_substituting(source, &streamed, compression, &mut progress)
                .await?,
        )
    } else if missing.is_empty() {
        None
    } else {
        Some(
            agent
                .client
                .receive(source, &missing, compression, &mut progress)
                .await?,
        )
    };
    progress.finish();
    let report = transfer.as_ref().and_then(|t| t.substituted.clone());
    let (paths_sent, nar_bytes) = match &transfer {
        Some(t) => (t.paths, t.nar_bytes),
        None => (0, 0),
    };
    Ok(Summary {
        paths_sent,
        paths_skipped: plan.skip.len() as u64,
        nar_bytes,
        wire_bytes: transfer.as_ref().map_or(0, |t| t.wire_bytes),
        seconds: started.elapsed().as_secs_f64(),
        sync_seconds: transfer.as_ref().map_or(0.0, |t| t.sync_seconds),
        zstd_levels: transfer.map(|t| t.sent.levels).unwrap_or_default(),
        paths_substituted: report.as_ref().map_or(0, |r| r.paths_substituted),
        substituted_nar_bytes: report.as_ref().map_or(0, |r| r.nar_bytes),
        substitution_failed: report
            .as_ref()
            .map(|r| r.failed.iter().map(|f| f.path.clone()).collect())
            .unwrap_or_default(),
        caches: report.map(|r| r.sources).unwrap_or_default(),
    })
}
