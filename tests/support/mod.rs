//! Helpers shared by the integration tests. Each test binary uses a part of them.
#![allow(dead_code)]

pub mod netns;
pub mod sshd;

use std::process::{Command, Stdio};

/// Runs a program that must succeed, with a message naming it otherwise.
pub fn run(cmd: &mut Command) {
    // A password a test gives the tool in SSHPASS reaches no helper program.
    let out = cmd
        .env_remove("SSHPASS")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}; run scripts/setup first"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
