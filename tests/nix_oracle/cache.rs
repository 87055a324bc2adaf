//! Binary caches made by Nix, for the substitution tests: copies of one to break, the files
//! behind a path's narinfo, closures by references, and a test CA with a certificate for
//! 127.0.0.1 (made with openssl) to serve a cache over HTTPS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use nixos_anywhere_rs::store::{PathInfo, StorePath};

use super::run;

/// `path` and everything it refers to, directly or not, in `closure`.
pub fn closure_of(closure: &[PathInfo], path: &StorePath) -> BTreeSet<StorePath> {
    let by_path: BTreeMap<&StorePath, &PathInfo> = closure.iter().map(|i| (&i.path, i)).collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![path.clone()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(by_path[&p].references.iter().cloned());
        }
    }
    seen
}

/// A copy of the cache directory `from` under `work`, to break.
pub fn copy_cache(work: &Path, from: &Path, name: &str) -> PathBuf {
    let to = work.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    run(Command::new("cp").arg("-r").arg(from).arg(&to));
    to
}

pub fn narinfo_file(cache: &Path, path: &StorePath) -> PathBuf {
    cache.join(format!("{}.narinfo", path.digest()))
}

/// The NAR file a cache's narinfo for `path` points at.
pub fn nar_file(cache: &Path, path: &StorePath) -> PathBuf {
    let text = std::fs::read_to_string(narinfo_file(cache, path)).unwrap();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    cache.join(url)
}

/// Rewrites each line of `path`'s narinfo with `edit`, which must change something.
pub fn edit_narinfo(cache: &Path, path: &StorePath, edit: impl Fn(&str) -> String) {
    let file = narinfo_file(cache, path);
    let text = std::fs::read_to_string(&file).unwrap();
    let edited: Vec<String> = text.lines().map(&edit).collect();
    assert_ne!(edited.join("\n") + "\n", text, "the edit changed nothing");
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();
}

/// A test CA and a server certificate it signed for 127.0.0.1.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a [`Tls`] in `dir`, the CA named `name`.
pub fn make_tls(dir: &Path, name: &str) -> Tls {
    let f = |file: &str| dir.join(file);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .args(ec)
        .arg("-keyout")
        .arg(f("ca.key"))
        .arg("-out")
        .arg(f("ca.pem")));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(f("server.key"))
        .arg("-out")
        .arg(f("server.csr")));
    std::fs::write(
        f("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(f("server.csr"))
        .arg("-CA")
        .arg(f("ca.pem"))
        .arg("-CAkey")
        .arg(f("ca.key"))
        .arg("-extfile")
        .arg(f("ext"))
        .arg("-out")
        .arg(f("server.pem")));
    Tls {
        ca: f("ca.pem"),
        cert: f("server.pem"),
        key: f("server.key"),
    }
}
