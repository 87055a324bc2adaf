//! The kexec phase on the old system's side, against a real sshd and sudo: a user with a
//! password-protected sudo, as on a cloud VM. Everything up to the kexec itself runs for real:
//! the image streamed up (its compression sniffed from its bytes), or downloaded by the target
//! itself, unpacked in the login user's `~/kexec`, checked to be a nixos-images image that fits
//! in memory, and its `kexec/run` started as root under `setsid --wait` with `SUDO_USER` set.
//! The images' `run` here are scripts that do not kexec (this machine's kernel could not), so
//! the cases are the ways the phase fails: each with a message that says what to do, nothing
//! left on the target that should not be. The kexec proper runs in the VM tests.
//!
//! Needs root (sshd, namespaces) and Nix 2.8, like the other install tests.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::sshd::{SUDO_USER, Sshd};

const BIN: &str = env!("CARGO_BIN_EXE_nixos-anywhere-rs");
const PASSWORD: &str = "kexec-sudo-password";

/// A kexec image: `kexec/` with `run` (this script), `bzImage` and `initrd` (of these sizes;
/// sparse), packed with `tar` and compressed with `compress` (`gzip`, `zstd`, or none).
fn image(dir: &Path, name: &str, run: &str, sizes: (u64, u64), compress: Option<&str>) -> PathBuf {
    let root = dir.join(format!("{name}.d"));
    let kexec = root.join("kexec");
    fs::create_dir_all(&kexec).unwrap();
    fs::write(kexec.join("run"), run).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(kexec.join("run")));
    for (file, size) in [("bzImage", sizes.0), ("initrd", sizes.1)] {
        fs::File::create(kexec.join(file))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let tar = dir.join(format!("{name}.tar"));
    run_ok(
        Command::new("tar")
            .arg("--sparse")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("kexec"),
    );
    let out = dir.join(name);
    match compress {
        Some(program) => {
            let packed = Command::new(program)
                .args(["-c"])
                .arg(&tar)
                .output()
                .unwrap();
            assert!(packed.status.success());
            fs::write(&out, packed.stdout).unwrap();
        }
        None => fs::rename(&tar, &out).unwrap(),
    }
    out
}

fn run_ok(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

/// The kexec phase alone against `sshd` as the sudo user, with `args` added.
fn kexec(sshd: &Sshd, args: &[&str]) -> Output {
    let flake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo#demo-no-bootloader");
    let mut child = Command::new(BIN)
        .env("NIX_REMOTE", "local")
        .env("NIXOS_ANYWHERE_RS_AGENT", BIN)
        .env("SSHPASS", PASSWORD)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .arg("--flake")
        .arg(flake)
        .args(["--phases", "kexec", "--env-password"])
        .args(["--option", "build-users-group", ""])
        .args([
            "--option",
            "sandbox",
            "false",
            "--option",
            "substituters",
            "",
        ])
        .args(args)
        .arg("-i")
        .arg(&sshd.client_key)
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{SUDO_USER}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `kexec/run` that reports how it was started and fails as kexec would on a kernel that
/// refuses it.
const FAILING_RUN: &str = r#"#!/bin/sh
echo "run as uid $(id -u), SUDO_USER=$SUDO_USER, TMPDIR=$TMPDIR"
echo "extra flags: $*"
[ -f "$(dirname "$0")/initrd" ] && echo "initrd beside run"
echo "kexec_load failed: Operation not permitted" >&2
exit 1
"#;

#[test]
fn the_old_systems_side_of_kexec_fails_safely_and_says_why() {
    let sshd = Sshd::start_with_sudo_user(PASSWORD);
    let work = tempfile::tempdir().unwrap();
    let home = sshd.dir().join("home-user");
    let kexec_dir = home.join("kexec");

    // Streamed up, the name says nothing of the compression: sniffed from the bytes (zstd).
    let failing = image(
        work.path(),
        "failing-image",
        FAILING_RUN,
        (4096, 8192),
        Some("zstd"),
    );
    let out = kexec(
        &sshd,
        &[
            "--kexec",
            failing.to_str().unwrap(),
            "--kexec-extra-flags",
            "--no-sync --x",
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("kexec/run did not load the installer")
            && err.contains("the machine was not rebooted"),
        "{err}"
    );
    // Root through sudo, with the user named (nixos-images' run carries that user's keys),
    // TMPDIR in ~/kexec, the extra flags as one argument; stderr in the log too.
    let dir = kexec_dir.display();
    assert!(
        err.contains(&format!(
            "run as uid 0, SUDO_USER={SUDO_USER}, TMPDIR={dir}"
        )),
        "{err}"
    );
    assert!(
        err.contains("extra flags: --kexec-extra-flags --no-sync --x"),
        "{err}"
    );
    assert!(err.contains("initrd beside run") && err.contains("Operation not permitted"));
    let log = fs::read_to_string(kexec_dir.join("nixos-anywhere.log")).unwrap();
    assert!(log.contains("kexec_load failed"), "{log}");
    assert!(!err.contains(PASSWORD));

    // A download by the target itself (this machine has wget), gzip from the URL's name.
    let served = image(
        work.path(),
        "served.tar.gz",
        FAILING_RUN,
        (4096, 8192),
        Some("gzip"),
    );
    let server = HttpServer::serve(work.path());
    let url = format!("{}/served.tar.gz", server.url);
    let out = kexec(&sshd, &["--kexec", &url]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("downloads {url}")), "{err}");
    assert!(!err.contains("downloading it here"), "{err}");
    assert!(err.contains("run as uid 0"), "{err}");
    assert!(!kexec_dir.join("kexec-tarball").exists());
    drop(served);

    // Not a nixos-images image: refused naming what it holds, and removed.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir_all(other.path().join("boot")).unwrap();
    fs::write(other.path().join("boot/vmlinuz"), b"not a kexec image").unwrap();
    let wrong = work.path().join("wrong.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(other.path())
            .arg("-cf")
            .arg(&wrong)
            .arg("boot"),
    );
    let out = kexec(&sshd, &["--kexec", wrong.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the kexec image has no kexec/run (it holds: boot")
            && err.contains("one top-level directory kexec/"),
        "{err}"
    );
    assert!(!kexec_dir.exists(), "the unpacked files were left behind");

    // An initrd larger than this machine's memory (sparse): refused before kexec/run, removed.
    let huge = image(
        work.path(),
        "huge.tar",
        "#!/bin/sh\necho must not run\nexit 1\n",
        (4096, 64 << 30),
        None,
    );
    let out = kexec(&sshd, &["--kexec", huge.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("initrd 65536 MiB twice while it unpacks")
            && err.contains("Nothing was booted and the unpacked files were removed"),
        "{err}"
    );
    assert!(!err.contains("must not run"), "{err}");
    assert!(!kexec_dir.exists(), "the unpacked files were left behind");

    // A run that prints the marker but never kexecs: the machine never goes down, and the
    // run ends at the deadline instead of waiting forever.
    let stuck = image(
        work.path(),
        "stuck.tar.gz",
        "#!/bin/sh\necho 'machine will boot into nixos in 6s...'\n",
        (4096, 8192),
        Some("gzip"),
    );
    let started = std::time::Instant::now();
    let out = kexec(
        &sshd,
        &["--kexec", stuck.to_str().unwrap(), "--kexec-deadline", "6s"],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("did not go down within") && err.contains("the kexec did not take"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 120, "{err}");
}

/// Python's HTTP server on 127.0.0.1, serving `dir`.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::io::stderr().flush();
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
