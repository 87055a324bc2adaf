//! `copy --substitute-on-destination` end to end: the binary as a user runs it, in a network
//! namespace of the test's own (the operator), over a 20 Mbit/s link to another (the target),
//! where a real sshd starts the agent and a real HTTP server on the target's 127.0.0.1 serves
//! binary caches Nix made (`nix copy --to file://...?secret-key=...`). Whatever the caches do,
//! the copy completes from the operator where it must, nothing wrong is registered, Nix
//! verifies the store, and a rerun sends nothing. No cache outside the test is ever named
//! (`--substituters` replaces whatever the machine's nix.conf lists, or the installer
//! stand-in's own nix.conf names only the test's), and the namespaces have no route out.

mod nix_oracle;
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix_oracle::cache::{Tls, closure_of, copy_cache, edit_narinfo, make_tls, nar_file};
use nix_oracle::{BIN, assert_verifies, closure, nix, nix_store, path_infos, run};
use nixos_anywhere_rs::store::{PathInfo, StorePath, query_closure};
use serde_json::Value;
use support::netns::{LinkPair, SERVER_ADDR};
use support::sshd::Sshd;

/// The small fixture closure, two keys, and the caches Nix made of it.
struct Fixture {
    top: String,
    closure: Vec<PathInfo>,
    /// A path in the middle: its closure is about half of the whole.
    part: StorePath,
    key_a: String,
    /// Signs `full_none_b`; never trusted.
    full_zstd: PathBuf,
    part_xz: PathBuf,
    full_none_b: PathBuf,
    empty: PathBuf,
    work: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("copy-substitute");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let top = closure("small");
        let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
        let half = closure.len() / 2;
        let part = closure
            .iter()
            .map(|i| (closure_of(&closure, &i.path).len().abs_diff(half), &i.path))
            .min()
            .unwrap()
            .1
            .clone();
        let mut keys = Vec::new();
        for name in ["copy-test-a-1", "copy-test-b-1"] {
            let (secret, public) = (
                work.join(format!("{name}.sec")),
                work.join(format!("{name}.pub")),
            );
            run(nix_store()
                .args(["--generate-binary-cache-key", name])
                .args([&secret, &public]));
            keys.push((
                secret,
                std::fs::read_to_string(&public).unwrap().trim().to_owned(),
            ));
        }
        let make = |name: &str, path: &str, compression: &str, secret: &Path| {
            let dir = work.join(name);
            let to = format!(
                "file://{}?compression={compression}&secret-key={}",
                dir.display(),
                secret.display()
            );
            run(nix()
                .args(["copy", "--to", &to])
                .args(["--option", "build-users-group", ""])
                .arg(path));
            dir
        };
        let full_zstd = make("full-zstd", &top, "zstd", &keys[0].0);
        let part_xz = make("part-xz", &part.to_absolute(), "xz", &keys[0].0);
        let full_none_b = make("full-none-b", &top, "none", &keys[1].0);
        let empty = work.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
        Fixture {
            top,
            closure,
            part,
            key_a: keys[0].1.clone(),
            full_zstd,
            part_xz,
            full_none_b,
            empty,
            work,
        }
    })
}

/// The operator's namespace, 20 Mbit/s from the target's, where sshd runs.
struct Setup {
    link: LinkPair,
    sshd: Sshd,
}

fn setup(tag: &str) -> Setup {
    let link = LinkPair::new(tag);
    link.shape("20mbit");
    let sshd = Sshd::start_in_netns(&link.server_ns, SERVER_ADDR);
    Setup { link, sshd }
}

