//! A login that is not root becomes root through a password-protected sudo: the agent runs as
//! root and copies into a directory only root may write. The server is a real sshd with the
//! real sudo, in a mount namespace whose /etc/passwd, /etc/shadow and /etc/sudoers are copies
//! with the test's user in them. One test in this binary: it sets the agent's path in the
//! environment before anything runs.

mod nix_oracle;
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, ExitStatus, Stdio};

use nix_oracle::{BIN, assert_verifies, closure, path_infos};
use nixos_anywhere_rs::run::copy::{self, CopyRequest, Destination};
use nixos_anywhere_rs::ssh::{HostKeyPin, Password, Session, SshError, SshOptions, Target};
use nixos_anywhere_rs::store::{NarSource, StorePath, query_closure};
use nixos_anywhere_rs::transfer::Compression;
use support::sshd::{SUDO_USER, Sshd};

const PASSWORD: &str = "sudo-me-up";

#[tokio::test]
async fn a_sudo_user_runs_the_agent_as_root_and_copies_into_a_root_owned_directory() {
    // SAFETY: the only test of this binary, and nothing else runs yet.
    unsafe { std::env::set_var("NIXOS_ANYWHERE_RS_AGENT", BIN) };
    let sshd = Sshd::start_with_sudo_user(PASSWORD);
    let target = Target::parse(&format!("{SUDO_USER}@127.0.0.1:{}", sshd.port)).unwrap();
    let with = |password: Option<&str>| SshOptions {
        identity_files: vec![sshd.client_key.clone()],
        password: password.map(|p| Password::new(p.to_owned())),
        ..SshOptions::default()
    };

    // Without the password, sudo cannot be used, and the error says how to give it.
    let err = Session::connect(&target, &with(None), &HostKeyPin::new())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SshError::Privilege { .. }), "{err}");
    assert!(err.to_string().contains("--env-password"), "{err}");

    // A wrong password is refused at once, and said to be wrong.
    let started = std::time::Instant::now();
    let err = Session::connect(&target, &with(Some("not-the-password")), &HostKeyPin::new())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("refused the password"), "{err}");
    assert!(
        started.elapsed().as_secs() < 15,
        "{err}: after {:?}",
        started.elapsed()
    );

    let opts = with(Some(PASSWORD));
    let session = Session::connect(&target, &opts, &HostKeyPin::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    let out = session
        .run_checked("id -u; echo \"$SUDO_USER\"", b"")
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("0\n{SUDO_USER}\n")
    );
    // Standard input reaches the command whole, after the password.
    let out = session
        .run_checked("cat", b"after the password")
        .await
        .unwrap();
    assert_eq!(out.stdout, b"after the password");
    session.close().await.unwrap();

    // A directory only root may write to: the copy lands there, owned by root.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let top = closure("small");
    let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
    let request = CopyRequest {
        destination: Destination::Ssh {
            target: target.clone(),
            opts: Box::new(opts),
        },
        root: root.clone(),
        source: NarSource::Local,
        closure,
        compression: Compression::Auto,
        substitute: None,
        dry_run: false,
    };
    copy::run(request).await.unwrap_or_else(|e| panic!("{e}"));
    assert_verifies(&root);
    assert_eq!(path_infos(&top, Some(&root)), path_infos(&top, None));
    let db = std::fs::metadata(root.join("nix/var/nix/db/db.sqlite")).unwrap();
    assert_eq!(db.uid(), 0);

    // On a terminal and without --env-password, the tool asks for sudo's password there,
    // without echoing it, and goes on with it.
    let asked = root.parent().unwrap().join("asked");
    std::fs::create_dir(&asked).unwrap();
    let (status, screen) = on_terminal(
        &[
            BIN,
            "copy",
            "--to",
            &format!("ssh://{target}"),
            "-i",
            sshd.client_key.to_str().unwrap(),
            "-o",
            &format!(
                "UserKnownHostsFile={}",
                dir.path().join("known_hosts").display()
            ),
            "-o",
            "StrictHostKeyChecking=accept-new",
            "--root",
            asked.to_str().unwrap(),
            top.as_str(),
        ],
        &format!("[sudo] password for {target}: "),
        PASSWORD,
    );
    assert!(status.success(), "{screen}");
    assert!(
        !screen.contains(PASSWORD),
        "the password was echoed: {screen}"
    );
    assert_verifies(&asked);

    // The server side traced: no execve (sudo's included) carried the password.
    let trace = sshd.exec_trace();
    assert!(trace.contains("sudo"), "{trace}");
    assert!(!trace.contains(PASSWORD), "an execve carried the password");
}

/// Runs `command` with a terminal (util-linux's `script` makes one) and types `answer` once
/// `question` is on the screen: the exit status and everything shown.
fn on_terminal(command: &[&str], question: &str, answer: &str) -> (ExitStatus, String) {
    let line: Vec<String> = command.iter().map(|word| shell_quote(word)).collect();
    let mut child = Command::new("script")
        .args(["-qfec", &line.join(" "), "/dev/null"])
        .env_remove("SSHPASS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut screen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&screen).contains(question) {
        let n = stdout.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "no question on the terminal: {}",
            String::from_utf8_lossy(&screen)
        );
        screen.extend_from_slice(&chunk[..n]);
    }
    writeln!(stdin, "{answer}").unwrap();
    stdout.read_to_end(&mut screen).unwrap();
    let status = child.wait().unwrap();
    (status, String::from_utf8_lossy(&screen).into_owned())
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}
