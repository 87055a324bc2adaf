//! The target's half of the request: where and how to connect, before and after kexec, the
//! kexec tarball, and the hardware configuration written back from the target.

use std::path::Path;

use super::args::InstallArgs;
use super::convert::{Environment, Kind, existing};
use super::error::CliError;
use super::keys::Secret;
use super::request::*;
use crate::ssh::{SshOptions, Target};

pub(super) fn target(a: &InstallArgs, env: &Environment) -> Result<Option<SshSettings>, CliError> {
    let mut hosts = a.target_host.iter().chain(&a.ssh_host);
    let Some(destination) = hosts.next() else {
        return Ok(None);
    };
    if let Some(second) = hosts.next() {
        return Err(CliError::SecondHost {
            first: destination.clone(),
            second: second.clone(),
        });
    }
    let parsed = Target::parse(destination).map_err(|source| CliError::Ssh {
        flag: "<SSH-HOST>",
        source: Box::new(source),
    })?;
    let without_scheme = destination.strip_prefix("ssh://").unwrap_or(destination);
    let user = without_scheme.rsplit_once('@').map(|(u, _)| u.to_owned());
    let given_port = destination_port(without_scheme);
    let port = given_port.or(a.ssh_port);

    // Every option must mean something before anything connects.
    let mut scratch = SshOptions::default();
    for option in &a.ssh_option {
        scratch.set_option(option).map_err(|source| CliError::Ssh {
            flag: "--ssh-option",
            source: Box::new(source),
        })?;
    }
    let config_file = a
        .ssh_config
        .as_deref()
        .map(|f| existing(f, "-F", Kind::File))
        .transpose()?;
    let identity_files = a
        .identity
        .iter()
        .map(|k| existing(k, "-i", Kind::File))
        .collect::<Result<Vec<_>, _>>()?;
    let password = if a.env_password {
        Some(env_password(env)?)
    } else {
        None
    };
    let private_key = if identity_files.is_empty() {
        env.ssh_private_key
            .as_ref()
            .map(|k| Secret::new(k.expose().to_vec()))
    } else {
        None
    };
    let after_kexec = Reconnect {
        user: "root".into(),
        host: match &a.post_kexec_ssh_host {
            Some(h) => post_kexec_host(h)?,
            None => parsed.host.clone(),
        },
        port: a
            .post_kexec_ssh_port
            .or(a.ssh_port.map(|_| crate::ssh::DEFAULT_PORT)),
    };
    Ok(Some(SshSettings {
        destination: destination.clone(),
        user,
        host: parsed.host,
        port,
        options: a.ssh_option.clone(),
        config_file,
        identity_files,
        private_key,
        password,
        connect_deadline_secs: a.connect_deadline.as_secs(),
        after_kexec,
    }))
}

fn env_password(env: &Environment) -> Result<Secret, CliError> {
    env.sshpass
        .as_ref()
        .map(|p| Secret::new(p.expose().to_vec()))
        .ok_or(CliError::Missing {
            what: "--env-password: the environment variable SSHPASS is not set",
            hint: "export SSHPASS with the login's password (never as an argument), or drop \
                   --env-password to log in with a key",
        })
}

/// The port written in the destination itself (`host:2222`, `[::1]:2222`), if any.
fn destination_port(without_scheme: &str) -> Option<u16> {
    let hostport = without_scheme
        .strip_suffix('/')
        .unwrap_or(without_scheme)
        .rsplit_once('@')
        .map_or(without_scheme, |(_, h)| h);
    let port = match hostport.strip_prefix('[') {
        Some(rest) => rest.split_once("]:")?.1,
        None if hostport.matches(':').count() == 1 => hostport.split_once(':')?.1,
        None => return None,
    };
    port.parse().ok()
}

/// `--post-kexec-ssh-host`: a host name or address, an IPv6 one possibly with its zone
/// (`fe80::1%eth0`, nixos-anywhere PR #627's case), in brackets or not; no user, no port.
fn post_kexec_host(text: &str) -> Result<String, CliError> {
    let bad = |reason: &str| CliError::Invalid {
        flag: "--post-kexec-ssh-host",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    if text.contains('@') {
        return Err(bad(
            "give the host alone: after kexec the login is always root",
        ));
    }
    let host = match text.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| bad("give the host alone, the port with --post-kexec-ssh-port"))?,
        None if text.matches(':').count() == 1 => {
            return Err(bad(
                "give the host alone, the port with --post-kexec-ssh-port",
            ));
        }
        None => text,
    };
    let parsed = Target::parse(host).map_err(|source| CliError::Ssh {
        flag: "--post-kexec-ssh-host",
        source: Box::new(source),
    })?;
    Ok(parsed.host)
}

pub(super) fn kexec_image(value: Option<&str>) -> Result<KexecImage, CliError> {
    let Some(value) = value else {
        return Ok(KexecImage::Default);
    };
    let bad = |reason: String| CliError::Invalid {
        flag: "--kexec",
        value: value.to_owned(),
        reason,
    };
    if let Some((scheme, rest)) = value.split_once("://") {
        if !matches!(scheme, "http" | "https") {
            return Err(bad(format!(
                "{scheme}:// is not supported: give an http:// or https:// URL, or a local file"
            )));
        }
        let without_query = rest.split(['?', '#']).next().unwrap_or(rest);
        let Some((host, path)) = without_query.split_once('/') else {
            return Err(bad("the URL names no file".into()));
        };
        if host.is_empty() || path.is_empty() {
            return Err(bad("the URL names no host or no file".into()));
        }
        return Ok(KexecImage::Url {
            url: value.to_owned(),
            format: TarFormat::from_name(without_query),
        });
    }
    let path = existing(Path::new(value), "--kexec", Kind::File)
        .map_err(|_| bad("is neither an existing file nor an http(s):// URL".into()))?;
    let format = TarFormat::from_name(value);
    Ok(KexecImage::File { path, format })
}

pub(super) fn hardware_config(
    values: Option<&[String]>,
) -> Result<Option<HardwareConfig>, CliError> {
    let Some([backend, path]) = values else {
        return Ok(None);
    };
    let backend = match backend.as_str() {
        "nixos-facter" => HardwareBackend::NixosFacter,
        "nixos-generate-config" => HardwareBackend::NixosGenerateConfig,
        other => {
            return Err(CliError::Invalid {
                flag: "--generate-hardware-config",
                value: other.to_owned(),
                reason: "unknown backend: use nixos-facter or nixos-generate-config".into(),
            });
        }
    };
    let path = Path::new(path);
    if path.as_os_str().is_empty() || path.is_dir() {
        return Err(CliError::Path {
            flag: "--generate-hardware-config",
            path: path.to_owned(),
            reason: "must name a file to write (it is a directory or empty)".into(),
        });
    }
    let path = std::path::absolute(path).map_err(|e| CliError::Path {
        flag: "--generate-hardware-config",
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Some(HardwareConfig { backend, path }))
}
