//! The agent on a remote target, seen from the tool: starting it ([`start`]) and typed calls to
//! it ([`client`]).

pub mod client;
mod start;

pub use client::{AgentClient, ClientError, InstallReport, Transfer};
pub use start::{Agent, RemoteError, agent_binary, start_agent};
