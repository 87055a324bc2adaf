//! Store paths, parsed once and validated by Nix's rules.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::nar::hash::{is_nix32_digit, nix32_len};

/// The only store directory this tool writes: a store root `R` holds `R/nix/store`.
pub const STORE_DIR: &str = "/nix/store";

/// Length of the digest part of a store path's base name (20 bytes in Nix base 32).
const DIGEST_LEN: usize = nix32_len(20);

/// Longest name Nix accepts after the digest and the dash.
const MAX_NAME_LEN: usize = 211;

/// A store path such as `/nix/store/<32 chars>-hello-2.12`, held as its base name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    base_name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("{0:?} is not in the store directory {STORE_DIR}")]
    NotInStore(String),
    #[error("{0:?} does not start with a 32-character nix-base32 digest and a dash")]
    BadDigest(String),
    #[error("{0:?} has an empty name")]
    EmptyName(String),
    #[error("{0:?} has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("{0:?} has a name that is `.`, `..` or holds a character Nix forbids")]
    BadName(String),
}

impl StorePath {
    /// Parses an absolute path `/nix/store/<digest>-<name>` (nothing below it).
    pub fn parse(path: &str) -> Result<Self, StorePathError> {
        let base = path
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned()))?;
        Self::from_base_name(base)
    }

    /// Parses `<digest>-<name>`, the base name of a store path.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let owned = || base.to_owned();
        let bytes = base.as_bytes();
        let digest_ok = bytes.len() > DIGEST_LEN
            && bytes[DIGEST_LEN] == b'-'
            && bytes[..DIGEST_LEN].iter().all(|c| is_nix32_digit(*c));
        if !digest_ok {
            return Err(if bytes.len() == DIGEST_LEN + 1 {
                StorePathError::EmptyName(owned())
            } else {
                StorePathError::BadDigest(owned())
            });
        }
        let name = &base[DIGEST_LEN + 1..];
        if name.is_empty() {
            return Err(StorePathError::EmptyName(owned()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(StorePathError::NameTooLong(owned()));
        }
        let allowed = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
        if name == "." || name == ".." || !name.bytes().all(allowed) {
            return Err(StorePathError::BadName(owned()));
        }
        Ok(Self {
            base_name: base.to_owned(),
        })
    }

    /// `<digest>-<name>`: the entry in the store directory.
    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// The 32-character digest part.
    pub fn digest(&self) -> &str {
        &self.base_name[..DIGEST_LEN]
    }

    /// The name after the digest.
    pub fn name(&self) -> &str {
        &self.base_name[DIGEST_LEN + 1..]
    }

    /// Whether this is a derivation (`.drv`), whose outputs Nix also records.
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }

    /// `/nix/store/<digest>-<name>`.
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}", self.base_name)
    }

    /// Where this path lives below a store root `root` (`root/nix/store/...`).
    pub fn under_root(&self, root: &Path) -> PathBuf {
        root.join("nix/store").join(&self.base_name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}", self.base_name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const DIGEST: &str = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz";

    #[test]
    fn parses_a_valid_path() {
        let p = StorePath::parse(&format!("/nix/store/{DIGEST}-hello-2.12.1")).unwrap();
        assert_eq!(p.digest(), DIGEST);
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.to_string(), format!("/nix/store/{DIGEST}-hello-2.12.1"));
        assert_eq!(
            p.under_root(Path::new("mnt")),
            PathBuf::from(format!("mnt/nix/store/{DIGEST}-hello-2.12.1"))
        );
        assert!(!p.is_derivation());
        let name_max = "a".repeat(MAX_NAME_LEN);
        assert!(StorePath::from_base_name(&format!("{DIGEST}-{name_max}")).is_ok());
        assert!(StorePath::from_base_name(&format!("{DIGEST}-+-._?=aZ09")).is_ok());
    }

    #[rstest]
    #[case::other_store(format!("/gnu/store/{DIGEST}-x"))]
    #[case::relative(format!("nix/store/{DIGEST}-x"))]
    #[case::subpath(format!("/nix/store/{DIGEST}-x/bin"))]
    #[case::short_digest("/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxl-x".to_owned())]
    #[case::digest_with_e("/nix/store/eh7qgvs4kgzsn8a6rb273saxyqh4jxlz-x".to_owned())]
    #[case::no_dash(format!("/nix/store/{DIGEST}_x"))]
    #[case::empty_name(format!("/nix/store/{DIGEST}-"))]
    #[case::dot(format!("/nix/store/{DIGEST}-."))]
    #[case::dotdot(format!("/nix/store/{DIGEST}-.."))]
    #[case::space(format!("/nix/store/{DIGEST}-a b"))]
    #[case::non_ascii(format!("/nix/store/{DIGEST}-é"))]
    #[case::too_long(format!("/nix/store/{DIGEST}-{}", "a".repeat(MAX_NAME_LEN + 1)))]
    fn rejects(#[case] path: String) {
        assert!(StorePath::parse(&path).is_err(), "{path}");
    }
}
