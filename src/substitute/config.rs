//! Which substituters and keys to use: the target's `nix.conf`, then the machine's own
//! settings and the tool's flags, combined as Nix would.
//!
//! `substituters` and `trusted-public-keys` replace what came before; their `extra-` forms add
//! to it. With nothing configured Nix uses cache.nixos.org and its key, and so do we.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SubstituteError;
use super::cache::CaCertificates;
use super::signature::CACHE_NIXOS_ORG_KEY;

/// Nix's default substituter.
pub const DEFAULT_SUBSTITUTER: &str = "https://cache.nixos.org";

/// Nested `include`s followed before giving up (a loop would otherwise never end).
const MAX_INCLUDE_DEPTH: usize = 8;

/// The settings of a `nix.conf` (and what it includes) that substitution needs. `None`: not set,
/// so the previous value (Nix's default) stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NixConf {
    pub substituters: Option<Vec<String>>,
    pub extra_substituters: Vec<String>,
    pub trusted_public_keys: Option<Vec<String>>,
    pub extra_trusted_public_keys: Vec<String>,
    pub ssl_cert_file: Option<PathBuf>,
    /// `substitute = false` turns substitution off.
    pub substitute: Option<bool>,
}

impl NixConf {
    /// Reads `path`; a missing file is an empty configuration (a target without Nix has none).
    pub fn read(path: &Path) -> Result<Self, SubstituteError> {
        let mut conf = Self::default();
        conf.read_into(path, 0, true)?;
        Ok(conf)
    }

    /// Parses the text of a `nix.conf`; `dir` resolves relative `include`s.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, SubstituteError> {
        let mut conf = Self::default();
        conf.apply(text, dir, Path::new("nix.conf"), 0)?;
        Ok(conf)
    }

    fn read_into(
        &mut self,
        path: &Path,
        depth: usize,
        optional: bool,
    ) -> Result<(), SubstituteError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(SubstituteError::ConfigIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        self.apply(&text, dir, path, depth)
    }

    fn apply(
        &mut self,
        text: &str,
        dir: &Path,
        file: &Path,
        depth: usize,
    ) -> Result<(), SubstituteError> {
        let bad = |line: usize, reason: &str| SubstituteError::Config {
            path: file.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            match words.as_slice() {
                [] => continue,
                [kw @ ("include" | "!include"), target] => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(bad(n + 1, "includes nested too deeply (a loop?)"));
                    }
                    self.read_into(&dir.join(target), depth + 1, *kw == "!include")?;
                }
                [name, "=", values @ ..] => self.set(name, values).map_err(|r| bad(n + 1, &r))?,
                _ => return Err(bad(n + 1, "not `name = value`")),
            }
        }
        Ok(())
    }

    fn set(&mut self, name: &str, values: &[&str]) -> Result<(), String> {
        let list = || values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
        match name {
            "substituters" => self.substituters = Some(list()),
            "extra-substituters" => self.extra_substituters.extend(list()),
            "trusted-public-keys" => self.trusted_public_keys = Some(list()),
            "extra-trusted-public-keys" => self.extra_trusted_public_keys.extend(list()),
            "ssl-cert-file" => self.ssl_cert_file = values.first().map(PathBuf::from),
            "substitute" => {
                self.substitute = Some(match values {
                    ["true"] => true,
                    ["false"] => false,
                    _ => return Err("substitute must be true or false".to_owned()),
                })
            }
            _ => {} // Every other setting is Nix's business, not substitution's.
        }
        Ok(())
    }
}

/// What the tool's flags add to the target's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    /// `--substituters`: replaces the configured list.
    pub substituters: Option<Vec<String>>,
    /// `--extra-substituters`, and the machine's own `nix.settings.substituters`.
    pub extra_substituters: Vec<String>,
    /// `--trusted-public-keys`, and the machine's own `nix.settings.trusted-public-keys`: added.
    pub trusted_public_keys: Vec<String>,
    /// `--ssl-cert-file`: CA certificates read on the operator's machine, replacing the
    /// target's `ssl-cert-file`.
    pub ssl_certificates: Option<CaCertificates>,
}

/// The sources and keys substitution uses, in the order given (priorities sort them later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    /// The target's `ssl-cert-file`: CA certificates in a file on the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert_file: Option<PathBuf>,
    /// The operator's, which replace those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_certificates: Option<CaCertificates>,
}

impl Settings {
    /// Nix's defaults, then `conf`, then `overrides`; duplicates are dropped, first one kept.
    pub fn resolve(conf: &NixConf, overrides: &Overrides) -> Self {
        let mut substituters = overrides
            .substituters
            .clone()
            .or_else(|| conf.substituters.clone())
            .unwrap_or_else(|| vec![DEFAULT_SUBSTITUTER.to_owned()]);
        if conf.substitute == Some(false) && overrides.substituters.is_none() {
            substituters.clear();
        }
        substituters.extend(conf.extra_substituters.iter().cloned());
        substituters.extend(overrides.extra_substituters.iter().cloned());
        let mut keys = conf
            .trusted_public_keys
            .clone()
            .unwrap_or_else(|| vec![CACHE_NIXOS_ORG_KEY.to_owned()]);
        keys.extend(conf.extra_trusted_public_keys.iter().cloned());
        keys.extend(overrides.trusted_public_keys.iter().cloned());
        Self {
            substituters: dedup(substituters.iter().map(|s| s.trim_end_matches('/'))),
            trusted_public_keys: dedup(keys.iter().map(String::as_str)),
            // Given on the command line, the setting replaces the configuration's, as Nix's
            // settings do.
            ssl_cert_file: match overrides.ssl_certificates {
                Some(_) => None,
                None => conf.ssl_cert_file.clone(),
            },
            ssl_certificates: overrides.ssl_certificates.clone(),
        }
    }

