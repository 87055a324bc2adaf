//! The SSH configuration as OpenSSH resolves it (`ssh -G`, and the built-in parser checked
//! against it), and jump hosts on loopback: real sshd servers, one per host, each on its own
//! port.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use nixos_anywhere_rs::ssh::{
    ConfigReader, HostKeyPin, Proxy, Resolver, Session, SshError, SshOptions, Target,
};
use support::sshd::Sshd;

fn openssh() -> ConfigReader {
    let reader = ConfigReader::from_path_env();
    assert!(
        matches!(reader, ConfigReader::Openssh(_)),
        "no ssh on PATH: run scripts/setup (openssh-client)"
    );
    reader
}

fn resolver(reader: ConfigReader, file: &Path) -> Resolver {
    Resolver {
        reader,
        config_file: Some(file.to_owned()),
        base: SshOptions::default(),
    }
}

fn resolve(
    reader: ConfigReader,
    file: &Path,
    options: &[&str],
    dest: &str,
) -> (Target, SshOptions) {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    resolver(reader, file)
        .resolve(&options, &[], None, dest)
        .unwrap_or_else(|e| panic!("resolving {dest}: {e}"))
}

/// Lets `other` accept the client key of `first`, so one key logs in to both.
fn share_key(first: &Sshd, other: &Sshd) {
    fs::copy(
        first.client_key.with_extension("pub"),
        other.dir().join("authorized_keys"),
    )
    .unwrap();
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("ssh_config");
    fs::write(&file, text).unwrap();
    file
}

async fn hostname_of(session: &Session) -> String {
    let out = session.run("echo $SSH_CONNECTION", b"").await.unwrap();
    assert!(out.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_config_file_alias_connects_and_dash_o_wins_over_it() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    share_key(&sshd, &other);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "Host demo\n  HostName 127.0.0.1\n  User {}\n  Port {}\n  IdentityFile {}\n",
            support::sshd::user(),
            sshd.port,
            sshd.client_key.display()
        ),
    );
    let (target, opts) = resolve(openssh(), &config, &[], "ssh://demo");
    assert_eq!(target.to_string(), sshd.destination());
    assert_eq!(opts.config_identity_files, vec![sshd.client_key.clone()]);
    let pin = HostKeyPin::new();
    let session = Session::connect(&target, &opts, &pin).await.unwrap();
    assert!(
        hostname_of(&session)
            .await
            .ends_with(&format!(" {}\n", sshd.port))
    );
    assert_eq!(
        pin.fingerprint().unwrap().split(' ').nth(1),
        Some(fingerprint_of(&sshd).as_str())
    );

    // -o Port= on the command line wins over the file (nixos-anywhere #552 was the opposite).
    let port = format!("Port={}", other.port);
    let (target, opts) = resolve(openssh(), &config, &[&port], "demo");
    assert_eq!(target.port, other.port);
    let pin = HostKeyPin::new();
    let session = Session::connect(&target, &opts, &pin).await.unwrap();
    assert!(
        hostname_of(&session)
            .await
            .ends_with(&format!(" {}\n", other.port))
    );
    assert_eq!(
        pin.fingerprint().unwrap().split(' ').nth(1),
        Some(fingerprint_of(&other).as_str())
    );
    // A port in the destination wins over both.
    let (target, _) = resolve(openssh(), &config, &[&port], "demo:2345");
    assert_eq!(target.port, 2345);
}

