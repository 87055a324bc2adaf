//! What one invocation of the tool does, planned and then executed: the closure copy
//! ([`copy`]) and the target's facts ([`facts`]); the install's phases (kexec, disko, install,
//! reboot) join them here.

pub mod copy;
pub mod facts;
pub mod hardware;
pub mod inputs;
pub mod install;
pub mod kexec;
pub mod phases;
pub mod record;
pub mod remote_build;
pub mod wait;

use crate::remote::{self, Agent, RemoteError};
use crate::ssh::{HostKeyPin, Session, SshOptions, Target};

/// Connects to `target` and starts the agent there (uploading it when this build is new to it).
pub async fn connect(target: &Target, opts: &SshOptions) -> Result<(Session, Agent), RemoteError> {
    let pin = HostKeyPin::new();
    let session = Session::connect(target, opts, &pin).await?;
    tracing::info!(
        "connected to {target} ({})",
        session.cipher().unwrap_or_default()
    );
    let agent = remote::start_agent(&session, &remote::agent_binary()?, opts.patience()).await?;
    Ok((session, agent))
}
