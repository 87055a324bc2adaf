//! Authentication: the run's temporary key, `-i` files, the configuration's `IdentityFile`s,
//! `SSH_PRIVATE_KEY` text, ssh-agent keys, the usual `~/.ssh/id_*` files, stopping at the
//! first key the server accepts; then the password, by the `password` or the
//! `keyboard-interactive` method.

use std::path::Path;
use std::sync::Arc;

use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};
use russh::{MethodKind, MethodSet};

use super::hostkey::fingerprint;
use super::options::{SshOptions, Target};
use super::password::Password;
use super::{Client, SshError};

/// One authentication, recording what was tried for the error message.
struct Attempts<'a> {
    handle: &'a mut Handle<Client>,
    user: &'a str,
    tried: Vec<String>,
    server_methods: Option<MethodSet>,
    rsa_hash: Option<Option<HashAlg>>,
}

/// How the login succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    PublicKey,
    Password,
}

enum Outcome {
    Accepted,
    Rejected,
    /// The server no longer accepts public keys: trying more is pointless.
    GiveUp,
}

pub(crate) async fn authenticate(
    handle: &mut Handle<Client>,
    target: &Target,
    opts: &SshOptions,
) -> Result<Method, SshError> {
    let mut auth = Attempts {
        handle,
        user: &target.user,
        tried: Vec::new(),
        server_methods: None,
        rsa_hash: None,
    };
    let dest = target.to_string();
    if auth.run(opts).await? {
        return Ok(Method::PublicKey);
    }
    let password = match &opts.password {
        Some(p) => Some(p.clone()),
        None if opts.ask_password && auth.offers_password() => {
            Password::prompt(&format!("{dest}'s password: "))
        }
        None => None,
    };
    if let Some(password) = password
        && auth.offers_password()
        && auth.password(&password).await?
    {
        return Ok(Method::Password);
    }
    if auth.tried.is_empty() {
        return Err(SshError::NoCredentials { dest });
    }
    let server_methods = match &auth.server_methods {
        Some(m) if !m.is_empty() => m.iter().map(<&str>::from).collect::<Vec<_>>().join(", "),
        _ => "(nothing more)".to_owned(),
    };
    Err(SshError::AuthFailed {
        dest,
        tried: auth.tried.join("; "),
        server_methods,
    })
}

