//! Writing a [`TableSpec`] with the tools disko itself runs (sgdisk, parted, sfdisk), with its
//! exact arguments, then telling the kernel with BLKPG (`partx`), which works where the kernel
//! has no partition parser (loop devices). This is the bridge until the native writers in
//! `disk::table` land; the plan's data does not change when they replace it.

use super::exec::ExecError;
use crate::disk::table::spec::{GptSpec, LegacyFormat, LegacyPartType, LegacySpec, TableSpec};
use crate::exec::Cmd;

pub fn write(node: &str, spec: &TableSpec) -> Result<(), ExecError> {
    match spec {
        TableSpec::Gpt(g) => gpt(node, g)?,
        TableSpec::Legacy(l) => legacy(node, l)?,
    }
    tell_kernel(node);
    Ok(())
}

/// The per-partition sgdisk arguments disko passes (its `--new` branch and its re-label branch).
pub fn sgdisk_new_args(spec: &GptSpec) -> Vec<(Vec<String>, Vec<String>)> {
    spec.partitions
        .iter()
        .map(|p| {
            let n = p.number;
            let mut label = vec![
                format!("--partition-guid={n}:{}", p.guid.as_deref().unwrap_or("R")),
                format!("--change-name={n}:{}", p.label),
                format!("--typecode={n}:{}", p.type_code),
                format!("--attributes={n}:=:0"),
            ];
            label.extend(
                p.attributes
                    .iter()
                    .map(|b| format!("--attributes={n}:set:{b}")),
            );
            let mut new = vec!["--align-end".to_owned()];
            if p.alignment != 0 {
                new.push(format!("--set-alignment={}", p.alignment));
            }
            new.push(format!("--new={n}:{}:{}", p.start, p.end));
            new.extend(label.iter().cloned());
            (new, label)
        })
        .collect()
}

/// The intended `sgdisk -h` argument (disko's own has a quoting bug with the default
/// `efiGptPartitionFirst = true`, §13.2: it passes `1"/dev/sdb"` as one word).
pub fn hybrid_arg(spec: &GptSpec) -> Option<String> {
    let h = spec.hybrid.as_ref()?;
    let mut arg = h
        .partitions
        .iter()
        .map(|p| p.number.to_string())
        .collect::<Vec<_>>()
        .join(":");
    if !h.efi_gpt_partition_first {
        arg.push_str(":EE");
    }
    Some(arg)
}

fn gpt(node: &str, spec: &GptSpec) -> Result<(), ExecError> {
    if Cmd::new("blkid").arg(node).run().is_err() {
        Cmd::new("sgdisk").arg("--clear").arg(node).run()?;
    }
    for (new, relabel) in sgdisk_new_args(spec) {
        if Cmd::new("sgdisk").args(&new).arg(node).run().is_err() {
            // Already there: only re-label, as disko does.
            Cmd::new("sgdisk").args(&relabel).arg(node).run()?;
        }
    }
    if let Some(arg) = hybrid_arg(spec) {
        Cmd::new("sgdisk").arg("-h").arg(arg).arg(node).run()?;
        for p in &spec.hybrid.as_ref().expect("hybrid").partitions {
            if let Some(t) = &p.mbr_type {
                Cmd::new("sfdisk")
                    .args(["--label-nested", "dos", "--part-type", node])
                    .arg(p.number.to_string())
                    .arg(t)
                    .run()?;
            }
            if p.bootable {
                Cmd::new("sfdisk")
                    .args(["--label-nested", "dos", "--activate", node])
                    .arg(p.number.to_string())
                    .run()?;
            }
        }
    }
    Ok(())
}

/// parted's arguments for a legacy table, as disko runs them (`parted -s DEV -- ...`).
pub fn parted_commands(spec: &LegacySpec) -> Vec<Vec<String>> {
    let mut out = vec![vec![
        "mklabel".to_owned(),
        match spec.format {
            LegacyFormat::Gpt => "gpt",
            LegacyFormat::Msdos => "msdos",
        }
        .to_owned(),
    ]];
    // Per partition: mkpart, then its flags (disko sets them before the next mkpart).
    for p in &spec.partitions {
        let mut cmd = vec!["mkpart".to_owned()];
        match spec.format {
            LegacyFormat::Gpt => cmd.push(p.name.clone().unwrap_or_default()),
            LegacyFormat::Msdos => cmd.push(
                match p.part_type {
                    LegacyPartType::Primary => "primary",
                    LegacyPartType::Extended => "extended",
                    LegacyPartType::Logical => "logical",
                }
                .to_owned(),
            ),
        }
        cmd.extend(p.fs_type.clone());
        cmd.extend([p.start.clone(), p.end.clone()]);
        out.push(cmd);
        if p.bootable {
            out.push(vec![
                "set".into(),
                p.number.to_string(),
                "boot".into(),
                "on".into(),
            ]);
        }
        for f in &p.flags {
            out.push(vec![
                "set".into(),
                p.number.to_string(),
                f.clone(),
                "on".into(),
            ]);
        }
    }
    out
}

fn legacy(node: &str, spec: &LegacySpec) -> Result<(), ExecError> {
    for args in parted_commands(spec) {
        Cmd::new("parted")
            .args(["-s", node, "--"])
            .args(&args)
            .run()?;
    }
    Ok(())
}

/// BLKPG through `partx`: add the partitions the kernel lacks, update the ones it has.
fn tell_kernel(node: &str) {
    let _ = Cmd::new("partx").arg("-a").arg(node).run();
    let _ = Cmd::new("partx").arg("-u").arg(node).run();
}
