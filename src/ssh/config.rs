//! What the user's SSH configuration says about one destination, as OpenSSH's own client
//! resolves it: `ssh -G` where an `ssh` is installed (its `Match` blocks, tokens and
//! canonicalisation included), the `ssh2-config` crate where none is.
//!
//! Both produce [`Settings`]: lowercase keys with their values, as `ssh -G` prints them, holding
//! only what the configuration or the command line set. OpenSSH's own defaults are left out, so
//! that ours (see [`SshOptions::default`](super::SshOptions)) apply where the user said nothing.

use crate::exec::Cmd;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

use super::SshError;

/// Keys as `ssh -G` prints them, each with its values in order (most keys have one;
/// `identityfile` may have several).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings(pub(crate) BTreeMap<String, Vec<String>>);

impl Settings {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    pub(crate) fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// Sets `key` unless it is set already: the first value obtained wins, as in OpenSSH.
    fn set_first(&mut self, key: &str, value: String) {
        self.0.entry(key.to_owned()).or_insert_with(|| vec![value]);
    }
}

/// One lookup: the destination's host (an alias, or a name or address) and what the command
/// line says beside it.
pub(crate) struct Query<'a> {
    pub(crate) host: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) port: Option<u16>,
    /// `-o` options, `Key=Value`; they win over the file.
    pub(crate) options: &'a [String],
    /// `-F FILE`; `None`: `~/.ssh/config`, then `/etc/ssh/ssh_config`.
    pub(crate) config_file: Option<&'a Path>,
}

/// How to read the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigReader {
    /// Ask this `ssh` binary (`ssh -G`).
    Openssh(PathBuf),
    /// Parse the file here (no `Match`, fewer tokens).
    Builtin,
}

impl ConfigReader {
    /// `ssh` from `PATH` when there is one, the built-in parser otherwise.
    pub fn from_path_env() -> Self {
        Self::from_path(std::env::var_os("PATH").as_deref())
    }

    /// Like [`from_path_env`](Self::from_path_env), for a given `PATH` value.
    pub fn from_path(path: Option<&OsStr>) -> Self {
        let found = path
            .into_iter()
            .flat_map(std::env::split_paths)
            .find_map(|dir| {
                let ssh = dir.join("ssh");
                is_executable(&ssh).then_some(ssh)
            });
        match found {
            Some(ssh) => Self::Openssh(ssh),
            None => Self::Builtin,
        }
    }

