//! The install: nixos-anywhere's phases (kexec, disko, install, reboot), each planned when the
//! run reaches it, from the target's facts as they are then (a kexec changes them; the install
//! needs the `/mnt` the disk phase made). What can be said before the run starts is the
//! [`RunPlan`]: the phases in order and what each will decide on, which `--dry-run` prints.

use std::fmt;

use serde::Serialize;

use crate::cli::install::{BuildOn, InstallRequest, KexecImage, Phase, Source};

/// The phases of a run in order, each with what is known of it before the run.
#[derive(Debug, Serialize)]
pub struct RunPlan<'r> {
    pub request: &'r InstallRequest,
    pub phases: Vec<PhasePlan>,
}

#[derive(Debug, Serialize)]
pub struct PhasePlan {
    pub phase: Phase,
    /// What the phase will do, as far as the request says.
    pub does: String,
    /// What it decides when the run reaches it, from the facts it finds then.
    pub decides_then: String,
}

impl<'r> RunPlan<'r> {
    pub fn new(request: &'r InstallRequest) -> Self {
        let phases = request
            .phases
            .iter()
            .map(|&phase| PhasePlan {
                phase,
                does: does(request, phase),
                decides_then: decides_then(request, phase),
            })
            .collect();
        Self { request, phases }
    }
}

fn does(request: &InstallRequest, phase: Phase) -> String {
    match phase {
        Phase::Kexec => {
            let image = match &request.kexec.image {
                KexecImage::Default => format!(
                    "nixos-images' {} kexec installer for the target's CPU, downloaded by the \
                     target (else here)",
                    crate::run::kexec::DEFAULT_RELEASE
                ),
                KexecImage::File { path, .. } => {
                    format!("the kexec image {}, streamed up", path.display())
                }
                KexecImage::Url { url, .. } => {
                    format!("the kexec image {url}, downloaded by the target (else here)")
                }
            };
            let host = request
                .target
                .as_ref()
                .map(|t| {
                    let after = &t.after_kexec;
                    match after.port {
                        Some(port) => format!("{}@{}:{port}", after.user, after.host),
                        None => format!("{}@{}", after.user, after.host),
                    }
                })
                .unwrap_or_else(|| "root".into());
            format!(
                "check that the kernel may kexec and the image fits in memory, boot the \
                 installer with {image}, then log in as {host} with the same host key within {} s",
                request.kexec.deadline_secs
            )
        }
        Phase::Disko => format!(
            "write the {} disk-encryption key(s), then run the layout in mode {}",
            request.disk_encryption_keys.len(),
            serde_json::to_string(&request.disko.mode).unwrap_or_default()
        ),
        Phase::Install => {
            let (system, on) = match &request.source {
                Source::Flake { flake, attr } => (
                    format!("{flake}#{attr}.system.build.toplevel"),
                    request.build.on,
                ),
                Source::StorePaths { system, .. } => (system.to_string(), BuildOn::Local),
            };
            let closure = match on {
                BuildOn::Remote => {
                    format!("build {system} with the target's Nix into /mnt (--build-on remote)")
                }
                BuildOn::Local => format!("stream the closure of {system} into /mnt"),
                BuildOn::Auto => format!(
                    "stream the closure of {system} into /mnt, or build it with the target's \
                     Nix if this machine cannot build for its platform (--build-on auto)"
                ),
            };
            format!(
                "{closure}, then what nixos-install does and the system's own switch-to-configuration boot"
            )
        }
        Phase::Reboot => format!(
            "unmount, export pools, reboot, and wait up to {} s for the installed system",
            request.reboot_deadline_secs
        ),
    }
}

fn decides_then(request: &InstallRequest, phase: Phase) -> String {
    match phase {
        Phase::Kexec if request.kexec.force => "nothing: --force-kexec".into(),
        Phase::Kexec => {
            "skipped if the target already runs a NixOS installer (its os-release)".into()
        }
        Phase::Disko => {
            "which physical disk each layout disk is, and which steps are done already".into()
        }
        Phase::Install => "which store paths /mnt lacks; only those are sent".into(),
        Phase::Reboot => {
            "whether the system that comes back runs the toplevel that was installed".into()
        }
    }
}

impl fmt::Display for RunPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self
            .request
            .target
            .as_ref()
            .map_or("(no target)", |t| t.destination.as_str());
        writeln!(f, "install on {target}, in {} phase(s):", self.phases.len())?;
        for (i, p) in self.phases.iter().enumerate() {
            writeln!(f, "  {}. {}: {}", i + 1, p.phase, p.does)?;
            writeln!(f, "     decided then: {}", p.decides_then)?;
        }
        for warning in &self.request.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}
