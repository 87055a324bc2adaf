//! The command lines disko itself would run for a [`TableSpec`] (sgdisk, parted): the tests hold
//! them against disko's own scripts, so that the spec the plan hands the native writers
//! (`disk::table`) says exactly what disko's layout says.

use crate::disk::table::spec::{GptSpec, LegacyFormat, LegacyPartType, LegacySpec};

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
