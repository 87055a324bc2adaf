//! `--generate-hardware-config nixos-facter|nixos-generate-config PATH`: the target's own tool
//! describes its hardware, and its standard output alone is written to PATH here, so progress
//! lines never end up in the file (nixos-anywhere #494, #665). Inside a git work tree the file
//! is added with `--intent-to-add`, so that a flake sees it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::install::{HardwareBackend, HardwareConfig};
use crate::ssh::{Session, SshError};

#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error(
        "{host} has no {tool}: use an installer that has it (nixos-images' kexec installer has \
         both), or the other backend of --generate-hardware-config"
    )]
    NoTool { host: String, tool: &'static str },
    #[error("{tool} on {host} failed ({status}):\n{stderr}")]
    Failed {
        host: String,
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("{tool} on {host} printed {what}; nothing was written to {}", path.display())]
    BadOutput {
        host: String,
        tool: &'static str,
        what: String,
        path: PathBuf,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

impl HardwareBackend {
    pub fn program(self) -> &'static str {
        match self {
            HardwareBackend::NixosFacter => "nixos-facter",
            HardwareBackend::NixosGenerateConfig => "nixos-generate-config",
        }
    }
}

/// The program and the command that prints the configuration on standard output.
fn command(backend: HardwareBackend) -> (&'static str, &'static str) {
    match backend {
        HardwareBackend::NixosFacter => ("nixos-facter", "nixos-facter"),
        HardwareBackend::NixosGenerateConfig => (
            "nixos-generate-config",
            "nixos-generate-config --show-hardware-config --no-filesystems",
        ),
    }
}

/// Runs the backend on the target and writes its output to `config.path`; returns what it
/// wrote, for the run's record.
pub async fn generate(session: &Session, config: &HardwareConfig) -> Result<String, HardwareError> {
    let host = session.target().to_string();
    let (tool, run) = command(config.backend);
    let script = format!("command -v {tool} >/dev/null 2>&1 || exit 127; exec {run}");
    let out = session.run(&script, b"").await?;
    match out.status {
        Some(0) => {}
        Some(127) => return Err(HardwareError::NoTool { host, tool }),
        _ => {
            return Err(HardwareError::Failed {
                host,
                tool,
                status: out.describe(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    let bad = |what: String| HardwareError::BadOutput {
        host: host.clone(),
        tool,
        what,
        path: config.path.clone(),
    };
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("nothing".into()));
    }
    if config.backend == HardwareBackend::NixosFacter
        && let Err(e) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
    {
        return Err(bad(format!("something that is not JSON ({e})")));
    }
    write_atomically(&config.path, &out.stdout).map_err(|source| HardwareError::Write {
        path: config.path.clone(),
        source,
    })?;
    let added = git_add_intent(&config.path);
    Ok(format!(
        "wrote {}'s output ({} bytes) to {}{}",
        tool,
        out.stdout.len(),
        config.path.display(),
        if added {
            ", git add --intent-to-add"
        } else {
            ""
        }
    ))
}

/// Writes `bytes` beside `path` and renames it over `path`, parents created.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// `git add --intent-to-add --force PATH` when PATH is in a git work tree, as nixos-anywhere
/// does (a flake sees only files git knows); whether it did.
fn git_add_intent(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(Path::new("."));
    let inside = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"true"));
    if !inside {
        return false;
    }
    let added = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["add", "--intent-to-add", "--force", "--"])
        .arg(path)
        .status();
    match added {
        Ok(status) if status.success() => true,
        other => {
            eprintln!(
                "warning: git add --intent-to-add {} failed ({other:?}); add it yourself so \
                 that the flake sees it",
                path.display()
            );
            false
        }
    }
}
