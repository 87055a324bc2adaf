//! `copy --from STORE-URI`, as `nix copy --from`: the closure is read from another store, a
//! binary cache (`file://`, read through Nix) or a store root (read directly), and never from
//! the local store; what the source holds wrongly is rejected at the destination.

mod nix_oracle;
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use nix_oracle::{BIN, assert_verifies, closure, nix, nix_store, output, path_infos, run};
use support::sshd::Sshd;

/// A store path of its own (fresh random bytes), placed in every store of `stores` and then
/// deleted from the local store, so that only they hold it.
fn path_only_in(stores: &[&str]) -> String {
    let tmp = nix_oracle::tempdir();
    let dir = tmp.path().join("only-elsewhere");
    fs::create_dir(&dir).unwrap();
    let mut bytes = vec![0u8; 96 * 1024];
    getrandom::fill(&mut bytes).unwrap();
    fs::write(dir.join("data"), &bytes).unwrap();
    fs::write(dir.join("note"), "in other stores only\n").unwrap();
    let out = run(nix_store().arg("--add").arg(&dir));
    let path = String::from_utf8(out).unwrap().trim().to_owned();
    for store in stores {
        copy_with_nix(store, &path);
    }
    run(nix_store().args(["--delete", &path]));
    assert!(
        !Path::new(&path).exists(),
        "{path} is gone from the local store"
    );
    path
}

/// `nix copy --to STORE PATH`, unsigned paths allowed.
fn copy_with_nix(store: &str, path: &str) {
    run(nix().args(["copy", "--no-check-sigs", "--to", store, path]));
}

fn copy_from(from: &str, root: &Path, paths: &[&str]) -> Output {
    output(
        Command::new(BIN)
            .args(["copy", "--json", "--to", "local", "--from", from, "--root"])
            .arg(root)
            .args(paths),
    )
}

fn assert_ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

/// The destination holds `top`'s closure exactly as the source store describes it.
fn assert_same_as(source: &str, root: &Path, top: &str) {
    let expected = path_infos(top, Some(Path::new(source)));
    let copied = path_infos(top, Some(root));
    assert!(!expected.is_empty());
    assert_eq!(
        copied,
        expected,
        "{top} in {} and in {source}",
        root.display()
    );
}

#[test]
fn copy_from_a_binary_cache_reads_the_cache() {
    let tmp = nix_oracle::tempdir();
    let cache = format!("file://{}", tmp.path().join("cache").display());
    let only = path_only_in(&[&format!("{cache}?compression=xz")]);
    let small = closure("small");
    copy_with_nix(&format!("{cache}?compression=xz"), &small);

    // Locally, straight into a store root, and over SSH through the agent's stream.
    let local = tmp.path().join("local");
    let summary = assert_ok(&copy_from(&cache, &local, &[&only, &small]));
    assert_verifies(&local);
    assert_same_as(&cache, &local, &only);
    assert_same_as(&cache, &local, &small);
    let paths = summary["paths_sent"].as_u64().unwrap();
    assert_eq!(paths as usize, path_infos(&small, None).len() + 1);

    let sshd = Sshd::start();
    let remote = tmp.path().join("remote");
    let out = output(
        Command::new(BIN)
            .args(["copy", "--json", "--from", &cache, "--to"])
            .arg(format!("ssh://{}", sshd.destination()))
            .arg("-i")
            .arg(&sshd.client_key)
            .arg("--root")
            .arg(&remote)
            .args([&only, &small])
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_PRIVATE_KEY"),
    );
    assert_ok(&out);
    assert_verifies(&remote);
    assert_same_as(&cache, &remote, &only);
    assert_same_as(&cache, &remote, &small);

    // Without --from, the local store is asked, and it has no such path.
    let out = output(
        Command::new(BIN)
            .args(["copy", "--to", "local", "--root"])
            .arg(tmp.path().join("none"))
            .arg(&only),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the local store"), "{stderr}");
}

#[test]
fn copy_from_a_store_root_reads_it_directly() {
    let tmp = nix_oracle::tempdir();
    let other = tmp.path().join("other");
    let only = path_only_in(&[other.to_str().unwrap()]);
    for (n, from) in [
        other.display().to_string(),
        format!("local?root={}", other.display()),
    ]
    .iter()
    .enumerate()
    {
        let root = tmp.path().join(format!("dest{n}"));
        assert_ok(&copy_from(from, &root, &[&only]));
        assert_verifies(&root);
        assert_same_as(other.to_str().unwrap(), &root, &only);
    }
}

#[test]
fn a_nar_the_cache_holds_wrongly_is_rejected_and_nothing_registered() {
    let tmp = nix_oracle::tempdir();
    let dir = tmp.path().join("cache");
    let cache = format!("file://{}", dir.display());
    let only = path_only_in(&[&format!("{cache}?compression=none")]);

    // One byte of the file's contents changed: the NAR still parses, its hash is another.
    let nar = fs::read_dir(dir.join("nar"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "nar"))
        .expect("an uncompressed NAR in the cache");
    let mut bytes = fs::read(&nar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&nar, &bytes).unwrap();

    let root = tmp.path().join("dest");
    let out = copy_from(&cache, &root, &[&only]);
    assert!(!out.status.success(), "a corrupt NAR was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let base = only.trim_start_matches("/nix/store/");
    assert!(stderr.contains(base), "the error names the path: {stderr}");
    assert!(
        !root.join("nix/store").join(base).exists(),
        "nothing of it was placed"
    );
    let registered = run(nix().args(["path-info", "--all", "--store"]).arg(&root));
    assert!(registered.is_empty(), "nothing was registered");

    // A path the cache does not hold: the closure cannot be read, and the error says where.
    let missing = "/nix/store/00000000000000000000000000000000-not-there";
    let out = copy_from(&cache, &tmp.path().join("dest2"), &[missing]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&cache), "{stderr}");
}
