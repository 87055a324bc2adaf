//! Two network namespaces joined by a veth pair, made by the test that uses them and deleted on
//! drop: a client side and a server side with their own addresses in a /30 that exists only
//! inside them, so nothing is routed to or from the host. `tc` shapes the link (tbf: this
//! kernel has no netem) and the link can be cut without a word, as a pulled cable is.

use std::process::{Command, Stdio};

use super::run;

/// The server end's address; the client end is 10.213.0.1.
pub const SERVER_ADDR: &str = "10.213.0.2";

pub struct LinkPair {
    pub client_ns: String,
    pub server_ns: String,
    server_if: String,
    client_if: String,
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn tc(args: &[&str]) {
    run(Command::new("tc").args(args));
}

impl LinkPair {
    /// Creates the pair; `tag` (a few letters) keeps the names of concurrent tests apart.
    pub fn new(tag: &str) -> LinkPair {
        let id = format!("{tag}{}", std::process::id() % 100_000);
        let pair = LinkPair {
            client_ns: format!("nar-test-{id}-c"),
            server_ns: format!("nar-test-{id}-s"),
            // Interface names have at most 15 bytes.
            client_if: format!("nc{id}"),
            server_if: format!("ns{id}"),
        };
        pair.delete(); // the remains of a test that was killed
        for ns in [&pair.client_ns, &pair.server_ns] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Created inside the namespaces: the names never exist in the host's.
        ip(&[
            "link",
            "add",
            &pair.client_if,
            "netns",
            &pair.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &pair.server_if,
            "netns",
            &pair.server_ns,
        ]);
        ip(&[
            "-n",
            &pair.client_ns,
            "addr",
            "add",
            "10.213.0.1/30",
            "dev",
            &pair.client_if,
        ]);
        ip(&[
            "-n",
            &pair.server_ns,
            "addr",
            "add",
            &format!("{SERVER_ADDR}/30"),
            "dev",
            &pair.server_if,
        ]);
        pair.set_link(true);
        pair
    }

    /// Limits both directions to `rate` (`tc` syntax, e.g. `20mbit`) with a token bucket.
    pub fn shape(&self, rate: &str) {
        for (ns, dev) in [
            (&self.client_ns, &self.client_if),
            (&self.server_ns, &self.server_if),
        ] {
            tc(&[
                "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst",
                "64kb", "latency", "50ms",
            ]);
        }
    }

    /// Takes the link down or up. Down, packets are dropped without a word to either end, as
    /// when a cable is pulled: no reset, no error, only silence.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for (ns, dev) in [
            (&self.client_ns, &self.client_if),
            (&self.server_ns, &self.server_if),
        ] {
            ip(&["-n", ns, "link", "set", dev, state]);
        }
    }

    /// `program` with `args`, to be run in the client's namespace.
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client_ns, program]);
        cmd
    }

    fn delete(&self) {
        for ns in [&self.client_ns, &self.server_ns] {
            // Whatever still runs in it (a server, an agent) goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for LinkPair {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Network namespaces in a line, each joined to the next by a veth pair of its own /30
/// (10.214.N.1 on the left, 10.214.N.2 on the right of link N, from 1): nothing forwards, so
/// each namespace reaches only its neighbours, as an operator reaches only a bastion and only
/// the bastion reaches the machine behind it.
pub struct Chain {
    pub namespaces: Vec<String>,
}

impl Chain {
    /// `hosts` namespaces (at least 2); `tag` keeps concurrent tests apart.
    pub fn new(tag: &str, hosts: usize) -> Chain {
        let id = format!("{tag}{}", std::process::id() % 100_000);
        let chain = Chain {
            namespaces: (0..hosts).map(|i| format!("nar-chain-{id}-{i}")).collect(),
        };
        chain.delete();
        for ns in &chain.namespaces {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for link in 1..hosts {
            let (left, right) = (&chain.namespaces[link - 1], &chain.namespaces[link]);
            let (left_if, right_if) = (format!("l{link}{id}"), format!("r{link}{id}"));
            ip(&[
                "link", "add", &left_if, "netns", left, "type", "veth", "peer", "name", &right_if,
                "netns", right,
            ]);
            for (ns, dev, addr) in [
                (left, &left_if, Self::left_addr(link)),
                (right, &right_if, Self::right_addr(link)),
            ] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
        }
        chain
    }

    /// The address of namespace `link` on the link to its left neighbour.
    pub fn right_addr(link: usize) -> String {
        format!("10.214.{link}.2")
    }

    pub fn left_addr(link: usize) -> String {
        format!("10.214.{link}.1")
    }

    /// `program`, to be run in namespace `index`.
    pub fn command(&self, index: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespaces[index], program]);
        cmd
    }

    fn delete(&self) {
        for ns in &self.namespaces {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.delete();
    }
}
