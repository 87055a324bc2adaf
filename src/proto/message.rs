//! The messages: JSON in [`MESSAGE`](super::frame::MESSAGE) frames, a [`Request`] from the tool
//! answered by one [`Reply`] (during a [`Request::Receive`], by progress and then its end).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::disk::plan::Mode;
use crate::facts::Facts;
use crate::install::InstallSpec;
use crate::install::files::FileEntry;
use crate::install::reboot::TakenDown;
use crate::plan::StepRecord;
use crate::store::{PathInfo, StorePath};
use crate::substitute::{FetchReport, Overrides, PlanOverview};

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
    /// Reads the target's Nix configuration, adds `overrides` (the tool's flags), opens the
    /// caches and local stores (but the store root `root` itself) and plans which of `paths`
    /// (those `root` lacks, dependencies first) they hold. Downloads nothing: a dry run can
    /// ask it. The agent keeps the plan for the next `Receive`.
    PlanSubstitution {
        overrides: Overrides,
        root: PathBuf,
        paths: Vec<PathInfo>,
    },
    /// The NARs of these paths follow, in this order, as blocks. With `substitute`, the agent
    /// downloads what its last `PlanSubstitution` planned at the same time, then answers
    /// [`Reply::Needed`] with the planned paths it could not substitute: their NARs follow the
    /// first ones, in that order.
    Receive {
        paths: Vec<PathInfo>,
        #[serde(default)]
        substitute: bool,
    },
    /// Writes the disk-encryption keys, mode 0600, in RAM (a tmpfs) only.
    WriteKeys {
        keys: Vec<KeyFile>,
    },
    /// Runs the disk layer on the layout (an evaluated `disko.devices`); its steps are
    /// reported as they end.
    Disko {
        layout: String,
        mode: Mode,
        root_mountpoint: String,
    },
    /// Writes these extra files into `root`, owned by root, with their modes.
    PutFiles {
        root: PathBuf,
        entries: Vec<FileEntry>,
    },
    /// What nixos-install does once the closure is in the root's store; steps reported as
    /// they end.
    Install(Box<InstallSpec>),
    /// Takes the root's file systems down and reboots, detached.
    Reboot {
        root: PathBuf,
    },
    Bye,
}

/// A disk-encryption key for the installer: where it goes, and the key, which no log, error
/// or debug print shows.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyFile {
    pub path: PathBuf,
    #[serde(with = "secret_base64")]
    pub key: zeroize::Zeroizing<Vec<u8>>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFile({}, <redacted>)", self.path.display())
    }
}

mod secret_base64 {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(key: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(BASE64.encode(key)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        BASE64
            .decode(text.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| serde::de::Error::custom("a key that is not base64"))
    }
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
    /// Paths completed (verified and in place) so far in this `Receive`, and their NAR bytes:
    /// streamed ones, and substituted ones.
    Progress {
        paths: u64,
        nar_bytes: u64,
        #[serde(default)]
        substituted_paths: u64,
        #[serde(default)]
        substituted_bytes: u64,
    },
    /// What the caches hold of the paths asked about, per cache, and what they do not.
    SubstitutionPlanned(Box<PlanOverview>),
    /// The substitution of a `Receive` ended: these planned paths were not substituted, and
    /// the agent needs their NARs after the ones it was sent.
    Needed {
        paths: Vec<StorePath>,
    },
    /// Every path of the `Receive` is registered and on the disk (the file system was synced).
    Received {
        paths: u64,
        nar_bytes: u64,
        wire_bytes: u64,
        /// How long flushing the store root's file system to the disk took.
        sync_seconds: f64,
        /// What came from the caches, when the `Receive` substituted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        substituted: Option<FetchReport>,
    },
    KeysWritten {
        count: usize,
    },
    /// A step of a `Disko` or `Install` ended.
    Step(StepRecord),
    /// The disk layer ran every step of its plan.
    Disked {
        steps: usize,
    },
    FilesWritten {
        entries: usize,
    },
    /// The install phase ran; `bootloader` says what the check found.
    Installed {
        steps: usize,
        bootloader: String,
        /// The agent's peak resident memory so far (the transfer included), in KiB.
        peak_rss_kib: u64,
        /// The machine's lowest `MemAvailable` while the agent ran, in KiB.
        lowest_available_kib: u64,
    },
    /// The file systems are down; the reboot follows in a moment.
    Rebooting(TakenDown),
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
    /// The substitution settings are unusable (a malformed key, nix.conf or CA file).
    Substitute,
    /// The request was refused as it stands (no store opened, ...).
    Refused,
    /// Reading the machine's facts failed.
    Facts,
    /// The disk layer refused the layout or a disk step failed.
    Disk,
    /// A step of the install (or the keys, the extra files, the reboot) failed.
    Install,
}

impl fmt::Display for AgentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{step}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
