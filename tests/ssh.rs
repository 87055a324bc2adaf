//! The SSH client against a real OpenSSH server on 127.0.0.1 (one per test, on its own port).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nixos_anywhere_rs::ssh::{
    Exec, HostKeyPin, KeyText, Session, SshError, SshOptions, StrictHostKeyChecking, Target,
};
use rstest::rstest;
use support::sshd::{SshAgent, Sshd, keygen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn key_opts(sshd: &Sshd) -> SshOptions {
    SshOptions {
        identity_files: vec![sshd.client_key.clone()],
        ..SshOptions::default()
    }
}

async fn connect(sshd: &Sshd, opts: &SshOptions) -> Result<Session, SshError> {
    let target = Target::parse(&sshd.destination()).unwrap();
    Session::connect(&target, opts, &HostKeyPin::new()).await
}

/// Deterministic bytes that do not compress or repeat in short periods.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn identity_file_authenticates_and_runs_a_command() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let out = session.run("echo hello; id -un", b"").await.unwrap();
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("hello\n{}\n", support::sshd::user())
    );
    assert_eq!(
        session.cipher().as_deref(),
        Some("aes128-gcm@openssh.com"),
        "AES-128-GCM is the preferred cipher"
    );
    session.close().await.unwrap();

    // A host name is resolved on this side (localhost may be ::1 first, where nothing listens).
    let by_name = Target::parse(&format!(
        "{}@localhost:{}",
        support::sshd::user(),
        sshd.port
    ))
    .unwrap();
    let session = Session::connect(&by_name, &key_opts(&sshd), &HostKeyPin::new())
        .await
        .unwrap();
    assert!(session.run("true", b"").await.unwrap().success());
}

#[tokio::test]
async fn private_key_text_authenticates() {
    let sshd = Sshd::start();
    let opts = SshOptions {
        private_key: Some(KeyText::new(fs::read_to_string(&sshd.client_key).unwrap())),
        ..SshOptions::default()
    };
    let session = connect(&sshd, &opts).await.unwrap();
    assert!(session.run("true", b"").await.unwrap().success());
}

#[tokio::test]
async fn ssh_agent_authenticates_without_a_key_file() {
    let sshd = Sshd::start();
    let agent = SshAgent::start();
    // A key the server does not know first, so the agent has to offer the second.
    agent.add(&keygen(&sshd.dir().join("other_key")));
    agent.add(&sshd.client_key);
    let opts = SshOptions {
        identity_agent: Some(agent.socket.clone()),
        ..SshOptions::default()
    };
    let session = connect(&sshd, &opts).await.unwrap();
    assert!(session.run("true", b"").await.unwrap().success());

    // IdentitiesOnly leaves the agent out, and then there is nothing to try.
    let only = SshOptions {
        identities_only: true,
        ..opts
    };
    let err = connect(&sshd, &only).await.err().unwrap();
    assert!(matches!(err, SshError::NoCredentials { .. }), "{err}");
}

#[tokio::test]
async fn wrong_key_is_a_clean_authentication_error() {
    let sshd = Sshd::start();
    let wrong = keygen(&sshd.dir().join("wrong_key"));
    let opts = SshOptions {
        identity_files: vec![wrong.clone()],
        ..SshOptions::default()
    };
    let err = connect(&sshd, &opts).await.err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{text}");
    assert!(text.contains(&sshd.destination()), "{text}");
    assert!(text.contains(&format!("-i {}", wrong.display())), "{text}");
    assert!(text.contains("SHA256:"), "{text}");
    assert!(text.contains("Pass -i KEY"), "{text}");
    // No part of the key text leaks.
    let key_text = fs::read_to_string(&wrong).unwrap();
    let body = key_text.lines().nth(2).unwrap();
    assert!(!text.contains(body), "{text}");

    let err = connect(&sshd, &SshOptions::default()).await.err().unwrap();
    assert!(matches!(err, SshError::NoCredentials { .. }), "{err}");
    assert!(err.to_string().contains("SSH_PRIVATE_KEY"), "{err}");

    let not_a_key = SshOptions {
        identity_files: vec![wrong.with_extension("pub")],
        ..SshOptions::default()
    };
    let err = connect(&sshd, &not_a_key).await.err().unwrap();
    assert!(matches!(err, SshError::Credential { .. }), "{err}");
}

