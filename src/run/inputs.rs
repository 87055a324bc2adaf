//! What an install installs, made ready on this machine before the target is touched: the
//! system's toplevel built (`--flake`) or given (`--store-paths`), its closure read from the
//! local store (or `--from`'s), and the disk layout: `disko.devices` evaluated to JSON the way
//! disko's own examples were made (functions and `_`-internals dropped, `_index` and `_name`
//! kept), or a layout file, or, for compatibility, a disko script to run on the installer.

use std::path::PathBuf;

use std::collections::BTreeSet;

use crate::cli::install::{Build, BuildOn, Layout, Phase, Source, Substitution};
use crate::exec::{Cmd, CmdError};
use crate::store::{NarSource, PathInfo, StoreError, StorePath};
use crate::substitute::Overrides;

/// The Nix expression applied to `disko.devices` before it is printed as JSON: attributes whose
/// name starts with `_` (but `_index` and `_name`) are left out unevaluated, and so are
/// functions (module internals such as `_create` are strings that refer to scripts, and their
/// evaluation would build them).
pub const CLEAN_DEVICES: &str = r#"
let
  keep = name: builtins.substring 0 1 name != "_" || name == "_index" || name == "_name";
  clean = v:
    if builtins.isAttrs v then
      builtins.listToAttrs (builtins.concatMap
        (name:
          let x = v.${name}; in
          if keep name && !(builtins.isFunction x) then [{ inherit name; value = clean x; }] else [ ])
        (builtins.attrNames v))
    else if builtins.isList v then
      map clean (builtins.filter (x: !(builtins.isFunction x)) v)
    else v;
in clean
"#;

/// The disk layout, ready for the disko phase.
#[derive(Debug, Clone)]
pub enum LayoutInput {
    /// `disko.devices` as JSON.
    Json(String),
    /// A disko script (`--store-paths` compatibility): its closure goes into the installer's
    /// store and it runs there.
    Script {
        script: StorePath,
        closure: Vec<PathInfo>,
    },
}

/// Everything the phases send, prepared.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub system: StorePath,
    /// Where the system is built: here ([`BuildOn::Local`], also for store paths) or by the
    /// target's Nix in the install phase; never `Auto`, which is decided by now.
    pub built_on: BuildOn,
    /// Where the closures are read from.
    pub source: NarSource,
    /// The system's closure, dependencies first (empty when the install phase does not run,
    /// or the target builds the system).
    pub closure: Vec<PathInfo>,
    pub layout: Option<LayoutInput>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("building {installable} failed: {source}")]
    Build {
        installable: String,
        source: CmdError,
    },
    #[error(
        "evaluating {installable} failed: {source}; the configuration needs disko's module (or \
         a disko.devices of its own) for the disko phase"
    )]
    Eval {
        installable: String,
        source: CmdError,
    },
    #[error("{what} printed {text:?}, not a store path")]
    NotStorePath { what: String, text: String },
    #[error("reading the layout {path}: {source}")]
    Layout {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the closure from {store}: {source}")]
    Closure {
        store: String,
        source: Box<StoreError>,
    },
}

/// What [`prepare`] reads of the install request.
#[derive(Debug, Clone)]
pub struct InputsRequest {
    pub source: Source,
    pub phases: BTreeSet<Phase>,
    pub build: Build,
}

