//! What one invocation of the tool does, planned and then executed: today the closure copy
//! ([`copy`]); the install's phases (kexec, disko, install, reboot) join it here.

pub mod copy;
