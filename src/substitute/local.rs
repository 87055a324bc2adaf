//! A local Nix store as a substituter: the running system's `/nix/store` and database (an
//! installer's `extra-substituters = /`). Paths it holds are dumped to NAR straight from its
//! store directory into the target's verifying unpacker; no network, no Nix.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::SubstituteError;
use crate::store::{NarHash, PathInfo, StorePath};

/// What a local store records of a path that the target's copy must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    pub nar_hash: NarHash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
}

/// A local store opened read-only.
pub struct LocalStore {
    root: PathBuf,
    db: Mutex<Connection>,
}

impl LocalStore {
    /// Opens the store whose root is `root` (`/` for the running system): its database is read
    /// only, never locked for writing.
    pub fn open(root: &Path) -> Result<Self, SubstituteError> {
        let file = root.join("nix/var/nix/db/db.sqlite");
        let bad = |e: rusqlite::Error| SubstituteError::LocalDb {
            path: file.clone(),
            reason: e.to_string(),
        };
        if !file.exists() {
            return Err(SubstituteError::LocalDb {
                path: file.clone(),
                reason: "no Nix database there".to_owned(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(&file, flags).map_err(bad)?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(bad)?;
        Ok(Self {
            root: root.to_owned(),
            db: Mutex::new(db),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the store records of `path`, or `None` if it is not valid there.
    pub fn query(&self, path: &StorePath) -> Result<Option<LocalInfo>, SubstituteError> {
        let db = self.db.lock().expect("local store lock");
        let bad = |e: rusqlite::Error| SubstituteError::LocalDb {
            path: self.root.join("nix/var/nix/db/db.sqlite"),
            reason: e.to_string(),
        };
        let row: Option<(i64, String, Option<i64>)> = db
            .query_row(
                "select id, hash, narSize from ValidPaths where path = ?1",
                [path.to_absolute()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(bad)?;
        let Some((id, hash, Some(size))) = row else {
            return Ok(None);
        };
        // A hash the tool cannot read just means the path is not taken from here.
        let Ok(nar_hash) = NarHash::parse(&hash) else {
            return Ok(None);
        };
        let mut stmt = db
            .prepare_cached(
                "select p.path from Refs r join ValidPaths p on r.reference = p.id \
                 where r.referrer = ?1",
            )
            .map_err(bad)?;
        let mut references = BTreeSet::new();
        let rows = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(bad)?;
        for reference in rows {
            match StorePath::parse(&reference.map_err(bad)?) {
                Ok(p) => references.insert(p),
                Err(_) => return Ok(None),
            };
        }
        Ok(Some(LocalInfo {
            nar_hash,
            nar_size: u64::try_from(size).unwrap_or(0),
            references,
        }))
    }

    /// Whether this store holds `info.path` exactly as the tool's path info describes it:
    /// `None` if it does not hold it at all, `Some(Err(why))` if it holds something else.
    pub fn matches(&self, info: &PathInfo) -> Result<Option<Result<(), String>>, SubstituteError> {
        Ok(Some(match self.query(&info.path)? {
            None => return Ok(None),
            Some(local) if local.nar_hash != info.nar_hash || local.nar_size != info.nar_size => {
                Err(format!(
                    "its NAR hash {} ({} bytes) differs from the tool's {} ({} bytes)",
                    local.nar_hash, local.nar_size, info.nar_hash, info.nar_size
                ))
            }
            Some(local) if local.references != info.references => {
                Err("its references differ from the tool's".to_owned())
            }
            Some(_) => Ok(()),
        }))
    }

    /// Serialises `path` from this store to NAR and hands the stream to `receive`, which is
    /// expected to check it against the path info (as `StoreRoot::receive` does).
    pub fn with_nar<T>(&self, path: &StorePath, receive: impl FnOnce(&mut dyn BufRead) -> T) -> T {
        let source = path.under_root(&self.root);
        let (mut writer, mut reader) = crate::pipe::pipe(8);
        std::thread::scope(|s| {
            s.spawn(move || {
                // An error ends the stream early; the receiver's size check reports it.
                if let Err(e) = crate::nar::dump(&source, &mut writer) {
                    tracing::warn!("{}: {e}", source.display());
                }
            });
            let result = receive(&mut reader);
            // Let a dump the receiver gave up on finish into nothing.
            std::io::copy(&mut reader, &mut std::io::sink()).ok();
            result
        })
    }
}
