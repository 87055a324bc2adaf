//! Where to connect and how: the destination (`[user@]host[:port]`) and the subset of OpenSSH's
//! client options that matter here, settable with `-o Key=Value` as with `ssh`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::SshError;
use super::password::{Password, TemporaryKey};
use super::privilege::Become;
use super::proxy::{JumpHost, Proxy};

/// Default port and user, as nixos-anywhere connects as root unless told otherwise.
pub const DEFAULT_PORT: u16 = 22;
pub const DEFAULT_USER: &str = "root";

/// A parsed SSH destination. `host` is a name or an IP address without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `[user@]host[:port]`, `ssh://[user@]host[:port]`, `[user@][IPv6]:port` or a bare
    /// IPv6 address; the user defaults to root and the port to 22.
    pub fn parse(input: &str) -> Result<Target, SshError> {
        Self::parse_with(input, &SshOptions::default())
    }

    /// Like [`Target::parse`], but a user or port missing from `input` comes from `opts`
    /// (`-p`, `-o Port=`, `-o User=`) before the defaults. One given in `input` wins.
    pub fn parse_with(input: &str, opts: &SshOptions) -> Result<Target, SshError> {
        let dest = Destination::parse(input)?;
        Ok(Target {
            user: dest
                .user
                .or_else(|| opts.user.clone())
                .unwrap_or_else(|| DEFAULT_USER.to_owned()),
            host: dest.host,
            port: dest.port.or(opts.port).unwrap_or(DEFAULT_PORT),
        })
    }
}

/// A destination as written: the user and port only where it names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl Destination {
    pub(crate) fn parse(input: &str) -> Result<Destination, SshError> {
        let bad = |reason: &str| SshError::InvalidTarget {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = input.strip_prefix("ssh://").unwrap_or(input);
        let rest = if input.starts_with("ssh://") {
            rest.strip_suffix('/').unwrap_or(rest)
        } else {
            rest
        };
        // Like nixos-anywhere: the user is everything up to the last '@'.
        let (user, hostport) = match rest.rsplit_once('@') {
            Some(("", _)) => return Err(bad("the user name is empty")),
            Some((user, hostport)) => (Some(user), hostport),
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after ']'"))?,
                ),
            };
            (host, port)
        } else if hostport.matches(':').count() > 1 {
            // A bare IPv6 address: no port can be given without brackets.
            (hostport, None)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if host.contains(['/', ' ', '@', '[', ']']) || host.starts_with('-') {
            return Err(bad("the host contains characters a host name cannot"));
        }
        let port = match port {
            Some(p) => Some(parse_port(p).map_err(|r| bad(&r))?),
            None => None,
        };
        Ok(Destination {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    /// `user@host:port`, with brackets around an IPv6 address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port number (1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// How to treat a host key that no known_hosts file vouches for (OpenSSH's
/// `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// Accept any key the first time (it is then pinned for the run); a known_hosts entry that
    /// disagrees is only warned about. nixos-anywhere's behaviour, and the default.
    No,
    /// Accept a host missing from known_hosts, refuse one whose recorded key differs.
    AcceptNew,
    /// Refuse any host whose key is not recorded in known_hosts (`ask` means this too, as
    /// there is nobody to ask).
    Yes,
}

/// Private key text given in the environment (`SSH_PRIVATE_KEY`). Never printed.
#[derive(Clone)]
pub struct KeyText(pub(crate) String);

impl KeyText {
    pub fn new(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Debug for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyText(<redacted>)")
    }
}

/// Client options. [`SshOptions::default`] reads nothing from the environment (tests rely on
/// that); [`SshOptions::from_env`] does what a user expects from `ssh`.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Private key files (`-i`, `IdentityFile`), tried first, in order.
    pub identity_files: Vec<PathBuf>,
    /// Private key text (`SSH_PRIVATE_KEY`), tried after the identity files.
    pub private_key: Option<KeyText>,
    /// The ssh-agent socket (`SSH_AUTH_SOCK`, `IdentityAgent`); `None`: no agent.
    pub identity_agent: Option<PathBuf>,
    /// Use only the keys given explicitly, not the agent's (`IdentitiesOnly`).
    pub identities_only: bool,
    /// Key files the SSH configuration names (`IdentityFile`), tried after `identity_files`;
    /// one that does not exist is skipped with a warning, as `ssh` does.
    pub config_identity_files: Vec<PathBuf>,
    /// Keys tried last, only when no key was given explicitly (`~/.ssh/id_*`).
    pub default_identity_files: Vec<PathBuf>,
    /// Port when the destination names none (`-p`, `Port`).
    pub port: Option<u16>,
    /// User when the destination names none (`User`).
    pub user: Option<String>,
    pub strict_host_key_checking: StrictHostKeyChecking,
    /// known_hosts files (`UserKnownHostsFile`). Empty: none with `StrictHostKeyChecking=no`,
    /// `~/.ssh/known_hosts` otherwise.
    pub known_hosts: Vec<PathBuf>,
    /// Limit for the TCP connection and the SSH handshake each (`ConnectTimeout`).
    pub connect_timeout: Option<Duration>,
    /// Send a keepalive after this long without hearing from the server (`ServerAliveInterval`).
    pub keepalive_interval: Option<Duration>,
    /// Give up after this many unanswered keepalives (`ServerAliveCountMax`).
    pub keepalive_max: usize,
    /// How the connection reaches the host: directly, through jump hosts, or a command.
    pub proxy: Proxy,
    /// The password for password and keyboard-interactive logins (`--env-password`).
    pub password: Option<Password>,
    /// Without `password`, ask for one on the terminal when no key is accepted.
    pub ask_password: bool,
    /// The key a password login adds to `authorized_keys` (without `-i`), tried first.
    pub temporary_key: TemporaryKey,
    /// Whether a login that is not root runs its commands through sudo or doas.
    pub become_root: Become,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            identity_files: Vec::new(),
            private_key: None,
            identity_agent: None,
            identities_only: false,
            config_identity_files: Vec::new(),
            default_identity_files: Vec::new(),
            port: None,
            user: None,
            strict_host_key_checking: StrictHostKeyChecking::No,
            known_hosts: Vec::new(),
            connect_timeout: Some(Duration::from_secs(30)),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            proxy: Proxy::Direct,
            password: None,
            ask_password: false,
            temporary_key: TemporaryKey::default(),
            become_root: Become::Auto,
        }
    }
}