#[tokio::test]
async fn refused_connection_says_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = Target::parse(&format!("127.0.0.1:{port}")).unwrap();
    let err = Session::connect(&target, &SshOptions::default(), &HostKeyPin::new())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SshError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("is sshd running"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts the connection and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    });
    let mut opts = SshOptions::default();
    opts.set_option("ConnectTimeout=1").unwrap();
    let target = Target::parse(&format!("127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = Session::connect(&target, &opts, &HostKeyPin::new())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("ConnectTimeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_stdout_round_trip_through_cat() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let data = pattern(6 << 20);

    // Through the AsyncWrite/AsyncRead interfaces, from separate tasks.
    let Exec {
        mut stdin,
        mut stdout,
        exit,
    } = session.exec("cat").await.unwrap();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(100_000) {
            stdin.write_all(piece).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut back = Vec::new();
        stdout.read_to_end(&mut back).await.unwrap();
        back
    });
    writer.await.unwrap();
    assert!(reader.await.unwrap() == data, "cat returned other bytes");
    assert!(exit.wait().await.unwrap().success());

    // Through the zero-copy interface.
    let Exec {
        mut stdin,
        mut stdout,
        exit,
    } = session.exec("cat").await.unwrap();
    let whole = Bytes::from(data.clone());
    let writer = tokio::spawn(async move {
        stdin.send(whole.slice(..1 << 20)).await.unwrap();
        stdin.send(whole.slice(1 << 20..)).await.unwrap();
        stdin.close().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = stdout.next_chunk().await {
        back.extend_from_slice(&chunk);
    }
    writer.await.unwrap();
    assert!(back == data, "cat returned other bytes");
    assert!(exit.wait().await.unwrap().success());
}

#[tokio::test]
async fn dropping_stdin_sends_end_of_file() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let Exec {
        mut stdin,
        mut stdout,
        exit,
    } = session.exec("cat; echo done").await.unwrap();
    stdin.write_all(b"abc\n").await.unwrap();
    drop(stdin);
    let mut back = String::new();
    stdout.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "abc\ndone\n");
    assert!(exit.wait().await.unwrap().success());
}

#[tokio::test]
async fn exit_status_signal_and_stderr_are_reported() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let out = session
        .run("echo out; echo err >&2; exit 3", b"")
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let err = session
        .run_checked("echo broken >&2; exit 4", b"")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::CommandFailed { .. }), "{text}");
    assert!(
        text.contains("exit status 4") && text.contains("broken"),
        "{text}"
    );

    let out = session.run("kill -KILL $$", b"").await.unwrap();
    assert_eq!(out.status, None, "{out:?}");
    assert!(
        out.signal.as_deref().unwrap_or("").contains("KILL"),
        "{out:?}"
    );

    let out = session.run("wc -c", &pattern(100_000)).await.unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "100000");
}

#[tokio::test]
async fn a_command_that_ignores_its_input_does_not_hang_the_writer() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let Exec {
        mut stdin, exit, ..
    } = session.exec("exit 7").await.unwrap();
    let started = Instant::now();
    // Far more than any window: the writer must notice the command is gone.
    let chunk = Bytes::from(vec![0u8; 1 << 20]);
    let mut failed = false;
    for _ in 0..64 {
        if stdin.send(chunk.clone()).await.is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        failed = stdin.close().await.is_err();
    }
    assert!(failed, "writing 64 MiB to a command that exited succeeded");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(exit.wait().await.unwrap().status, Some(7));
    // The session stays usable.
    assert!(session.run("true", b"").await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_run_concurrently_on_one_session() {
    let sshd = Sshd::start();
    let session = std::sync::Arc::new(connect(&sshd, &key_opts(&sshd)).await.unwrap());
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let session = session.clone();
            tokio::spawn(async move { session.run(&format!("echo {i}"), b"").await.unwrap() })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().stdout, format!("{i}\n").into_bytes());
    }
}

