//! The kexec phase: another Linux becomes a NixOS installer running from RAM, without boot
//! media, as nixos-anywhere does it and with the same nixos-images tarballs. The tarball is
//! unpacked in the login user's `~/kexec`, and its own `kexec/run` is started under
//! `setsid --wait`: it carries the authorized keys, the host keys and the network over.
//! Success is its marker line.
//!
//! Unlike nixos-anywhere, it first asks the kernel whether it would load another kernel at all
//! (`kexec_load_disabled`, Secure Boot lockdown), and whether the image fits in memory; a
//! refusal changes nothing. Afterwards the run waits for the old system to go away and comes
//! back as root within a deadline. The host key must be the one pinned before, and the boot
//! must be a new one.

mod back;
mod image;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use back::{reconnect, wait_gone};
use image::{Image, check_memory, check_tools, fetch_and_unpack, kexec_dir};

use crate::cli::install::{Kexec, KexecImage, Reconnect, TarFormat};
use crate::facts::Facts;
use crate::plan::{Outcome, StepRecord};
use crate::ssh::{HostKeyPin, Session, SshError, SshOptions, Target, shell_quote};

/// nixos-anywhere's default image: this release of nixos-images, for the target's CPU.
pub const DEFAULT_RELEASE: &str = "nixos-25.11";
/// The line nixos-images' `kexec/run` prints once the installer's kernel is loaded.
const MARKER: &str = "machine will boot into nixos";
pub(super) const MIB: u64 = 1 << 20;
/// Memory the installer needs besides its kernel and unpacked initrd: its own processes, the
/// agent, the page cache of an install.
pub(super) const RUN_HEADROOM: u64 = 128 * MIB;
/// What is kept of `kexec/run`'s output for messages.
const LOG_KEEP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error(
        "{host}: kexec is switched off until the next boot (/proc/sys/kernel/kexec_load_disabled \
         is 1); nothing was changed: reboot the machine without that setting, or boot it into \
         a NixOS installer"
    )]
    LoadDisabled { host: String },
    #[error(
        "{host}: the kernel is locked down ({mode}, as with Secure Boot) and loads only kernels \
         signed with a key it trusts; nothing was changed: turn Secure Boot off in the \
         firmware, or boot the machine into a NixOS installer"
    )]
    Lockdown { host: String, mode: String },
    #[error(
        "{host} lacks {missing}, which the kexec needs; nothing was changed: install them \
         (util-linux's setsid has --wait), or boot the machine into a NixOS installer"
    )]
    MissingTools { host: String, missing: String },
    #[error(
        "nixos-images has no kexec installer for {arch} (only x86_64 and aarch64); give one \
         with --kexec"
    )]
    NoImageFor { arch: String },
    #[error("reading the kexec image {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "downloading {url}: the target could not ({on_target}), nor could this machine ({here})"
    )]
    Download {
        url: String,
        on_target: String,
        here: String,
    },
    #[error(
        "{host}: unpacking the kexec image failed ({status}); the unpacked files were removed:\n{output}"
    )]
    Unpack {
        host: String,
        status: String,
        output: String,
    },
    #[error(
        "{host}: the kexec image has no kexec/run (it holds: {listing}); nothing was booted and \
         the unpacked files were removed: an image for nixos-anywhere has one top-level \
         directory kexec/ with run, bzImage and initrd, as nixos-images builds it"
    )]
    NotKexecImage { host: String, listing: String },
    #[error(
        "{host} has {total} MiB of memory, {available} MiB of it available; the installer image \
         needs about {needed} MiB (kernel {kernel} MiB, initrd {initrd} MiB twice while it \
         unpacks, {headroom} MiB to run) and {needed_now} MiB available to be loaded. Nothing \
         was booted and the unpacked files were removed: use a smaller image, or a machine \
         with more memory",
        headroom = RUN_HEADROOM / MIB
    )]
    Memory {
        host: String,
        total: u64,
        available: u64,
        needed: u64,
        needed_now: u64,
        kernel: u64,
        initrd: u64,
    },
    #[error(
        "{host}: kexec/run did not load the installer ({status}); the machine was not rebooted. Its log:\n{log}"
    )]
    RunFailed {
        host: String,
        status: String,
        log: String,
    },
    #[error(
        "{host} did not go down within {secs} s of kexec/run's success (its boot id is still \
         the old one); the kexec did not take: look at the machine's console. The kexec log:\n{log}"
    )]
    StillUp {
        host: String,
        secs: u64,
        log: String,
    },
    #[error(
        "{target}: after kexec the machine presents the host key {seen}, not {pinned}, which it \
         had before; the run stopped before any disk was touched. An installer that carries \
         the host keys over (nixos-images' does) keeps the key; if yours does not and you \
         trust the network to this machine, pass --accept-new-host-key-after-kexec"
    )]
    HostKeyChanged {
        target: String,
        pinned: String,
        seen: String,
    },
    #[error(
        "{target} did not answer as the installer within {secs} s of the kexec (last: {last}). \
         If the installer comes up at another address or port, give it with \
         --post-kexec-ssh-host and --post-kexec-ssh-port (--kexec-deadline waits longer); \
         else look at the machine's console. The kexec log:\n{log}"
    )]
    NotBack {
        target: String,
        secs: u64,
        last: String,
        log: String,
    },
    #[error(
        "{target}: the installer refused root's login after kexec ({source}); its kexec/run \
         should have carried the authorized keys over. The kexec log:\n{log}"
    )]
    Refused {
        target: String,
        source: Box<SshError>,
        log: String,
    },
    #[error(
        "{target}: after kexec the machine runs {os}, not a NixOS installer: the kexec did not \
         take. The kexec log:\n{log}"
    )]
    NotInstaller {
        target: String,
        os: String,
        log: String,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// nixos-anywhere's default tarball for a CPU, as `uname -m` names it.
pub fn default_image_url(arch: &str) -> Option<String> {
    matches!(arch, "x86_64" | "aarch64").then(|| {
        format!(
            "https://github.com/nix-community/nixos-images/releases/download/{DEFAULT_RELEASE}/\
             nixos-kexec-installer-noninteractive-{arch}-linux.tar.gz"
        )
    })
}

/// The machine after the kexec: a session to the installer, as root.
pub struct Installer {
    pub session: Session,
    pub target: Target,
    pub opts: SshOptions,
    pub pin: HostKeyPin,
    /// `kexec/run`'s output, for the message if the machine is not an installer after all.
    pub log: String,
}

/// Times a step and hands its record to `step` once it ends.
struct Steps<'a> {
    step: &'a mut dyn FnMut(StepRecord),
}