fn fingerprint_of(sshd: &Sshd) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(sshd.dir().join("host_key.pub"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The configuration of a target behind two jump hosts, all on loopback: `Host *` gives every
/// hop the user and the key.
fn chain_config(dir: &Path, key: &Path, ports: [u16; 3]) -> PathBuf {
    write_config(
        dir,
        &format!(
            "Host target\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump hop1,hop2\n\
             Host hop1\n  HostName 127.0.0.1\n  Port {}\n\
             Host hop2\n  HostName 127.0.0.1\n  Port {}\n\
             Host *\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n",
            ports[2],
            ports[0],
            ports[1],
            support::sshd::user(),
            key.display()
        ),
    )
}

#[tokio::test]
async fn proxy_jump_and_host_star_apply_to_the_jump_hosts_too() {
    let hops = [Sshd::start(), Sshd::start(), Sshd::start()];
    share_key(&hops[0], &hops[1]);
    share_key(&hops[0], &hops[2]);
    let dir = tempfile::tempdir().unwrap();
    let key = &hops[0].client_key;
    let config = chain_config(dir.path(), key, [hops[0].port, hops[1].port, hops[2].port]);
    let (target, opts) = resolve(openssh(), &config, &[], "target");
    let Proxy::Jump(jumps) = &opts.proxy else {
        panic!("no jump hosts: {opts:?}");
    };
    let ports: Vec<u16> = jumps.iter().map(|j| j.target.port).collect();
    assert_eq!(ports, [hops[0].port, hops[1].port]);
    for jump in jumps {
        assert_eq!(jump.opts.config_identity_files, vec![key.clone()]);
        assert!(jump.opts.identities_only);
        assert_eq!(jump.target.user, support::sshd::user());
    }
    let pin = HostKeyPin::new();
    let session = Session::connect(&target, &opts, &pin).await.unwrap();
    // The target saw the connection come from the last jump host's sshd, not from us.
    let seen = hostname_of(&session).await;
    assert!(seen.ends_with(&format!(" {}\n", hops[2].port)), "{seen}");
    assert!(
        hops[1].log().contains("Accepted publickey"),
        "{}",
        hops[1].log()
    );
}

#[rstest::rstest]
#[case::first_hop(0)]
#[case::second_hop(1)]
#[case::target(2)]
#[tokio::test]
async fn a_changed_host_key_on_any_hop_stops_the_run(#[case] changed: usize) {
    let mut hops = [Sshd::start(), Sshd::start(), Sshd::start()];
    for i in 1..3 {
        let (first, rest) = hops.split_at_mut(1);
        share_key(&first[0], &rest[i - 1]);
    }
    let dir = tempfile::tempdir().unwrap();
    let key = hops[0].client_key.clone();
    let config = chain_config(dir.path(), &key, [hops[0].port, hops[1].port, hops[2].port]);
    let (target, opts) = resolve(openssh(), &config, &[], "target");
    let pin = HostKeyPin::new();
    let session = Session::connect(&target, &opts, &pin).await.unwrap();
    session.close().await.unwrap();
    // The same run again: every hop presents the key it did.
    Session::connect(&target, &opts, &pin).await.unwrap();

    hops[changed].restart_with_new_host_key();
    let err = Session::connect(&target, &opts, &pin).await.err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{text}");
    let name = format!("[127.0.0.1]:{}", hops[changed].port);
    assert!(text.contains(&name), "{text} should name {name}");
}

#[tokio::test]
async fn a_proxy_command_carries_the_connection() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    // bash's /dev/tcp: a proxy with nothing but a shell.
    let config = write_config(
        dir.path(),
        &format!(
            "Host viacmd\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  \
             ProxyCommand bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'\n",
            sshd.port,
            support::sshd::user(),
            sshd.client_key.display()
        ),
    );
    let (target, opts) = resolve(openssh(), &config, &[], "viacmd");
    assert!(matches!(opts.proxy, Proxy::Command(_)), "{opts:?}");
    let session = Session::connect(&target, &opts, &HostKeyPin::new())
        .await
        .unwrap();
    assert!(session.run("true", b"").await.unwrap().success());
}

/// Configurations the built-in parser must read as `ssh -G` does.
const ORACLE_CONFIGS: &[(&str, &[&str], &str)] = &[
    (
        "Host demo\n  HostName Example.ORG\n  User bob\n  Port 2222\n  IdentityFile ~/keys/%h\n",
        &[],
        "demo",
    ),
    (
        "Host demo\n  HostName example.org\n  Port 2222\nHost *\n  User carol\n  \
         ConnectTimeout 7\n  ServerAliveInterval 9\n  ServerAliveCountMax 2\n  \
         StrictHostKeyChecking accept-new\n  UserKnownHostsFile ~/kh /tmp/kh2\n  \
         IdentitiesOnly yes\n  IdentityAgent ~/agent.sock\n",
        &["Port=2200", "User=dave"],
        "demo",
    ),
    (
        "Host t\n  HostName 10.1.2.3\n  ProxyJump hop1,me@hop2:2022\nHost hop1\n  \
         HostName 10.0.0.1\n  User jumper\nHost *\n  IdentityFile /k/%r@%h:%p\n",
        &[],
        "t",
    ),
    (
        "Host p\n  ProxyCommand nc %h %p\n  HostName 10.9.9.9\n  StrictHostKeyChecking yes\n",
        &["ConnectTimeout=3"],
        "alice@p:2200",
    ),
    (
        "Host *.lan !skip.lan\n  User lan\nHost skip.lan\n  Port 99\n",
        &[],
        "skip.lan",
    ),
];

#[test]
fn the_built_in_parser_resolves_as_ssh_dash_g_does() {
    let dir = tempfile::tempdir().unwrap();
    for (text, options, dest) in ORACLE_CONFIGS {
        let config = write_config(dir.path(), text);
        let oracle = resolve(openssh(), &config, options, dest);
        let ours = resolve(ConfigReader::Builtin, &config, options, dest);
        assert_eq!(
            format!("{ours:?}"),
            format!("{oracle:?}"),
            "for {dest} with {options:?} and\n{text}"
        );
    }
}

#[test]
fn without_ssh_on_path_the_built_in_parser_is_used_and_names_match_blocks() {
    let empty = tempfile::tempdir().unwrap();
    let reader = ConfigReader::from_path(Some(empty.path().as_os_str()));
    assert_eq!(reader, ConfigReader::Builtin);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "Host demo\n  User x\nMatch host demo\n  Port 2222\n",
    );
    // OpenSSH understands it ...
    let (target, _) = resolve(openssh(), &config, &[], "demo");
    assert_eq!(target.port, 2222);
    // ... the built-in parser says why it cannot.
    let err = resolver(ConfigReader::Builtin, &config)
        .resolve(&[], &[], None, "demo")
        .unwrap_err();
    assert!(matches!(err, SshError::ConfigNeedsMatch { .. }), "{err}");
    assert!(err.to_string().contains("Match"), "{err}");
}

#[test]
fn options_that_change_what_connects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "Host *\n  User x\n");
    for (reader, option, named) in [
        (openssh(), "ProxyUseFdpass=yes", "ProxyUseFdpass"),
        (openssh(), "BindAddress=127.0.0.2", "bindaddress"),
        (
            ConfigReader::Builtin,
            "ProxyUseFdpass=yes",
            "ProxyUseFdpass",
        ),
    ] {
        let options = vec![option.to_owned(), "ProxyCommand=true".to_owned()];
        let err = resolver(reader, &config)
            .resolve(&options, &[], None, "somewhere")
            .unwrap_err();
        assert!(
            matches!(err, SshError::UnsupportedOption { .. }),
            "{option}: {err}"
        );
        assert!(err.to_string().contains(named), "{err}");
    }
}
