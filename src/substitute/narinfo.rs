//! `<hash>.narinfo`: a binary cache's description of one store path, parsed once into a
//! validated [`NarInfo`].
//!
//! The text comes from a server we do not trust, so every field is checked here: the store path
//! and references are valid store paths, hashes and sizes parse, the compression is one we can
//! undo, and the NAR's URL stays on the cache (relative, without `..`) unless it is an absolute
//! http(s) URL.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::store::{NarHash, StorePath};

/// Longest narinfo accepted; real ones are well under a kilobyte plus their references.
pub const MAX_NARINFO_LEN: usize = 1 << 20;

/// How a cache compressed a NAR file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" | "" => Self::None,
            "xz" => Self::Xz,
            "zstd" => Self::Zstd,
            "bzip2" => Self::Bzip2,
            _ => return None,
        })
    }
}

/// A parsed and validated narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub path: StorePath,
    /// Where the NAR file is, relative to the cache (or an absolute http(s) URL).
    pub url: String,
    pub compression: Compression,
    pub file_hash: Option<NarHash>,
    pub file_size: Option<u64>,
    pub nar_hash: NarHash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("longer than {MAX_NARINFO_LEN} bytes")]
    TooLong,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("line {0}: not `Key: value`")]
    BadLine(usize),
    #[error("field {0} appears twice")]
    Duplicate(&'static str),
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field}: {value:?} is not valid")]
    BadValue { field: &'static str, value: String },
    #[error("compression {0:?} is not one of none, xz, zstd, bzip2")]
    UnknownCompression(String),
}

impl NarInfo {
    /// Parses the text of a narinfo.
    pub fn parse(text: &[u8]) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLong);
        }
        let text = std::str::from_utf8(text).map_err(|_| NarInfoError::NotUtf8)?;
        let mut fields = Fields::default();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or(NarInfoError::BadLine(n + 1))?;
            fields.set(key, value)?;
        }
        fields.finish()
    }

    /// The string Nix signs for this path:
    /// `1;<store path>;sha256:<nix32 NAR hash>;<NAR size>;<references, comma-separated>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.path, &self.nar_hash, self.nar_size, &self.references)
    }
}

/// Nix's fingerprint of a path's info, the message its signatures are over.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: &BTreeSet<StorePath>,
) -> String {
    let refs: Vec<String> = references.iter().map(StorePath::to_absolute).collect();
    format!(
        "1;{};sha256:{};{};{}",
        path.to_absolute(),
        nar_hash.to_nix32(),
        nar_size,
        refs.join(",")
    )
}

#[derive(Default)]
struct Fields {
    path: Option<StorePath>,
    url: Option<String>,
    compression: Option<Compression>,
    file_hash: Option<NarHash>,
    file_size: Option<u64>,
    nar_hash: Option<NarHash>,
    nar_size: Option<u64>,
    references: Option<BTreeSet<StorePath>>,
    deriver: Option<StorePath>,
    signatures: Vec<String>,
    ca: Option<String>,
}

fn put<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::Duplicate(field));
    }
    *slot = Some(value);
    Ok(())
}

impl Fields {
    fn set(&mut self, key: &str, value: &str) -> Result<(), NarInfoError> {
        let bad = |field: &'static str| NarInfoError::BadValue {
            field,
            value: value.chars().take(200).collect(),
        };
        match key {
            "StorePath" => {
                let path = StorePath::parse(value).map_err(|_| bad("StorePath"))?;
                put(&mut self.path, "StorePath", path)
            }
            "URL" => {
                if !url_is_safe(value) {
                    return Err(bad("URL"));
                }
                put(&mut self.url, "URL", value.to_owned())
            }
            "Compression" => {
                let c = Compression::parse(value)
                    .ok_or_else(|| NarInfoError::UnknownCompression(value.to_owned()))?;
                put(&mut self.compression, "Compression", c)
            }
            "FileHash" => {
                let h = NarHash::parse(value).map_err(|_| bad("FileHash"))?;
                put(&mut self.file_hash, "FileHash", h)
            }
            "FileSize" => put(
                &mut self.file_size,
                "FileSize",
                value.parse().map_err(|_| bad("FileSize"))?,
            ),
            "NarHash" => {
                let h = NarHash::parse(value).map_err(|_| bad("NarHash"))?;
                put(&mut self.nar_hash, "NarHash", h)
            }
            "NarSize" => put(
                &mut self.nar_size,
                "NarSize",
                value.parse().map_err(|_| bad("NarSize"))?,
            ),
            "References" => {
                let refs = value
                    .split_ascii_whitespace()
                    .map(StorePath::from_base_name)
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("References"))?;
                put(&mut self.references, "References", refs)
            }
            "Deriver" if value == "unknown-deriver" => Ok(()),
            "Deriver" => {
                let d = StorePath::from_base_name(value).map_err(|_| bad("Deriver"))?;
                put(&mut self.deriver, "Deriver", d)
            }
            "Sig" => {
                self.signatures.push(value.to_owned());
                Ok(())
            }
            "CA" => put(&mut self.ca, "CA", value.to_owned()),
            // Nix ignores fields it does not know (System, ...); so do we.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<NarInfo, NarInfoError> {
        Ok(NarInfo {
            path: self.path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: self.url.ok_or(NarInfoError::Missing("URL"))?,
            // Nix's default when the field is absent is bzip2.
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash: self.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: self.nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver,
            signatures: self.signatures,
            ca: self.ca,
        })
    }
}

