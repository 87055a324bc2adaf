//! A real OpenSSH server on 127.0.0.1 for one test: its own directory, config, host key,
//! authorized client key and free port; killed on drop. Also a real ssh-agent.
//!
//! Needs openssh-server and openssh-client, which `scripts/setup` installs.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::run;

const SSHD: &str = "/usr/sbin/sshd";

/// The user [`Sshd::start_with_sudo_user`] makes.
pub const SUDO_USER: &str = "nar-sudo-test";

pub struct Sshd {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// A private key whose public half is authorized.
    pub client_key: PathBuf,
    /// Configuration lines before the defaults (sshd takes a keyword's first value).
    extra: String,
    /// The address it listens on, and the network namespace it runs in if not the host's.
    listen: String,
    netns: Option<String>,
    /// With a password: root's home in the server's view (the test's own directory).
    password_home: Option<PathBuf>,
    /// A target of its own: a tmpfs at `/mnt` and this `nix.conf` in the server's view.
    private_mnt: Option<String>,
}

/// Generates an unencrypted ed25519 key pair at `path` and `path.pub`.
pub fn keygen(path: &Path) -> PathBuf {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-key", "-f"])
        .arg(path));
    path.to_owned()
}

/// The user the tests log in as: whoever runs them.
pub fn user() -> String {
    if rustix::process::getuid().is_root() {
        return "root".to_owned();
    }
    std::env::var("USER").expect("USER is not set")
}

