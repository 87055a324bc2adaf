//! The agent runs on machines without a dynamic loader (a NixOS installer has no
//! /lib64/ld-linux-x86-64.so.2), so the release binary must be fully static. This test builds
//! it with `scripts/build-static` (a no-op when it is up to date, so it never checks a stale
//! binary), reads its ELF headers, and runs it in an empty chroot.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// What makes an ELF file dynamic: its interpreter and the shared libraries it needs.
#[derive(Debug, Default)]
struct Dynamic {
    interpreter: Option<String>,
    needed: usize,
}

/// Reads the program headers of a 64-bit little-endian ELF file.
fn dynamic_parts(elf: &[u8]) -> Dynamic {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    assert_eq!(elf[5], 1, "not a little-endian ELF file");
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    let mut found = Dynamic::default();
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..][..phentsize];
        let (kind, offset, size) = (
            u32_at(ph, 0),
            u64_at(ph, 0x08) as usize,
            u64_at(ph, 0x20) as usize,
        );
        match kind {
            PT_INTERP => {
                let name = &elf[offset..offset + size];
                found.interpreter =
                    Some(String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap()).into());
            }
            PT_DYNAMIC => {
                // A static-pie binary has a dynamic section for its own relocations, but no
                // DT_NEEDED entries.
                for entry in elf[offset..offset + size].chunks_exact(16) {
                    match u64_at(entry, 0) {
                        DT_NULL => break,
                        DT_NEEDED => found.needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn build_static() -> PathBuf {
    let out = Command::new("scripts/build-static")
        .stderr(Stdio::inherit())
        .output()
        .expect("could not run scripts/build-static");
    assert!(out.status.success(), "scripts/build-static failed");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

#[test]
fn release_binary_is_static_and_runs_in_an_empty_chroot() {
    let binary = build_static();
    let elf = fs::read(&binary).unwrap();
    let parts = dynamic_parts(&elf);
    assert_eq!(
        parts.interpreter,
        None,
        "{} needs a loader",
        binary.display()
    );
    assert_eq!(
        parts.needed,
        0,
        "{} needs shared libraries",
        binary.display()
    );

    // The same check recognises a dynamic binary, so it is not vacuous.
    let dynamic = dynamic_parts(&fs::read("/bin/sh").unwrap());
    assert!(
        dynamic.interpreter.is_some() && dynamic.needed > 0,
        "{dynamic:?}"
    );

    // Nothing in the chroot but the binary: no loader, no libc, no /dev, no /proc.
    let root = tempfile::tempdir().unwrap();
    fs::copy(&binary, root.path().join("agent")).unwrap();
    let mut chroot = if rustix::process::geteuid().is_root() {
        Command::new("chroot")
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", "chroot"]);
        c
    };
    let out = chroot
        .arg(root.path())
        .args(["/agent", "--version"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("could not run chroot");
    assert!(
        out.status.success(),
        "the binary failed in an empty chroot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("nixos-anywhere-rs "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