    pub(crate) fn read(&self, query: &Query<'_>) -> Result<Settings, SshError> {
        match self {
            Self::Openssh(ssh) => openssh(ssh, query),
            Self::Builtin => builtin(query),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The login name on this machine, which `ssh -G` prints as `user` when nothing sets one.
pub(crate) fn local_user() -> Option<String> {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
    })
}

/// The home directory, for `~` and the default files.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A user name no configuration sets: appended as a last `Host *` rule, it shows through only
/// where nothing else set `User`.
const UNSET_USER: &str = "nixos-anywhere-rs-no-user-configured";

fn openssh(ssh: &Path, query: &Query<'_>) -> Result<Settings, SshError> {
    let mut settings = run_ssh_g(ssh, query, query.config_file)?;
    // OpenSSH prints the local login name when nothing sets a user; ours is root. Only when
    // the two cannot be told apart is the configuration asked again, with a marker last.
    if query.user.is_none() && settings.get("user").map(str::to_owned) == local_user() {
        let includes: Vec<PathBuf> = match query.config_file {
            Some(file) => vec![std::path::absolute(file).unwrap_or_else(|_| file.to_owned())],
            None => home()
                .map(|h| h.join(".ssh/config"))
                .into_iter()
                .chain([PathBuf::from("/etc/ssh/ssh_config")])
                .collect(),
        };
        let mut text = String::new();
        for file in includes {
            text.push_str(&format!("Include \"{}\"\n", file.display()));
        }
        text.push_str(&format!("Host *\n  User {UNSET_USER}\n"));
        let wrapper = ScratchFile::write(&text)?;
        let marked = run_ssh_g(ssh, query, Some(&wrapper.0))?;
        if marked.get("user") == Some(UNSET_USER) {
            settings.0.remove("user");
        }
    } else if query.user.is_none() && settings.get("user").is_none() {
        settings.0.remove("user");
    }
    drop_openssh_defaults(&mut settings, query);
    Ok(settings)
}

/// A file of ours in the temporary directory, removed on drop.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn write(text: &str) -> Result<Self, SshError> {
        use std::io::Write;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "nixos-anywhere-rs-ssh-config-{}-{n}",
            std::process::id()
        ));
        let io = |source| SshError::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        Ok(Self(path))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_ssh_g(ssh: &Path, query: &Query<'_>, file: Option<&Path>) -> Result<Settings, SshError> {
    let mut cmd = Cmd::new(ssh).arg("-G");
    if let Some(file) = file {
        cmd = cmd.arg("-F").arg(file);
    }
    if let Some(port) = query.port {
        cmd = cmd.arg("-p").arg(port.to_string());
    }
    if let Some(user) = query.user {
        cmd = cmd.arg("-l").arg(user);
    }
    for option in query.options {
        cmd = cmd.arg("-o").arg(option);
    }
    let shown = format!("{} -G ... {}", ssh.display(), query.host);
    // The password given in the environment is for us, not for what we run.
    let stdout = cmd
        .arg("--")
        .arg(query.host)
        .env_remove("SSHPASS")
        .output()
        .map_err(|e| SshError::Config {
            what: shown,
            reason: e.to_string(),
        })?;
    let mut settings = Settings::default();
    for line in String::from_utf8_lossy(&stdout).lines() {
        if let Some((key, value)) = line.split_once(' ') {
            settings
                .0
                .entry(key.to_ascii_lowercase())
                .or_default()
                .push(value.to_owned());
        }
    }
    Ok(settings)
}

/// Removes the values `ssh -G` prints when nothing set them, unless an `-o` option did.
fn drop_openssh_defaults(settings: &mut Settings, query: &Query<'_>) {
    let given: Vec<String> = query
        .options
        .iter()
        .filter_map(|o| o.trim().split(['=', ' ', '\t']).next())
        .map(str::to_ascii_lowercase)
        .collect();
    let home = home().unwrap_or_default();
    let defaults: [(&str, Vec<String>); 7] = [
        ("connecttimeout", vec!["none".into()]),
        ("serveraliveinterval", vec!["0".into()]),
        ("serveralivecountmax", vec!["3".into()]),
        ("stricthostkeychecking", vec!["ask".into()]),
        ("identitiesonly", vec!["no".into()]),
        (
            "userknownhostsfile",
            vec![format!(
                "{0}/.ssh/known_hosts {0}/.ssh/known_hosts2",
                home.display()
            )],
        ),
        (
            "identityfile",
            [
                "id_rsa",
                "id_ecdsa",
                "id_ecdsa_sk",
                "id_ed25519",
                "id_ed25519_sk",
                "id_xmss",
                "id_dsa",
            ]
            .iter()
            .map(|n| format!("~/.ssh/{n}"))
            .collect(),
        ),
    ];
    for (key, default) in defaults {
        if settings.0.get(key) == Some(&default) && !given.iter().any(|g| g == key) {
            settings.0.remove(key);
        }
    }
    if query.port.is_none() && settings.get("port") == Some("22") && !given.contains(&"port".into())
    {
        settings.0.remove("port");
    }
}

/// The keys read from the file beside those `ssh2-config` models itself.
const PASSED_THROUGH: &[&str] = &[
    "identitiesonly",
    "identityagent",
    "proxycommand",
    "userknownhostsfile",
    "stricthostkeychecking",
    "serveralivecountmax",
    "proxyusefdpass",
    "hostkeyalias",
    "addressfamily",
    "canonicalizehostname",
    "knownhostscommand",
    "pkcs11provider",
    "tunnel",
];

