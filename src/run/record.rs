//! What a run did, phase by phase, for `--json`; and the progress a person watches on stderr:
//! a line per phase and per step as it ends.

use serde::Serialize;

use crate::cli::install::Phase;
use crate::plan::{Outcome, StepRecord};
use crate::store::NarSource;

use super::wait::Verified;

/// What a run did, phase by phase.
#[derive(Debug, Default, Serialize)]
pub struct RunRecord {
    pub target: String,
    pub system: Option<String>,
    pub phases: Vec<PhaseRecord>,
    /// What `--generate-hardware-config` wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_config: Option<String>,
    /// After a reboot: whether the installed system answered and runs the system installed.
    pub verified: Option<Verified>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    /// `false`: not needed (kexec on an installer).
    pub ran: bool,
    pub seconds: f64,
    pub steps: Vec<StepRecord>,
    /// Store paths and NAR bytes sent (install), keys written (disko).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied: Option<super::copy::Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The agent's peak resident memory by the end of the phase (install), in KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_peak_rss_kib: Option<u64>,
    /// The target's lowest available memory while the agent ran (install), in KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lowest_available_kib: Option<u64>,
}

impl PhaseRecord {
    pub(super) fn new(phase: Phase) -> Self {
        Self {
            phase,
            ran: true,
            seconds: 0.0,
            steps: Vec::new(),
            copied: None,
            note: None,
            agent_peak_rss_kib: None,
            lowest_available_kib: None,
        }
    }
}

/// Progress for a person, on stderr: a line per phase and per step as it ends.
pub(super) fn announce(phase: Phase, what: &str) {
    eprintln!("==> {phase}: {what}");
}

/// ` from the store URI` for a `--from` source; nothing for the local store.
pub(super) fn from_where(source: &NarSource) -> String {
    match source {
        NarSource::Local => String::new(),
        other => format!(" from {other}"),
    }
}

pub(super) fn show_step(record: &StepRecord) {
    let mark = match record.outcome {
        Outcome::Ran => "done",
        Outcome::Skipped => "skip",
    };
    eprintln!("    [{mark}] {record}");
}
