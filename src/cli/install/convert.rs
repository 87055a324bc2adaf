//! From the flags to an [`InstallRequest`]: every value checked, every combination that
//! nixos-anywhere refuses refused here too, before anything runs. Files named on the command
//! line are checked to exist (as nixos-anywhere does for `--store-paths`, and should for the
//! rest) but never read, except the first bytes of a `--store-paths` layout, to tell a disko
//! script from a JSON file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::args::{BuildOn, DiskoMode, InstallArgs};
use super::error::CliError;
use super::keys::Secret;
use super::request::*;
use crate::ssh::{SshOptions, Target};
use crate::store::{STORE_DIR, StorePath};

/// What the install reads from the environment, captured once so that the conversion itself is
/// a plain function of its inputs.
#[derive(Debug, Default)]
pub struct Environment {
    /// `SSHPASS`.
    pub sshpass: Option<Secret>,
    /// `SSH_PRIVATE_KEY`.
    pub ssh_private_key: Option<Secret>,
    /// `NIXOS_NO_CHECK`, even when set to the empty string.
    pub nixos_no_check: Option<String>,
}

impl Environment {
    /// Reads the variables of this process. Empty `SSHPASS` and `SSH_PRIVATE_KEY` count as
    /// unset, as in nixos-anywhere (`[[ -n ... ]]`).
    pub fn from_process() -> Self {
        // As bytes: a password need not be UTF-8, and a copy in a `String` would not be wiped.
        let secret = |name| {
            std::env::var_os(name)
                .map(OsStringExt::into_vec)
                .filter(|v| !v.is_empty())
                .map(Secret::new)
        };
        Self {
            sshpass: secret("SSHPASS"),
            // Key text of spaces and newlines only is no key (as the SSH layer reads it).
            ssh_private_key: secret("SSH_PRIVATE_KEY")
                .filter(|k| !k.expose().iter().all(u8::is_ascii_whitespace)),
            nixos_no_check: std::env::var("NIXOS_NO_CHECK").ok(),
        }
    }
}

/// The ssh store setting nixos-anywhere always starts with (ssh `-C`).
const DEFAULT_STORE_SETTING: (&str, &str) = ("compress", "true");

impl InstallArgs {
    /// Checks the flags against each other and `env`, and turns them into a request.
    pub fn into_request(self, env: Environment) -> Result<InstallRequest, CliError> {
        let mut warnings = Vec::new();
        let a = self;

        if a.tty {
            warnings.push("the --tty flag is deprecated: a terminal is detected by itself".into());
        }
        let phases = phases(&a, &mut warnings)?;

        // Checked before the source, as nixos-anywhere does.
        if a.disko_mode.is_some() && a.store_paths.is_some() {
            return Err(CliError::Conflict {
                first: "--disko-mode",
                second: "--store-paths",
                hint: "a disko script given as a store path runs as it was built; build the \
                       mode's own script (config.system.build.formatScript, mountScript, ...) \
                       and give that",
            });
        }
        let build_on = build_on(&a, &mut warnings)?;
        let source = source(&a)?;
        if a.vm_test {
            vm_test_conflicts(&a, &source, build_on)?;
        }
        let target = target(&a, &env)?;
        if target.is_none() && !a.vm_test {
            return Err(CliError::Missing {
                what: "no target host",
                hint: "give [user@]host (or --target-host HOST); only --vm-test runs without one",
            });
        }
        let kexec = Kexec {
            image: kexec_image(a.kexec.as_deref())?,
            force: a.force_kexec,
            extra_flags: a.kexec_extra_flags.clone().unwrap_or_default(),
            deadline_secs: a.kexec_deadline.as_secs(),
        };
        let hardware_config = hardware_config(a.generate_hardware_config.as_deref())?;
        let extra_files = a
            .extra_files
            .as_deref()
            .map(|dir| existing(dir, "--extra-files", Kind::Directory))
            .transpose()?;
        let chown = chowns(&a.chown)?;
        let disk_encryption_keys = encryption_keys(&a.disk_encryption_keys, &mut warnings)?;
        let substitution = substitution(&a, &source)?;
        let build = build(&a, build_on)?;
        let agent = a
            .agent
            .as_deref()
            .map(|p| existing(p, "--agent", Kind::Executable))
            .transpose()?;

        no_effect_warnings(&a, &phases, &source, build_on, &mut warnings);

        Ok(InstallRequest {
            vm_test: a.vm_test,
            source,
            phases,
            disko: Disko {
                mode: a.disko_mode.unwrap_or(DiskoMode::Disko),
                deps: !a.no_disko_deps,
            },
            target,
            kexec,
            hardware_config,
            disk_encryption_keys,
            extra_files,
            chown,
            copy_host_keys: a.copy_host_keys,
            substitution,
            build,
            nixos_no_check: env.nixos_no_check,
            reboot_deadline_secs: a.reboot_deadline.as_secs(),
            output: Output {
                debug: a.debug,
                dry_run: a.dry_run,
                json: a.json,
            },
            agent,
            warnings,
        })
    }
}

