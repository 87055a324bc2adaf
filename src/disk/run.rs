//! The disk layer's entry point, for `nixos-anywhere-rs disko` and the install's `disko` phase:
//! read the layout, apply `--disk` overrides, read the machine's facts of each disk, validate
//! everything, plan, and (unless a dry run) execute.

use std::collections::BTreeMap;

use super::facts::{self, FactsError};
use super::layout::{self, LayoutError};
use super::plan::{self, DiskEnv, DiskPlan, ExecError, Mode};
use super::validate::{self, Context};
use crate::plan::{StepError, StepRecord};

/// What the caller decides for a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    /// `--root-mountpoint`, default `/mnt`.
    pub root_mountpoint: String,
    /// `--disk NAME DEVICE`, by the layout's disk attribute name.
    pub disk_overrides: Vec<(String, String)>,
    /// Plan and print only; the devices need not exist.
    pub dry_run: bool,
    /// No terminal can answer a LUKS passphrase prompt.
    pub unattended: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Mount,
            root_mountpoint: "/mnt".into(),
            disk_overrides: Vec::new(),
            dry_run: false,
            unattended: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("the disk layout is not usable, nothing was touched: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error("disk step failed: {0}")]
    Step(Box<StepError<ExecError>>),
}

impl From<StepError<ExecError>> for DiskError {
    fn from(e: StepError<ExecError>) -> Self {
        Self::Step(Box::new(e))
    }
}

/// Parses, validates and plans, touching nothing. Devices are looked up on this machine; in a
/// dry run a missing one is shown as missing, otherwise it is an error naming the disk.
pub fn prepare(layout_json: &str, opts: &RunOptions) -> Result<DiskPlan, DiskError> {
    let layout = layout::parse(layout_json, &opts.disk_overrides)?;
    let mut cx = Context {
        facts: BTreeMap::new(),
        require_devices: !opts.dry_run,
        unattended: opts.unattended,
    };
    for d in &layout.disk {
        match facts::read(&d.device) {
            Ok(f) => {
                cx.facts.insert(d.device.clone(), f);
            }
            Err(e) if opts.dry_run => tracing::debug!("{e}"),
            Err(_) => {} // validation names the disk
        }
    }
    validate::validate(&layout, &cx)?;
    Ok(plan::plan(&layout, opts.mode, &opts.root_mountpoint, &cx)?)
}

/// Plans, then executes unless `opts.dry_run`; `on_step` hears of each finished step.
/// `passphrases` answers `askPassword` LUKS devices by mapper name.
pub fn run(
    layout_json: &str,
    opts: &RunOptions,
    passphrases: BTreeMap<String, Vec<u8>>,
    on_step: impl FnMut(&StepRecord),
) -> Result<(DiskPlan, Vec<StepRecord>), DiskError> {
    let plan = prepare(layout_json, opts)?;
    if opts.dry_run {
        return Ok((plan, Vec::new()));
    }
    let mut env = DiskEnv {
        passphrases,
        ..DiskEnv::default()
    };
    let records = crate::plan::execute(&plan.steps, &mut env, on_step)?;
    Ok((plan, records))
}