impl Attempts<'_> {
    /// Whether the server may take a password (as far as it said; before any attempt, yes).
    fn offers_password(&self) -> bool {
        self.server_methods.as_ref().is_none_or(|m| {
            m.contains(&MethodKind::Password) || m.contains(&MethodKind::KeyboardInteractive)
        })
    }

    /// Tries the password by whichever method the server takes; `Ok(true)` if accepted.
    async fn password(&mut self, password: &Password) -> Result<bool, SshError> {
        let takes =
            |m: MethodKind, s: &Option<MethodSet>| s.as_ref().is_none_or(|s| s.contains(&m));
        if takes(MethodKind::Password, &self.server_methods) {
            self.tried.push("password".to_owned());
            let result = self
                .handle
                .authenticate_password(self.user, password.0.clone())
                .await?;
            match result {
                AuthResult::Success => return Ok(true),
                AuthResult::Failure {
                    remaining_methods, ..
                } => self.server_methods = Some(remaining_methods),
            }
        }
        if !takes(MethodKind::KeyboardInteractive, &self.server_methods) {
            return Ok(false);
        }
        self.tried.push("keyboard-interactive".to_owned());
        let mut reply = self
            .handle
            .authenticate_keyboard_interactive_start(self.user, None)
            .await?;
        // Each round's prompts get the password where they hide the answer (the password
        // prompt), nothing where they echo it; a server asking forever is cut off.
        for _ in 0..4 {
            match reply {
                KeyboardInteractiveAuthResponse::Success => return Ok(true),
                KeyboardInteractiveAuthResponse::Failure {
                    remaining_methods, ..
                } => {
                    self.server_methods = Some(remaining_methods);
                    return Ok(false);
                }
                KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    let answers = prompts
                        .iter()
                        .map(|p| {
                            if p.echo {
                                String::new()
                            } else {
                                password.0.clone()
                            }
                        })
                        .collect();
                    reply = self
                        .handle
                        .authenticate_keyboard_interactive_respond(answers)
                        .await?;
                }
            }
        }
        Ok(false)
    }

    /// Tries every credential in order; `Ok(true)` once one is accepted.
    async fn run(&mut self, opts: &SshOptions) -> Result<bool, SshError> {
        if let Some(key) = opts.temporary_key.get() {
            match self
                .try_key("the run's temporary key".to_owned(), (*key).clone())
                .await?
            {
                Outcome::Accepted => return Ok(true),
                Outcome::GiveUp => return Ok(false),
                Outcome::Rejected => {}
            }
        }
        for path in &opts.identity_files {
            let key = load_key_file(path)?;
            let label = format!("-i {}", path.display());
            match self.try_key(label, key).await? {
                Outcome::Accepted => return Ok(true),
                Outcome::GiveUp => return Ok(false),
                Outcome::Rejected => {}
            }
        }
        for path in &opts.config_identity_files {
            if !path.exists() {
                tracing::warn!(
                    "skipping IdentityFile {}: no such file (named in the SSH configuration)",
                    path.display()
                );
                continue;
            }
            let key = load_key_file(path)?;
            match self.try_key(path.display().to_string(), key).await? {
                Outcome::Accepted => return Ok(true),
                Outcome::GiveUp => return Ok(false),
                Outcome::Rejected => {}
            }
        }
        if let Some(text) = &opts.private_key {
            let key = decode_key(&text.0, "the key in SSH_PRIVATE_KEY")?;
            match self.try_key("SSH_PRIVATE_KEY".to_owned(), key).await? {
                Outcome::Accepted => return Ok(true),
                Outcome::GiveUp => return Ok(false),
                Outcome::Rejected => {}
            }
        }
        if !opts.identities_only
            && let Some(socket) = &opts.identity_agent
        {
            match self.try_agent(socket).await? {
                Outcome::Accepted => return Ok(true),
                Outcome::GiveUp => return Ok(false),
                Outcome::Rejected => {}
            }
        }
        if opts.identity_files.is_empty()
            && opts.config_identity_files.is_empty()
            && opts.private_key.is_none()
        {
            for path in &opts.default_identity_files {
                let Ok(text) = std::fs::read_to_string(path) else {
                    continue;
                };
                let key = match russh::keys::decode_secret_key(&text, None) {
                    Ok(key) => key,
                    Err(e) => {
                        tracing::debug!("skipping {}: {e}", path.display());
                        self.tried.push(format!(
                            "{} (skipped: {})",
                            path.display(),
                            why_unusable(&e)
                        ));
                        continue;
                    }
                };
                match self.try_key(path.display().to_string(), key).await? {
                    Outcome::Accepted => return Ok(true),
                    Outcome::GiveUp => return Ok(false),
                    Outcome::Rejected => {}
                }
            }
        }
        Ok(false)
    }

    async fn try_key(&mut self, label: String, key: PrivateKey) -> Result<Outcome, SshError> {
        let hash = if key.algorithm().is_rsa() {
            self.rsa_hash().await?
        } else {
            None
        };
        self.tried
            .push(format!("{label} ({})", fingerprint(key.public_key())));
        tracing::debug!(key = %label, "trying public key");
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let result = self.handle.authenticate_publickey(self.user, key).await?;
        Ok(self.outcome(result))
    }

    async fn try_agent(&mut self, socket: &Path) -> Result<Outcome, SshError> {
        let mut agent = match AgentClient::connect_uds(socket).await {
            Ok(agent) => agent,
            Err(e) => {
                tracing::warn!("ssh-agent at {} is unreachable: {e}", socket.display());
                self.tried.push(format!(
                    "ssh-agent at {} (unreachable: {e})",
                    socket.display()
                ));
                return Ok(Outcome::Rejected);
            }
        };
        if let Some(binding) = self.handle.agent_session_binding() {
            // Older agents do not know the extension; their keys work without it.
            let _ = agent.bind_session(binding, false).await;
        }
        let identities = agent
            .request_identities()
            .await
            .map_err(|e| SshError::Credential {
                what: format!("the ssh-agent at {}", socket.display()),
                reason: e.to_string(),
            })?;
        if identities.is_empty() {
            self.tried
                .push(format!("ssh-agent at {} (holds no keys)", socket.display()));
            return Ok(Outcome::Rejected);
        }
        for identity in identities {
            let AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            let hash = if key.algorithm().is_rsa() {
                self.rsa_hash().await?
            } else {
                None
            };
            self.tried
                .push(format!("ssh-agent key {}", fingerprint(&key)));
            let result = self
                .handle
                .authenticate_publickey_with(self.user, key, hash, &mut agent)
                .await;
            match result {
                Ok(result) => match self.outcome(result) {
                    Outcome::Rejected => {}
                    done => return Ok(done),
                },
                Err(e) => {
                    tracing::debug!("ssh-agent could not sign: {e}");
                    if let Some(last) = self.tried.last_mut() {
                        last.push_str(&format!(" (agent error: {e})"));
                    }
                }
            }
        }
        Ok(Outcome::Rejected)
    }

    fn outcome(&mut self, result: AuthResult) -> Outcome {
        match result {
            AuthResult::Success => Outcome::Accepted,
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                let give_up = !remaining_methods.contains(&MethodKind::PublicKey);
                self.server_methods = Some(remaining_methods);
                if give_up {
                    Outcome::GiveUp
                } else {
                    Outcome::Rejected
                }
            }
        }
    }

    /// The RSA signature hash the server takes (asked once; SHA-256 when it does not say).
    async fn rsa_hash(&mut self) -> Result<Option<HashAlg>, SshError> {
        if self.rsa_hash.is_none() {
            let best = self.handle.best_supported_rsa_hash().await?;
            self.rsa_hash = Some(best.unwrap_or(Some(HashAlg::Sha256)));
        }
        Ok(self.rsa_hash.flatten())
    }
}

fn load_key_file(path: &Path) -> Result<PrivateKey, SshError> {
    let what = format!("identity file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| SshError::Credential {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    decode_key(&text, &what)
}

/// Decodes private key text. Errors name `what`, never the text.
fn decode_key(text: &str, what: &str) -> Result<PrivateKey, SshError> {
    russh::keys::decode_secret_key(text, None).map_err(|e| SshError::Credential {
        what: what.to_owned(),
        reason: why_unusable(&e),
    })
}

fn why_unusable(e: &russh::keys::Error) -> String {
    match e {
        russh::keys::Error::KeyIsEncrypted => "it is protected by a passphrase, which this tool \
             does not ask for; load it into ssh-agent with ssh-add instead"
            .to_owned(),
        russh::keys::Error::CouldNotReadKey => {
            "it is not a private key in a known format (OpenSSH, PEM or PKCS#8)".to_owned()
        }
        e => format!("it is not a usable private key ({e})"),
    }
}