/// A process in the target's namespace, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` in the target's namespace; it prints the port it listens on.
fn start_in_target(setup: &Setup, program: &str, args: &[&str]) -> Served {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &setup.link.server_ns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ip netns exec runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the server prints its port");
    Served {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The test's cache server (tests/substitute_server.py) on the target's 127.0.0.1.
fn serve(setup: &Setup, dir: &Path, stall: bool) -> Served {
    let script = nix_oracle::repo().join("tests/substitute_server.py");
    let mut args = vec![script.to_str().unwrap(), dir.to_str().unwrap()];
    if stall {
        args.push("--stall");
    }
    start_in_target(setup, "python3", &args)
}

/// A server on the target's 127.0.0.1 that accepts connections and never says a word.
fn silent(setup: &Setup) -> Served {
    let code = "import socket,time\n\
        s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(128)\n\
        print(s.getsockname()[1], flush=True); time.sleep(3600)";
    start_in_target(setup, "python3", &["-c", code])
}

/// The copy command with substitution from exactly `caches`, in the operator's namespace.
fn copy_command(setup: &Setup, root: &Path, caches: &[&str], extra: &[&str]) -> Command {
    let fx = fixture();
    let mut cmd = setup.link.client_command(BIN);
    cmd.args(["copy", "--json", "-s", "--to"])
        .arg(format!("ssh://{}", setup.sshd.destination()))
        .arg("-i")
        .arg(&setup.sshd.client_key)
        .arg("--root")
        .arg(root)
        .arg("--substituters")
        .arg(caches.join(" "))
        .args(["--trusted-public-keys", &fx.key_a])
        .args(extra)
        .arg(&fx.top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY");
    cmd
}

fn assert_ok(out: &Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "copy failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

/// Runs a copy that must succeed; returns its `--json` output and its stderr.
fn copy(setup: &Setup, root: &Path, caches: &[&str], extra: &[&str]) -> (Value, String) {
    let out = copy_command(setup, root, caches, extra).output().unwrap();
    assert_ok(&out, &setup.sshd);
    (
        serde_json::from_slice(&out.stdout).expect("a JSON summary"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// The store is whole, right, verified by Nix; a rerun sends and fetches nothing.
fn assert_complete(setup: &Setup, root: &Path, caches: &[&str]) {
    let fx = fixture();
    assert_verifies(root);
    assert_eq!(path_infos(&fx.top, Some(root)), path_infos(&fx.top, None));
    let (again, _) = copy(setup, root, caches, &[]);
    assert_eq!(n(&again, "paths_sent"), 0, "{again}");
    assert_eq!(n(&again, "paths_substituted"), 0, "{again}");
    assert_eq!(n(&again, "wire_bytes"), 0, "{again}");
    assert_eq!(
        n(&again, "paths_skipped"),
        fx.closure.len() as u64,
        "{again}"
    );
}

fn total_nar(paths: &BTreeSet<StorePath>) -> u64 {
    fixture()
        .closure
        .iter()
        .filter(|i| paths.contains(&i.path))
        .map(|i| i.nar_size)
        .sum()
}

/// Part of the closure cached (xz), then all of it (zstd), then none: the dry run shows the
/// plan per cache and changes nothing; each copy substitutes exactly what the cache holds and
/// streams the rest.
#[test]
fn part_all_or_none_of_the_closure_from_the_targets_cache() {
    let fx = fixture();
    let setup = setup("sp");
    let part = serve(&setup, &fx.part_xz, false);
    let full = serve(&setup, &fx.full_zstd, false);
    let empty = serve(&setup, &fx.empty, false);
    let part_closure = closure_of(&fx.closure, &fx.part);
    let total = fx.closure.len() as u64;
    let dir = tempfile::tempdir().unwrap();

    // The plan, before anything is downloaded.
    let root = dir.path().join("part");
    let (plan, _) = copy(&setup, &root, &[&part.url], &["--dry-run"]);
    let sub = &plan["substitution"];
    assert_eq!(sub["sources"][0]["url"], part.url.as_str(), "{plan}");
    assert_eq!(
        n(&sub["sources"][0], "paths"),
        part_closure.len() as u64,
        "{plan}"
    );
    assert_eq!(
        n(&sub["sources"][0], "nar_bytes"),
        total_nar(&part_closure),
        "{plan}"
    );
    assert!(n(&sub["sources"][0], "file_bytes") > 0, "{plan}");
    assert_eq!(
        sub["not_substituted"].as_array().unwrap().len() + part_closure.len(),
        fx.closure.len(),
        "{plan}"
    );
    assert!(!root.exists(), "a dry run creates nothing");

    let (summary, stderr) = copy(&setup, &root, &[&part.url], &[]);
    assert_eq!(
        n(&summary, "paths_substituted"),
        part_closure.len() as u64,
        "{summary}\n{stderr}"
    );
    assert_eq!(
        n(&summary, "paths_sent"),
        total - part_closure.len() as u64,
        "{summary}"
    );
    assert_eq!(
        n(&summary, "substituted_nar_bytes"),
        total_nar(&part_closure),
        "{summary}"
    );
    let cache = &summary["caches"][0];
    assert_eq!(cache["url"], part.url.as_str(), "{summary}");
    assert_eq!(n(cache, "paths"), part_closure.len() as u64, "{summary}");
    assert!(n(cache, "file_bytes") > 0, "{summary}");
    assert!(n(&summary, "wire_bytes") > 0, "{summary}");
    assert_complete(&setup, &root, &[&part.url]);

    // All of it from the cache: nothing streamed.
    let root = dir.path().join("full");
    let (summary, _) = copy(&setup, &root, &[&full.url, &part.url], &[]);
    assert_eq!(n(&summary, "paths_substituted"), total, "{summary}");
    assert_eq!(n(&summary, "paths_sent"), 0, "{summary}");
    assert_eq!(n(&summary, "wire_bytes"), 0, "{summary}");
    assert_complete(&setup, &root, &[&full.url]);

    // A cache that holds nothing: all streamed.
    let root = dir.path().join("none");
    let (summary, _) = copy(&setup, &root, &[&empty.url], &[]);
    assert_eq!(n(&summary, "paths_substituted"), 0, "{summary}");
    assert_eq!(n(&summary, "paths_sent"), total, "{summary}");
    assert_complete(&setup, &root, &[&empty.url]);
}

/// Paths of the closure that depend on none of `bad` (and are none of them).
fn clear_of(bad: &[&StorePath]) -> BTreeSet<StorePath> {
    let fx = fixture();
    fx.closure
        .iter()
        .map(|i| i.path.clone())
        .filter(|p| {
            let deps = closure_of(&fx.closure, p);
            bad.iter().all(|b| !deps.contains(*b))
        })
        .collect()
}

/// One cache with a wrong signature, a narinfo whose NarHash lies, a NAR that is another
/// path's, a truncated NAR and a missing one (404), behind it a cache whose key nobody trusts:
/// exactly the paths clear of all five come from the caches, the rest from the operator, the
/// failed downloads among them after the agent asked for them.
#[test]
fn bad_caches_fall_back_to_the_operators_stream() {
    let fx = fixture();
    let setup = setup("sb");
    let bad = copy_cache(&fx.work, &fx.full_zstd, "bad");
    // Five distinct paths spread over the closure, dependencies first: the downloads that fail
    // first (their dependents fail with them, for want of a reference), then the paths no
    // cache is trusted for, on which those three cannot depend.
    let step = (fx.closure.len() / 6).max(1);
    let victims: Vec<&StorePath> = (1..=5)
        .map(|k| &fx.closure[(k * step).min(fx.closure.len() - 1)].path)
        .collect();
    let [other_nar, truncated, missing, wrong_sig, lying_hash] = victims[..] else {
        panic!("five victims")
    };
    assert_eq!(
        victims.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct victims"
    );
    edit_narinfo(&bad, wrong_sig, |l| match l.strip_prefix("Sig: ") {
        Some(sig) => {
            let (name, value) = sig.split_once(':').unwrap();
            let flipped = if value.starts_with('A') { 'B' } else { 'A' };
            format!("Sig: {name}:{flipped}{}", &value[1..])
        }
        None => l.to_owned(),
    });
    let another_hash = fx.closure[0].nar_hash.to_string();
    edit_narinfo(&bad, lying_hash, |l| {
        if l.starts_with("NarHash: ") {
            format!("NarHash: {another_hash}")
        } else {
            l.to_owned()
        }
    });
    // The narinfo is right and signed; the NAR file is not the one it describes.
    let (victim_nar, donor_nar) = (
        nar_file(&bad, other_nar),
        nar_file(&bad, &fx.closure[0].path),
    );
    std::fs::copy(donor_nar, victim_nar).unwrap();
    let file = nar_file(&bad, truncated);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(nar_file(&bad, missing)).unwrap();

    let bad_server = serve(&setup, &bad, false);
    let untrusted = serve(&setup, &fx.full_none_b, false);
    let caches = [bad_server.url.as_str(), untrusted.url.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (summary, stderr) = copy(&setup, &root, &caches, &[]);
    let expected = clear_of(&victims);
    assert_eq!(
        n(&summary, "paths_substituted"),
        expected.len() as u64,
        "{summary}\n{stderr}"
    );
    assert_eq!(
        n(&summary, "paths_sent"),
        (fx.closure.len() - expected.len()) as u64,
        "{summary}"
    );
    let failed: BTreeSet<String> = summary["substitution_failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    for victim in [other_nar, truncated, missing] {
        assert!(
            failed.contains(&victim.to_absolute()),
            "{victim} is among the failed downloads: {summary}"
        );
    }
    for victim in [wrong_sig, lying_hash] {
        assert!(
            !failed.contains(&victim.to_absolute()),
            "{victim} was never planned: {summary}"
        );
    }
    assert_complete(&setup, &root, &caches);
}

/// A cache whose NAR downloads stop halfway and never resume, one that accepts connections and
/// never answers, and one that refuses them: the copy ends from the operator, in bounded time,
/// with a warning for each.
#[test]
fn stalling_silent_and_unreachable_caches_do_not_hang_the_copy() {
    let fx = fixture();
    let setup = setup("ss");
    let stalling = serve(&setup, &fx.full_zstd, true);
    let silent = silent(&setup);
    // Nothing listens on the target's port 9.
    let refused = "http://127.0.0.1:9";
    let caches = [silent.url.as_str(), refused, stalling.url.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let start = Instant::now();
    let (summary, stderr) = copy(&setup, &root, &caches, &[]);
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(n(&summary, "paths_substituted"), 0, "{summary}\n{stderr}");
    assert_eq!(
        n(&summary, "paths_sent"),
        fx.closure.len() as u64,
        "{summary}"
    );
    assert!(
        stderr.contains(&silent.url) && stderr.contains("no answer"),
        "{stderr}"
    );
    assert!(stderr.contains(refused), "{stderr}");
    assert_complete(&setup, &root, &caches);
}

/// Without `--substituters` or keys, the agent uses what the target's Nix would: its
/// `nix.conf` (here `$NIX_CONF_DIR`, as an installer stand-in's sshd sets it) names the cache,
/// the key, and the CA (`ssl-cert-file`) of the cache's HTTPS certificate. Where it names no
/// CA, the operator's `--ssl-cert-file` gives it. The cache is on this machine's 127.0.0.1.
#[test]
fn the_targets_own_nix_conf_names_the_cache_its_key_and_its_ca() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let Tls { ca, cert, key } = make_tls(dir.path(), "copy substitute test CA");
    let script = nix_oracle::repo().join("tests/substitute_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&fx.part_xz)
        .arg("--tls")
        .arg(&cert)
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Served {
        url: format!("https://127.0.0.1:{}", line.trim()),
        child,
    };
    let sshd = Sshd::start_as_installer(&format!(
        "substituters = {}\ntrusted-public-keys = {}\nssl-cert-file = {}\n",
        server.url,
        fx.key_a,
        ca.display()
    ));
    let root = dir.path().join("root");
    let out = Command::new(BIN)
        .args(["copy", "--json", "-s", "--to"])
        .arg(format!("ssh://{}", sshd.destination()))
        .arg("-i")
        .arg(&sshd.client_key)
        .arg("--root")
        .arg(&root)
        .arg(&fx.top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .output()
        .unwrap();
    assert_ok(&out, &sshd);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let part_closure = closure_of(&fx.closure, &fx.part);
    assert_eq!(
        n(&summary, "paths_substituted"),
        part_closure.len() as u64,
        "{summary}"
    );
    assert_eq!(
        summary["caches"][0]["url"],
        server.url.as_str(),
        "{summary}"
    );
    assert_verifies(&root);
    assert_eq!(path_infos(&fx.top, Some(&root)), path_infos(&fx.top, None));

    // A target whose nix.conf names the cache and key but not the CA: the bundled roots do not
    // know the server, so the cache is skipped with a warning and everything is streamed ...
    let sshd = Sshd::start_as_installer(&format!(
        "substituters = {}\ntrusted-public-keys = {}\n",
        server.url, fx.key_a
    ));
    let root = dir.path().join("without-ca");
    let (summary, stderr) = copy_to_installer(&sshd, &root, &["--json"]);
    assert_eq!(n(&summary, "paths_substituted"), 0, "{summary}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // ... unless the operator gives the CA with --ssl-cert-file. The file is read here: in a
    // mount namespace of the tool's own it lies on a tmpfs the target does not see.
    let private = dir.path().join("operator-only");
    std::fs::create_dir(&private).unwrap();
    let root = dir.path().join("with-ca");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs "$0" && cp "$1" "$0/ca.pem" && shift && exec "$@""#)
        .arg(&private)
        .arg(&ca)
        .arg(BIN)
        .args(["copy", "--json", "-s", "--to"])
        .arg(format!("ssh://{}", sshd.destination()))
        .arg("-i")
        .arg(&sshd.client_key)
        .arg("--root")
        .arg(&root)
        .arg("--ssl-cert-file")
        .arg(private.join("ca.pem"))
        .arg(&fx.top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .output()
        .unwrap();
    assert_ok(&out, &sshd);
    assert!(
        std::fs::read_dir(&private).unwrap().next().is_none(),
        "the CA was never on the target's side"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        n(&summary, "paths_substituted"),
        part_closure.len() as u64,
        "{summary}"
    );
    assert_verifies(&root);
    assert_eq!(path_infos(&fx.top, Some(&root)), path_infos(&fx.top, None));
}

/// `copy -s` to the installer stand-in `sshd` with no substitution flags: the substituters
/// and keys are its own nix.conf's. Returns the `--json` output (the plan with `--dry-run`) and the stderr.
fn copy_to_installer(sshd: &Sshd, root: &Path, extra: &[&str]) -> (Value, String) {
    let out = Command::new(BIN)
        .args(["copy", "-s", "--to"])
        .arg(format!("ssh://{}", sshd.destination()))
        .arg("-i")
        .arg(&sshd.client_key)
        .arg("--root")
        .arg(root)
        .args(extra)
        .arg(&fixture().top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .output()
        .unwrap();
    assert_ok(&out, sshd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !extra.contains(&"--json") {
        return (Value::Null, stderr);
    }
    let json = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    (json, stderr)
}

/// The installer's `nix.conf` names its own store (`extra-substituters = /`, and no cache at
/// all), which holds the whole closure, as an installer booted from the operator's build
/// would: the plan takes everything from the local store, the copy streams nothing and
/// downloads nothing, Nix verifies the store, and a rerun has nothing to do.
#[test]
fn the_installers_own_store_is_a_source_without_network() {
    let fx = fixture();
    let sshd = Sshd::start_as_installer("substituters =\nextra-substituters = /\n");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let total = fx.closure.len() as u64;
    let all: BTreeSet<StorePath> = fx.closure.iter().map(|i| i.path.clone()).collect();

    let (plan, _) = copy_to_installer(&sshd, &root, &["--dry-run", "--json"]);
    let sources = plan["substitution"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{plan}");
    assert_eq!(sources[0]["url"], "/", "{plan}");
    assert_eq!(sources[0]["kind"], "local", "{plan}");
    assert_eq!(n(&sources[0], "paths"), total, "{plan}");
    assert_eq!(n(&sources[0], "nar_bytes"), total_nar(&all), "{plan}");
    assert_eq!(n(&sources[0], "file_bytes"), 0, "{plan}");
    assert!(
        plan["substitution"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["kind"] == "local"),
        "{plan}"
    );
    let (_, text) = copy_to_installer(&sshd, &root, &["--dry-run"]);
    assert!(
        text.contains(&format!("from local store /: {total} paths")),
        "{text}"
    );
    assert!(!root.exists(), "a dry run creates nothing");

    let (summary, stderr) = copy_to_installer(&sshd, &root, &["--json"]);
    assert_eq!(
        n(&summary, "paths_substituted"),
        total,
        "{summary}\n{stderr}"
    );
    assert_eq!(
        n(&summary, "substituted_nar_bytes"),
        total_nar(&all),
        "{summary}"
    );
    assert_eq!(n(&summary, "paths_sent"), 0, "{summary}");
    assert_eq!(n(&summary, "wire_bytes"), 0, "nothing streamed: {summary}");
    let source = &summary["caches"][0];
    assert_eq!(source["kind"], "local", "{summary}");
    assert_eq!(n(source, "paths"), total, "{summary}");
    assert_eq!(n(source, "file_bytes"), 0, "nothing downloaded: {summary}");
    assert_verifies(&root);
    assert_eq!(path_infos(&fx.top, Some(&root)), path_infos(&fx.top, None));

    let (again, _) = copy_to_installer(&sshd, &root, &["--json"]);
    assert_eq!(n(&again, "paths_sent"), 0, "{again}");
    assert_eq!(n(&again, "paths_substituted"), 0, "{again}");
    assert_eq!(n(&again, "wire_bytes"), 0, "{again}");
    assert_eq!(n(&again, "paths_skipped"), total, "{again}");
}

/// A regular file somewhere in `dir` (itself, if it is one).
fn a_file_in(dir: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    if meta.is_file() {
        return Some(dir.to_owned());
    }
    if !meta.is_dir() {
        return None;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries.iter().find_map(|e| a_file_in(e))
}

/// The local store named is another store root (`substituters = DIR`), made by Nix, in which
/// one path's files were changed after it was registered (its database still says the right
/// hash): that path's NAR does not hash to the tool's, so it is not registered from there but
/// streamed, with the paths that refer to it; the rest comes from the local store, and Nix
/// verifies the result.
#[test]
fn a_local_store_whose_copy_was_changed_is_checked_and_streamed() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    run(nix()
        .args(["copy", "--no-check-sigs", "--to"])
        .arg(&local)
        .args(["--option", "build-users-group", ""])
        .arg(&fx.top));
    let (victim, file) = fx.closure[fx.closure.len() / 2..]
        .iter()
        .find_map(|i| {
            let file = a_file_in(&i.path.under_root(&local))?;
            (std::fs::metadata(&file).unwrap().len() > 0).then(|| (i.path.clone(), file))
        })
        .expect("a path of the closure holds a non-empty file");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();

    let sshd = Sshd::start_as_installer(&format!("substituters = {}\n", local.display()));
    let root = dir.path().join("root");
    let (summary, stderr) = copy_to_installer(&sshd, &root, &["--json"]);
    let clear = clear_of(&[&victim]);
    assert_eq!(
        n(&summary, "paths_substituted"),
        clear.len() as u64,
        "{summary}\n{stderr}"
    );
    assert_eq!(
        n(&summary, "paths_sent"),
        (fx.closure.len() - clear.len()) as u64,
        "{summary}"
    );
    assert_eq!(summary["caches"][0]["kind"], "local", "{summary}");
    let failed: Vec<&str> = summary["substitution_failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(failed.contains(&victim.to_absolute().as_str()), "{summary}");
    assert_verifies(&root);
    assert_eq!(path_infos(&fx.top, Some(&root)), path_infos(&fx.top, None));
}