/// A NAR URL we are willing to fetch: relative below the cache (no `..`, no absolute path, no
/// query tricks) or an absolute http(s) URL.
fn url_is_safe(url: &str) -> bool {
    if url.starts_with("https://") || url.starts_with("http://") {
        return !url.chars().any(|c| c.is_ascii_control() || c == ' ');
    }
    !url.is_empty()
        && !url.starts_with('/')
        && url
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && url
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+=/".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "StorePath: /nix/store/0vdwbb7wybc0bjgbfjlw2bl8ny6clq1s-hello-2.12\n\
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz\n\
Compression: xz\n\
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
FileSize: 50088\n\
NarHash: sha256:0g8ffz1jmhfrzsqmvfqrp5ywrm6ah1isn3n6gbxj4qkhv6qfdyx5\n\
NarSize: 226560\n\
References: 0vdwbb7wybc0bjgbfjlw2bl8ny6clq1s-hello-2.12 34xlpp3j3vy7ksn09zh44f1c04w77khf-libunistring-1.0\n\
Deriver: 9n4mjnw6f2qz3zcqnxwq9m9lh6a0d8bn-hello-2.12.drv\n\
Sig: cache.nixos.org-1:abc=\n";

    #[test]
    fn parses_a_narinfo_and_builds_the_fingerprint() {
        let info = NarInfo::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(info.path.name(), "hello-2.12");
        assert_eq!(info.compression, Compression::Xz);
        assert_eq!(info.nar_size, 226560);
        assert_eq!(info.file_size, Some(50088));
        assert_eq!(info.references.len(), 2);
        assert_eq!(info.signatures, ["cache.nixos.org-1:abc="]);
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/0vdwbb7wybc0bjgbfjlw2bl8ny6clq1s-hello-2.12;\
sha256:0g8ffz1jmhfrzsqmvfqrp5ywrm6ah1isn3n6gbxj4qkhv6qfdyx5;226560;\
/nix/store/0vdwbb7wybc0bjgbfjlw2bl8ny6clq1s-hello-2.12,\
/nix/store/34xlpp3j3vy7ksn09zh44f1c04w77khf-libunistring-1.0"
        );
    }

    #[test]
    fn rejects_what_a_hostile_cache_might_send() {
        let with = |from: &str, to: &str| NarInfo::parse(SAMPLE.replace(from, to).as_bytes());
        for url in [
            "../../etc/passwd",
            "/etc/passwd",
            "nar/../x",
            "nar//x",
            "nar/x y",
        ] {
            assert!(
                matches!(
                    with(
                        "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz",
                        url
                    ),
                    Err(NarInfoError::BadValue { field: "URL", .. })
                ),
                "{url}"
            );
        }
        assert!(matches!(
            with("Compression: xz", "Compression: lz4"),
            Err(NarInfoError::UnknownCompression(_))
        ));
        assert!(matches!(
            with("NarSize: 226560", "NarSize: -1"),
            Err(NarInfoError::BadValue { .. })
        ));
        assert!(matches!(
            with("/nix/store/0vdw", "/gnu/store/0vdw"),
            Err(NarInfoError::BadValue {
                field: "StorePath",
                ..
            })
        ));
        assert!(matches!(
            with("libunistring-1.0", "libunistring/../x"),
            Err(NarInfoError::BadValue {
                field: "References",
                ..
            })
        ));
        assert_eq!(
            with("NarSize: 226560\n", "NarSize: 226560\nNarSize: 1\n"),
            Err(NarInfoError::Duplicate("NarSize"))
        );
        assert_eq!(
            with("NarHash: ", "Narhash: "),
            Err(NarInfoError::Missing("NarHash"))
        );
        assert_eq!(with("URL: ", "URL "), Err(NarInfoError::BadLine(2)));
        assert_eq!(
            NarInfo::parse(&vec![b'a'; MAX_NARINFO_LEN + 1]),
            Err(NarInfoError::TooLong)
        );
    }
}
