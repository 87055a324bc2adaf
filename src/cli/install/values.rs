//! The rest of the request's values: files for the installed system, disk-encryption key
//! sources, substitution, and the build on this machine.

use std::path::{Component, Path, PathBuf};

use super::args::{BuildOn, InstallArgs};
use super::error::CliError;
use super::request::*;
use crate::substitute::{CaCertificates, SubstituteError};

/// The ssh store setting nixos-anywhere always starts with (ssh `-C`).
const DEFAULT_STORE_SETTING: (&str, &str) = ("compress", "true");

pub(super) fn chowns(pairs: &[String]) -> Result<Vec<Chown>, CliError> {
    let mut out: Vec<Chown> = Vec::new();
    for pair in pairs.chunks(2) {
        let [path, owner] = pair else {
            unreachable!("clap takes two values each time")
        };
        let bad = |value: &str, reason: &str| CliError::Invalid {
            flag: "--chown",
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let relative = Path::new(path.trim_start_matches('/'));
        if relative.as_os_str().is_empty() {
            return Err(bad(
                path,
                "that is the whole installed system, its store included, which must stay \
                 root's: name the directory to give away",
            ));
        }
        if relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(bad(path, "'..' would leave the installed system"));
        }
        let colons = owner.matches(':').count();
        if owner.is_empty()
            || owner == ":"
            || colons > 1
            || owner.starts_with('-')
            || owner.contains(|c: char| c.is_whitespace() || c == '/' || c.is_control())
        {
            return Err(bad(
                owner,
                "expected an owner as chown takes it: uid:gid (best), user or user:group",
            ));
        }
        let chown = Chown {
            path: relative.to_owned(),
            owner: owner.clone(),
        };
        // Later wins, as in nixos-anywhere's associative array.
        match out.iter_mut().find(|c| c.path == chown.path) {
            Some(earlier) => *earlier = chown,
            None => out.push(chown),
        }
    }
    Ok(out)
}

