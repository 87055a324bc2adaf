//! Helpers shared by the NAR and copy tests: the fixture closures, Nix 2.8 as the oracle, and
//! comparisons of byte streams and directory trees.

#![allow(dead_code)] // Each test crate uses a different part.

pub mod cache;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The tool's binary, built by Cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_nixos-anywhere-rs");

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds (or finds) a fixture closure with `fixtures/closure` and returns its top path.
pub fn closure(which: &str) -> String {
    let out = run(Command::new(repo().join("fixtures/closure")).arg(which));
    let top = String::from_utf8(out).expect("a store path is UTF-8");
    let top = top.trim().to_owned();
    assert!(
        top.starts_with("/nix/store/"),
        "fixtures/closure printed {top:?}"
    );
    top
}

/// `nix` with the `nix-command` feature, on the local store (no daemon) unless `--store` is
/// given.
pub fn nix() -> Command {
    let mut cmd = Command::new("nix");
    cmd.env("NIX_REMOTE", "local")
        .args(["--extra-experimental-features", "nix-command"]);
    cmd
}

pub fn nix_store() -> Command {
    let mut cmd = Command::new("nix-store");
    cmd.env("NIX_REMOTE", "local");
    cmd
}

/// Runs `cmd`, requires it to succeed, and returns its stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `nix-store --verify --check-contents` on the store root succeeds and says nothing but its
/// progress lines.
pub fn assert_verifies(root: &Path) {
    let out = output(
        nix_store()
            .args(["--verify", "--check-contents", "--store"])
            .arg(root)
            .args(["--option", "build-users-group", ""]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix-store --verify failed:\n{stderr}");
    let progress = [
        "reading the Nix store...",
        "checking path existence...",
        "checking link hashes...",
        "checking store hashes...",
    ];
    for line in stderr.lines() {
        assert!(
            progress.contains(&line),
            "nix-store --verify complains: {line}"
        );
    }
}

/// Every path of the closure of `top`, as `nix-store -qR` lists it.
pub fn closure_paths(top: &str) -> Vec<String> {
    let out = run(nix_store().args(["-qR", top]));
    String::from_utf8(out)
        .expect("store paths are UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What Nix records of a path and what a copy must preserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixInfo {
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: BTreeSet<String>,
}

/// `nix path-info --json -r [--store STORE] TOP`, keyed by path.
pub fn path_infos(top: &str, store: Option<&Path>) -> BTreeMap<String, NixInfo> {
    let mut cmd = nix();
    cmd.args(["path-info", "--json", "--recursive"]);
    if let Some(store) = store {
        cmd.arg("--store").arg(store);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&run(cmd.arg(top))).expect("nix path-info prints JSON");
    json.as_array()
        .expect("a JSON array")
        .iter()
        .map(|info| {
            let field = |name: &str| {
                info.get(name)
                    .unwrap_or_else(|| panic!("{name} missing in {info}"))
            };
            let references = field("references")
                .as_array()
                .expect("references is an array")
                .iter()
                .map(|r| r.as_str().expect("a path").to_owned())
                .collect();
            let info = NixInfo {
                nar_hash: field("narHash").as_str().expect("a hash").to_owned(),
                nar_size: field("narSize").as_u64().expect("a size"),
                references,
            };
            (field("path").as_str().expect("a path").to_owned(), info)
        })
        .collect()
}

/// Reads two streams side by side; `Err` names the first offset where they differ.
pub fn compare_streams(mut a: impl Read, mut b: impl Read) -> Result<u64, String> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = fill(&mut a, &mut buf_a).map_err(|e| format!("reading the first: {e}"))?;
        let m = fill(&mut b, &mut buf_b).map_err(|e| format!("reading the second: {e}"))?;
        if let Some(i) = buf_a[..n.min(m)]
            .iter()
            .zip(&buf_b[..n.min(m)])
            .position(|(x, y)| x != y)
        {
            return Err(format!("they differ at byte {}", offset + i as u64));
        }
        if n != m {
            return Err(format!(
                "one ends at byte {} and the other goes on",
                offset + n.min(m) as u64
            ));
        }
        if n == 0 {
            return Ok(offset);
        }
        offset += n as u64;
    }
}

/// Reads until `buf` is full or the stream ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Everything below `dir` (not following symlinks), with type, mode, size and link target:
/// two equal snapshots mean nothing was created, removed or changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// Everything of a tree a change could touch: the [`snapshot`], plus each entry's modification
/// time and each file's contents (its SHA-256).
pub fn exact_snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::{Digest, Sha256};
    let mut out = snapshot(dir);
    for (rel, desc) in out.iter_mut() {
        let path = dir.join(rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        desc.push_str(&format!(" mtime {}.{}", meta.mtime(), meta.mtime_nsec()));
        if meta.file_type().is_file() {
            let digest = Sha256::digest(fs::read(&path).unwrap());
            desc.push_str(&format!(" sha256 {digest:x}"));
        }
    }
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let kind = meta.file_type();
    let desc = if kind.is_symlink() {
        let target = fs::read_link(&path).expect("a symlink has a target");
        format!("link -> {}", target.display())
    } else if kind.is_dir() {
        format!("dir {:o}", meta.mode() & 0o7777)
    } else {
        format!("file {:o} {} bytes", meta.mode() & 0o7777, meta.len())
    };
    out.insert(rel.to_owned(), desc);
    if kind.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&path)
            .expect("a readable directory")
            .map(|e| e.expect("a directory entry").file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            walk(root, &rel.join(name), out);
        }
    }
}

/// Paths registered as valid in the Nix database of the store root `root`.
pub fn registered(root: &Path) -> u64 {
    let db = rusqlite::Connection::open(root.join("nix/var/nix/db/db.sqlite")).unwrap();
    db.query_row("select count(*) from ValidPaths", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

/// Store paths in place (not under a temporary name) in the store root `root`, registered or
/// not.
pub fn placed(root: &Path) -> u64 {
    fs::read_dir(root.join("nix/store")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
            .count() as u64
    })
}

/// A fresh temporary directory below the system's temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nixos-anywhere-rs-test-")
        .tempdir()
        .expect("a temporary directory")
}
