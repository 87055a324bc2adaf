//! Addresses as users write them: IPv6 literals in brackets, with a port, in an `ssh://` URI,
//! with a zone; against a real sshd listening on `::1`.

mod support;

use nixos_anywhere_rs::ssh::{HostKeyPin, Session, SshOptions, Target};
use support::sshd::Sshd;

#[tokio::test]
async fn ipv6_literals_connect() {
    let sshd = Sshd::start_on("::1");
    let opts = SshOptions {
        identity_files: vec![sshd.client_key.clone()],
        ..SshOptions::default()
    };
    let user = support::sshd::user();
    for dest in [
        format!("{user}@[::1]:{}", sshd.port),
        format!("ssh://{user}@[::1]:{}", sshd.port),
        format!("ssh://{user}@[::1]:{}/", sshd.port),
        // A zone (the interface a link-local address is on) is passed to the socket.
        format!("{user}@[::1%lo]:{}", sshd.port),
    ] {
        let target = Target::parse(&dest).unwrap();
        let session = Session::connect(&target, &opts, &HostKeyPin::new())
            .await
            .unwrap_or_else(|e| panic!("{dest}: {e}"));
        let out = session.run("echo $SSH_CONNECTION", b"").await.unwrap();
        let seen = String::from_utf8(out.stdout).unwrap();
        assert!(seen.starts_with("::1 "), "{dest}: {seen}");
    }
    // The port is required to be in brackets' reach: a bare address takes none.
    let bare = Target::parse("::1").unwrap();
    assert_eq!((bare.host.as_str(), bare.port), ("::1", 22));
}

#[test]
fn a_zone_names_the_interface() {
    let t = Target::parse("root@[fe80::1%eth0]:2222").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("fe80::1%eth0", 2222));
    assert_eq!(t.to_string(), "root@[fe80::1%eth0]:2222");
    let t = Target::parse("fe80::1%eth0").unwrap();
    assert_eq!(t.host, "fe80::1%eth0");
}
