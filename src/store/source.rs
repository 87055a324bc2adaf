//! The store a closure is read from: this machine's Nix store, or the one `--from` names (as
//! `nix copy --from` reads it).
//!
//! A local store under another root (`/DIR`, `local?root=/DIR`) is read directly, NARs
//! serialised by [`crate::nar::dump`] as for the local store. Every other store Nix knows (a
//! `file://` binary cache, `https://`, `ssh://`, `s3://`) is read through this machine's Nix:
//! `nix path-info --store URI` for the closure, `nix store dump-path --store URI` for each
//! NAR, so nothing here depends on how that store keeps its paths. Whatever the source, the
//! destination checks every NAR against the hash in the path info before registering it.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{PathInfo, StoreError, StorePath, info};
use crate::exec::Cmd;

/// Where the NARs of a closure come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NarSource {
    /// This machine's Nix store (`/nix/store`, through its Nix for the path infos).
    #[default]
    Local,
    /// A local store whose files are under `root`: `uri` is how Nix names it.
    Root { uri: String, root: PathBuf },
    /// Another store, read through Nix.
    Nix { uri: String },
}

impl NarSource {
    /// The source `--from URI` names. `/DIR` and `local?root=/DIR` (with no other settings)
    /// are read directly; `local`, `auto` and `daemon` are this machine's store.
    pub fn from_uri(uri: &str) -> Self {
        if matches!(uri, "local" | "auto" | "daemon") {
            return Self::Local;
        }
        let root = if uri.starts_with('/') {
            Some(uri)
        } else {
            uri.strip_prefix("local?root=")
                .filter(|r| r.starts_with('/') && !r.contains('&'))
        };
        match root {
            Some(root) => Self::Root {
                uri: uri.to_owned(),
                root: PathBuf::from(root),
            },
            None => Self::Nix {
                uri: uri.to_owned(),
            },
        }
    }

    /// The store's URI for Nix's `--store`; `None` for the local store.
    fn uri(&self) -> Option<&str> {
        match self {
            Self::Local => None,
            Self::Root { uri, .. } | Self::Nix { uri } => Some(uri),
        }
    }

    /// The closures of `paths` in this store, dependencies first.
    pub fn query_closure(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>, StoreError> {
        info::query_closure_in(self.uri(), paths)
    }

    /// The source `--from` names, or the local store without one.
    pub fn new(from: Option<&str>) -> Self {
        from.map(Self::from_uri).unwrap_or_default()
    }

    /// Writes the NAR of `path` to `out`. A failed `out` (a broken pipe) is the error's
    /// `source`, of its own kind.
    pub fn dump(&self, path: &StorePath, out: &mut impl Write) -> Result<(), StoreError> {
        self.dump_io(path, out).map_err(|e| StoreError::Source {
            path: path.clone(),
            store: self.to_string(),
            source: e,
        })
    }

    fn dump_io(&self, path: &StorePath, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Local => crate::nar::dump(Path::new(&path.to_absolute()), out).map(drop),
            Self::Root { root, .. } => crate::nar::dump(&path.under_root(root), out).map(drop),
            Self::Nix { uri } => Cmd::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(["store", "dump-path", "--store", uri])
                .arg(path.to_absolute())
                .stream_stdout(out),
        }
    }
}

impl fmt::Display for NarSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uri() {
            None => f.write_str("the local store"),
            Some(uri) => write!(f, "the store {uri}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_it_reads_directly() {
        assert_eq!(NarSource::from_uri("local"), NarSource::Local);
        assert_eq!(NarSource::from_uri("auto"), NarSource::Local);
        for uri in ["/srv/root", "local?root=/srv/root"] {
            assert_eq!(
                NarSource::from_uri(uri),
                NarSource::Root {
                    uri: uri.into(),
                    root: "/srv/root".into()
                }
            );
        }
        // Other settings (a store dir, a read-only flag) are Nix's to interpret.
        for uri in [
            "file:///cache",
            "https://cache.example",
            "ssh://builder",
            "local?root=/r&read-only=true",
            "local?root=relative",
        ] {
            assert_eq!(NarSource::from_uri(uri), NarSource::Nix { uri: uri.into() });
        }
    }
}
