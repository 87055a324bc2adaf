//! Host keys: the key pinned for a run, and OpenSSH known_hosts files.
//!
//! By default nothing needs to be known in advance (like nixos-anywhere), but the first key seen
//! is pinned: every later connection of the run (after kexec, after reboot) must present the
//! same key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

use super::SshError;
use super::options::StrictHostKeyChecking;

/// The host key of one target, shared by every connection of one run, and those of the jump
/// hosts on the way to it, each pinned on its own. Cloning shares the pins.
#[derive(Clone, Default)]
pub struct HostKeyPin(Arc<Pins>);

#[derive(Default)]
struct Pins {
    key: Mutex<Option<PublicKey>>,
    /// By jump host (`user@host:port`).
    hops: Mutex<BTreeMap<String, HostKeyPin>>,
}

impl fmt::Debug for HostKeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HostKeyPin")
            .field(&self.fingerprint())
            .finish()
    }
}

impl HostKeyPin {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pin that only accepts `key` (known from an earlier run, say).
    pub fn with_key(key: PublicKey) -> Self {
        Self(Arc::new(Pins {
            key: Mutex::new(Some(key)),
            hops: Mutex::default(),
        }))
    }

    /// The pin of the jump host `name` on the way to this target.
    pub fn hop(&self, name: &str) -> HostKeyPin {
        let mut hops = self.0.hops.lock().unwrap_or_else(|e| e.into_inner());
        hops.entry(name.to_owned()).or_default().clone()
    }

    /// The pinned key, if a connection was made.
    pub fn key(&self) -> Option<PublicKey> {
        self.0.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pinned key's SHA256 fingerprint as OpenSSH prints it (`SHA256:...`).
    pub fn fingerprint(&self) -> Option<String> {
        self.key().map(|k| fingerprint(&k))
    }

    /// Pins `seen` if nothing is pinned yet; otherwise checks it is the pinned key.
    pub(crate) fn check_or_pin(&self, host: &str, seen: &PublicKey) -> Result<(), SshError> {
        let mut pinned = self.0.key.lock().unwrap_or_else(|e| e.into_inner());
        match &*pinned {
            None => {
                tracing::debug!(host, key = %fingerprint(seen), "pinned the host key");
                *pinned = Some(seen.clone());
                Ok(())
            }
            Some(key) if key.key_data() == seen.key_data() => Ok(()),
            Some(key) => Err(SshError::HostKeyChanged {
                host: host.to_owned(),
                pinned_fingerprint: fingerprint(key),
                seen_fingerprint: fingerprint(seen),
            }),
        }
    }
}

pub fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

/// What the known_hosts files say about a host's key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Match,
    /// A key of the same type is recorded, and it is another one.
    Changed {
        file: PathBuf,
        line: usize,
    },
    Revoked {
        file: PathBuf,
        line: usize,
    },
    Unknown,
}

/// Decides whether to accept `seen` from `host`, by the known_hosts files and then the pin.
pub(crate) fn verify(
    host: &str,
    port: u16,
    seen: &PublicKey,
    strict: StrictHostKeyChecking,
    files: &[PathBuf],
    pin: &HostKeyPin,
) -> Result<(), SshError> {
    let reject = |reason: String| SshError::HostKeyRejected {
        host: host_port(host, port),
        fingerprint: fingerprint(seen),
        reason,
    };
    match lookup(files, host, port, seen)? {
        Known::Match | Known::Unknown if strict != StrictHostKeyChecking::Yes => {}
        Known::Match => {}
        Known::Unknown => {
            return Err(reject(format!(
                "StrictHostKeyChecking=yes and no known_hosts file ({}) records it; add the \
                 host's key there (ssh-keyscan) or drop StrictHostKeyChecking=yes",
                display_files(files)
            )));
        }
        Known::Revoked { file, line } => {
            return Err(reject(format!(
                "it is marked @revoked in {}:{line}",
                file.display()
            )));
        }
        Known::Changed { file, line } if strict == StrictHostKeyChecking::No => {
            tracing::warn!(
                "the host key of {} does not match {}:{line}; continuing because \
                 StrictHostKeyChecking=no",
                host_port(host, port),
                file.display()
            );
        }
        Known::Changed { file, line } => {
            return Err(reject(format!(
                "{}:{line} records a different key for this host; if the host was \
                 reinstalled, remove that line (ssh-keygen -R)",
                file.display()
            )));
        }
    }
    pin.check_or_pin(&host_port(host, port), seen)
}

/// The host as known_hosts names it: `host`, or `[host]:port` off port 22.
fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

