//! Coming back from the kexec: the old system must go away, then the installer must answer as
//! root, with the host key pinned before and a new boot id, within the deadline.

use std::time::{Duration, Instant};

use super::KexecError;
use crate::run::wait;
use crate::ssh::{HostKeyPin, Session, SshError, SshOptions, Target};

/// Each try to reach the installer gives up after this long (a machine mid-kexec drops SYNs).
const ATTEMPT: Duration = Duration::from_secs(15);
/// How often the progress line says the run is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The current boot's id, as `session` sees it.
async fn boot_id(session: &Session) -> Option<String> {
    let run = session.run("cat /proc/sys/kernel/random/boot_id", b"");
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => None,
    }
}

/// Waits until the old system stops answering on the session that started the kexec.
pub(super) async fn wait_gone(
    session: &Session,
    host: &str,
    old_boot: &str,
    deadline: Instant,
    log: &str,
) -> Result<(), KexecError> {
    let started = Instant::now();
    while boot_id(session).await.as_deref() == Some(old_boot) {
        if Instant::now() >= deadline {
            return Err(KexecError::StillUp {
                host: host.into(),
                secs: started.elapsed().as_secs(),
                log: log.trim_end().to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Logs into the installer as root, trying again while it boots, until the deadline. The host
/// key must be `pin`'s, and the boot a new one (an old system that still lets root in is not
/// the installer).
pub(super) async fn reconnect(
    target: &Target,
    opts: &SshOptions,
    pin: &HostKeyPin,
    old_boot: &str,
    (deadline, deadline_secs): (Instant, u64),
    log: &str,
) -> Result<Session, KexecError> {
    let started = Instant::now();
    let mut said = started;
    let mut last = String::from("no answer yet");
    eprintln!("    waiting up to {deadline_secs} s for the installer at {target}");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(KexecError::NotBack {
                target: target.to_string(),
                secs: deadline_secs,
                last,
                log: log.trim_end().to_owned(),
            });
        }
        if now.duration_since(said) >= PROGRESS_EVERY {
            eprintln!(
                "    still waiting for {target}: {} s of {deadline_secs} s ({last})",
                started.elapsed().as_secs()
            );
            said = now;
        }
        let attempt = ATTEMPT.min(deadline - now);
        match tokio::time::timeout(attempt, Session::connect(target, opts, pin)).await {
            Err(_) => last = format!("no answer within {} s", attempt.as_secs()),
            Ok(Err(SshError::HostKeyChanged {
                pinned_fingerprint,
                seen_fingerprint,
                ..
            })) => {
                return Err(KexecError::HostKeyChanged {
                    target: target.to_string(),
                    pinned: pinned_fingerprint,
                    seen: seen_fingerprint,
                });
            }
            Ok(Err(e)) if wait::not_up_yet(&e) => last = e.to_string(),
            // known_hosts disagrees: its own message says which file and line.
            Ok(Err(e @ SshError::HostKeyRejected { .. })) => return Err(e.into()),
            Ok(Err(source)) => {
                return Err(KexecError::Refused {
                    target: target.to_string(),
                    source: Box::new(source),
                    log: log.trim_end().to_owned(),
                });
            }
            Ok(Ok(session)) => match boot_id(&session).await {
                Some(id) if id != old_boot => return Ok(session),
                _ => {
                    last = "the old system still answers".into();
                    let _ = session.close().await;
                }
            },
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