fn phases(a: &InstallArgs, warnings: &mut Vec<String>) -> Result<BTreeSet<Phase>, CliError> {
    use Phase::*;
    let deprecated = [
        (
            a.stop_after_disko,
            "--stop-after-disko",
            "kexec,disko",
            &[Kexec, Disko][..],
        ),
        (
            a.no_reboot,
            "--no-reboot",
            "kexec,disko,install",
            &[Kexec, Disko, Install][..],
        ),
    ];
    let used: Vec<_> = deprecated.iter().filter(|d| d.0).collect();
    if let [first, second] = used[..] {
        return Err(CliError::Conflict {
            first: first.1,
            second: second.1,
            hint: "both are deprecated: say which phases to run with --phases",
        });
    }
    if let Some(&&(_, flag, replacement, set)) = used.first() {
        if a.phases.is_some() {
            return Err(CliError::Conflict {
                first: flag,
                second: "--phases",
                hint: "the deprecated flag only stands for a --phases list: use --phases alone",
            });
        }
        warnings.push(format!(
            "{flag} is deprecated, use --phases {replacement} instead"
        ));
        return Ok(set.iter().copied().collect());
    }
    let Some(list) = &a.phases else {
        return Ok(Phase::ALL.into_iter().collect());
    };
    let mut set = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let phase = name.parse().map_err(|()| CliError::UnknownPhase {
            phase: name.to_owned(),
        })?;
        set.insert(phase);
    }
    if set.is_empty() {
        return Err(CliError::Invalid {
            flag: "--phases",
            value: list.clone(),
            reason: "no phase named: give some of kexec,disko,install,reboot".into(),
        });
    }
    Ok(set)
}

fn build_on(a: &InstallArgs, warnings: &mut Vec<String>) -> Result<BuildOn, CliError> {
    if !a.build_on_remote {
        return Ok(a.build_on.unwrap_or(BuildOn::Auto));
    }
    warnings.push("--build-on-remote is deprecated, use --build-on remote instead".into());
    if a.build_on == Some(BuildOn::Local) {
        return Err(CliError::Conflict {
            first: "--build-on local",
            second: "--build-on-remote",
            hint: "say where to build once, with --build-on",
        });
    }
    Ok(BuildOn::Remote)
}

fn source(a: &InstallArgs) -> Result<Source, CliError> {
    match (&a.flake, &a.store_paths) {
        (Some(_), Some(_)) => Err(CliError::Conflict {
            first: "--flake",
            second: "--store-paths",
            hint: "install either a flake's configuration or store paths built already",
        }),
        (None, None) if a.vm_test => Err(CliError::Missing {
            what: "--vm-test needs --flake",
            hint: "the VM test is built from the configuration: give --flake FLAKE#NAME",
        }),
        (None, None) => Err(CliError::Missing {
            what: "nothing to install",
            hint: "give --flake FLAKE#NAME, or --store-paths DISKO SYSTEM",
        }),
        (Some(flake), None) => parse_flake(flake),
        (None, Some(paths)) => store_paths(&paths[0], &paths[1]),
    }
}

