//! `copy --to ssh://` end to end: the binary as a user runs it, a real OpenSSH server on
//! 127.0.0.1, the agent uploaded and started over SSH, and Nix 2.8 judging the result.

mod nix_oracle;
mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix_oracle::{
    BIN, assert_verifies, closure, closure_paths, exact_snapshot, path_infos, placed, registered,
};
use nixos_anywhere_rs::store::{StorePath, query_closure};
use support::netns::{LinkPair, SERVER_ADDR};
use support::sshd::Sshd;

fn copy_command(sshd: &Sshd, root: &Path, top: &str, extra: &[&str]) -> Command {
    copy_command_from(None, sshd, root, top, extra)
}

/// The copy command, run in `link`'s client namespace if given.
fn copy_command_from(
    link: Option<&LinkPair>,
    sshd: &Sshd,
    root: &Path,
    top: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = match link {
        Some(link) => link.client_command(BIN),
        None => Command::new(BIN),
    };
    cmd.args(["copy", "--json", "--to"])
        .arg(format!("ssh://{}", sshd.destination()))
        .arg("-i")
        .arg(&sshd.client_key)
        .arg("--root")
        .arg(root)
        .args(extra)
        .arg(top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY");
    cmd
}

/// Runs a copy that must succeed; returns its `--json` summary.
fn copy(sshd: &Sshd, root: &Path, top: &str, extra: &[&str]) -> serde_json::Value {
    let out = copy_command(sshd, root, top, extra).output().unwrap();
    assert_ok(&out, sshd);
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

fn assert_ok(out: &Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "copy failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

/// Waits until no process holds the store root (an agent whose connection dropped finishes
/// registering what it received before it exits).
fn wait_for_agent_to_release(root: &Path) {
    let lock = File::open(root.join("nix/var/nix/db/big-lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
}

#[test]
fn copies_a_closure_over_ssh_that_nix_accepts() {
    let sshd = Sshd::start();
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");

    let first = copy(&sshd, &root, &top, &[]);
    let expected = path_infos(&top, None);
    assert_eq!(first["paths_sent"], expected.len() as u64, "{first}");
    assert_verifies(&root);
    assert_eq!(path_infos(&top, Some(&root)), expected);

    let second = copy(&sshd, &root, &top, &["--compress", "none"]);
    assert_eq!(second["paths_sent"], 0, "{second}");
    assert_eq!(second["paths_skipped"], expected.len() as u64, "{second}");
}

#[test]
fn every_compression_setting_gives_the_same_store() {
    let sshd = Sshd::start();
    let top = closure("small");
    let expected = path_infos(&top, None);
    for setting in ["none", "1", "9"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let summary = copy(&sshd, &root, &top, &["--compress", setting]);
        assert_verifies(&root);
        assert_eq!(
            path_infos(&top, Some(&root)),
            expected,
            "--compress {setting}"
        );
        let levels = summary["zstd_levels"].as_array().unwrap();
        let used: Vec<i64> = levels.iter().map(|l| l[0].as_i64().unwrap()).collect();
        let wire = summary["wire_bytes"].as_u64().unwrap();
        let nar = summary["nar_bytes"].as_u64().unwrap();
        match setting {
            "none" => assert!(used == [0] && wire > nar, "{summary}"),
            // Blocks that do not compress go raw, so level 0 may appear beside the one asked.
            level => assert!(
                used.contains(&level.parse().unwrap()) && wire < nar,
                "{summary}"
            ),
        }
    }
}

/// The tool dies (its connection with it) at several points of a transfer: the target's store
/// verifies, and a rerun sends exactly the paths that were not registered.
#[test]
fn a_lost_connection_leaves_the_target_resumable() {
    let sshd = Sshd::start();
    let top = closure("small");
    let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
    let total = closure.len() as u64;
    // The latest kill point still leaves 2 MiB of NAR (some 30 paths here) to send, so the copy
    // cannot finish between two looks at the store directory. There is no way to hold this
    // stream still, as tests/agent.rs does, so the margin must come from the data.
    let mut left: u64 = closure.iter().map(|i| i.nar_size).sum();
    let mut late = 0;
    for info in &closure {
        left -= info.nar_size;
        if left < 2 << 20 {
            break;
        }
        late += 1;
    }
    assert!(
        late >= 4,
        "only {late} paths precede the small closure's last 2 MiB"
    );
    for kill_after_paths in [1, late / 2, late] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut child = copy_command(&sshd, &root, &top, &["--compress", "9"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut finished = false;
        while placed(&root) < kill_after_paths {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        let _ = child.wait();
        assert!(
            !finished,
            "the copy finished before {kill_after_paths} paths were placed"
        );
        wait_for_agent_to_release(&root);
        assert_verifies(&root);
        // Data already in flight may have landed after the kill: anything from none to all.
        let before = registered(&root);
        let rerun = copy(&sshd, &root, &top, &[]);
        assert_eq!(
            rerun["paths_sent"],
            total - before,
            "after a kill at {kill_after_paths}: {rerun}"
        );
        assert_verifies(&root);
        assert_eq!(copy(&sshd, &root, &top, &[])["paths_sent"], 0);
    }
}

#[test]
fn a_target_that_cannot_be_reached_or_authenticated_is_a_clear_error() {
    let sshd = Sshd::start();
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    let stranger = support::sshd::keygen(&dir.path().join("stranger"));
    let out = Command::new(BIN)
        .args(["copy", "--to"])
        .arg(format!("ssh://{}", sshd.destination()))
        .arg("-i")
        .arg(&stranger)
        .args(["-o", "IdentitiesOnly=yes", "--root"])
        .arg(dir.path().join("root"))
        .arg(&top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(
        !dir.path().join("root").exists(),
        "nothing may happen on the target"
    );
}

/// The agent is uploaded once per build, under a name made of its SHA-256, and started with no
/// further round trip after that; an upload clears other builds' agents unused for an hour.
/// The server here writes its own debug lines into each session's stderr, as sshd does at
/// `LogLevel DEBUG1`.
#[test]
fn the_agent_is_uploaded_once_per_build() {
    use sha2::{Digest, Sha256};
    use std::time::SystemTime;

    let sshd = Sshd::start_with("LogLevel DEBUG1\n");
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    // A build of its own: the same executable with bytes appended (ELF ignores them).
    let agent = dir.path().join("agent");
    let mut bytes = std::fs::read(BIN).unwrap();
    bytes.extend_from_slice(format!("\nagent test {:?}\n", SystemTime::now()).as_bytes());
    std::fs::write(&agent, &bytes).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hex = data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes));
    let remote_dir = Path::new("/run/nixos-anywhere-rs");
    let uploaded = remote_dir.join(format!("nixos-anywhere-rs-{}", &hex[..32]));

    std::fs::create_dir_all(remote_dir).unwrap();
    let stale = remote_dir.join(format!("nixos-anywhere-rs-{}", "0".repeat(32)));
    let recent = remote_dir.join(format!("nixos-anywhere-rs-{}", "f".repeat(32)));
    for (file, age) in [(&stale, 7200), (&recent, 60)] {
        let f = File::create(file).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age))
            .unwrap();
    }

    let run = |root: &Path| {
        let out = copy_command(&sshd, root, &top, &[])
            .env("NIXOS_ANYWHERE_RS_AGENT", &agent)
            .output()
            .unwrap();
        assert_ok(&out, &sshd);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run(&dir.path().join("root"));
    assert!(first.contains("uploaded the agent"), "{first}");
    assert!(uploaded.exists());
    assert!(!stale.exists(), "an agent unused for two hours is removed");
    assert!(recent.exists(), "an agent used a minute ago is kept");

    let second = run(&dir.path().join("other-root"));
    assert!(second.contains("reusing the agent"), "{second}");
    assert!(!second.contains("uploaded"), "{second}");

    for file in [&uploaded, &recent] {
        std::fs::remove_file(file).unwrap();
    }
}

/// A namespace pair of the test's own (see `support::netns`), its link shaped to `rate`, and an
/// sshd at the server end.
fn shaped_link(tag: &str, rate: &str) -> (LinkPair, Sshd) {
    let link = LinkPair::new(tag);
    link.shape(rate);
    let sshd = Sshd::start_in_netns(&link.server_ns, SERVER_ADDR);
    (link, sshd)
}

/// Over a 20 Mbit/s link between two network namespaces of the test's own, the copy is whole and
/// right, and `auto` compresses: there the link, not the CPU, is what limits.
#[test]
fn copies_over_a_shaped_link_compressing_for_it() {
    let (link, sshd) = shaped_link("sh", "20mbit");
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");

    let out = copy_command_from(Some(&link), &sshd, &root, &top, &[])
        .output()
        .unwrap();
    assert_ok(&out, &sshd);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_verifies(&root);
    assert_eq!(path_infos(&top, Some(&root)), path_infos(&top, None));
    let (mut compressed, mut blocks) = (0, 0);
    for pair in summary["zstd_levels"].as_array().expect("zstd_levels") {
        let (level, n) = (pair[0].as_i64().unwrap(), pair[1].as_u64().unwrap());
        blocks += n;
        if level > 0 {
            compressed += n;
        }
    }
    assert!(compressed * 2 > blocks, "{summary}");
    let (nar, wire) = (
        summary["nar_bytes"].as_u64().unwrap(),
        summary["wire_bytes"].as_u64().unwrap(),
    );
    assert!(wire * 10 < nar * 6, "{summary}");
}

/// A link that goes silent mid-transfer, as a pulled cable does (no reset, no error): the tool
/// gives up after its keepalives go unanswered, the agent after as long a silence, freeing the
/// store; once the link is back, a rerun sends exactly what was not registered.
#[test]
fn a_connection_that_dies_silently_leaves_the_target_free_and_resumable() {
    let (link, sshd) = shaped_link("cut", "8mbit");
    let top = closure("small");
    let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let patience = [
        "--ssh-option",
        "ServerAliveInterval=1",
        "--ssh-option",
        "ServerAliveCountMax=3",
    ];

    let mut child = copy_command_from(Some(&link), &sshd, &root, &top, &patience)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while placed(&root) < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before the cut"
        );
        assert!(Instant::now() < deadline, "no progress: {}", sshd.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    link.set_link(false);
    let cut = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "the tool did not give up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!out.status.success(), "the copy succeeded over a dead link");
    // The agent, still running on the other side of the dead link, must let go of the store.
    let lock = File::open(root.join("nix/var/nix/db/big-lock")).unwrap();
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "the agent still holds the store"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(lock);
    assert_verifies(&root);

    link.set_link(true);
    let before = registered(&root);
    assert!(
        before < closure.len() as u64,
        "everything arrived before the cut"
    );
    let out = copy_command_from(Some(&link), &sshd, &root, &top, &patience)
        .output()
        .unwrap();
    assert_ok(&out, &sshd);
    let rerun: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rerun["paths_sent"],
        closure.len() as u64 - before,
        "{rerun}"
    );
    assert_verifies(&root);
}

/// `copy --dry-run --json` against a target that holds part of the closure lists exactly the
/// paths it lacks, and changes nothing there: no lock, no directory, no database journal.
#[test]
fn a_dry_run_lists_the_missing_paths_and_leaves_the_target_as_it_was() {
    let sshd = Sshd::start();
    let top = closure("small");
    let all: BTreeSet<String> = closure_paths(&top).into_iter().collect();
    let part = all
        .iter()
        .find(|p| p.ends_with("-pkg-20"))
        .expect("the small fixture has pkg-20")
        .clone();
    let present: BTreeSet<String> = closure_paths(&part).into_iter().collect();
    assert!(present.len() > 1 && present.len() < all.len());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy(&sshd, &root, &part, &[]);

    let before = exact_snapshot(&root);
    let plan = copy(&sshd, &root, &top, &["--dry-run"]);
    assert_eq!(
        exact_snapshot(&root),
        before,
        "the dry run changed the target"
    );
    let listed = |key: &str| -> BTreeSet<String> {
        plan[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {plan}"))
            .iter()
            .map(|p| p["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed("send"), &all - &present);
    assert_eq!(listed("skip"), present);
    let bytes: u64 = plan["send"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nar_size"].as_u64().unwrap())
        .sum();
    assert_eq!(plan["nar_bytes_to_send"].as_u64(), Some(bytes));

    // A root that does not exist yet is not created either, and everything is to be sent.
    let fresh = dir.path().join("fresh");
    let plan = copy(&sshd, &fresh, &top, &["--dry-run"]);
    assert!(!fresh.exists(), "the dry run created {}", fresh.display());
    assert_eq!(plan["send"].as_array().unwrap().len(), all.len());
}

/// An agent that dies mid-transfer: the user sees its exit status and the last lines of its
/// standard error, not only that the stream broke.
#[test]
fn an_agent_that_dies_shows_its_stderr_to_the_user() {
    let sshd = Sshd::start();
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Stands in for the agent on the target: runs the real one on a stream cut short (dd writes
    // each byte on at once, where head would hold a buffer back), then dies.
    let wrapper = dir.path().join("dying-agent");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho 'dying-agent: starting {tag}' >&2\ndd bs=1 count=300000 2>/dev/null | {BIN} \"$@\"\necho 'dying-agent: killed on purpose' >&2\nkill -9 $$\n",
            tag = std::process::id()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = copy_command(&sshd, &root, &top, &[])
        .env("NIXOS_ANYWHERE_RS_AGENT", &wrapper)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dying-agent: killed on purpose")
            && stderr.contains("killed by signal KILL"),
        "{stderr}"
    );
    // The agent's own account of what it saw comes along too.
    assert!(stderr.contains("closed unexpectedly"), "{stderr}");
}

/// An agent built for another architecture is refused before anything is uploaded, naming both.
#[test]
fn an_agent_for_another_architecture_is_refused_before_it_is_uploaded() {
    let sshd = Sshd::start();
    let top = closure("small");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut foreign = std::fs::read(BIN).unwrap();
    foreign[18..20].copy_from_slice(&0xb7u16.to_le_bytes()); // EM_AARCH64
    foreign.extend_from_slice(format!("{}", std::process::id()).as_bytes());
    let path = dir.path().join("aarch64-agent");
    std::fs::write(&path, &foreign).unwrap();
    let out = copy_command(&sshd, &root, &top, &[])
        .env("NIXOS_ANYWHERE_RS_AGENT", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the target is {}", std::env::consts::ARCH))
            && stderr.contains("built for aarch64")
            && stderr.contains("--agent"),
        "{stderr}"
    );
    assert!(!root.exists(), "the target was changed");
    use sha2::Digest;
    let name = format!(
        "nixos-anywhere-rs-{}",
        &data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&foreign))[..32]
    );
    let uploaded = std::fs::read_dir("/run/nixos-anywhere-rs")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&name));
    assert!(!uploaded, "the foreign agent was uploaded");
}
