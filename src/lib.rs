//! nixos-anywhere-rs: install NixOS on a remote machine over SSH, natively.
//!
//! The library holds every capability; `main.rs` only parses the command line and dispatches.

pub mod agent;
pub mod cli;
pub mod client;
pub mod command;
pub mod copy;
pub mod disk;
pub mod nar;
pub mod pipe;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod ssh;
pub mod store;
pub mod stream;
pub mod substitute;
pub mod wire;