/// The `-o` keys understood, for the error message listing them.
const SUPPORTED: &str = "Port, User, IdentityFile, IdentitiesOnly, IdentityAgent, \
    StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout, ServerAliveInterval, \
    ServerAliveCountMax, ProxyJump, ProxyCommand";

/// Keys accepted and ignored (with a warning): they only tune OpenSSH's own client.
const IGNORED: &[&str] = &[
    "loglevel",
    "compression",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "batchmode",
    "forwardagent",
    "requesttty",
    "globalknownhostsfile",
    "checkhostip",
    "updatehostkeys",
    "hashknownhosts",
];

impl SshOptions {
    /// The defaults plus what `ssh` would take from the environment: the agent at
    /// `SSH_AUTH_SOCK`, the key text in `SSH_PRIVATE_KEY` and the `~/.ssh/id_*` fallbacks.
    pub fn from_env() -> Self {
        let mut opts = Self {
            identity_agent: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            private_key: std::env::var("SSH_PRIVATE_KEY")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(KeyText),
            ..Self::default()
        };
        if let Some(home) = std::env::var_os("HOME") {
            let ssh = PathBuf::from(home).join(".ssh");
            opts.default_identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|n| ssh.join(n))
                .collect();
        }
        opts
    }

    /// How long the connection may stay silent before the client gives up on it
    /// (`ServerAliveInterval` × `ServerAliveCountMax`), or `None` without keepalives.
    pub fn patience(&self) -> Option<Duration> {
        let max = u32::try_from(self.keepalive_max.max(1)).unwrap_or(u32::MAX);
        self.keepalive_interval.map(|every| every * max)
    }

    /// Applies one `-o`/`--ssh-option` setting, `Key=Value` or `Key Value`, keys
    /// case-insensitive as in OpenSSH.
    pub fn set_option(&mut self, key_eq_value: &str) -> Result<(), SshError> {
        let bad = |reason: String| SshError::InvalidOption {
            option: key_eq_value.to_owned(),
            reason,
        };
        let text = key_eq_value.trim();
        let (key, value) = text
            .split_once(['=', ' ', '\t'])
            .map(|(k, v)| (k.trim(), v.trim().trim_start_matches('=').trim()))
            .ok_or_else(|| bad("expected Key=Value".to_owned()))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if key.is_empty() || value.is_empty() {
            return Err(bad("expected Key=Value".to_owned()));
        }
        match key.to_ascii_lowercase().as_str() {
            "port" => self.port = Some(parse_port(value).map_err(bad)?),
            "user" => self.user = Some(value.to_owned()),
            "identityfile" => self.identity_files.push(expand_tilde(value)),
            "identitiesonly" => self.identities_only = parse_yes_no(value).map_err(bad)?,
            "identityagent" => {
                self.identity_agent = match value {
                    "none" => None,
                    "SSH_AUTH_SOCK" => std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
                    path => Some(expand_tilde(path)),
                }
            }
            "stricthostkeychecking" => {
                self.strict_host_key_checking = match value.to_ascii_lowercase().as_str() {
                    "no" | "off" | "false" => StrictHostKeyChecking::No,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "yes" | "ask" | "true" => StrictHostKeyChecking::Yes,
                    _ => return Err(bad("expected yes, no, accept-new or ask".to_owned())),
                }
            }
            "userknownhostsfile" => {
                self.known_hosts = value.split_whitespace().map(expand_tilde).collect();
            }
            "connecttimeout" => {
                self.connect_timeout = match parse_seconds(value).map_err(bad)? {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                }
            }
            "serveraliveinterval" => {
                self.keepalive_interval = match parse_seconds(value).map_err(bad)? {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                }
            }
            "serveralivecountmax" => {
                self.keepalive_max = value
                    .parse()
                    .map_err(|_| bad(format!("{value:?} is not a count")))?
            }
            "proxycommand" if value == "none" => self.proxy = Proxy::Direct,
            "proxycommand" => self.proxy = Proxy::Command(value.to_owned()),
            "proxyjump" if value == "none" => self.proxy = Proxy::Direct,
            "proxyjump" => {
                // Without a configuration file, each hop logs in as the target does.
                let mut hop_opts = self.clone();
                hop_opts.proxy = Proxy::Direct;
                let mut hops = Vec::new();
                for hop in value.split(',') {
                    let target = Target::parse_with(hop.trim(), &hop_opts)?;
                    hops.push(JumpHost {
                        target,
                        opts: hop_opts.clone(),
                    });
                }
                self.proxy = Proxy::Jump(hops);
            }
            k if IGNORED.contains(&k) => {
                tracing::warn!("ignoring SSH option {key}: it only applies to OpenSSH's client");
            }
            _ => {
                return Err(bad(format!(
                    "unknown option {key:?}; supported: {SUPPORTED}"
                )));
            }
        }
        Ok(())
    }
}

fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err("expected yes or no".to_owned()),
    }
}

fn parse_seconds(value: &str) -> Result<u64, String> {
    let digits = value.strip_suffix(['s', 'S']).unwrap_or(value);
    digits
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))
}

pub(crate) fn expand_tilde(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms() {
        let t = |s: &str| Target::parse(s).unwrap();
        assert_eq!(
            t("host"),
            Target {
                user: "root".into(),
                host: "host".into(),
                port: 22
            }
        );
        assert_eq!(t("me@host:2222").to_string(), "me@host:2222");
        assert_eq!(t("ssh://me@host:2222/").to_string(), "me@host:2222");
        assert_eq!(t("[::1]:2200").to_string(), "root@[::1]:2200");
        assert_eq!(t("u@[fe80::1]").port, 22);
        assert_eq!(t("fe80::1").host, "fe80::1");
        assert_eq!(t("a@b@host").user, "a@b");
        for bad in [
            "",
            "@host",
            "host:",
            "host:0",
            "host:99999",
            "[::1",
            "[::1]x",
            "u@",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn options_fill_in_what_the_destination_lacks() {
        let mut opts = SshOptions::default();
        opts.set_option("Port=2200").unwrap();
        opts.set_option("user bob").unwrap();
        assert_eq!(
            Target::parse_with("host", &opts).unwrap().to_string(),
            "bob@host:2200"
        );
        assert_eq!(
            Target::parse_with("al@host:22", &opts).unwrap().to_string(),
            "al@host:22"
        );
    }

    #[test]
    fn key_text_is_never_printed() {
        let opts = SshOptions {
            private_key: Some(KeyText::new(
                "-----BEGIN OPENSSH PRIVATE KEY----- secret".into(),
            )),
            ..SshOptions::default()
        };
        assert!(!format!("{opts:?}").contains("secret"));
    }
}