pub(super) fn encryption_keys(
    pairs: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<Vec<EncryptionKey>, CliError> {
    let mut out: Vec<EncryptionKey> = Vec::new();
    for pair in pairs.chunks(2) {
        let [remote, local] = pair else {
            unreachable!("clap takes two values each time")
        };
        let flag = "--disk-encryption-keys";
        if !remote.is_absolute()
            || remote
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            || remote.as_os_str().as_encoded_bytes().ends_with(b"/")
        {
            return Err(CliError::Path {
                flag,
                path: remote.clone(),
                reason: "the path in the installer must be absolute, name a file and have no \
                         '..', e.g. /tmp/secret.key as the disk layout's keyFile names it"
                    .into(),
            });
        }
        // Only looked at: a pipe given as <(...) must stay unread until its one reading.
        let meta = std::fs::metadata(local).map_err(|e| CliError::Path {
            flag,
            path: local.clone(),
            reason: format!(
                "cannot be used as the key source for {}: {e}",
                remote.display()
            ),
        })?;
        if meta.is_dir() {
            return Err(CliError::Path {
                flag,
                path: local.clone(),
                reason: "is a directory: give the file or pipe that holds the key".into(),
            });
        }
        let key = EncryptionKey {
            remote: remote.clone(),
            local: local.clone(),
        };
        match out.iter_mut().find(|k| k.remote == key.remote) {
            Some(earlier) => {
                warnings.push(format!(
                    "--disk-encryption-keys names {} twice: the last source, {}, is used",
                    key.remote.display(),
                    key.local.display()
                ));
                *earlier = key;
            }
            None => out.push(key),
        }
    }
    Ok(out)
}

pub(super) fn substitution(a: &InstallArgs, source: &Source) -> Result<Substitution, CliError> {
    let split = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let substituters = a.substituters.as_deref().map(split);
    let extra_substituters = split(&a.extra_substituters);
    for url in substituters.iter().flatten().chain(&extra_substituters) {
        check_substituter(url)?;
    }
    let trusted_public_keys = split(&a.trusted_public_keys);
    for key in &trusted_public_keys {
        check_public_key(key)?;
    }
    let ssl_cert_file = match &a.ssl_cert_file {
        None => None,
        Some(file) => Some(CaCertificates::read(file).map_err(|e| CliError::Invalid {
            flag: "--ssl-cert-file",
            value: file.display().to_string(),
            reason: match e {
                SubstituteError::CertFile { reason, .. } => reason,
                other => other.to_string(),
            },
        })?),
    };
    let on_destination = !a.no_substitute_on_destination;
    Ok(Substitution {
        on_destination,
        use_machine_substituters: on_destination
            && !a.no_use_machine_substituters
            && matches!(source, Source::Flake { .. }),
        substituters,
        extra_substituters,
        trusted_public_keys,
        ssl_cert_file,
    })
}

/// A cache the agent can use: an HTTP(S) binary cache, or a local store (`/`, `file://...`,
/// as nixos-images' installer names its own).
fn check_substituter(url: &str) -> Result<(), CliError> {
    let bad = |reason: &str| CliError::Invalid {
        flag: "--substituters",
        value: url.to_owned(),
        reason: reason.to_owned(),
    };
    if url.starts_with('/') {
        return Ok(());
    }
    match url.split_once("://") {
        Some(("http" | "https", rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            if host.is_empty() {
                return Err(bad("the URL names no host"));
            }
            Ok(())
        }
        Some(("file", rest)) if rest.starts_with('/') => Ok(()),
        _ => Err(bad(
            "expected an http:// or https:// binary cache, or a local store (an absolute \
             path or file:///path)",
        )),
    }
}

/// `NAME:BASE64` of a 32-byte ed25519 public key, as `nix-store --generate-binary-cache-key`
/// writes it.
fn check_public_key(key: &str) -> Result<(), CliError> {
    let bad = |reason: &str| CliError::Invalid {
        flag: "--trusted-public-keys",
        value: key.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, b64) = key
        .split_once(':')
        .ok_or_else(|| bad("expected NAME:BASE64, e.g. cache.nixos.org-1:6NCH...="))?;
    if name.is_empty() {
        return Err(bad("the key's name before ':' is empty"));
    }
    match data_encoding::BASE64.decode(b64.as_bytes()) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        Ok(_) => Err(bad("not an ed25519 public key (32 bytes)")),
        Err(_) => Err(bad("the part after ':' is not base64")),
    }
}

pub(super) fn build(a: &InstallArgs, on: BuildOn) -> Result<Build, CliError> {
    let pairs = |flag: &'static str, pairs: &[String], forbidden: &[char]| {
        pairs
            .chunks(2)
            .map(|p| {
                let [key, value] = p else {
                    unreachable!("clap takes two values each time")
                };
                if key.is_empty() || key.contains(|c: char| c.is_whitespace()) {
                    return Err(CliError::Invalid {
                        flag,
                        value: key.clone(),
                        reason: "the key is empty or contains a space".into(),
                    });
                }
                if key.contains(forbidden) || value.contains(forbidden) {
                    return Err(CliError::Invalid {
                        flag,
                        value: format!("{key} {value}"),
                        reason: "'&', '=', '#' and spaces in a store URI setting must be \
                                 URI-encoded (%26, %3D, %23, %20)"
                            .into(),
                    });
                }
                Ok(KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let nix_options = pairs("--option", &a.option, &[])?;
    let mut ssh_store_settings = vec![KeyValue {
        key: DEFAULT_STORE_SETTING.0.into(),
        value: DEFAULT_STORE_SETTING.1.into(),
    }];
    ssh_store_settings.extend(pairs(
        "--ssh-store-setting",
        &a.ssh_store_setting,
        &['&', '=', '#', ' '],
    )?);
    if let Some(from) = &a.from
        && from.trim().is_empty()
    {
        return Err(CliError::Invalid {
            flag: "--from",
            value: from.clone(),
            reason: "expected a Nix store URI, e.g. file:///cache or ssh://builder".into(),
        });
    }
    Ok(Build {
        on,
        from: a.from.clone(),
        nix_options,
        print_build_logs: a.print_build_logs || a.debug,
        show_trace: a.show_trace,
        ssh_store_settings,
    })
}
