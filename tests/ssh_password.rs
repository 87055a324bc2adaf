//! Logins the way users have them: a password (as `--env-password` reads it from `SSHPASS`),
//! which leaves a temporary key behind for later logins, and an ssh-agent full of keys. Every
//! `execve` on both sides is traced: none carries the password.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use nixos_anywhere_rs::ssh::{
    ConfigReader, HostKeyPin, Password, Resolver, Session, SshError, SshOptions,
};
use support::sshd::{SshAgent, Sshd, keygen};

/// The password, unless the tracing test passes another in `SSHPASS`.
fn password() -> String {
    std::env::var("SSHPASS").unwrap_or_else(|_| "correct horse battery staple".to_owned())
}

/// A configuration reaching `sshd` through a ProxyCommand, so that this side runs programs
/// too (`ssh -G`, the proxy) whose arguments the trace can check.
fn config(dir: &Path, sshd: &Sshd) -> std::path::PathBuf {
    let file = dir.join("ssh_config");
    fs::write(
        &file,
        format!(
            "Host pw\n  HostName 127.0.0.1\n  Port {}\n  User root\n  \
             ProxyCommand bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'\n",
            sshd.port
        ),
    )
    .unwrap();
    file
}

#[tokio::test]
async fn a_password_login_leaves_a_temporary_key_that_works_alone() {
    let pass = password();
    let sshd = Sshd::start_with_password(
        "PasswordAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n",
        &pass,
    );
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver {
        reader: ConfigReader::from_path_env(),
        config_file: Some(config(dir.path(), &sshd)),
        base: SshOptions {
            password: Some(match Password::from_env() {
                Ok(p) => p,
                Err(_) => Password::new(pass.clone()),
            }),
            ..SshOptions::default()
        },
    };
    let (target, opts) = resolver.resolve(&[], &[], None, "pw").unwrap();
    assert!(!format!("{opts:?}").contains(&pass), "{opts:?}");
    let pin = HostKeyPin::new();
    let session = Session::connect(&target, &opts, &pin)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert!(session.run("true", b"").await.unwrap().success());
    session.close().await.unwrap();
    assert!(sshd.log().contains("Accepted password"), "{}", sshd.log());

    let key = opts.temporary_key.get().expect("a temporary key");
    let line = key.public_key().to_openssh().unwrap();
    let authorized = fs::read_to_string(sshd.home().join(".ssh/authorized_keys")).unwrap();
    assert_eq!(authorized.matches(&line).count(), 1, "{authorized}");

    // The key alone: no password this time.
    let key_only = SshOptions {
        temporary_key: opts.temporary_key.clone(),
        proxy: opts.proxy.clone(),
        ..SshOptions::default()
    };
    let session = Session::connect(&target, &key_only, &pin).await.unwrap();
    assert!(session.run("true", b"").await.unwrap().success());
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    // Logging in by password again adds no second line.
    Session::connect(&target, &opts, &pin).await.unwrap();
    let authorized = fs::read_to_string(sshd.home().join(".ssh/authorized_keys")).unwrap();
    assert_eq!(authorized.matches(&line).count(), 1, "{authorized}");

    // Neither key nor password: refused, and the message says what to do.
    let nothing = SshOptions {
        proxy: opts.proxy.clone(),
        ..SshOptions::default()
    };
    let err = Session::connect(&target, &nothing, &pin)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SshError::NoCredentials { .. }), "{err}");

    // A wrong password is an authentication error that does not show it.
    let wrong = SshOptions {
        password: Some(Password::new("not it".to_owned())),
        proxy: opts.proxy.clone(),
        ..SshOptions::default()
    };
    let err = Session::connect(&target, &wrong, &pin).await.err().unwrap();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err}");
    assert!(!err.to_string().contains("not it"), "{err}");

    // The server side: sshd and everything it ran, traced (by the test below, if it runs
    // this one).
    if support::sshd::traced() {
        return;
    }
    let trace = sshd.exec_trace();
    assert!(trace.matches("execve(").count() >= 3, "{trace}");
    assert!(
        !trace.contains(&pass),
        "an execve on the server carried the password"
    );
}

#[test]
fn no_exec_on_our_side_carries_the_password() {
    // The test above, with the password in SSHPASS, under strace.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("client.strace");
    let pass = "Tr4ce-me-if-you-can";
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=execve", "-s", "4096", "-v", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_password_login_leaves_a_temporary_key_that_works_alone",
            "--test-threads",
            "1",
        ])
        .env("SSHPASS", pass)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = fs::read_to_string(&trace).unwrap();
    let execs: Vec<&str> = trace.lines().filter(|l| l.contains("execve(")).collect();
    // Both sides: this side's programs, and the server with everything it ran. The first is
    // the test itself, started with SSHPASS in its environment as the tool is.
    let (first, rest) = execs.split_first().unwrap();
    assert!(first.contains(pass));
    assert!(
        rest.iter().any(|l| l.contains("\"-G\"")),
        "no ssh -G in {trace}"
    );
    assert!(
        rest.iter().any(|l| l.contains("/dev/tcp/")),
        "no proxy in {trace}"
    );
    for line in rest {
        assert!(
            !line.contains(pass),
            "this execve carried the password: {line}"
        );
    }
    // Nor did the test's output.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(pass));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(pass));
}

#[tokio::test]
async fn eight_unrelated_keys_in_the_agent_do_not_lock_the_login_out() {
    let sshd = Sshd::start();
    let agent = SshAgent::start();
    for i in 0..8 {
        agent.add(&keygen(&sshd.dir().join(format!("unrelated_{i}"))));
    }
    agent.add(&sshd.client_key);
    // OpenSSH's own client, offering the agent's keys in order, runs into MaxAuthTries: the
    // trouble nixos-anywhere #629 reports.
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg(format!("{}@127.0.0.1", support::sshd::user()))
        .arg("true")
        .env("SSH_AUTH_SOCK", &agent.socket)
        .env_remove("SSHPASS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Too many authentication failures"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ours tries the named key before the agent's, and with IdentitiesOnly none of those.
    for identities_only in [false, true] {
        let opts = SshOptions {
            identity_files: vec![sshd.client_key.clone()],
            identity_agent: Some(agent.socket.clone()),
            identities_only,
            ..SshOptions::default()
        };
        let target = nixos_anywhere_rs::ssh::Target::parse(&sshd.destination()).unwrap();
        let session = Session::connect(&target, &opts, &HostKeyPin::new())
            .await
            .unwrap();
        assert!(session.run("true", b"").await.unwrap().success());
    }
}

#[tokio::test]
async fn keyboard_interactive_takes_the_password_where_password_is_off() {
    // PAM asks through keyboard-interactive; the password method is refused.
    let sshd = Sshd::start_with_password(
        "UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication no\n\
         AuthorizedKeysFile .ssh/authorized_keys\n",
        &password(),
    );
    let target =
        nixos_anywhere_rs::ssh::Target::parse(&format!("root@127.0.0.1:{}", sshd.port)).unwrap();
    let opts = SshOptions {
        password: Some(Password::new(password())),
        ..SshOptions::default()
    };
    let session = Session::connect(&target, &opts, &HostKeyPin::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert!(session.run("true", b"").await.unwrap().success());
    assert!(
        sshd.log().contains("Accepted keyboard-interactive"),
        "{}",
        sshd.log()
    );
    // It too leaves the temporary key behind.
    assert!(opts.temporary_key.get().is_some());
}