/// Prepares what `request` installs: builds and evaluates a flake, or reads the store paths.
/// The layout is read for the install phase too: its disks are where a BIOS boot loader goes.
pub fn prepare(request: &InputsRequest) -> Result<Inputs, InputError> {
    let source = NarSource::new(request.build.from.as_deref());
    let closure_of = |path: &StorePath| {
        source
            .query_closure(std::slice::from_ref(path))
            .map_err(|e| InputError::Closure {
                store: source.to_string(),
                source: Box::new(e),
            })
    };
    let needs_layout =
        request.phases.contains(&Phase::Disko) || request.phases.contains(&Phase::Install);
    // Store paths are built already.
    let mut built_on = BuildOn::Local;
    let (system, layout) = match &request.source {
        Source::Flake { .. } => {
            let installable = request
                .source
                .installable("system.build.toplevel")
                .expect("a flake");
            built_on = match request.build.on {
                BuildOn::Auto => where_to_build(&request.build, &installable)?,
                on => on,
            };
            let system = if built_on == BuildOn::Remote {
                // Built by the target's Nix in the install phase; here only its path.
                let out = nix(&request.build, &["eval", "--raw"])
                    .arg(format!("{installable}.outPath"))
                    .output()
                    .map_err(|source| InputError::Eval {
                        installable: installable.clone(),
                        source,
                    })?;
                store_path(&installable, &out)?
            } else {
                tracing::info!("building {installable}");
                // `--json` rather than `--print-out-paths`, which Nix before 2.11 lacks.
                let out = nix(&request.build, &["build", "--no-link", "--json"])
                    .arg(&installable)
                    .output()
                    .map_err(|source| InputError::Build {
                        installable: installable.clone(),
                        source,
                    })?;
                built_path(&installable, &out)?
            };
            let layout = if needs_layout {
                let installable = request
                    .source
                    .installable("disko.devices")
                    .expect("a flake");
                tracing::info!("evaluating {installable}");
                let json = nix(
                    &request.build,
                    &["eval", "--json", "--apply", CLEAN_DEVICES],
                )
                .arg(&installable)
                .output();
                match json {
                    Ok(json) => Some(LayoutInput::Json(
                        String::from_utf8_lossy(&json).into_owned(),
                    )),
                    // Without the disko phase, the layout only names the disks a BIOS boot
                    // loader may be in: a configuration without it still installs.
                    Err(e) if !request.phases.contains(&Phase::Disko) => {
                        tracing::debug!("no disk layout: {e}");
                        None
                    }
                    Err(source) => {
                        return Err(InputError::Eval {
                            installable,
                            source,
                        });
                    }
                }
            } else {
                None
            };
            (system, layout)
        }
        Source::StorePaths { layout, system } => {
            let layout = match layout {
                _ if !needs_layout => None,
                Layout::DiskoScript(_) if !request.phases.contains(&Phase::Disko) => None,
                Layout::Json(path) => Some(LayoutInput::Json(
                    std::fs::read_to_string(path).map_err(|source| InputError::Layout {
                        path: path.clone(),
                        source,
                    })?,
                )),
                Layout::DiskoScript(path) => {
                    let script = store_path("the disko script", path.to_string_lossy().as_bytes())?;
                    let closure = closure_of(&script)?;
                    Some(LayoutInput::Script { script, closure })
                }
            };
            (system.clone(), layout)
        }
    };
    let closure = if request.phases.contains(&Phase::Install) && built_on != BuildOn::Remote {
        closure_of(&system)?
    } else {
        Vec::new()
    };
    Ok(Inputs {
        system,
        built_on,
        source,
        closure,
        layout,
    })
}

/// Where `--build-on auto` builds the system of `installable` (a toplevel), decided as
/// nixos-anywhere's `checkBuildLocally` does: here when this machine's Nix builds for the
/// system's platform (its own `system`, one of its `extra-platforms`, or a trivial build for
/// that platform succeeds), else with the target's Nix.
fn where_to_build(build: &Build, installable: &str) -> Result<BuildOn, InputError> {
    let eval_error = |source| InputError::Eval {
        installable: installable.to_owned(),
        source,
    };
    let platform = nix(build, &["eval", "--raw"])
        .arg(format!("{installable}.system"))
        .output()
        .map_err(eval_error)?;
    let platform = String::from_utf8_lossy(&platform).trim().to_owned();
    let config = Cmd::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "show-config",
        "--json",
    ]);
    let config: serde_json::Value = with_options(config, build)
        .output()
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default();
    let here = config["system"]["value"].as_str().unwrap_or_default();
    // Each of the list, compared whole (nixos-anywhere's quoted glob matches only a list of
    // one).
    let extra = config["extra-platforms"]["value"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p.as_str() == Some(&platform));
    let (on, why) = if platform == here {
        (BuildOn::Local, format!("this machine is {here} too"))
    } else if extra {
        let why = format!("{platform} is one of this machine's extra-platforms");
        (BuildOn::Local, why)
    } else if can_build_for(build, &platform) {
        let why = format!("this machine's Nix built a test derivation for {platform}");
        (BuildOn::Local, why)
    } else {
        let why =
            format!("this machine ({here}) cannot build for {platform}; the target's Nix will");
        (BuildOn::Remote, why)
    };
    let place = if on == BuildOn::Remote {
        "on the target"
    } else {
        "here"
    };
    tracing::info!("--build-on auto: building {platform} {place}: {why}");
    Ok(on)
}