#[tokio::test]
async fn upload_skips_an_identical_file_and_replaces_a_changed_one() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let local = sshd.dir().join("local-file");
    fs::write(&local, pattern(3 << 20)).unwrap();
    // The "target" is this machine, so the result can be read back directly.
    let remote = sshd.dir().join("remote dir/sub/agent");
    let remote_str = remote.to_str().unwrap();

    assert!(
        session.upload(&local, remote_str).await.unwrap(),
        "first upload"
    );
    assert_eq!(fs::read(&remote).unwrap(), fs::read(&local).unwrap());
    assert_eq!(
        fs::metadata(&remote).unwrap().permissions().mode() & 0o777,
        0o755
    );

    assert!(
        !session.upload(&local, remote_str).await.unwrap(),
        "same file again"
    );
    // Same bytes but no longer executable: uploaded again.
    fs::set_permissions(&remote, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        session.upload(&local, remote_str).await.unwrap(),
        "not executable"
    );
    assert_eq!(
        fs::metadata(&remote).unwrap().permissions().mode() & 0o777,
        0o755
    );

    fs::write(&local, b"changed").unwrap();
    assert!(
        session.upload(&local, remote_str).await.unwrap(),
        "changed file"
    );
    assert_eq!(fs::read(&remote).unwrap(), b"changed");
    let leftovers: Vec<_> = fs::read_dir(remote.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("agent")]);
}

#[tokio::test]
async fn a_changed_host_key_stops_the_run() {
    let mut sshd = Sshd::start();
    let opts = key_opts(&sshd);
    let target = Target::parse(&sshd.destination()).unwrap();
    let pin = HostKeyPin::new();
    Session::connect(&target, &opts, &pin).await.unwrap();
    let first = pin.fingerprint().unwrap();
    assert!(first.contains("SHA256:"), "{first}");
    // Same key again: accepted.
    Session::connect(&target, &opts, &pin).await.unwrap();

    sshd.restart_with_new_host_key();
    let err = Session::connect(&target, &opts, &pin.clone())
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    match &err {
        SshError::HostKeyChanged {
            pinned_fingerprint,
            seen_fingerprint,
            ..
        } => {
            assert_eq!(pinned_fingerprint, &first);
            assert_ne!(seen_fingerprint, &first);
        }
        _ => panic!("expected HostKeyChanged, got {text}"),
    }
    assert!(text.contains("intercepting"), "{text}");
    assert_eq!(pin.fingerprint().unwrap(), first, "the pin does not move");
    // A new run (a new pin) accepts the new key.
    Session::connect(&target, &opts, &HostKeyPin::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn strict_host_key_checking_uses_known_hosts() {
    let sshd = Sshd::start();
    let known = sshd.dir().join("known_hosts");
    let mut opts = key_opts(&sshd);
    opts.set_option("StrictHostKeyChecking=yes").unwrap();
    opts.set_option(&format!("UserKnownHostsFile={}", known.display()))
        .unwrap();
    assert_eq!(opts.strict_host_key_checking, StrictHostKeyChecking::Yes);

    // No file, then a file with other hosts only: refused.
    for _ in 0..2 {
        let err = connect(&sshd, &opts).await.err().unwrap();
        assert!(matches!(err, SshError::HostKeyRejected { .. }), "{err}");
        assert!(
            err.to_string().contains("StrictHostKeyChecking=yes"),
            "{err}"
        );
        fs::write(&known, format!("otherhost {}\n", sshd.host_public_key())).unwrap();
    }

    fs::write(&known, sshd.known_hosts_line()).unwrap();
    connect(&sshd, &opts).await.unwrap();

    // Hashed entries (ssh-keygen -H) match too.
    let status = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&known)
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(fs::read_to_string(&known).unwrap().starts_with("|1|"));
    connect(&sshd, &opts).await.unwrap();

    // A different recorded key is refused with accept-new, not only with yes.
    let other = keygen(&sshd.dir().join("other_host_key"));
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    fs::write(&known, format!("[127.0.0.1]:{} {other_pub}", sshd.port)).unwrap();
    opts.set_option("StrictHostKeyChecking=accept-new").unwrap();
    let err = connect(&sshd, &opts).await.err().unwrap();
    assert!(err.to_string().contains("different key"), "{err}");
    // ...and only warned about with no.
    opts.set_option("StrictHostKeyChecking=no").unwrap();
    connect(&sshd, &opts).await.unwrap();
}

#[rstest]
#[case("Port=2222", "port", "Some(2222)")]
#[case("port 2222", "port", "Some(2222)")]
#[case("PORT = 2222", "port", "Some(2222)")]
#[case("User=admin", "user", "Some(\"admin\")")]
#[case("IdentityFile=/k", "identity_files", "[\"/k\"]")]
#[case("IdentitiesOnly=yes", "identities_only", "true")]
#[case("IdentityAgent=none", "identity_agent", "None")]
#[case("StrictHostKeyChecking=no", "strict", "No")]
#[case("stricthostkeychecking=accept-new", "strict", "AcceptNew")]
#[case("StrictHostKeyChecking=yes", "strict", "Yes")]
#[case("StrictHostKeyChecking=ask", "strict", "Yes")]
#[case("UserKnownHostsFile=/dev/null", "known_hosts", "[\"/dev/null\"]")]
#[case("UserKnownHostsFile=/a /b", "known_hosts", "[\"/a\", \"/b\"]")]
#[case("ConnectTimeout=10", "connect_timeout", "Some(10s)")]
#[case("ConnectTimeout=0", "connect_timeout", "None")]
#[case("ServerAliveInterval=5", "keepalive_interval", "Some(5s)")]
#[case("ServerAliveCountMax=2", "keepalive_max", "2")]
#[case("LogLevel=ERROR", "port", "None")]
fn ssh_option_is_applied(#[case] option: &str, #[case] field: &str, #[case] expected: &str) {
    let mut opts = SshOptions::default();
    opts.set_option(option).unwrap();
    let actual = match field {
        "port" => format!("{:?}", opts.port),
        "user" => format!("{:?}", opts.user),
        "identity_files" => format!("{:?}", opts.identity_files),
        "identities_only" => format!("{:?}", opts.identities_only),
        "identity_agent" => format!("{:?}", opts.identity_agent),
        "strict" => format!("{:?}", opts.strict_host_key_checking),
        "known_hosts" => format!("{:?}", opts.known_hosts),
        "connect_timeout" => format!("{:?}", opts.connect_timeout),
        "keepalive_interval" => format!("{:?}", opts.keepalive_interval),
        "keepalive_max" => format!("{:?}", opts.keepalive_max),
        _ => unreachable!(),
    };
    assert_eq!(actual, expected, "{option}");
}

#[rstest]
#[case("Port=0", "not a port number")]
#[case("Port=ssh", "not a port number")]
#[case("Port", "expected Key=Value")]
#[case("=2222", "expected Key=Value")]
#[case("StrictHostKeyChecking=maybe", "accept-new")]
#[case("ConnectTimeout=soon", "seconds")]
#[case("Tunnel=yes", "supported: Port, User, IdentityFile")]
#[case("Ciphers=aes128-ctr", "unknown option \"Ciphers\"")]
fn ssh_option_errors_say_why(#[case] option: &str, #[case] message: &str) {
    let err = SshOptions::default().set_option(option).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::InvalidOption { .. }), "{text}");
    assert!(text.contains(message), "{option}: {text}");
    assert!(text.contains(option.trim()), "{text}");
}

