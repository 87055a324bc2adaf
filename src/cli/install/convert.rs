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
use std::path::{Path, PathBuf};

use super::args::{BuildOn, DiskoMode, InstallArgs};
use super::error::CliError;
use super::keys::Secret;
use super::request::*;
use super::target::{hardware_config, kexec_image, target};
use super::values::{build, chowns, encryption_keys, substitution};
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
            new_host_key: a.accept_new_host_key_after_kexec,
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
    warn(
        !phases.contains(&Phase::Kexec) && a.accept_new_host_key_after_kexec,
        "--accept-new-host-key-after-kexec",
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
pub(super) enum Kind {
    File,
    Directory,
    Executable,
    Any,
}

/// `path` made canonical, if it exists and is of the kind asked for.
pub(super) fn existing(path: &Path, flag: &'static str, kind: Kind) -> Result<PathBuf, CliError> {
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
