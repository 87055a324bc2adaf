//! Substitution on the destination, without Nix: the agent fetches from binary caches (and
//! from a local store such as an installer's) what they hold of the paths it lacks, so the
//! operator streams only the rest.
//!
//! As everywhere in this tool, it is plan, then execute:
//! - [`Substituter::open`] turns [`Settings`] (the target's `nix.conf` and the tool's flags) into
//!   sources: caches that answered `nix-cache-info` within a deadline, sorted by priority;
//! - [`Substituter::plan`] asks every source for the wanted paths' narinfos, concurrently, and
//!   keeps a path only if a trusted key signed it and the cache's NAR hash, size and references
//!   are exactly the tool's: the result, a [`SubstitutionPlan`], is plain data for `--dry-run`;
//! - [`Substituter::fetch`] downloads in parallel, decompresses as bytes arrive and feeds each NAR
//!   to the store writer in dependency order, which checks the hash and size again and
//!   registers a path only once its references are valid. What fails is reported, to be
//!   streamed instead; nothing wrong is registered.

pub mod cache;
pub mod config;
mod fetch;
pub mod local;
pub mod narinfo;
mod plan;
pub mod signature;
pub mod spool;

use std::path::PathBuf;

pub use cache::{CaCertificates, HttpCache, HttpOptions};
pub use config::{NixConf, Overrides, Settings, local_store_root};
pub use fetch::{Destination, Failed, FetchOptions, FetchReport, SourceReport};
pub use local::LocalStore;
pub use narinfo::{Compression, NarInfo, NarInfoError};
pub use plan::{
    Fetch, NotSubstituted, PlanOverview, Planned, PlannedPath, SourceKind, SourceSummary,
    Substituter, SubstitutionPlan,
};
pub use signature::{BadKey, TrustedKeys};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SubstituteError {
    #[error("{}:{line}: {reason}", path.display())]
    Config {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("reading {}: {source}", path.display())]
    ConfigIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    BadKey(#[from] BadKey),
    #[error("ssl-cert-file {}: {reason}; give a PEM file of CA certificates", path.display())]
    CertFile { path: PathBuf, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: no answer within {seconds} s; skipping this cache")]
    Unreachable { url: String, seconds: f64 },
    #[error("{url}: nix-cache-info: {reason}")]
    CacheInfo { url: String, reason: String },
    #[error("{url}: the cache is for store directory {found:?}, not /nix/store; skipping it")]
    StoreDir { url: String, found: String },
    #[error("{url}: not a valid narinfo: {reason}")]
    NarInfo { url: String, reason: NarInfoError },
    #[error(
        "substituter {0:?}: not supported (http://, https:// and local stores such as `/`, `local`, `auto` are); skipping it"
    )]
    Unsupported(String),
    #[error("local store database {}: {reason}", path.display())]
    LocalDb { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}
