//! The messages: JSON in [`MESSAGE`](super::frame::MESSAGE) frames, a [`Request`] from the tool
//! answered by one [`Reply`] (during a [`Request::Receive`], by progress and then its end).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::facts::Facts;
use crate::store::{PathInfo, StorePath};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol: u32,
        version: String,
    },
    /// What the machine is: what later phases decide on.
    Facts,
    /// Which of these paths are valid in the store root `root`? Read-only: creates, locks and
    /// removes nothing, so a dry run can ask it.
    QueryValid {
        root: PathBuf,
        paths: Vec<StorePath>,
    },
    /// Opens (creating if needed) the store root the next requests write to, and locks it.
    OpenStore {
        root: PathBuf,
    },
    /// The NARs of these paths follow, in this order, as blocks.
    Receive {
        paths: Vec<PathInfo>,
    },
    Bye,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: u32,
        version: String,
    },
    Facts(Box<Facts>),
    StoreOpened,
    Valid {
        paths: Vec<StorePath>,
    },
    /// Paths completed (verified and in place) so far in this `Receive`, and their NAR bytes.
    Progress {
        paths: u64,
        nar_bytes: u64,
    },
    /// Every path of the `Receive` is registered and on the disk (the file system was synced).
    Received {
        paths: u64,
        nar_bytes: u64,
        wire_bytes: u64,
        /// How long flushing the store root's file system to the disk took.
        sync_seconds: f64,
    },
    Error(AgentFailure),
}

/// Why the agent failed a request: a kind the tool can act on, the step it was in, and the
/// agent's own message (which names the path or device).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentFailure {
    pub kind: ErrorKind,
    /// The step of the agent's work that failed, as its plan describes it.
    pub step: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The tool sent something the protocol does not allow.
    Protocol,
    /// What arrived does not match its path info (hash, size, a malformed NAR): nothing of it
    /// was registered.
    Integrity,
    /// The target's store root could not be read or written.
    Store,
    /// The request was refused as it stands (no store opened, ...).
    Refused,
    /// Reading the machine's facts failed.
    Facts,
}

impl fmt::Display for AgentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{step}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
