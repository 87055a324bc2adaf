//! The one receiving loop: NARs read in order from a stream are unpacked, verified and
//! registered into a store root, then everything is flushed to the disk. The local copy feeds it
//! from a thread that dumps the local store; the agent from the decoded blocks of its channel.

use std::io::BufRead;
use std::time::Instant;

use crate::store::{PathInfo, StoreError, StoreRoot};

/// What arrived whole, and what making it durable cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Received {
    pub paths: u64,
    pub nar_bytes: u64,
    /// Syncing the store root's file system after the last path.
    pub sync_seconds: f64,
}

/// Receives the NARs of `paths` (dependencies first), concatenated in that order on `nar`.
/// `on_path` hears the running count of paths and NAR bytes after each one is in place; its
/// error stops the loop.
///
/// `nar` is dropped as soon as the loop ends, so that whatever feeds it stops. Every path that
/// arrived whole is registered, also when a later one failed; only a complete transfer is synced
/// to the disk and reported, since the caller may reboot or kexec right after.
pub fn receive_all<R: BufRead>(
    store: &mut StoreRoot,
    paths: &[PathInfo],
    mut nar: R,
    mut on_path: impl FnMut(u64, u64) -> Result<(), StoreError>,
) -> Result<Received, StoreError> {
    let mut done = Received::default();
    let mut result = Ok(());
    for info in paths {
        result = store.receive(info, &mut nar).and_then(|()| {
            done.paths += 1;
            done.nar_bytes += info.nar_size;
            on_path(done.paths, done.nar_bytes)
        });
        if result.is_err() {
            break;
        }
    }
    drop(nar);
    let flushed = store.flush();
    result?;
    flushed?;
    let syncing = Instant::now();
    store.sync()?;
    done.sync_seconds = syncing.elapsed().as_secs_f64();
    tracing::debug!(
        paths = done.paths,
        seconds = done.sync_seconds,
        "synced the store root"
    );
    Ok(done)
}
