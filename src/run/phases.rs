//! Running an install: everything local first (build, evaluate, read the keys and extra files:
//! a failure there changes nothing on the target), then the target's facts, then each phase in
//! order, each reporting its steps as they end. The result is a [`RunRecord`], which `--json`
//! prints.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::inputs::{self, InputError, Inputs, LayoutInput};
use super::record::{PhaseRecord, RunRecord, announce, from_where, show_step};
use super::remote_build::{RemoteBuild, RemoteBuildError};
use super::wait;
use super::{hardware, kexec};
use crate::cli::install::{
    BuildOn, DiskoMode, InstallRequest, KeyError, KeySources, Phase, SshSettings,
};
use crate::disk::plan::Mode;
use crate::install::InstallSpec;
use crate::install::files::{self, FilesError};
use crate::proto::KeyFile;
use crate::remote::{self, Agent, RemoteError};
use crate::ssh::{
    HostKeyPin, KeyText, Password, Resolver, Session, SshError, SshOptions, Target, shell_quote,
};
use crate::transfer::Compression;

/// Where the installed system is mounted on the installer (disko's `rootMountPoint`).
pub const ROOT: &str = "/mnt";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{phase} phase: {source}")]
    Phase {
        phase: Phase,
        #[source]
        source: RemoteError,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Kexec(#[from] kexec::KexecError),
    #[error(transparent)]
    Hardware(#[from] hardware::HardwareError),
    #[error(transparent)]
    RemoteBuild(#[from] RemoteBuildError),
    #[error(transparent)]
    Wait(#[from] wait::WaitError),
}

/// The target and the SSH options of `settings`, resolved as `ssh` would.
pub fn ssh_target(settings: &SshSettings) -> Result<(Target, SshOptions), SshError> {
    let mut resolver =
        Resolver::from_command_line(settings.config_file.clone(), &settings.identity_files);
    // SSH_PRIVATE_KEY counts only without -i, as in nixos-anywhere (the request says which).
    resolver.base.private_key = settings
        .private_key
        .as_ref()
        .map(|key| KeyText::new(String::from_utf8_lossy(key.expose()).into_owned()));
    let (target, mut opts) =
        resolver.resolve(&settings.options, &[], settings.port, &settings.destination)?;
    if let Some(password) = &settings.password {
        opts.password = Some(Password::new(
            String::from_utf8_lossy(password.expose()).into_owned(),
        ));
    }
    opts.ask_password = std::io::IsTerminal::is_terminal(&std::io::stdin());
    Ok((target, opts))
}

/// Runs the install `request` asks for.
pub async fn run(request: &InstallRequest) -> Result<RunRecord, RunError> {
    let started = Instant::now();
    let settings = request.target.as_ref().expect("an install has a target");
    // Everything from this machine first: a failed build changes nothing on the target. Only a
    // system whose evaluation needs the hardware configuration this run writes is built later.
    let mut prepared = match request.hardware_config {
        None => Some(prepare(request).await?),
        Some(_) => None,
    };
    let keys = if request.phases.contains(&Phase::Disko) {
        KeySources::new().read_all(&request.disk_encryption_keys)?
    } else {
        Vec::new()
    };
    let extra = match &request.extra_files {
        Some(dir) if request.phases.contains(&Phase::Install) => files::read_tree(dir)?,
        _ => Vec::new(),
    };
    let (target, opts) = ssh_target(settings)?;
    let mut record = RunRecord {
        target: target.to_string(),
        system: prepared.as_ref().map(|p| p.system.to_absolute()),
        ..RunRecord::default()
    };
    let pin = HostKeyPin::new();
    let session = wait::connect(&target, &opts, &pin, settings.connect_deadline_secs).await?;
    if let Some(fp) = pin.fingerprint() {
        eprintln!("connected to {target}, host key {fp}");
    }
    let binary = match &request.agent {
        Some(path) => path.clone(),
        None => remote::agent_binary()?,
    };
    let mut agent = remote::start_agent(&session, &binary, opts.patience()).await?;
    let facts = match agent.client.facts().await {
        Ok(facts) => facts,
        Err(e) => return Err(in_phase(Phase::Kexec, agent.abandon(e).await)),
    };
    let kexec = request.phases.contains(&Phase::Kexec);
    let (session, target, opts, pin) = if kexec && (!facts.is_installer || request.kexec.force) {
        agent.finish().await?;
        let (installer, new_agent) = kexec_phase(
            request,
            settings,
            session,
            (&target, &opts, &pin),
            &facts,
            &binary,
            &mut record,
        )
        .await?;
        agent = new_agent;
        (
            installer.session,
            installer.target,
            installer.opts,
            installer.pin,
        )
    } else {
        if kexec {
            announce(
                Phase::Kexec,
                "not needed: the target runs a NixOS installer",
            );
            let mut done = PhaseRecord::new(Phase::Kexec);
            done.ran = false;
            done.note = Some("the target runs a NixOS installer".into());
            record.phases.push(done);
        }
        (session, target, opts, pin)
    };
    if let Some(config) = &request.hardware_config {
        eprintln!(
            "==> hardware configuration: {:?} on {target}",
            config.backend
        );
        let wrote = match hardware::generate(&session, config).await {
            Ok(wrote) => wrote,
            Err(e) => {
                let _ = agent.finish().await;
                return Err(e.into());
            }
        };
        eprintln!("    {wrote}");
        record.hardware_config = Some(wrote);
    }
    let prepared = match prepared.take() {
        Some(prepared) => prepared,
        None => {
            let prepared = prepare(request).await;
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    let _ = agent.finish().await;
                    return Err(e);
                }
            };
            record.system = Some(prepared.system.to_absolute());
            prepared
        }
    };
    let remote = remote_build(request, &prepared, settings, &target, &pin, &session).await?;
    let result = phases(
        request,
        &prepared,
        keys,
        extra,
        (&session, remote.as_ref()),
        &mut agent,
        &target,
        &mut record,
    )
    .await;
    let rebooting = matches!(result, Ok(true));
    match result {
        Ok(_) => {
            // The agent may already be gone with a reboot under way.
            if let Err(e) = agent.finish().await
                && !rebooting
            {
                return Err(e.into());
            }
        }
        Err(e) => {
            return Err(match e {
                RunError::Phase { phase, source } => in_phase(phase, agent.abandon(source).await),
                other => other,
            });
        }
    }
    let _ = session.close().await;
    if rebooting {
        let top = prepared.system.to_absolute();
        let started_wait = Instant::now();
        announce(Phase::Reboot, "waiting for the installed system");
        let verified =
            wait::installed_system(&target, &opts, &pin, &top, request.reboot_deadline_secs)
                .await?;
        if let Some(phase) = record.phases.last_mut() {
            phase.seconds += started_wait.elapsed().as_secs_f64();
        }
        eprintln!("{verified}");
        record.verified = Some(verified);
    }
    record.seconds = started.elapsed().as_secs_f64();
    Ok(record)
}

fn in_phase(phase: Phase, source: RemoteError) -> RunError {
    RunError::Phase { phase, source }
}

/// Builds and evaluates what the request names, on a thread of its own.
async fn prepare(request: &InstallRequest) -> Result<Inputs, RunError> {
    let owned = clone_for_inputs(request);
    Ok(tokio::task::spawn_blocking(move || inputs::prepare(&owned))
        .await
        .expect("preparing the inputs does not panic")?)
}

/// The kexec phase on a machine that is not an installer (or `--force-kexec`): boots the
/// installer, logs into it as root, starts the agent there and checks that it is an installer.
async fn kexec_phase(
    request: &InstallRequest,
    settings: &SshSettings,
    session: Session,
    (target, opts, pin): (&Target, &SshOptions, &HostKeyPin),
    facts: &crate::facts::Facts,
    binary: &Path,
    record: &mut RunRecord,
) -> Result<(kexec::Installer, Agent), RunError> {
    let started = Instant::now();
    let os = facts
        .os
        .pretty_name
        .clone()
        .unwrap_or_else(|| "another Linux".into());
    announce(
        Phase::Kexec,
        &format!("{target} runs {os}: booting a NixOS installer with kexec"),
    );
    if let Some(container) = &facts.container {
        eprintln!("warning: {target} runs in a container ({container}), where kexec fails");
    }
    let mut done = PhaseRecord::new(Phase::Kexec);
    let installer = kexec::boot_installer(
        session,
        (target, opts, pin),
        facts,
        &request.kexec,
        &settings.after_kexec,
        &mut |step| {
            show_step(&step);
            done.steps.push(step);
        },
    )
    .await?;
    let mut agent =
        remote::start_agent(&installer.session, binary, installer.opts.patience()).await?;
    let now = match agent.client.facts().await {
        Ok(facts) => facts,
        Err(e) => return Err(in_phase(Phase::Kexec, agent.abandon(e).await)),
    };
    if !now.is_installer {
        let _ = agent.finish().await;
        return Err(kexec::KexecError::NotInstaller {
            target: installer.target.to_string(),
            os: now.os.pretty_name.unwrap_or_else(|| "another Linux".into()),
            log: installer.log,
        }
        .into());
    }
    done.note = Some(format!(
        "{os} became {} ({} MiB of memory, {} MiB available)",
        now.os.pretty_name.as_deref().unwrap_or("a NixOS installer"),
        now.memory.total_bytes >> 20,
        now.memory.available_bytes >> 20
    ));
    done.seconds = started.elapsed().as_secs_f64();
    record.phases.push(done);
    Ok((installer, agent))
}

/// When the system is built on the target (`--build-on remote`, or `auto` for a platform this
/// machine cannot build): checks that the target has Nix, before anything is changed, and
/// prepares Nix's connection to it.
async fn remote_build(
    request: &InstallRequest,
    prepared: &Inputs,
    settings: &SshSettings,
    target: &Target,
    pin: &HostKeyPin,
    session: &Session,
) -> Result<Option<Arc<RemoteBuild>>, RunError> {
    if prepared.built_on != BuildOn::Remote || !request.phases.contains(&Phase::Install) {
        return Ok(None);
    }
    let out = session.run("command -v nix-daemon", b"").await?;
    if !out.success() {
        return Err(RemoteBuildError::NoNix(target.to_string()).into());
    }
    let remote = RemoteBuild::new(settings, &request.build, target, pin, Path::new(ROOT))?;
    Ok(Some(Arc::new(remote)))
}

/// The phases against the agent; `Ok(true)` when a reboot is under way.
#[allow(clippy::too_many_arguments)]
async fn phases(
    request: &InstallRequest,
    prepared: &Inputs,
    keys: Vec<crate::cli::install::ReadKey>,
    mut extra: Vec<files::FileEntry>,
    (session, remote): (&Session, Option<&Arc<RemoteBuild>>),
    agent: &mut Agent,
    target: &Target,
    record: &mut RunRecord,
) -> Result<bool, RunError> {
    for &phase in &request.phases {
        let started = Instant::now();
        let mut done = PhaseRecord::new(phase);
        let fail = |source: RemoteError| in_phase(phase, source);
        match phase {
            // Done before, with the connection it changes.
            Phase::Kexec => continue,
            Phase::Disko => {
                let layout = prepared
                    .layout
                    .as_ref()
                    .expect("prepared with the disko phase");
                if !keys.is_empty() {
                    let files = keys
                        .iter()
                        .map(|k| KeyFile {
                            path: k.remote.clone(),
                            key: zeroize::Zeroizing::new(k.key.expose().to_vec()),
                        })
                        .collect();
                    let n = agent
                        .client
                        .write_keys(files)
                        .await
                        .map_err(|e| fail(e.into()))?;
                    announce(
                        phase,
                        &format!("wrote {n} disk-encryption key(s) in the installer's RAM"),
                    );
                }
                match layout {
                    LayoutInput::Json(json) => {
                        let mode = disk_mode(request.disko.mode);
                        announce(phase, &format!("running the disk layout ({mode:?})"));
                        agent
                            .client
                            .disko(json.clone(), mode, ROOT.into(), |step| {
                                show_step(&step);
                                done.steps.push(step);
                            })
                            .await
                            .map_err(|e| fail(e.into()))?;
                    }
                    LayoutInput::Script { script, closure } => {
                        announce(
                            phase,
                            &format!(
                                "copying the disko script {script}{} to the installer's store",
                                from_where(&prepared.source)
                            ),
                        );
                        let copied = super::copy::stream_closure(
                            agent,
                            &target.to_string(),
                            Path::new("/"),
                            &prepared.source,
                            closure,
                            Compression::Auto,
                            None,
                            Instant::now(),
                        )
                        .await
                        .map_err(fail)?;
                        done.copied = Some(copied);
                        announce(phase, &format!("running {script}"));
                        let out = session
                            .run(&shell_quote(&script.to_absolute()), b"")
                            .await
                            .map_err(|e| fail(e.into()))?;
                        if !out.success() {
                            return Err(fail(RemoteError::AgentExit {
                                status: format!("the disko script ended with {}", out.describe()),
                                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                            }));
                        }
                    }
                }
            }
            Phase::Install => {
                let root = Path::new(ROOT);
                let closure = match remote {
                    Some(remote) => {
                        let installable = request
                            .source
                            .installable("system.build.toplevel")
                            .expect("a remote build is of a flake");
                        announce(
                            phase,
                            &format!("building {installable} on the target, into {ROOT}"),
                        );
                        let (remote, build) = (Arc::clone(remote), request.build.clone());
                        let built =
                            tokio::task::spawn_blocking(move || remote.build(&build, &installable))
                                .await
                                .expect("the remote build does not panic")?;
                        eprintln!("    built {built}");
                        // Nix registered the build with its closure in /mnt's store.
                        vec![built]
                    }
                    None => {
                        announce(
                            phase,
                            &format!(
                                "streaming the closure of {}{} into {ROOT}",
                                prepared.system,
                                from_where(&prepared.source)
                            ),
                        );
                        let substitute = inputs::substitution(
                            &request.substitution,
                            &request.source,
                            &request.build,
                        );
                        let copied = super::copy::stream_closure(
                            agent,
                            &target.to_string(),
                            root,
                            &prepared.source,
                            &prepared.closure,
                            Compression::Auto,
                            substitute.as_ref(),
                            Instant::now(),
                        )
                        .await
                        .map_err(fail)?;
                        eprintln!("    {copied}");
                        done.copied = Some(copied);
                        prepared.closure.iter().map(|i| i.path.clone()).collect()
                    }
                };
                if !extra.is_empty() {
                    let n = extra.len();
                    for batch in files::batches(std::mem::take(&mut extra)) {
                        agent
                            .client
                            .put_files(root, batch)
                            .await
                            .map_err(|e| fail(e.into()))?;
                    }
                    announce(phase, &format!("wrote {n} extra file entries"));
                }
                announce(
                    phase,
                    "what nixos-install does, and the system's bootloader step",
                );
                let spec = InstallSpec {
                    root: root.to_owned(),
                    system: prepared.system.clone(),
                    closure,
                    chown: request
                        .chown
                        .iter()
                        .map(|c| (c.path.display().to_string(), c.owner.clone()))
                        .collect(),
                    copy_host_keys: request.copy_host_keys,
                    no_check: request.nixos_no_check.clone(),
                    boot_disks: boot_disks(prepared),
                };
                let report = agent
                    .client
                    .install(spec, |step| {
                        show_step(&step);
                        done.steps.push(step);
                    })
                    .await
                    .map_err(|e| fail(e.into()))?;
                eprintln!("    boot loader: {}", report.bootloader);
                done.note = Some(report.bootloader);
                done.agent_peak_rss_kib = Some(report.peak_rss_kib);
                done.lowest_available_kib = report.lowest_available_kib;
            }
            Phase::Reboot => {
                announce(phase, &format!("unmounting {ROOT} and rebooting"));
                let down = agent
                    .client
                    .reboot(Path::new(ROOT))
                    .await
                    .map_err(|e| fail(e.into()))?;
                done.note = Some(format!(
                    "unmounted {}, swap off on {}",
                    down.unmounted.len(),
                    down.swaps_off.len()
                ));
                done.seconds = started.elapsed().as_secs_f64();
                record.phases.push(done);
                return Ok(true);
            }
        }
        done.seconds = started.elapsed().as_secs_f64();
        record.phases.push(done);
    }
    Ok(false)
}

fn disk_mode(mode: DiskoMode) -> Mode {
    match mode {
        DiskoMode::Disko => Mode::DestroyFormatMount,
        DiskoMode::Format => Mode::Format,
        DiskoMode::FormatMount => Mode::FormatMount,
        DiskoMode::Mount => Mode::Mount,
    }
}

/// The disks of the layout, whose MBR may hold a BIOS boot loader. A layout the disk layer
/// cannot read names none (the disko phase, if it runs, says why).
fn boot_disks(prepared: &Inputs) -> Vec<String> {
    let Some(LayoutInput::Json(json)) = &prepared.layout else {
        return Vec::new();
    };
    crate::disk::layout::parse(json, &[])
        .map(|layout| layout.disk.into_iter().map(|d| d.device).collect())
        .unwrap_or_default()
}

/// The parts of the request the input preparation reads, owned for its thread.
fn clone_for_inputs(request: &InstallRequest) -> inputs::InputsRequest {
    inputs::InputsRequest {
        source: request.source.clone(),
        phases: request.phases.clone(),
        build: request.build.clone(),
    }
}
