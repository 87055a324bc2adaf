//! The Nix store: validated store paths, path infos, and a writer for a store root.

pub mod db;
pub mod drv;
pub mod info;
pub mod path;
mod root;
mod source;

use std::path::{Path, PathBuf};

pub use crate::nar::NarHash;
pub use info::{PathInfo, dependency_order, query_closure};
pub use path::{STORE_DIR, StorePath, StorePathError};
pub use root::{StoreRoot, Unpacked, Unpacker};
pub use source::NarSource;

use crate::exec::CmdError;
use crate::nar::RestoreError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("asking the local Nix for path infos: {0}")]
    Nix(#[from] CmdError),
    #[error("could not read `nix path-info --json`: {0}")]
    PathInfoJson(#[source] serde_json::Error),
    #[error("the store database: {0}")]
    Db(#[source] rusqlite::Error),
    #[error(
        "{}: store database schema version {found:?}; this tool reads and writes version {}",
        dir.display(), db::SCHEMA_VERSION
    )]
    SchemaVersion { dir: PathBuf, found: String },
    #[error("{path} references {reference}, which is not in the closure")]
    IncompleteClosure {
        path: StorePath,
        reference: StorePath,
    },
    #[error("the closure has a reference cycle through {0}")]
    ReferenceCycle(StorePath),
    #[error(
        "{path} references {reference}, which is not valid in the target store (sent out of order?)"
    )]
    MissingReference {
        path: StorePath,
        reference: StorePath,
    },
    #[error("{path}: {source}")]
    Nar {
        path: StorePath,
        source: RestoreError,
    },
    #[error(
        "{path}: contents do not match the path info (NAR hash {actual} and {actual_size} bytes, expected {expected} and {expected_size} bytes); nothing of it was registered"
    )]
    HashMismatch {
        path: StorePath,
        expected: NarHash,
        actual: NarHash,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("reading {path} from {store}: {source}")]
    Source {
        path: StorePath,
        store: String,
        source: std::io::Error,
    },
    #[error("{path}: the derivation's outputs could not be read")]
    BadDerivation { path: StorePath },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
