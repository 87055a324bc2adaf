//! `nixos-anywhere-rs disko`: disko's command line on this machine (images, loop devices, a
//! booted installer), on the same disk layer the install's `disko` phase runs in the agent.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::disk::plan::Mode;
use crate::disk::run::{self, RunOptions};

#[derive(Debug, Args)]
pub struct DiskoArgs {
    /// destroy, format, mount, unmount, format,mount, or destroy,format,mount (alias disko).
    #[arg(long, value_name = "MODE", default_value = "mount")]
    pub mode: Mode,
    /// Where the layout's file systems are mounted.
    #[arg(long, value_name = "DIR", default_value = "/mnt")]
    pub root_mountpoint: String,
    /// Use DEVICE for the layout's disk NAME (repeatable), as disko-install's --disk.
    #[arg(long, num_args = 2, value_names = ["NAME", "DEVICE"])]
    pub disk: Vec<String>,
    /// Only print the plan (which physical disk is which, every step); touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (and what ran) as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Destroy without asking: needed when no terminal can confirm.
    #[arg(long)]
    pub yes_wipe_all_disks: bool,
    /// The evaluated `disko.devices`, as JSON.
    #[arg(value_name = "LAYOUT.json")]
    pub layout: PathBuf,
}

impl DiskoArgs {
    pub fn run(self) -> Result<()> {
        let layout = std::fs::read_to_string(&self.layout)
            .with_context(|| format!("reading the layout {}", self.layout.display()))?;
        let opts = RunOptions {
            mode: self.mode,
            root_mountpoint: self.root_mountpoint.clone(),
            disk_overrides: self
                .disk
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
            dry_run: self.dry_run,
            unattended: !io::stdin().is_terminal(),
        };
        // The plan first, from the machine as it is: a person sees which disks are wiped.
        let plan = run::prepare(&layout, &opts)?;
        if self.dry_run {
            return self.show(&plan, &[]);
        }
        if self.mode.destroys() && !self.yes_wipe_all_disks {
            eprint!("{plan}");
            confirm()?;
        }
        let (plan, records) = run::run(&layout, &opts, Default::default(), |record| {
            if !self.json {
                eprintln!("  {record}");
            }
        })?;
        self.show(&plan, &records)
    }

    fn show(
        &self,
        plan: &crate::disk::plan::DiskPlan,
        ran: &[crate::plan::StepRecord],
    ) -> Result<()> {
        if self.json {
            let out = serde_json::json!({ "plan": plan, "steps": ran });
            println!("{}", serde_json::to_string(&out)?);
        } else if ran.is_empty() {
            eprint!("{plan}");
        }
        Ok(())
    }
}

/// disko's own question before it destroys: only `yes` goes on.
fn confirm() -> Result<()> {
    if !io::stdin().is_terminal() {
        bail!(
            "this mode wipes the disks above, and no terminal can confirm it: pass --yes-wipe-all-disks"
        );
    }
    eprint!("Type yes to wipe the disks marked WILL BE WIPED: ");
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was changed");
    }
    Ok(())
}