/// Whether this process runs under a tracer (strace).
pub fn traced() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Starts a fresh server. Panics with a pointer to `scripts/setup` when sshd is missing.
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// Starts a fresh server with `extra` lines in its configuration.
    pub fn start_with(extra: &str) -> Sshd {
        Self::start_at(extra, "127.0.0.1", None)
    }

    /// Starts a fresh server listening on `addr` (`::1`, say) in this namespace.
    pub fn start_on(addr: &str) -> Sshd {
        Self::start_at("", addr, None)
    }

    /// Starts a fresh server in the network namespace `netns`, listening on `addr` there.
    pub fn start_in_netns(netns: &str, addr: &str) -> Sshd {
        Self::start_at("", addr, Some(netns.to_owned()))
    }

    /// Starts a server where root logs in with `password` (and `extra` lines first), its
    /// execs traced. It runs in a mount namespace of its own in which `/etc/shadow` and
    /// `/etc/passwd` are copies with that password and a home in the test's directory
    /// ([`Sshd::home`]), so nothing of this machine's changes.
    pub fn start_with_password(extra: &str, password: &str) -> Sshd {
        Self::start_sandboxed(extra, password, false)
    }

    /// Like [`Sshd::start_with_password`], and the user [`SUDO_USER`] (uid 4242) logs in with
    /// the client key; `sudo` gives it root for `password` (`/etc/sudoers` is a copy too).
    pub fn start_with_sudo_user(password: &str) -> Sshd {
        Self::start_sandboxed("", password, true)
    }

    fn start_sandboxed(extra: &str, password: &str, sudo_user: bool) -> Sshd {
        Self::start_prepared(extra, "127.0.0.1", None, |sshd| {
            let d = sshd.dir().to_owned();
            let home = d.join("home");
            fs::create_dir_all(&home).unwrap();
            let mut hash = Command::new("openssl")
                .args(["passwd", "-6", "-stdin"])
                .env_remove("SSHPASS")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("openssl");
            use std::io::Write;
            let mut stdin = hash.stdin.take().unwrap();
            stdin.write_all(password.as_bytes()).unwrap();
            drop(stdin);
            let hash = String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap();
            let edit = |file: &str, field: usize, value: &str| {
                let text: String = fs::read_to_string(file)
                    .unwrap()
                    .lines()
                    .map(|line| {
                        let mut fields: Vec<&str> = line.split(':').collect();
                        if fields[0] == "root" {
                            fields[field] = value;
                        }
                        fields.join(":") + "\n"
                    })
                    .collect();
                text
            };
            let mut shadow = edit("/etc/shadow", 1, hash.trim());
            let mut passwd = edit("/etc/passwd", 5, home.to_str().unwrap());
            let mut sudoers = "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n".to_owned();
            if sudo_user {
                let user_home = d.join("home-user");
                fs::create_dir_all(&user_home).unwrap();
                rustix::fs::chown(
                    &user_home,
                    Some(rustix::fs::Uid::from_raw(4242)),
                    Some(rustix::fs::Gid::from_raw(4242)),
                )
                .unwrap();
                // The user reads the authorized keys in here.
                fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
                shadow.push_str(&format!("{SUDO_USER}:{}:19000:0:99999:7:::\n", hash.trim()));
                passwd.push_str(&format!(
                    "{SUDO_USER}:x:4242:4242::{}:/bin/sh\n",
                    user_home.display()
                ));
                sudoers.push_str(&format!("{SUDO_USER} ALL=(ALL:ALL) ALL\n"));
            }
            fs::write(d.join("shadow"), shadow).unwrap();
            fs::write(d.join("passwd"), passwd).unwrap();
            fs::write(d.join("sudoers"), sudoers).unwrap();
            fs::set_permissions(d.join("sudoers"), fs::Permissions::from_mode(0o440)).unwrap();
            sshd.password_home = Some(home);
        })
    }

    /// Starts a server in a mount namespace of its own, standing in for an installer: an
    /// empty tmpfs at `/mnt`, seen by it alone, and `nix_conf` as its sessions' Nix
    /// configuration (`NIX_CONF_DIR`).
    pub fn start_as_installer(nix_conf: &str) -> Sshd {
        Self::start_prepared("", "127.0.0.1", None, |sshd| {
            let dir = sshd.dir().join("nix");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("nix.conf"), nix_conf).unwrap();
            sshd.extra
                .push_str(&format!("SetEnv NIX_CONF_DIR={}\n", dir.display()));
            sshd.private_mnt = Some(nix_conf.to_owned());
        })
    }

    /// Root's home directory as the password server sees it.
    pub fn home(&self) -> &Path {
        self.password_home
            .as_deref()
            .expect("a server started with a password")
    }

    /// What `strace -e trace=execve` saw of the server and its children (nothing when this
    /// process is traced itself: then its tracer saw them).
    pub fn exec_trace(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.strace")).unwrap_or_default()
    }

    fn start_at(extra: &str, listen: &str, netns: Option<String>) -> Sshd {
        Self::start_prepared(extra, listen, netns, |_| {})
    }

    fn start_prepared(
        extra: &str,
        listen: &str,
        netns: Option<String>,
        prepare: impl FnOnce(&mut Sshd),
    ) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: run scripts/setup (it installs openssh-server)"
        );
        // The privilege-separation directory sshd insists on (when run as root).
        let _ = fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let client_key = keygen(&dir.path().join("client_key"));
        fs::copy(
            client_key.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        keygen(&dir.path().join("host_key"));
        let mut sshd = Sshd {
            dir,
            port: 0,
            child: None,
            client_key,
            extra: extra.to_owned(),
            listen: listen.to_owned(),
            netns,
            password_home: None,
            private_mnt: None,
        };
        prepare(&mut sshd);
        for _ in 0..10 {
            // A namespace of the test's own has every port free.
            sshd.port = if sshd.netns.is_some() {
                22
            } else {
                free_port()
            };
            if sshd.spawn() {
                return sshd;
            }
        }
        panic!("sshd did not start: {}", sshd.log());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `user@address:port`.
    pub fn destination(&self) -> String {
        if self.listen.contains(':') {
            format!("{}@[{}]:{}", user(), self.listen, self.port)
        } else {
            format!("{}@{}:{}", user(), self.listen, self.port)
        }
    }

    /// The host key's public line, `ssh-ed25519 AAAA...`.
    pub fn host_public_key(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("host_key.pub")).unwrap();
        let mut fields = text.split_whitespace();
        format!("{} {}", fields.next().unwrap(), fields.next().unwrap())
    }

    /// A known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}\n",
            self.listen,
            self.port,
            self.host_public_key()
        )
    }

    /// Stops the server, gives it a new host key and starts it again on the same port.
    pub fn restart_with_new_host_key(&mut self) {
        self.stop();
        keygen(&self.dir.path().join("host_key"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "sshd did not restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // Under strace, the child is strace: the server itself is named in its pid file.
        if self.password_home.is_some()
            && let Ok(pid) = fs::read_to_string(self.dir.path().join("sshd.pid"))
        {
            let _ = Command::new("kill")
                .arg(pid.trim())
                .env_remove("SSHPASS")
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts sshd on `self.port`; false if it exited (the port was taken, say).
    fn spawn(&mut self) -> bool {
        let d = self.dir.path();
        let config = format!(
            "{extra}\
             Port {port}\n\
             ListenAddress {listen}\n\
             HostKey {d}/host_key\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin yes\n\
             StrictModes no\n\
             UsePAM no\n\
             UseDNS no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             MaxStartups 64\n\
             LogLevel VERBOSE\n",
            port = self.port,
            listen = self.listen,
            d = d.display(),
            extra = self.extra,
        );
        fs::write(d.join("sshd_config"), config).unwrap();
        let log = fs::File::create(d.join("sshd.log")).unwrap();
        let mut command = match (&self.netns, &self.password_home) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            (None, Some(_)) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(
                        if traced() {
                            // Under a tracer already (which sees this server too): a
                            // traced process cannot trace.
                            r#"mount --bind "$0/shadow" /etc/shadow && mount --bind "$0/passwd" /etc/passwd && mount --bind "$0/sudoers" /etc/sudoers && exec "$@""#
                        } else {
                            r#"mount --bind "$0/shadow" /etc/shadow && mount --bind "$0/passwd" /etc/passwd && mount --bind "$0/sudoers" /etc/sudoers && exec strace -f -e trace=execve -s 4096 -v -o "$0/sshd.strace" "$@""#
                        },
                    )
                    .arg(d)
                    .arg(SSHD);
                c
            }
            (None, None) if self.private_mnt.is_some() => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount -t tmpfs tmpfs /mnt && exec "$0" "$@""#)
                    .arg(SSHD);
                c
            }
            (None, None) => Command::new(SSHD),
        };
        let child = command
            .env_remove("SSHPASS")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {SSHD}: {e}; run scripts/setup"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.netns.is_some() {
                // Out of the host's reach: its log says when it listens.
                if self.log().contains("Server listening on") {
                    return true;
                }
            } else if let Ok(mut stream) = TcpStream::connect((self.listen.as_str(), self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real ssh-agent listening on a socket of its own; killed on drop.
pub struct SshAgent {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl SshAgent {
    pub fn start() -> SshAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start ssh-agent: {e}; run scripts/setup"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        SshAgent {
            _dir: dir,
            socket,
            child,
        }
    }

    /// Loads a private key into the agent with ssh-add.
    pub fn add(&self, key: &Path) {
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket));
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
