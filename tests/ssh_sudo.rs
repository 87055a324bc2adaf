//! A login that is not root becomes root through a password-protected sudo: the agent runs as
//! root and copies into a directory only root may write. The server is a real sshd with the
//! real sudo, in a mount namespace whose /etc/passwd, /etc/shadow and /etc/sudoers are copies
//! with the test's user in them. One test in this binary: it sets the agent's path in the
//! environment before anything runs.

mod nix_oracle;
mod support;

use std::os::unix::fs::MetadataExt;

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
        dry_run: false,
    };
    copy::run(request).await.unwrap_or_else(|e| panic!("{e}"));
    assert_verifies(&root);
    assert_eq!(path_infos(&top, Some(&root)), path_infos(&top, None));
    let db = std::fs::metadata(root.join("nix/var/nix/db/db.sqlite")).unwrap();
    assert_eq!(db.uid(), 0);

    // The server side traced: no execve (sudo's included) carried the password.
    let trace = sshd.exec_trace();
    assert!(trace.contains("sudo"), "{trace}");
    assert!(!trace.contains(PASSWORD), "an execve carried the password");
}