/// `FLAKE#NAME` as nixos-anywhere splits it (`^(.*)#([^#"]*)$`): the fragment after the last
/// `#`; a bare name means `nixosConfigurations."NAME".config`, a fragment that starts with
/// `nixosConfigurations.` is used as given.
pub fn parse_flake(text: &str) -> Result<Source, CliError> {
    let bad = |reason: &str| CliError::Invalid {
        flag: "--flake",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((flake, fragment)) = text.rsplit_once('#') else {
        return Err(bad(
            "it names no configuration: append #NAME for nixosConfigurations.NAME, \
             e.g. --flake .#mymachine",
        ));
    };
    if fragment.contains('"') {
        return Err(bad("the name after '#' cannot contain a double quote"));
    }
    if fragment.is_empty() {
        return Err(bad(
            "the name after '#' is empty: append the configuration's name, e.g. .#mymachine",
        ));
    }
    if flake.is_empty() {
        return Err(bad(
            "no flake before '#': use .#NAME for the flake in this directory",
        ));
    }
    let attr = if fragment.starts_with("nixosConfigurations.") {
        fragment.to_owned()
    } else {
        format!("nixosConfigurations.\"{fragment}\".config")
    };
    Ok(Source::Flake {
        flake: flake.to_owned(),
        attr,
    })
}

fn store_paths(layout: &Path, system: &Path) -> Result<Source, CliError> {
    let flag = "--store-paths";
    let layout = existing(layout, flag, Kind::File)?;
    let mut head = [0u8; 64];
    let n = File::open(&layout)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| CliError::Path {
            flag,
            path: layout.clone(),
            reason: format!("cannot be read: {e}"),
        })?;
    let head = &head[..n];
    let layout = if head.starts_with(b"#!") {
        Layout::DiskoScript(layout)
    } else if head.trim_ascii_start().starts_with(b"{") {
        Layout::Json(layout)
    } else {
        return Err(CliError::Path {
            flag,
            path: layout,
            reason: "is neither a disko script (starting with #!) nor a disk layout JSON \
                     file (an object): give config.system.build.diskoScript or the JSON of \
                     config.disko.devices"
                .into(),
        });
    };
    let real = existing(system, flag, Kind::Any)?;
    let system = real
        .to_str()
        .and_then(|r| r.strip_prefix(STORE_DIR))
        .and_then(|r| r.strip_prefix('/'))
        .filter(|base| !base.contains('/'))
        .and_then(|base| StorePath::from_base_name(base).ok())
        .ok_or_else(|| CliError::Path {
            flag,
            path: system.to_owned(),
            reason: format!(
                "is not a store path (it resolves to {}): give the system's toplevel in \
                 {STORE_DIR}, e.g. ./result",
                real.display()
            ),
        })?;
    Ok(Source::StorePaths { layout, system })
}

fn vm_test_conflicts(a: &InstallArgs, source: &Source, build_on: BuildOn) -> Result<(), CliError> {
    let conflict = |second, hint| {
        Err(CliError::Conflict {
            first: "--vm-test",
            second,
            hint,
        })
    };
    if matches!(source, Source::StorePaths { .. }) {
        return conflict(
            "--store-paths",
            "use --flake instead, or build config.system.build.installTest yourself",
        );
    }
    if build_on == BuildOn::Remote {
        return conflict("--build-on remote", "the VM test is built on this machine");
    }
    if a.extra_files.is_some() {
        return conflict(
            "--extra-files",
            "the VM test installs the configuration alone",
        );
    }
    if !a.disk_encryption_keys.is_empty() {
        return conflict(
            "--disk-encryption-keys",
            "the VM test installs the configuration alone",
        );
    }
    if a.generate_hardware_config.is_some() {
        return conflict(
            "--generate-hardware-config",
            "generate the hardware configuration before you run the VM test",
        );
    }
    Ok(())
}

