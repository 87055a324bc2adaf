//! The disk phase's plan: a validated layout and a mode turned into steps in disko's exact order,
//! printable for a person (which physical disk is which) and as JSON, before anything runs.

mod build;
mod exec;
mod mounts;
mod release;
pub mod step;
pub mod table_tools;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use exec::{DiskEnv, ExecError};
pub use step::{DiskStep, Key};

use crate::disk::facts::DeviceFacts;
use crate::disk::layout::{Layout, LayoutError};
use crate::disk::validate;

/// disko's `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Destroy,
    Format,
    Mount,
    Unmount,
    FormatMount,
    DestroyFormatMount,
}

impl Mode {
    pub fn destroys(self) -> bool {
        matches!(self, Mode::Destroy | Mode::DestroyFormatMount)
    }
}

impl FromStr for Mode {
    type Err = String;

    /// disko's spellings, with its legacy aliases (`disko`, `create`, `zap_create_mount`).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "destroy" => Mode::Destroy,
            "format" | "create" => Mode::Format,
            "mount" => Mode::Mount,
            "unmount" => Mode::Unmount,
            "format,mount" => Mode::FormatMount,
            "destroy,format,mount" | "disko" | "zap_create_mount" => Mode::DestroyFormatMount,
            other => {
                return Err(format!(
                    "unknown mode `{other}`; use destroy, format, mount, unmount, format,mount \
                     or destroy,format,mount (alias disko)"
                ));
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Destroy => "destroy",
            Mode::Format => "format",
            Mode::Mount => "mount",
            Mode::Unmount => "unmount",
            Mode::FormatMount => "format,mount",
            Mode::DestroyFormatMount => "destroy,format,mount",
        })
    }
}

/// One disk of the layout as the plan shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DiskSummary {
    pub name: String,
    pub device: String,
    /// Whether destroy modes wipe it (`destroy = false` never is).
    pub wiped: bool,
    /// What the machine reports, when the device was found.
    pub facts: Option<DeviceFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskPlan {
    pub mode: Mode,
    pub root_mountpoint: String,
    pub disks: Vec<DiskSummary>,
    pub steps: Vec<DiskStep>,
}

/// Plans `mode` for a layout already validated against `cx`.
pub fn plan(
    layout: &Layout,
    mode: Mode,
    root_mountpoint: &str,
    cx: &validate::Context,
) -> Result<DiskPlan, LayoutError> {
    if !root_mountpoint.starts_with('/') {
        return Err(LayoutError::invalid(
            "",
            format!("the root mount point `{root_mountpoint}` must be an absolute path"),
        ));
    }
    let order = validate::device_order(layout)?;
    let mut p = build::Planner::new(layout, root_mountpoint);
    match mode {
        Mode::Destroy => p.destroy(),
        Mode::Format => p.format(&order),
        Mode::Mount => p.mount(&order)?,
        Mode::Unmount => p.unmount(&order),
        Mode::FormatMount => {
            p.format(&order);
            p.mount(&order)?;
        }
        Mode::DestroyFormatMount => {
            p.destroy();
            p.format(&order);
            p.mount(&order)?;
        }
    }
    let disks = layout
        .disk
        .iter()
        .map(|d| DiskSummary {
            name: d.attr.clone(),
            device: d.device.clone(),
            wiped: mode.destroys() && d.destroy,
            facts: cx.facts.get(&d.device).cloned(),
        })
        .collect();
    Ok(DiskPlan {
        mode,
        root_mountpoint: root_mountpoint.to_owned(),
        disks,
        steps: p.into_steps(),
    })
}

impl fmt::Display for DiskPlan {
    /// The plan for a person: which physical disk each layout disk is, then the steps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "disko mode {} with the root at {}",
            self.mode, self.root_mountpoint
        )?;
        for d in &self.disks {
            let what = if d.wiped {
                "WILL BE WIPED"
            } else if self.mode.destroys() {
                "kept (destroy = false)"
            } else {
                "not wiped"
            };
            match &d.facts {
                Some(facts) => writeln!(f, "  disk {}: {facts} [{what}]", d.name)?,
                None => writeln!(
                    f,
                    "  disk {}: {} (not found on this machine) [{what}]",
                    d.name, d.device
                )?,
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>3}. {}", i + 1, s.description())?;
        }
        Ok(())
    }
}

/// A command line as a shell would take it (for descriptions; never holds a secret, since keys
/// are file paths).
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:+,@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
