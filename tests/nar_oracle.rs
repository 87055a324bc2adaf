//! Nix 2.8 as the oracle for valid NARs: for every path of a fixture closure, `nar dump` is
//! byte-identical to `nix-store --dump`, `nar hash` equals `nix hash path` and `nix-hash
//! --base32`, the in-process hash equals the narHash Nix registered, and NARs Nix wrote restore
//! to trees Nix dumps back identically.
//!
//! The large closure (1.25 GiB) is checked by the ignored test `large_closure_matches_nix`,
//! which `benches/nar-dump` runs first; on its own:
//!
//! ```sh
//! cargo test --release --test nar_oracle -- --ignored --nocapture
//! ```

mod nix_oracle;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use nix_oracle::{BIN, closure, closure_paths, compare_streams, nix, nix_store, path_infos, run};
use nixos_anywhere_rs::nar::{self, Canonical, NarReader};
use nixos_anywhere_rs::store::NarHash;

#[test]
fn dump_matches_nix_store_dump_small() {
    let paths = closure_paths(&closure("small"));
    assert_eq!(
        paths.len(),
        54,
        "the small closure changed; update fixtures/README.md"
    );
    check_dumps(&paths);
}

#[test]
fn hash_matches_nix_small() {
    let top = closure("small");
    check_hashes(&top, &closure_paths(&top));
}

#[test]
fn restore_of_nix_dump_dumps_back_identically_small() {
    let tmp = nix_oracle::tempdir();
    for (i, path) in closure_paths(&closure("small")).iter().enumerate() {
        let original = run(nix_store().args(["--dump", path]));

        // The binary, as a user runs it, unpacking Nix's NAR from stdin.
        let dest = tmp.path().join(format!("bin-{i}"));
        let mut child = Command::new(BIN)
            .args(["nar", "restore"])
            .arg(&dest)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&original)
            .expect("the binary reads the whole NAR");
        let out = child.wait_with_output().expect("the binary finishes");
        assert!(
            out.status.success(),
            "nar restore {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = run(nix_store().arg("--dump").arg(&dest));
        assert!(
            again == original,
            "{path}: Nix dumps our restored tree differently"
        );

        // The library with store metadata (mtime 1, read-only), as the receiver unpacks.
        let dest = tmp.path().join(format!("lib-{i}"));
        let mut reader = NarReader::new(original.as_slice());
        nar::restore(&mut reader, &dest, Canonical::Yes).expect("a valid NAR restores");
        let (hash, size) = reader.finish_at_eof().expect("nothing follows the archive");
        assert_eq!(size, original.len() as u64);
        assert_eq!(hash, NarHash::digest(&original));
        let again = run(nix_store().arg("--dump").arg(&dest));
        assert!(
            again == original,
            "{path}: Nix dumps our canonical tree differently"
        );
    }
}

/// The large closure: every path's dump and hash against Nix. Slow (1.25 GiB, twice).
#[test]
#[ignore = "reads 1.25 GiB twice; run by benches/nar-dump or with --ignored"]
fn large_closure_matches_nix() {
    let top = closure("large");
    let paths = closure_paths(&top);
    let started = std::time::Instant::now();
    let bytes = check_dumps(&paths);
    check_hashes(&top, &paths);
    println!(
        "large closure: {} paths, {} NAR bytes: dump byte-identical to nix-store --dump, \
         hashes equal to nix hash path, nix-hash --base32 and the registered narHash ({:.1} s)",
        paths.len(),
        bytes,
        started.elapsed().as_secs_f64()
    );
}

/// `nar dump P` against `nix-store --dump P`, streamed side by side; returns the bytes compared.
fn check_dumps(paths: &[String]) -> u64 {
    let mut total = 0;
    for path in paths {
        let mut ours = Command::new(BIN)
            .args(["nar", "dump", path])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut theirs = nix_store()
            .args(["--dump", path])
            .stdout(Stdio::piped())
            .spawn()
            .expect("nix-store starts");
        let compared = compare_streams(
            ours.stdout.take().expect("piped"),
            theirs.stdout.take().expect("piped"),
        );
        match compared {
            Ok(len) => total += len,
            Err(e) => panic!("nar dump {path} and nix-store --dump {path}: {e}"),
        }
        assert!(
            ours.wait().expect("the binary finishes").success(),
            "nar dump {path}"
        );
        assert!(
            theirs.wait().expect("nix-store finishes").success(),
            "nix-store --dump {path}"
        );
    }
    total
}

/// `nar hash` (SRI and `--base32`) and the in-process hash and size against Nix's.
fn check_hashes(top: &str, paths: &[String]) {
    let lines = |out: Vec<u8>| -> Vec<String> {
        String::from_utf8(out)
            .expect("hashes are ASCII")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let mut sri = Vec::new();
    let mut base32 = Vec::new();
    for chunk in paths.chunks(200) {
        sri.extend(lines(run(nix().args(["hash", "path"]).args(chunk))));
        let nix_hash = Command::new("nix-hash")
            .args(["--type", "sha256", "--base32"])
            .args(chunk)
            .env("NIX_REMOTE", "local")
            .output()
            .expect("nix-hash runs");
        assert!(nix_hash.status.success(), "nix-hash failed");
        base32.extend(lines(nix_hash.stdout));
    }
    assert_eq!(sri.len(), paths.len());
    assert_eq!(base32.len(), paths.len());
    let registered = path_infos(top, None);
    assert_eq!(registered.len(), paths.len());

    for ((path, sri), base32) in paths.iter().zip(&sri).zip(&base32) {
        let ours = lines(run(Command::new(BIN).args(["nar", "hash", path])));
        assert_eq!(ours, std::slice::from_ref(sri), "nar hash {path}");
        let ours = lines(run(
            Command::new(BIN).args(["nar", "hash", "--base32", path])
        ));
        assert_eq!(
            ours,
            std::slice::from_ref(base32),
            "nar hash --base32 {path}"
        );

        let (hash, size) = nar::dump_hash(Path::new(path)).expect("a store path dumps");
        let info = &registered[path];
        let registered = NarHash::parse(&info.nar_hash).expect("Nix prints a sha256 hash");
        assert_eq!(hash, registered, "dump_hash {path} against its narHash");
        assert_eq!(size, info.nar_size, "dump_hash {path} against its narSize");
    }
}