fn target(a: &InstallArgs, env: &Environment) -> Result<Option<SshSettings>, CliError> {
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

fn kexec_image(value: Option<&str>) -> Result<KexecImage, CliError> {
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

fn hardware_config(values: Option<&[String]>) -> Result<Option<HardwareConfig>, CliError> {
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

fn chowns(pairs: &[String]) -> Result<Vec<Chown>, CliError> {
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

fn encryption_keys(
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

fn substitution(a: &InstallArgs, source: &Source) -> Result<Substitution, CliError> {
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
    let on_destination = !a.no_substitute_on_destination;
    Ok(Substitution {
        on_destination,
        use_machine_substituters: on_destination
            && !a.no_use_machine_substituters
            && matches!(source, Source::Flake { .. }),
        substituters,
        extra_substituters,
        trusted_public_keys,
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

fn build(a: &InstallArgs, on: BuildOn) -> Result<Build, CliError> {
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

/// Flags that would silently do nothing with the phases or source chosen.
fn no_effect_warnings(
    a: &InstallArgs,
    phases: &BTreeSet<Phase>,
    source: &Source,
    build_on: BuildOn,
    warnings: &mut Vec<String>,
) {
    let mut warn = |used: bool, flag: &str, why: &str| {
        if used {
            warnings.push(format!("{flag} has no effect {why}"));
        }
    };
    let no_kexec = "without the kexec phase";
    warn(
        !phases.contains(&Phase::Kexec) && a.kexec.is_some(),
        "--kexec",
        no_kexec,
    );
    warn(
        !phases.contains(&Phase::Kexec) && a.force_kexec,
        "--force-kexec",
        no_kexec,
    );
    let no_disko = "without the disko phase";
    warn(
        !phases.contains(&Phase::Disko) && !a.disk_encryption_keys.is_empty(),
        "--disk-encryption-keys",
        no_disko,
    );
    let no_install = "without the install phase";
    warn(
        !phases.contains(&Phase::Install) && a.extra_files.is_some(),
        "--extra-files",
        no_install,
    );
    warn(
        !phases.contains(&Phase::Install) && !a.chown.is_empty(),
        "--chown",
        no_install,
    );
    warn(
        !phases.contains(&Phase::Install) && a.copy_host_keys,
        "--copy-host-keys",
        no_install,
    );
    let store = matches!(source, Source::StorePaths { .. });
    warn(
        store && a.no_disko_deps,
        "--no-disko-deps",
        "with --store-paths (the disko script runs as built)",
    );
    warn(
        store && build_on == BuildOn::Remote,
        "--build-on remote",
        "with --store-paths (they are built already)",
    );
    warn(
        !phases.contains(&Phase::Kexec)
            && (a.post_kexec_ssh_host.is_some() || a.post_kexec_ssh_port.is_some()),
        "--post-kexec-ssh-host/--post-kexec-ssh-port",
        no_kexec,
    );
}

#[derive(Clone, Copy)]
enum Kind {
    File,
    Directory,
    Executable,
    Any,
}

/// `path` made canonical, if it exists and is of the kind asked for.
fn existing(path: &Path, flag: &'static str, kind: Kind) -> Result<PathBuf, CliError> {
    let fail = |reason: String| CliError::Path {
        flag,
        path: path.to_owned(),
        reason,
    };
    let real = std::fs::canonicalize(path).map_err(|e| fail(format!("cannot be used: {e}")))?;
    let meta = std::fs::metadata(&real).map_err(|e| fail(format!("cannot be used: {e}")))?;
    match kind {
        Kind::File | Kind::Executable if !meta.is_file() => Err(fail("is not a file".into())),
        Kind::Directory if !meta.is_dir() => Err(fail("is not a directory".into())),
        Kind::Executable if meta.permissions().mode() & 0o111 == 0 => {
            Err(fail("is not executable".into()))
        }
        _ => Ok(real),
    }
}