fn display_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key algorithms known_hosts records for the host, to ask the server for those first.
pub(crate) fn recorded_algorithms(files: &[PathBuf], host: &str, port: u16) -> Vec<Algorithm> {
    let mut algorithms = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for entry in text.lines().filter_map(parse_line) {
            if entry.marker.is_none()
                && matches_host(entry.hosts, &host_port(host, port))
                && let Ok(key) = russh::keys::parse_public_key_base64(entry.key)
                && !algorithms.contains(&key.algorithm())
            {
                algorithms.push(key.algorithm());
            }
        }
    }
    algorithms
}

/// Looks the host up in every file; a missing file counts as empty, an unreadable one is an
/// error (the user named it and would not expect it to be skipped).
pub(crate) fn lookup(
    files: &[PathBuf],
    host: &str,
    port: u16,
    seen: &PublicKey,
) -> Result<Known, SshError> {
    let name = host_port(host, port);
    let mut result = Known::Unknown;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SshError::Io {
                    what: format!("reading known_hosts file {}", file.display()),
                    source,
                });
            }
        };
        for (index, line) in text.lines().enumerate() {
            let Some(entry) = parse_line(line) else {
                continue;
            };
            if !matches_host(entry.hosts, &name) {
                continue;
            }
            let Ok(key) = russh::keys::parse_public_key_base64(entry.key) else {
                tracing::debug!("{}:{}: unreadable key, skipped", file.display(), index + 1);
                continue;
            };
            let same_type = key.algorithm() == seen.algorithm();
            let same_key = key.key_data() == seen.key_data();
            match entry.marker {
                Some("@revoked") if same_key => return Ok(revoked(file, index)),
                Some(_) => continue,
                None if same_key => result = Known::Match,
                None if same_type && result == Known::Unknown => {
                    result = Known::Changed {
                        file: file.clone(),
                        line: index + 1,
                    }
                }
                None => {}
            }
        }
    }
    Ok(result)
}

fn revoked(file: &Path, index: usize) -> Known {
    Known::Revoked {
        file: file.to_owned(),
        line: index + 1,
    }
}

struct Entry<'a> {
    marker: Option<&'a str>,
    hosts: &'a str,
    key: &'a str,
}

/// `[@marker] hosts keytype base64 [comment]`; blank lines and comments give `None`.
fn parse_line(line: &str) -> Option<Entry<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = if first.starts_with('@') {
        let m = first;
        first = fields.next()?;
        Some(m)
    } else {
        None
    };
    let _keytype = fields.next()?;
    Some(Entry {
        marker,
        hosts: first,
        key: fields.next()?,
    })
}

/// OpenSSH host pattern lists: comma-separated names, `*`/`?` wildcards, `!` negation, and
/// hashed names (`|1|salt|hmac`).
pub(crate) fn matches_host(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = if let Some(hashed) = pattern.strip_prefix("|1|") {
            hashed_matches(hashed, name)
        } else {
            wildcard_matches(pattern.as_bytes(), name.as_bytes())
        };
        if hit && negated {
            return false;
        }
        matched |= hit;
    }
    matched
}

fn hashed_matches(salt_and_hash: &str, name: &str) -> bool {
    use data_encoding::BASE64;
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

fn wildcard_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard_matches(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && wildcard_matches(rest, &name[1..]),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, tail)| n.eq_ignore_ascii_case(c) && wildcard_matches(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(matches_host("a.example,b.example", "b.example"));
        assert!(matches_host("*.example", "x.example"));
        assert!(!matches_host("*.example,!bad.example", "bad.example"));
        assert!(matches_host("[127.0.0.1]:2222", "[127.0.0.1]:2222"));
        assert!(!matches_host("127.0.0.1", "[127.0.0.1]:2222"));
        assert!(matches_host("h?st", "HOST"));
        // `ssh-keygen -H` output for "[127.0.0.1]:2222", salt chosen by ssh-keygen.
        let hashed = "|1|BieoIvTE12Hj2eCbNtaNLoA/nqk=|OmeuBL886gD1Ng2E0nBIItsFXjc=";
        assert!(matches_host(hashed, "[127.0.0.1]:2222"));
        assert!(!matches_host(hashed, "[127.0.0.1]:2223"));
    }

    #[test]
    fn lines() {
        assert!(parse_line("# comment").is_none());
        assert!(parse_line("   ").is_none());
        let e = parse_line("@revoked * ssh-ed25519 AAAA comment").unwrap();
        assert_eq!((e.marker, e.hosts, e.key), (Some("@revoked"), "*", "AAAA"));
        let e = parse_line("host\tssh-rsa\tBBBB").unwrap();
        assert_eq!((e.marker, e.hosts, e.key), (None, "host", "BBBB"));
    }
}
