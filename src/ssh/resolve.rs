//! From the command line and the SSH configuration to the [`Target`] and [`SshOptions`] of one
//! run, jump hosts included: what `ssh` would connect to, with the same settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{self, ConfigReader, Query, Settings};
use super::options::{DEFAULT_PORT, DEFAULT_USER, Destination, expand_tilde, parse_port};
use super::proxy::{JumpHost, Proxy};
use super::{SshError, SshOptions, Target};

/// Jump hosts whose configurations jump further, nested deeper than this, are a loop.
const MAX_NESTING: usize = 8;

/// Where the configuration comes from and what every host starts from.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub reader: ConfigReader,
    /// `-F FILE`; `None`: `~/.ssh/config` (and `/etc/ssh/ssh_config`).
    pub config_file: Option<PathBuf>,
    /// The options before the configuration applies (environment, defaults).
    pub base: SshOptions,
}

impl SshOptions {
    /// Resolves `destination` as `ssh [-F config_file] [-i identity]... [-p port] [-o
    /// option]... destination` would: the command line first, then the configuration file,
    /// then the environment (`SSH_AUTH_SOCK`, `SSH_PRIVATE_KEY`) and our defaults. Uses `ssh -G`
    /// when an `ssh` is on `PATH`, the built-in parser otherwise.
    pub fn resolve(
        config_file: Option<&Path>,
        cli_options: &[String],
        identity: &[PathBuf],
        port: Option<u16>,
        destination: &str,
    ) -> Result<(Target, SshOptions), SshError> {
        Resolver {
            reader: ConfigReader::from_path_env(),
            config_file: config_file.map(Path::to_owned),
            base: SshOptions::from_env(),
        }
        .resolve(cli_options, identity, port, destination)
    }
}

impl Resolver {
    /// `ssh [-F config_file] [-i identity]...`: the environment's settings, this machine's ssh
    /// configuration (or `config_file`), and the keys given with `-i`, which are tried on every
    /// hop, jump hosts included.
    pub fn from_command_line(config_file: Option<PathBuf>, identity: &[PathBuf]) -> Self {
        let mut base = SshOptions::from_env();
        base.identity_files.extend(identity.iter().cloned());
        Resolver {
            reader: ConfigReader::from_path_env(),
            config_file,
            base,
        }
    }

    /// See [`SshOptions::resolve`].
    pub fn resolve(
        &self,
        cli_options: &[String],
        identity: &[PathBuf],
        port: Option<u16>,
        destination: &str,
    ) -> Result<(Target, SshOptions), SshError> {
        let dest = Destination::parse(destination)?;
        let (target, mut opts) = self.host(&dest, port, cli_options, 0)?;
        let mut ids = identity.to_vec();
        ids.append(&mut opts.identity_files);
        opts.identity_files = ids;
        Ok((target, opts))
    }

    /// One host: the target, or a jump host (`options` empty: OpenSSH passes no `-o` to them).
    fn host(
        &self,
        dest: &Destination,
        port: Option<u16>,
        options: &[String],
        nesting: usize,
    ) -> Result<(Target, SshOptions), SshError> {
        if nesting > MAX_NESTING {
            return Err(SshError::Config {
                what: format!("the ProxyJump of {}", dest.host),
                reason: format!(
                    "jump hosts nest more than {MAX_NESTING} deep; does a jump host's \
                     configuration jump through itself?"
                ),
            });
        }
        let query = Query {
            host: &dest.host,
            user: dest.user.as_deref(),
            port: dest.port.or(port),
            options,
            config_file: self.config_file.as_deref(),
        };
        let settings = self.reader.read(&query)?;
        check_supported(&settings, &self.reader)?;
        let mut opts = self.base.clone();
        let target = Target {
            user: settings
                .get("user")
                .map(str::to_owned)
                .or_else(|| opts.user.clone())
                .unwrap_or_else(|| DEFAULT_USER.to_owned()),
            host: settings.get("hostname").unwrap_or(&dest.host).to_owned(),
            port: match settings.get("port") {
                Some(p) => parse_port(p).map_err(|reason| SshError::InvalidOption {
                    option: format!("Port={p}"),
                    reason,
                })?,
                None => opts.port.unwrap_or(DEFAULT_PORT),
            },
        };
        let tokens = Tokens {
            alias: &dest.host,
            target: &target,
        };
        apply(&mut opts, &settings, &tokens)?;
        opts.user = Some(target.user.clone());
        opts.port = Some(target.port);
        opts.proxy = self.proxy(&settings, &tokens, nesting)?;
        Ok((target, opts))
    }

    fn proxy(
        &self,
        settings: &Settings,
        tokens: &Tokens<'_>,
        nesting: usize,
    ) -> Result<Proxy, SshError> {
        if let Some(command) = settings.get("proxycommand")
            && command != "none"
        {
            // %n is the alias as written; the rest are expanded when connecting.
            let command = command.replace("%%", "\0").replace("%n", tokens.alias);
            return Ok(Proxy::Command(command.replace('\0', "%%")));
        }
        let Some(list) = settings.get("proxyjump").filter(|j| *j != "none") else {
            return Ok(Proxy::Direct);
        };
        let mut hops = Vec::new();
        for (i, hop) in list.split(',').enumerate() {
            let dest = Destination::parse(hop.trim())?;
            let (target, mut opts) = self.host(&dest, None, &[], nesting + 1)?;
            // Only the first hop goes its own way; each later one is reached through the one
            // before it, whatever its own configuration says (as `ssh -J a,b` does).
            if i > 0 {
                opts.proxy = Proxy::Direct;
            }
            hops.push(JumpHost { target, opts });
        }
        Ok(Proxy::Jump(hops))
    }
}

