//! nixos-anywhere-rs: install NixOS on a remote machine over SSH, natively.
//!
//! The library holds every capability; `main.rs` only parses the command line and dispatches.
//! The tool side plans and drives a [`run`]; the [`agent`] is the same executable on the target,
//! speaking [`proto`] over one SSH channel ([`ssh`], started by [`remote`]). NARs move through
//! [`transfer`] into a [`store`] root; [`disk`] lays out disks; [`facts`] says what a machine is.

pub mod agent;
pub mod cli;
pub mod disk;
pub mod exec;
pub mod facts;
pub mod install;
pub mod nar;
pub mod pipe;
pub mod plan;
pub mod progress;
pub mod proto;
pub mod remote;
pub mod run;
pub mod ssh;
pub mod store;
pub mod substitute;
pub mod transfer;