    /// Drops the local stores whose root is `root`, the store root being written: a store is
    /// no source for itself (an installer's `extra-substituters = /` when copying into `/`).
    /// Returns the names dropped.
    pub fn without_store_root(&mut self, root: &Path) -> Vec<String> {
        let same = |a: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(root)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == root,
        };
        let (dropped, kept) = std::mem::take(&mut self.substituters)
            .into_iter()
            .partition(|s| local_store_root(s).is_some_and(|r| same(&r)));
        self.substituters = kept;
        dropped
    }
}

/// The root of a local store named as a substituter: an absolute path (`/`, `/DIR`,
/// `local?root=/DIR`), or `local`/`auto`/`daemon` for the running system's (the agent reads
/// that store directly; it is not a daemon client). `None`: not a local store.
pub fn local_store_root(name: &str) -> Option<PathBuf> {
    let name = name.strip_prefix("local?root=").unwrap_or(name);
    match name {
        "local" | "auto" | "daemon" | "unix://" => Some("/".into()),
        path if path.starts_with('/') && !path.contains('?') => Some(path.into()),
        _ => None,
    }
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let item = if item.is_empty() { "/" } else { item };
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_installer_nix_conf_with_includes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("extra.conf"),
            "extra-trusted-public-keys = mine-1:AAAA\n",
        )
        .unwrap();
        let text = "# generated\n\
            substituters = https://cache.nixos.org/ https://a.example  # main\n\
            extra-substituters = /\n\
            experimental-features = nix-command flakes\n\
            include extra.conf\n\
            !include missing.conf\n";
        let conf = NixConf::parse(text, dir.path()).unwrap();
        assert_eq!(
            conf.substituters.as_deref().unwrap(),
            ["https://cache.nixos.org/", "https://a.example"]
        );
        assert_eq!(conf.extra_substituters, ["/"]);
        assert_eq!(conf.extra_trusted_public_keys, ["mine-1:AAAA"]);

        let settings = Settings::resolve(&conf, &Overrides::default());
        assert_eq!(
            settings.substituters,
            [DEFAULT_SUBSTITUTER, "https://a.example", "/"]
        );
        assert_eq!(
            settings.trusted_public_keys,
            [CACHE_NIXOS_ORG_KEY, "mine-1:AAAA"]
        );
    }

    #[test]
    fn flags_replace_or_add_as_nix_settings_do() {
        let conf = NixConf::parse("substituters = http://x\n", Path::new("/")).unwrap();
        let replaced = Settings::resolve(
            &conf,
            &Overrides {
                substituters: Some(vec!["http://mine".into()]),
                extra_substituters: vec!["http://more".into(), "http://mine/".into()],
                trusted_public_keys: vec!["k-1:AAAA".into()],
                ssl_certificates: None,
            },
        );
        assert_eq!(replaced.substituters, ["http://mine", "http://more"]);
        assert_eq!(
            replaced.trusted_public_keys,
            [CACHE_NIXOS_ORG_KEY, "k-1:AAAA"]
        );

        // The operator's CA certificates replace the target's file.
        let conf = NixConf::parse("ssl-cert-file = /etc/ca.pem\n", Path::new("/")).unwrap();
        let targets = Settings::resolve(&conf, &Overrides::default());
        assert_eq!(
            targets.ssl_cert_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        let ca = CaCertificates {
            file: "ca.pem".into(),
            pem: "PEM".into(),
        };
        let operators = Settings::resolve(
            &conf,
            &Overrides {
                ssl_certificates: Some(ca.clone()),
                ..Overrides::default()
            },
        );
        assert_eq!(operators.ssl_cert_file, None);
        assert_eq!(operators.ssl_certificates, Some(ca));

        let none = Settings::resolve(&NixConf::default(), &Overrides::default());
        assert_eq!(none.substituters, [DEFAULT_SUBSTITUTER]);
        let off = NixConf::parse("substitute = false\n", Path::new("/")).unwrap();
        assert!(
            Settings::resolve(&off, &Overrides::default())
                .substituters
                .is_empty()
        );
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let err = NixConf::parse("a = b\nsubstituters https://x\n", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("nix.conf:2"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loop.conf"), "include loop.conf\n").unwrap();
        let err = NixConf::read(&dir.path().join("loop.conf")).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
        assert_eq!(
            NixConf::read(&dir.path().join("absent.conf")).unwrap(),
            NixConf::default()
        );
    }

    #[test]
    fn a_local_store_is_no_source_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().display().to_string();
        let mut settings = Settings {
            substituters: ["/", "auto", "local?root=/", "http://x"]
                .map(str::to_owned)
                .into_iter()
                .chain([other.clone()])
                .collect(),
            trusted_public_keys: vec![],
            ssl_cert_file: None,
            ssl_certificates: None,
        };
        let mut into_other = settings.clone();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(
            settings.without_store_root(Path::new("//")),
            ["/", "auto", "local?root=/"]
        );
        assert_eq!(settings.substituters, ["http://x", other.as_str()]);
        assert_eq!(
            into_other.without_store_root(&dir.path().join("sub/..")),
            [other.as_str()]
        );
        assert_eq!(into_other.substituters.len(), 4);
        assert_eq!(local_store_root("daemon").as_deref(), Some(Path::new("/")));
        assert_eq!(local_store_root("s3://bucket"), None);
        assert_eq!(local_store_root("/x?trusted=1"), None);
    }
}