impl Steps<'_> {
    fn done(&mut self, description: String, started: Instant) {
        (self.step)(StepRecord {
            description,
            outcome: Outcome::Ran,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}

/// Boots the installer with `kexec` on the machine `session` is logged into (whose `facts`
/// were just gathered, and whose agent has finished), and logs into it as root.
pub async fn boot_installer(
    session: Session,
    (target, opts, pin): (&Target, &SshOptions, &HostKeyPin),
    facts: &Facts,
    kexec: &Kexec,
    after: &Reconnect,
    step: &mut dyn FnMut(StepRecord),
) -> Result<Installer, KexecError> {
    let mut steps = Steps { step };
    let host = target.to_string();
    let started = Instant::now();
    refuse_early(facts, &host)?;
    let image = match &kexec.image {
        KexecImage::Default => {
            let url = default_image_url(&facts.arch).ok_or_else(|| KexecError::NoImageFor {
                arch: facts.arch.clone(),
            })?;
            Image::Url {
                format: TarFormat::from_name(&url),
                url,
            }
        }
        KexecImage::File { path, format } => Image::File {
            path: path.clone(),
            format: *format,
        },
        KexecImage::Url { url, format } => Image::Url {
            url: url.clone(),
            format: *format,
        },
    };
    check_tools(&session, &host, &image).await?;
    let dir = kexec_dir(&session, &target.user).await?;
    steps.done(
        format!(
            "{host}: kexec is not switched off nor locked down (kernel {}, {} MiB of memory); \
             the image goes to {dir}",
            facts.kernel,
            facts.memory.total_bytes / MIB
        ),
        started,
    );

    let started = Instant::now();
    let unpacked = fetch_and_unpack(&session, &host, &dir, &image).await?;
    check_memory(&session, &host, &dir, facts, &unpacked).await?;
    steps.done(
        format!(
            "unpacked the installer {} (kernel {} MiB, initrd {} MiB; {} MiB of memory \
             available after it)",
            image.name(),
            unpacked.kernel / MIB,
            unpacked.initrd / MIB,
            unpacked.available / MIB
        ),
        started,
    );

    let started = Instant::now();
    let log = run_kexec(&session, &host, &dir, &kexec.extra_flags).await?;
    steps.done("kexec/run loaded the installer".into(), started);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(kexec.deadline_secs);
    wait_gone(&session, &host, &facts.boot_id, deadline, &log).await?;
    drop(session);
    steps.done(format!("{host} went down into the kexec"), started);

    let started = Instant::now();
    let target = Target {
        user: after.user.clone(),
        host: after.host.clone(),
        port: after.port.unwrap_or(target.port),
    };
    // A new pin only when the user said the key may change: the jump hosts' pins go with it.
    let pin = if kexec.new_host_key {
        HostKeyPin::new()
    } else {
        pin.clone()
    };
    let session = reconnect(
        &target,
        opts,
        &pin,
        &facts.boot_id,
        (deadline, kexec.deadline_secs),
        &log,
    )
    .await?;
    steps.done(
        format!(
            "{target} answers as root, host key {}",
            pin.fingerprint().unwrap_or_default()
        ),
        started,
    );
    Ok(Installer {
        session,
        target,
        opts: opts.clone(),
        pin,
        log,
    })
}

/// What the kernel says before anything is written.
fn refuse_early(facts: &Facts, host: &str) -> Result<(), KexecError> {
    if facts.kexec.load_disabled {
        return Err(KexecError::LoadDisabled { host: host.into() });
    }
    if let Some(mode) = &facts.kexec.lockdown {
        return Err(KexecError::Lockdown {
            host: host.into(),
            mode: mode.clone(),
        });
    }
    Ok(())
}

/// Runs the tarball's `kexec/run` as nixos-anywhere does, its output shown as it comes and
/// kept in `nixos-anywhere.log` beside it; returns that output once the marker was seen.
async fn run_kexec(
    session: &Session,
    host: &str,
    dir: &str,
    extra_flags: &str,
) -> Result<String, KexecError> {
    let command = format!(
        "cd {d} && TMPDIR={d} setsid --wait {d}/kexec/run --kexec-extra-flags {flags} 2>&1 | \
         tee {d}/nixos-anywhere.log",
        d = shell_quote(dir),
        flags = shell_quote(extra_flags),
    );
    let crate::ssh::Exec {
        stdin,
        mut stdout,
        exit,
    } = session.exec(&command).await?;
    drop(stdin);
    let mut log = String::new();
    let mut line = Vec::new();
    while let Some(chunk) = stdout.next_chunk().await {
        for &byte in chunk.iter() {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            eprintln!("    | {text}");
            log.push_str(&text);
            log.push('\n');
            line.clear();
        }
        if log.len() > LOG_KEEP {
            let cut = log.len() - LOG_KEEP;
            let cut = (cut..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(cut);
            log.drain(..cut);
        }
    }
    if !line.is_empty() {
        log.push_str(&String::from_utf8_lossy(&line));
    }
    // The connection may go down with the machine: the marker alone tells success.
    let status = match exit.wait().await {
        Ok(info) => info.describe(),
        Err(e) => e.to_string(),
    };
    if log.contains(MARKER) {
        Ok(log)
    } else {
        Err(KexecError::RunFailed {
            host: host.into(),
            status,
            log: log.trim_end().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_image_is_nixos_anywheres() {
        assert_eq!(
            default_image_url("x86_64").as_deref(),
            Some(
                "https://github.com/nix-community/nixos-images/releases/download/nixos-25.11/\
                 nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
            )
        );
        assert!(
            default_image_url("aarch64")
                .unwrap()
                .ends_with("-aarch64-linux.tar.gz")
        );
        assert_eq!(default_image_url("riscv64"), None);
    }
}