fn builtin(query: &Query<'_>) -> Result<Settings, SshError> {
    // The command line first: the first value obtained wins.
    let mut settings = Settings::default();
    if let Some(port) = query.port {
        settings.set_first("port", port.to_string());
    }
    if let Some(user) = query.user {
        settings.set_first("user", user.to_owned());
    }
    for option in query.options {
        let text = option.trim();
        let Some((key, value)) = text
            .split_once(['=', ' ', '\t'])
            .map(|(k, v)| (k.trim(), v.trim().trim_start_matches('=').trim()))
        else {
            return Err(SshError::InvalidOption {
                option: option.clone(),
                reason: "expected Key=Value".to_owned(),
            });
        };
        let key = key.to_ascii_lowercase();
        if key == "identityfile" {
            settings.0.entry(key).or_default().push(value.to_owned());
        } else {
            settings.set_first(&key, value.to_owned());
        }
    }
    let files: Vec<PathBuf> = match query.config_file {
        Some(file) => vec![file.to_owned()],
        None => home()
            .map(|h| h.join(".ssh/config"))
            .into_iter()
            .chain([PathBuf::from("/etc/ssh/ssh_config")])
            .filter(|f| f.exists())
            .collect(),
    };
    for file in files {
        let params = parse_file(&file, query.host)?;
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                settings.set_first(key, value);
            }
        };
        set("hostname", params.host_name.clone());
        set("user", params.user.clone());
        set("port", params.port.map(|p| p.to_string()));
        set(
            "connecttimeout",
            params.connect_timeout.map(|d| d.as_secs().to_string()),
        );
        set(
            "serveraliveinterval",
            params
                .server_alive_interval
                .map(|d| d.as_secs().to_string()),
        );
        set("proxyjump", params.proxy_jump.as_ref().map(|j| j.join(",")));
        set("bindaddress", params.bind_address.clone());
        set("bindinterface", params.bind_interface.clone());
        if let Some(ids) = &params.identity_file {
            let entry = settings.0.entry("identityfile".to_owned()).or_default();
            entry.extend(ids.iter().map(|p| p.display().to_string()));
        }
        let fields = params
            .unsupported_fields
            .iter()
            .chain(&params.ignored_fields);
        for (key, args) in fields {
            let key = key.to_ascii_lowercase();
            if PASSED_THROUGH.contains(&key.as_str()) {
                settings.set_first(&key, args.join(" "));
            }
        }
    }
    settings.set_first("hostname", query.host.to_owned());
    if let Some(hostname) = settings.0.get_mut("hostname") {
        // The one token HostName takes; OpenSSH lowercases the name.
        hostname[0] = hostname[0]
            .replace("%h", query.host)
            .replace("%%", "%")
            .to_ascii_lowercase();
    }
    Ok(settings)
}

fn parse_file(file: &Path, host: &str) -> Result<ssh2_config::HostParams, SshError> {
    let bad = |reason: String| SshError::Config {
        what: file.display().to_string(),
        reason,
    };
    let opened = std::fs::File::open(file).map_err(|e| bad(e.to_string()))?;
    let mut config = SshConfig::default();
    if let Some(home) = home() {
        config = config.home_dir(home);
    }
    let config = config
        .parse(
            &mut BufReader::new(opened),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| bad(e.to_string()))?;
    // The crate reads a `Match` line as an unknown option of the block before it, so the
    // lines under it would land in the wrong block: refuse instead.
    let needs_match = config.get_hosts().iter().any(|h| {
        h.params
            .ignored_fields
            .keys()
            .any(|k| k.eq_ignore_ascii_case("match"))
    });
    if needs_match {
        return Err(SshError::ConfigNeedsMatch {
            file: file.to_owned(),
        });
    }
    Ok(config.query(host))
}
