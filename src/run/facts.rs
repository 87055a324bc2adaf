//! `nixos-anywhere-rs facts`: what the agent finds on a target, the inputs every phase plans
//! from.

use crate::facts::Facts;
use crate::remote::RemoteError;
use crate::ssh::{SshOptions, Target};

/// Connects, starts the agent and asks it for the target's facts.
pub async fn run(target: &Target, opts: &SshOptions) -> Result<Facts, RemoteError> {
    let (session, mut agent) = super::connect(target, opts).await?;
    let facts = match agent.client.facts().await {
        Ok(facts) => facts,
        Err(e) => return Err(agent.abandon(e).await),
    };
    agent.finish().await?;
    let _ = session.close().await;
    Ok(facts)
}
