//! `copy` to a machine only a bastion reaches: network namespaces in a line (the operator's,
//! the bastions', the target's), each reaching only its neighbours, real sshd servers in them,
//! and Nix 2.8 judging every copy.

mod nix_oracle;
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use nix_oracle::{BIN, closure, path_infos};
use support::netns::Chain;
use support::sshd::Sshd;

/// `copy --to ssh://DEST` run in the operator's namespace (the chain's first).
fn copy_in(chain: &Chain, dest: &str, key: &Path, root: &Path, extra: &[&str]) -> Output {
    let top = closure("small");
    chain
        .command(0, BIN)
        .args(["copy", "--json", "--to"])
        .arg(format!("ssh://{dest}"))
        .arg("-i")
        .arg(key)
        .arg("--root")
        .arg(root)
        .args(extra)
        .arg(&top)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_PRIVATE_KEY")
        .output()
        .unwrap()
}

fn assert_copied(out: &Output, root: &Path, servers: &[&Sshd]) {
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    assert!(
        out.status.success(),
        "copy failed: {}\nsshd logs:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs.join("\n---\n")
    );
    let top = closure("small");
    let verify = Command::new("nix-store")
        .args(["--option", "build-users-group", ""])
        .args(["--verify", "--check-contents", "--store"])
        .arg(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("error") && !stderr.contains("modified"),
        "{stderr}"
    );
    assert_eq!(path_infos(&top, Some(root)), path_infos(&top, None));
}

/// Servers in namespaces 1.. of `chain`, on the address their left neighbour reaches, all
/// accepting the first one's key.
fn servers(chain: &Chain) -> Vec<Sshd> {
    let servers: Vec<Sshd> = (1..chain.namespaces.len())
        .map(|i| Sshd::start_in_netns(&chain.namespaces[i], &Chain::right_addr(i)))
        .collect();
    for other in &servers[1..] {
        fs::copy(
            servers[0].client_key.with_extension("pub"),
            other.dir().join("authorized_keys"),
        )
        .unwrap();
    }
    servers
}

fn user_at(link: usize) -> String {
    format!("{}@{}", support::sshd::user(), Chain::right_addr(link))
}

#[test]
fn proxy_jump_through_one_bastion() {
    let chain = Chain::new("j1", 3);
    let servers = servers(&chain);
    let key = servers[0].client_key.clone();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");

    // The operator cannot reach the target itself.
    let direct = copy_in(
        &chain,
        &user_at(2),
        &key,
        &root,
        &["-o", "ConnectTimeout=2"],
    );
    assert!(!direct.status.success());
    assert!(!root.join("nix/store").exists());

    let jump = format!("ProxyJump={}", user_at(1));
    let out = copy_in(&chain, &user_at(2), &key, &root, &["-o", &jump]);
    assert_copied(&out, &root, &[&servers[0], &servers[1]]);
}

#[test]
fn proxy_jump_through_two_bastions() {
    let chain = Chain::new("j2", 4);
    let servers = servers(&chain);
    let key = servers[0].client_key.clone();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let jump = format!("ProxyJump={},{}", user_at(1), user_at(2));
    let out = copy_in(&chain, &user_at(3), &key, &root, &["-o", &jump]);
    assert_copied(&out, &root, &[&servers[0], &servers[1], &servers[2]]);
}

#[test]
fn proxy_command_through_a_bastion() {
    let chain = Chain::new("pc", 3);
    let servers = servers(&chain);
    let key = servers[0].client_key.clone();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // OpenSSH's own client as the proxy, as a user's configuration would have it.
    let command = format!(
        "ProxyCommand=ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o BatchMode=yes -W %h:%p {}",
        key.display(),
        user_at(1)
    );
    let out = copy_in(&chain, &user_at(2), &key, &root, &["-o", &command]);
    assert_copied(&out, &root, &[&servers[0], &servers[1]]);
}

#[test]
fn behind_a_jump_host_the_last_hop_resolves_the_name() {
    let chain = Chain::new("nm", 2);
    let bastion = Sshd::start_in_netns(&chain.namespaces[1], &Chain::right_addr(1));
    // Only the bastion's own loopback has this server; the operator's has none.
    let inner = Sshd::start_in_netns(&chain.namespaces[1], "127.0.0.1");
    fs::copy(
        bastion.client_key.with_extension("pub"),
        inner.dir().join("authorized_keys"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let jump = format!("ProxyJump={}", user_at(1));
    let dest = format!("{}@localhost", support::sshd::user());
    let out = copy_in(&chain, &dest, &bastion.client_key, &root, &["-o", &jump]);
    assert_copied(&out, &root, &[&bastion, &inner]);
    assert!(
        inner.log().contains("Accepted publickey"),
        "{}",
        inner.log()
    );
}