/// The values `%` tokens stand for, as `ssh_config(5)` defines them.
struct Tokens<'a> {
    alias: &'a str,
    target: &'a Target,
}

impl Tokens<'_> {
    fn expand(&self, text: &str, key: &str) -> Result<String, SshError> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('h') => out.push_str(&self.target.host),
                Some('p') => out.push_str(&self.target.port.to_string()),
                Some('r') => out.push_str(&self.target.user),
                Some('n') => out.push_str(self.alias),
                Some('u') => out.push_str(&config::local_user().unwrap_or_default()),
                Some('i') => out.push_str(&rustix::process::getuid().as_raw().to_string()),
                Some('d') => {
                    out.push_str(&config::home().unwrap_or_default().display().to_string())
                }
                other => {
                    return Err(SshError::Config {
                        what: format!("{key} {text}"),
                        reason: format!(
                            "the token %{} is not supported here (supported: %%, %h, %p, %r, \
                             %n, %u, %i, %d)",
                            other.map(String::from).unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Applies the settings the client uses; the rest only tunes OpenSSH's own client.
fn apply(opts: &mut SshOptions, settings: &Settings, tokens: &Tokens<'_>) -> Result<(), SshError> {
    for file in settings.all("identityfile") {
        let expanded = tokens.expand(file, "IdentityFile")?;
        opts.config_identity_files.push(expand_tilde(&expanded));
    }
    if let Some(agent) = settings.get("identityagent") {
        let agent = tokens.expand(agent, "IdentityAgent")?;
        opts.set_option(&format!("IdentityAgent={agent}"))?;
    }
    if let Some(files) = settings.get("userknownhostsfile") {
        let files = tokens.expand(files, "UserKnownHostsFile")?;
        opts.known_hosts = files
            .split_whitespace()
            .filter(|f| *f != "none")
            .map(expand_tilde)
            .collect();
        if opts.known_hosts.is_empty() {
            opts.known_hosts.push(PathBuf::from("/dev/null"));
        }
    }
    for key in [
        "identitiesonly",
        "stricthostkeychecking",
        "serveralivecountmax",
    ] {
        if let Some(value) = settings.get(key) {
            opts.set_option(&format!("{key}={value}"))?;
        }
    }
    // `ssh -G` prints "none" and 0 for "no limit" and "no keepalives".
    if let Some(value) = settings.get("connecttimeout") {
        opts.connect_timeout = seconds(value, "ConnectTimeout")?;
    }
    if let Some(value) = settings.get("serveraliveinterval") {
        opts.keepalive_interval = seconds(value, "ServerAliveInterval")?;
    }
    Ok(())
}

fn seconds(value: &str, key: &str) -> Result<Option<Duration>, SshError> {
    if value == "none" {
        return Ok(None);
    }
    let digits = value.strip_suffix(['s', 'S']).unwrap_or(value);
    let secs: u64 = digits.parse().map_err(|_| SshError::InvalidOption {
        option: format!("{key}={value}"),
        reason: format!("{value:?} is not a number of seconds"),
    })?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// Options that would change what connects, or how, and that this client does not do: an
/// error where ignoring them could reach another machine or bypass a check the user set up,
/// a warning where the difference is harmless for an install.
fn check_supported(settings: &Settings, reader: &ConfigReader) -> Result<(), SshError> {
    let unsupported = |key: &str, value: &str, reason: &str| SshError::UnsupportedOption {
        option: format!("{key} {value}"),
        reason: reason.to_owned(),
    };
    let is = |key: &str, harmless: &[&str]| {
        settings
            .get(key)
            .filter(|v| !harmless.iter().any(|h| v.eq_ignore_ascii_case(h)))
            .map(str::to_owned)
    };
    if let Some(v) = is("proxyusefdpass", &["no", "false"]) {
        return Err(unsupported(
            "ProxyUseFdpass",
            &v,
            "the ProxyCommand would pass a socket, which this client cannot take; drop the option",
        ));
    }
    if let Some(v) = is("tunnel", &["no", "false"]) {
        return Err(unsupported(
            "Tunnel",
            &v,
            "tunnel devices are not supported",
        ));
    }
    for key in ["bindaddress", "bindinterface"] {
        if let Some(v) = is(key, &[]) {
            return Err(unsupported(
                key,
                &v,
                "this client cannot choose the local address; connect without it",
            ));
        }
    }
    if let Some(v) = is("pkcs11provider", &["none"]) {
        return Err(unsupported(
            "PKCS11Provider",
            &v,
            "hardware tokens are not supported here; load the key into ssh-agent instead",
        ));
    }
    if *reader == ConfigReader::Builtin
        && let Some(v) = is("canonicalizehostname", &["no", "false"])
    {
        return Err(unsupported(
            "CanonicalizeHostname",
            &v,
            "only OpenSSH's own client canonicalises host names; install openssh-client so \
             that `ssh -G` can resolve the configuration",
        ));
    }
    for (key, harmless, why) in [
        (
            "hostkeyalias",
            &[][..],
            "known_hosts is looked up by the host name",
        ),
        ("addressfamily", &["any"][..], "every address is tried"),
        (
            "knownhostscommand",
            &["none"][..],
            "only the known_hosts files are read",
        ),
    ] {
        if let Some(v) = is(key, harmless) {
            tracing::warn!("ignoring SSH option {key} {v}: {why}");
        }
    }
    Ok(())
}
