//! The install command, `nixos-anywhere-rs [options] [<ssh-host>]`: nixos-anywhere's command
//! line with every flag and environment variable of the same spelling and meaning (its known
//! bugs fixed), plus ours, turned into a validated [`InstallRequest`] for the run planner.
//!
//! - [`InstallArgs`]: the clap flags, flattened into the top-level command;
//! - [`InstallArgs::into_request`]: every value and combination checked before anything runs;
//! - [`KeySources`]: disk-encryption key sources read exactly once into wiped buffers.

mod args;
mod convert;
mod duration;
mod error;
mod keys;
mod request;
mod target;
mod values;

pub use args::{BuildOn, DiskoMode, InstallArgs};
pub use convert::{Environment, parse_flake};
pub use duration::parse_duration;
pub use error::CliError;
pub use keys::{KeyError, KeySources, MAX_KEY_BYTES, ReadKey, Secret};
pub use request::{
    Build, Chown, Disko, EncryptionKey, HardwareBackend, HardwareConfig, InstallRequest, Kexec,
    KexecImage, KeyValue, Layout, Output, Phase, Reconnect, Source, SshSettings, Substitution,
    TarFormat,
};
