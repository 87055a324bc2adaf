//! `nixos-anywhere-rs copy`: closures into a store root, like `nix copy`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::SshArgs;
use crate::run::copy::{CopyRequest, Destination};
use crate::store::{self, NarSource, StorePath};
use crate::substitute::{CaCertificates, Overrides, TrustedKeys};
use crate::transfer::Compression;

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Where to copy: `ssh://[user@]host[:port]`, or `local` for a store root on this machine.
    #[arg(long, value_name = "ssh://[USER@]HOST[:PORT]|local")]
    pub to: String,
    /// The store root on the destination: a directory holding nix/store and nix/var/nix/db.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print a JSON summary (with --dry-run: the plan) on standard output instead of text on
    /// standard error.
    #[arg(long)]
    pub json: bool,
    /// Only plan: list what would be sent and what is there already; change nothing on the
    /// destination.
    #[arg(long)]
    pub dry_run: bool,
    /// zstd level for the stream: `auto` follows the bottleneck (link or CPU), `none` sends
    /// NARs uncompressed, or a level from 1 to 19.
    #[arg(long, value_name = "auto|none|LEVEL", default_value = "auto")]
    pub compress: Compression,
    /// Read the closures from this Nix store instead of the local one, as `nix copy --from`: a
    /// store root (`/DIR`, `local?root=/DIR`) is read directly, any other store
    /// (`file:///cache`, `https://...`, `ssh://...`) through this machine's Nix.
    #[arg(long, value_name = "STORE-URI")]
    pub from: Option<String>,
    /// Let the destination fetch from binary caches what they hold (as `nix copy
    /// --substitute-on-destination`), while the rest is streamed from here at the same time.
    /// The caches are those of the destination's nix.conf, changed by the flags below.
    #[arg(short = 's', long)]
    pub substitute_on_destination: bool,
    /// The binary caches the destination uses, replacing those of its nix.conf (repeatable,
    /// or space-separated; "" for none). Implies --substitute-on-destination.
    #[arg(long, value_name = "URL")]
    pub substituters: Option<Vec<String>>,
    /// Binary caches the destination uses in addition (repeatable, or space-separated).
    /// Implies --substitute-on-destination.
    #[arg(long, value_name = "URL")]
    pub extra_substituters: Vec<String>,
    /// Keys the caches' signatures must verify with, NAME:BASE64, added to the
    /// destination's (repeatable, or space-separated).
    #[arg(long, value_name = "KEY")]
    pub trusted_public_keys: Vec<String>,
    /// CA certificates (PEM) of https caches with a private CA: read here and sent along, so
    /// the destination need not have the file; the destination trusts them besides the bundled
    /// roots, instead of its nix.conf's ssl-cert-file.
    #[arg(long, value_name = "FILE")]
    pub ssl_cert_file: Option<PathBuf>,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Store paths (or links to them, such as ./result) whose closures are copied.
    #[arg(required = true, value_name = "STORE-PATH")]
    pub paths: Vec<PathBuf>,
}

impl CopyArgs {
    /// The copy these arguments ask for: destination resolved, closure read from the source.
    pub fn request(&self) -> Result<CopyRequest> {
        let destination = match self.to.as_str() {
            "local" => Destination::Local,
            dest if dest.starts_with("ssh://") => {
                let (target, opts) = self.ssh.resolve(dest)?;
                Destination::Ssh {
                    target,
                    opts: Box::new(opts),
                }
            }
            other => bail!(
                "unsupported destination {other:?}: use `--to ssh://[user@]host[:port]` or `--to local`"
            ),
        };
        let paths = self
            .paths
            .iter()
            .map(|p| resolve_store_path(p))
            .collect::<Result<Vec<_>>>()?;
        let substitute = self.substitution()?;
        if substitute.is_some() && matches!(destination, Destination::Local) {
            bail!("--substitute-on-destination needs an ssh:// destination");
        }
        let source = NarSource::new(self.from.as_deref());
        let closure = source
            .query_closure(&paths)
            .with_context(|| format!("reading the closure from {source}"))?;
        Ok(CopyRequest {
            destination,
            root: self.root.clone(),
            source,
            closure,
            compression: self.compress,
            substitute,
            dry_run: self.dry_run,
        })
    }

    /// The substitution the flags ask for: `None` unless `-s` or a list of caches is given.
    fn substitution(&self) -> Result<Option<Overrides>> {
        let split = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .flat_map(|v| v.split_whitespace().map(str::to_owned))
                .collect()
        };
        let on = self.substitute_on_destination
            || self.substituters.is_some()
            || !self.extra_substituters.is_empty();
        if !on {
            return Ok(None);
        }
        let trusted_public_keys = split(&self.trusted_public_keys);
        TrustedKeys::parse(trusted_public_keys.iter().map(String::as_str))
            .context("--trusted-public-keys")?;
        Ok(Some(Overrides {
            substituters: self.substituters.as_deref().map(split),
            extra_substituters: split(&self.extra_substituters),
            trusted_public_keys,
            ssl_certificates: self
                .ssl_cert_file
                .as_deref()
                .map(CaCertificates::read)
                .transpose()
                .context("--ssl-cert-file")?,
        }))
    }
}

/// Accepts a store path, a path below one, or a link to one (`./result`).
pub fn resolve_store_path(arg: &Path) -> Result<StorePath> {
    let text = arg.to_string_lossy();
    if let Ok(path) = StorePath::parse(&text) {
        return Ok(path);
    }
    let real = std::fs::canonicalize(arg).with_context(|| format!("{}", arg.display()))?;
    let real = real.to_string_lossy();
    let base = real
        .strip_prefix(store::STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("{} is not in {}", arg.display(), store::STORE_DIR))?;
    Ok(StorePath::from_base_name(base)?)
}
