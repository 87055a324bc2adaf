//! Why a command line was refused. Each message names the flag and value and says what to do;
//! none carries a secret (passwords and keys are never part of a value here).

use std::path::PathBuf;

use crate::ssh::SshError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something that must be given is missing.
    #[error("{what}: {hint}")]
    Missing {
        what: &'static str,
        hint: &'static str,
    },

    /// Two flags that do not go together.
    #[error("{first} cannot be used with {second}: {hint}")]
    Conflict {
        first: &'static str,
        second: &'static str,
        hint: &'static str,
    },

    /// A value that does not mean anything the flag could do.
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },

    /// A local file or directory that is missing or of the wrong kind.
    #[error("{flag} {}: {reason}", path.display())]
    Path {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "a second target host {second:?} after {first:?}: one machine is installed per run \
         (is a flag before it missing its value?)"
    )]
    SecondHost { first: String, second: String },

    #[error(
        "unknown phase {phase:?} in --phases: the phases are kexec, disko, install and reboot, \
         comma-separated"
    )]
    UnknownPhase { phase: String },

    /// Boxed: the SSH layer's error is large, and this one is returned everywhere.
    #[error("{flag}: {source}")]
    Ssh {
        flag: &'static str,
        #[source]
        source: Box<SshError>,
    },
}