/// Throughput of one channel into `cat > /dev/null`; run with
/// `cargo test --release --test ssh -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_into_cat() {
    let sshd = Sshd::start();
    let session = connect(&sshd, &key_opts(&sshd)).await.unwrap();
    let total: usize = std::env::var("SSH_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        << 20;
    let block = Bytes::from(pattern(1 << 20));
    for mode in ["send", "write_all"] {
        let Exec {
            mut stdin, exit, ..
        } = session.exec("cat > /dev/null").await.unwrap();
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            match mode {
                "send" => stdin.send(block.clone()).await.unwrap(),
                _ => stdin.write_all(&block).await.unwrap(),
            }
            sent += block.len();
        }
        stdin.close().await.unwrap();
        assert!(exit.wait().await.unwrap().success());
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{mode}: {} MiB in {secs:.2}s = {:.0} MiB/s ({})",
            total >> 20,
            (total >> 20) as f64 / secs,
            session.cipher().unwrap_or_default()
        );
    }
    // OpenSSH's client on the same server and data size, for the ratio.
    for cipher in ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"] {
        let start = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -c {total} /dev/zero | ssh -T -c {cipher} -i {key} -p {port} \
                 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
                 {user}@127.0.0.1 'cat > /dev/null'",
                key = sshd.client_key.display(),
                port = sshd.port,
                user = support::sshd::user(),
            ))
            .status()
            .unwrap();
        assert!(status.success());
        println!(
            "OpenSSH client: {:.0} MiB/s ({cipher})",
            (total >> 20) as f64 / start.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    let out = session
        .run(&format!("head -c {total} /dev/zero"), b"")
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), total);
    println!(
        "download: {:.0} MiB/s",
        (total >> 20) as f64 / start.elapsed().as_secs_f64()
    );
}