/// Whether this machine's Nix builds a trivial derivation for `platform` (named after the
/// time, so that no earlier result answers for it).
fn can_build_for(build: &Build, platform: &str) -> bool {
    let name_like = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if platform.is_empty() || !platform.chars().all(name_like) {
        return false;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let expr = format!(
        "derivation {{ name = \"nixos-anywhere-rs-can-build-{nanos}\"; system = \"{platform}\"; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; }}"
    );
    nix(build, &["build", "--no-link", "--impure"])
        .arg("--expr")
        .arg(expr)
        .run()
        .is_ok()
}

/// `nix SUBCOMMAND...` with the flake features, `--option`s, `-L` and `--show-trace` as asked.
pub(crate) fn nix(build: &Build, subcommand: &[&str]) -> Cmd {
    let cmd = Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(subcommand)
        .arg("--no-write-lock-file");
    let mut cmd = with_options(cmd, build);
    if build.print_build_logs {
        cmd = cmd.arg("-L");
    }
    if build.show_trace {
        cmd = cmd.arg("--show-trace");
    }
    cmd
}

/// `cmd` with the `--option KEY VALUE`s of the command line.
fn with_options(mut cmd: Cmd, build: &Build) -> Cmd {
    for option in &build.nix_options {
        cmd = cmd.arg("--option").arg(&option.key).arg(&option.value);
    }
    cmd
}

/// The `out` path in `nix build --json`'s answer.
pub(crate) fn built_path(what: &str, json: &[u8]) -> Result<StorePath, InputError> {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    let out = value[0]["outputs"]["out"].as_str().unwrap_or_default();
    store_path(what, if out.is_empty() { json } else { out.as_bytes() })
}

fn store_path(what: &str, out: &[u8]) -> Result<StorePath, InputError> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().next().unwrap_or("").trim();
    StorePath::parse(line).map_err(|_| InputError::NotStorePath {
        what: what.to_owned(),
        text: text.trim().to_owned(),
    })
}

/// What the target's substitution adds to its nix.conf during an install (issue 15): the
/// command line's caches and keys, and with `use_machine_substituters` the system's own
/// `nix.settings.substituters` and `trusted-public-keys`, evaluated here. `None`: the install
/// does not substitute. A system whose settings do not evaluate is installed without them,
/// with a warning.
pub(crate) fn substitution(
    substitution: &Substitution,
    source: &Source,
    build: &Build,
) -> Option<Overrides> {
    if !substitution.on_destination {
        return None;
    }
    let mut overrides = Overrides {
        substituters: substitution.substituters.clone(),
        extra_substituters: substitution.extra_substituters.clone(),
        trusted_public_keys: substitution.trusted_public_keys.clone(),
        ssl_certificates: substitution.ssl_cert_file.clone(),
    };
    let installable = source.installable("nix.settings");
    if let (true, Some(installable)) = (substitution.use_machine_substituters, installable) {
        let apply = "s: { substituters = s.substituters or []; \
                     keys = s.trusted-public-keys or []; }";
        let evaluated = nix(build, &["eval", "--json", "--apply", apply])
            .arg(&installable)
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| {
                serde_json::from_slice::<serde_json::Value>(&out).map_err(|e| e.to_string())
            });
        match evaluated {
            Ok(settings) => {
                let list = |key: &str| -> Vec<String> {
                    settings[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                };
                overrides.extra_substituters.extend(list("substituters"));
                overrides.trusted_public_keys.extend(list("keys"));
            }
            Err(e) => tracing::warn!(
                "the system's own substituters are not used: evaluating {installable}: {e}"
            ),
        }
    }
    Some(overrides)
}
