//! Waiting for a machine: the first connection, retried while the target is not up yet (a
//! Terraform run starts the install right after creating the machine); and after the reboot,
//! the installer going away and the installed system answering, checked to run the toplevel
//! that was installed.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ssh::{HostKeyPin, Session, SshError, SshOptions, Target};

/// How often a target that does not answer is tried again (nixos-anywhere's 3 s).
const RETRY: Duration = Duration::from_secs(3);
/// How long the installer may take to go down after it was told to reboot.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "{target} did not answer within {secs} s (last: {last}); is it up, and is the address right?"
    )]
    NoAnswer {
        target: String,
        secs: u64,
        last: SshError,
    },
    #[error(
        "the installer on {target} was told to reboot but still answers after {} s; the \
         system is installed: reboot the machine by hand",
        SHUTDOWN_DEADLINE.as_secs()
    )]
    StillUp { target: String },
    #[error(
        "the installed system did not come back within {secs} s of the reboot (last: {last}); \
         the install completed, but the machine may not boot: look at its console"
    )]
    NotBack { secs: u64, last: String },
    #[error(
        "{target} came back running {running}, not the system that was installed ({installed}): \
         the boot loader did not boot it"
    )]
    OtherSystem {
        target: String,
        running: String,
        installed: String,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// Errors that mean "not up yet": no route, refused, a handshake cut short, a timeout.
pub(super) fn not_up_yet(e: &SshError) -> bool {
    matches!(
        e,
        SshError::Connect { .. } | SshError::Timeout { .. } | SshError::Handshake { .. }
    )
}

/// Connects to `target`, trying again every few seconds while it does not answer, for up to
/// `deadline_secs`. Other failures (a refused key, a changed host key) end it at once.
pub async fn connect(
    target: &Target,
    opts: &SshOptions,
    pin: &HostKeyPin,
    deadline_secs: u64,
) -> Result<Session, WaitError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match Session::connect(target, opts, pin).await {
            Ok(session) => return Ok(session),
            Err(e) if not_up_yet(&e) && started.elapsed().as_secs() < deadline_secs => {
                if !said {
                    eprintln!("waiting up to {deadline_secs} s for {target} to answer ({e})");
                    said = true;
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(e) if not_up_yet(&e) => {
                return Err(WaitError::NoAnswer {
                    target: target.to_string(),
                    secs: deadline_secs,
                    last: e,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the installed system answered after the reboot.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verified {
    /// It runs the installed toplevel.
    Running {
        system: String,
        host_key: String,
        /// The installer's key, carried over (`--copy-host-keys`, extra files).
        same_host_key: bool,
        seconds: f64,
    },
    /// It is up but refuses the login (its configuration's keys, users or port): installed,
    /// not verified. Not a failure, so that an orchestrator does not reinstall it.
    NotVerified { reason: String, seconds: f64 },
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verified::Running {
                system,
                host_key,
                same_host_key,
                seconds,
            } => {
                let key = if *same_host_key {
                    "the installer's, carried over"
                } else {
                    "new: pin it"
                };
                write!(
                    f,
                    "installed and verified: the machine came back after {seconds:.0} s running \
                     {system}; its host key is {host_key} ({key})"
                )
            }
            Verified::NotVerified { reason, seconds } => write!(
                f,
                "installed, not verified: the machine answered after {seconds:.0} s but refused \
                 the login ({reason}); its configuration decides who may log in"
            ),
        }
    }
}

/// After the reboot was started: waits until the installer stops answering, then until the
/// installed system does, and checks its `/run/current-system`.
pub async fn installed_system(
    target: &Target,
    opts: &SshOptions,
    installer_pin: &HostKeyPin,
    toplevel: &str,
    deadline_secs: u64,
) -> Result<Verified, WaitError> {
    let started = Instant::now();
    // The installer goes down a moment after it answered the reboot request. A failure means
    // it is down, or the installed system answers already (with another host key).
    while let Ok(session) = Session::connect(target, opts, installer_pin).await {
        let _ = session.close().await;
        if started.elapsed() > SHUTDOWN_DEADLINE {
            return Err(WaitError::StillUp {
                target: target.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut last = String::from("no answer yet");
    loop {
        let seconds = started.elapsed().as_secs_f64();
        if started.elapsed().as_secs() >= deadline_secs {
            return Err(WaitError::NotBack {
                secs: deadline_secs,
                last,
            });
        }
        // A new pin: the installed system has new host keys unless they were carried over.
        let pin = HostKeyPin::new();
        let session = match Session::connect(target, opts, &pin).await {
            Ok(session) => session,
            Err(e) if not_up_yet(&e) => {
                last = e.to_string();
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => {
                return Ok(Verified::NotVerified {
                    reason: e.to_string(),
                    seconds,
                });
            }
        };
        let out = session.run("readlink /run/current-system", b"").await;
        let _ = session.close().await;
        let running = match out {
            Ok(out) if out.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            Ok(out) => {
                last = format!("readlink /run/current-system: {}", out.describe());
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if running != toplevel {
            return Err(WaitError::OtherSystem {
                target: target.to_string(),
                running,
                installed: toplevel.to_owned(),
            });
        }
        let host_key = pin.fingerprint().unwrap_or_default();
        return Ok(Verified::Running {
            system: running,
            same_host_key: installer_pin.fingerprint().as_deref() == Some(host_key.as_str()),
            host_key,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}
