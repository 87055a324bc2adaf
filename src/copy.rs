//! Copying closures into a store root: plan what is missing, then send it.
//!
//! The plan is plain data (the closure in dependency order and the paths the destination
//! lacks); execution streams NARs from the local store into the destination's
//! [`StoreRoot`](crate::store::StoreRoot), which verifies and registers each one.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::client::ClientError;
use crate::nar;
use crate::pipe::pipe;
use crate::progress::Progress;
use crate::remote::{self, RemoteError};
use crate::ssh::{HostKeyPin, Session, SshOptions, Target};
use crate::store::{PathInfo, StoreError, StorePath, StoreRoot};
use crate::stream::Compression;

/// The closure to copy and what of it the destination lacks.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every path of the closure, dependencies first.
    pub closure: Vec<PathInfo>,
    /// The paths to send, in the same order.
    pub missing: Vec<PathInfo>,
}

impl Plan {
    pub fn new(closure: Vec<PathInfo>, valid: &BTreeSet<StorePath>) -> Self {
        let missing = closure
            .iter()
            .filter(|i| !valid.contains(&i.path))
            .cloned()
            .collect();
        Self { closure, missing }
    }

    pub fn missing_nar_bytes(&self) -> u64 {
        self.missing.iter().map(|i| i.nar_size).sum()
    }
}

/// What a copy did, as `--json` prints it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub paths_sent: u64,
    pub paths_skipped: u64,
    pub nar_bytes: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    /// Blocks sent at each zstd level (0: uncompressed), over SSH.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zstd_levels: Vec<(i32, u64)>,
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

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = crate::progress::mib(self.nar_bytes);
        write!(
            f,
            "copied {} paths ({:.1} MiB of NAR, {:.1} MiB on the wire), {} already present, in {:.2} s ({:.0} MiB/s)",
            self.paths_sent,
            mib,
            crate::progress::mib(self.wire_bytes),
            self.paths_skipped,
            self.seconds,
            mib / self.seconds.max(0.001),
        )
    }
}

/// Copies the closure `closure` (dependencies first) from the local store at `/` into the
/// store root at `root`, skipping what is valid there.
pub fn copy_to_local(closure: Vec<PathInfo>, root: &Path) -> Result<Summary, StoreError> {
    let started = Instant::now();
    let mut dest = StoreRoot::open(root)?;
    let valid = dest.valid_paths(closure.iter().map(|i| &i.path))?;
    let plan = Plan::new(closure, &valid);
    tracing::info!(
        "{} of {} paths to copy ({:.1} MiB) into {}",
        plan.missing.len(),
        plan.closure.len(),
        crate::progress::mib(plan.missing_nar_bytes()),
        root.display()
    );
    let mut progress = Progress::new(plan.missing.len() as u64, plan.missing_nar_bytes());

    // One thread serialises NARs from the local store while this one unpacks them: reading and
    // hashing overlap with writing, and the pipe bounds what is in flight.
    let (mut writer, mut reader) = pipe(16);
    let sources: Vec<StorePath> = plan.missing.iter().map(|i| i.path.clone()).collect();
    let producer = std::thread::spawn(move || -> std::io::Result<()> {
        for path in sources {
            nar::dump(Path::new(&path.to_absolute()), &mut writer)?;
        }
        Ok(())
    });
    let mut received = Ok(());
    for info in &plan.missing {
        received = dest.receive(info, &mut reader);
        if received.is_err() {
            break;
        }
        progress.path_done(info.nar_size);
    }
    drop(reader);
    // Whatever was received completely is registered, also when a later path failed.
    let flushed = dest.flush();
    let produced = producer.join().expect("the NAR producer does not panic");
    progress.finish();
    // A broken pipe only means the receiving side stopped first; its error is the one to show.
    match produced {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(StoreError::io(Path::new(crate::store::STORE_DIR), e));
        }
        _ => {}
    }
    received?;
    flushed?;
    let nar_bytes = plan.missing_nar_bytes();
    Ok(Summary {
        paths_sent: plan.missing.len() as u64,
        paths_skipped: (plan.closure.len() - plan.missing.len()) as u64,
        nar_bytes,
        wire_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        zstd_levels: Vec::new(),
    })
}

/// Copies `closure` (dependencies first) over SSH into the store root `root` on `target`,
/// through the agent: one channel, one stream, only the paths the target lacks.
pub async fn copy_over_ssh(
    closure: Vec<PathInfo>,
    target: &Target,
    opts: &SshOptions,
    root: &Path,
    compression: Compression,
) -> Result<Summary, CopyError> {
    let started = Instant::now();
    let pin = HostKeyPin::new();
    let session = Session::connect(target, opts, &pin)
        .await
        .map_err(RemoteError::from)?;
    tracing::info!(
        "connected to {target} ({})",
        session.cipher().unwrap_or_default()
    );
    let mut agent =
        remote::start_agent(&session, &remote::agent_binary()?, opts.patience()).await?;
    agent.client.open_store(root).await?;
    let paths: Vec<StorePath> = closure.iter().map(|i| i.path.clone()).collect();
    let valid = agent.client.query_valid(&paths).await?;
    let plan = Plan::new(closure, &valid);
    tracing::info!(
        "{} of {} paths to copy ({:.1} MiB of NAR) to {target}:{}",
        plan.missing.len(),
        plan.closure.len(),
        crate::progress::mib(plan.missing_nar_bytes()),
        root.display()
    );
    let mut progress = Progress::new(plan.missing.len() as u64, plan.missing_nar_bytes());
    let transfer = if plan.missing.is_empty() {
        None
    } else {
        Some(
            agent
                .client
                .receive(&plan.missing, compression, &mut progress)
                .await?,
        )
    };
    progress.finish();
    agent.finish().await?;
    // Best effort: everything is done; a failed goodbye changes nothing on the target.
    let _ = session.close().await;
    Ok(Summary {
        paths_sent: plan.missing.len() as u64,
        paths_skipped: (plan.closure.len() - plan.missing.len()) as u64,
        nar_bytes: plan.missing_nar_bytes(),
        wire_bytes: transfer.as_ref().map_or(0, |t| t.wire_bytes),
        seconds: started.elapsed().as_secs_f64(),
        zstd_levels: transfer.map(|t| t.sent.levels).unwrap_or_default(),
    })
}
