//! Tables beyond disko's examples, each against the real tool: legacy msdos tables (extended,
//! logicals, an EBR past 4 GiB) and parted GPT flags against parted; sgdisk's alignment, sector
//! units, attributes and fixed GUIDs against sgdisk; a table that does not fit changes nothing.
//!
//! Needs gdisk, parted, fdisk (sfdisk): `scripts/setup`.

mod disk_support;

use std::path::Path;

use disk_support::*;
use nixos_anywhere_rs::disk::table::WriteTable;
use nixos_anywhere_rs::disk::table::spec::*;
use nixos_anywhere_rs::plan::{Probe, Step};

fn legacy(
    part_type: LegacyPartType,
    fs: Option<&str>,
    start: &str,
    end: &str,
    flags: &[&str],
    bootable: bool,
) -> LegacyPartition {
    LegacyPartition {
        number: 0,
        part_type,
        fs_type: fs.map(String::from),
        name: None,
        start: start.into(),
        end: end.into(),
        flags: flags.iter().map(|f| f.to_string()).collect(),
        bootable,
    }
}

/// Runs the parted lines disko would (with parted's own partition numbers for `set`) on one
/// image, ours on another, and compares.
fn compare_legacy(tmp: &Path, name: &str, bytes: u64, mut spec: LegacySpec) {
    let (mut primary, mut logical) = (0, 4);
    let mut numbers = Vec::new();
    for (i, p) in spec.partitions.iter_mut().enumerate() {
        p.number = i as u32 + 1;
        if spec.format == LegacyFormat::Gpt {
            numbers.push(i as u32 + 1);
        } else if p.part_type == LegacyPartType::Logical {
            logical += 1;
            numbers.push(logical);
        } else {
            primary += 1;
            numbers.push(primary);
        }
    }
    let theirs = tmp.join(format!("{name}-parted.img"));
    let ours = tmp.join(format!("{name}-ours.img"));
    sparse(&theirs, bytes);
    sparse(&ours, bytes);
    let label = if spec.format == LegacyFormat::Gpt {
        "gpt"
    } else {
        "msdos"
    };
    let parted = format!("parted -s '{}' --", theirs.display());
    sh(&format!("{parted} mklabel {label}"));
    for (p, n) in spec.partitions.iter().zip(&numbers) {
        let what = match (spec.format, p.part_type) {
            (LegacyFormat::Gpt, _) => format!("\"{}\"", p.name.clone().unwrap_or_default()),
            (_, t) => format!("{t:?}").to_lowercase(),
        };
        sh(&format!(
            "{parted} mkpart {what} {} {} {}",
            p.fs_type.clone().unwrap_or_default(),
            p.start,
            p.end
        ));
        if p.bootable {
            sh(&format!("{parted} set {n} boot on"));
        }
        for f in &p.flags {
            sh(&format!("{parted} set {n} {f} on"));
        }
    }
    let spec = TableSpec::Legacy(spec);
    write_ours(&ours, &spec);
    assert_eq!(table_of(&ours, &[]), table_of(&theirs, &[]), "{name}");
    let step = WriteTable {
        device: ours.clone(),
        spec,
    };
    assert_eq!(step.probe(&()).unwrap(), Probe::Done, "{name}");
}

#[test]
fn legacy_msdos_tables_match_parted_with_an_ebr_past_four_gib() {
    use LegacyPartType::*;
    let tmp = scratch();
    // stand-alone's table (its create script: mklabel msdos; mkpart primary 1M 100%; boot).
    compare_legacy(
        tmp.path(),
        "stand-alone",
        2 << 30,
        LegacySpec {
            format: LegacyFormat::Msdos,
            partitions: vec![legacy(Primary, None, "1M", "100%", &[], true)],
        },
    );
    // Primaries, an extended one, logicals; the third logical and its EBR lie past 4 GiB.
    compare_legacy(
        tmp.path(),
        "logical",
        6 << 30,
        LegacySpec {
            format: LegacyFormat::Msdos,
            partitions: vec![
                legacy(Primary, Some("fat32"), "1M", "100MiB", &[], true),
                legacy(Extended, None, "100MiB", "100%", &[], false),
                legacy(Logical, None, "101MiB", "200M", &["lvm"], false),
                legacy(Logical, None, "200M", "4400MiB", &[], false),
                legacy(
                    Logical,
                    Some("linux-swap"),
                    "4500MiB",
                    "100%",
                    &["raid"],
                    false,
                ),
            ],
        },
    );
    let img = tmp.path().join("logical-ours.img");
    let t = table_of(&img, &[]);
    let last = t["partitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["number"], "7", "{t}");
    assert!(
        last["start"].as_u64().unwrap() * 512 > 4 << 30,
        "the last logical partition lies past 4 GiB: {t}"
    );
}

#[test]
fn legacy_gpt_flags_and_fs_types_match_parted() {
    use LegacyPartType::*;
    let tmp = scratch();
    let named = |name: &str, fs, start, end, flags: &[&str]| LegacyPartition {
        name: Some(name.to_string()),
        ..legacy(Primary, fs, start, end, flags, false)
    };
    compare_legacy(
        tmp.path(),
        "flags",
        1 << 30,
        LegacySpec {
            format: LegacyFormat::Gpt,
            partitions: vec![
                named("a", None, "0%", "10M", &["bios_grub"]),
                named("b", Some("linux-swap"), "10M", "20M", &[]),
                named("c", Some("fat32"), "20M", "30MiB", &["lvm"]),
                named("d", Some("ntfs"), "30MiB", "40M", &["raid"]),
                named("e", None, "40M", "50M", &["legacy_boot"]),
                named("f", None, "50M", "60M", &["hidden"]),
                named("g\\x20h", None, "60M", "-1M", &["swap"]),
            ],
        },
    );
}

/// disko's sgdisk line for a partition (format mode, first try).
fn disko_sgdisk_line(p: &GptPartition, dev: &Path) -> String {
    let mut line = String::from("sgdisk --align-end ");
    if p.alignment > 0 {
        line += &format!("--set-alignment={} ", p.alignment);
    }
    let n = p.number;
    line += &format!(
        "--new={n}:{}:{} --partition-guid=\"{n}:{}\" --change-name=\"{n}:{}\" --typecode={n}:{} --attributes={n}:=:0 ",
        p.start,
        p.end,
        p.guid.as_deref().unwrap_or("R"),
        p.label,
        p.type_code
    );
    for b in &p.attributes {
        line += &format!("--attributes={n}:set:{b} ");
    }
    line + &format!("'{}' >/dev/null", dev.display())
}

#[test]
fn sgdisk_alignment_attributes_sectors_and_fixed_guids_match() {
    let tmp = scratch();
    let part =
        |number, start: &str, end: &str, alignment, attributes: Vec<u8>, guid: Option<&str>| {
            GptPartition {
                number,
                label: format!("disk-x-p{number}"),
                type_code: if number == 2 {
                    "EF02".into()
                } else {
                    "8300".into()
                },
                start: start.into(),
                end: end.into(),
                alignment,
                guid: guid.map(String::from),
                attributes,
            }
        };
    let cases: Vec<(&str, u64, Vec<GptPartition>)> = vec![
        (
            "sectors",
            1 << 30,
            vec![
                part(2, "34s", "2047s", 1, vec![], None),
                part(
                    1,
                    "0",
                    "+100M",
                    0,
                    vec![0, 2, 63],
                    Some("f0f0f0f0-f0f0-f0f0-f0f0-f0f0f0f0f0f0"),
                ),
                part(3, "0", "-10M", 0, vec![60], None),
                part(4, "0", "+0", 0, vec![], None),
            ],
        ),
        (
            "odd-alignment",
            512 << 20,
            vec![
                part(1, "100", "+1000", 7, vec![], None),
                part(2, "0", "+1M", 0, vec![], None),
                part(3, "10M", "20M", 0, vec![], None),
                part(4, "0", "-0", 0, vec![], None),
            ],
        ),
    ];
    for (name, bytes, partitions) in cases {
        let theirs = tmp.path().join(format!("{name}-sgdisk.img"));
        let ours = tmp.path().join(format!("{name}-ours.img"));
        sparse(&theirs, bytes);
        sparse(&ours, bytes);
        sh(&format!("sgdisk --clear '{}' >/dev/null", theirs.display()));
        for p in &partitions {
            sh(&disko_sgdisk_line(p, &theirs));
        }
        let spec = TableSpec::Gpt(GptSpec {
            partitions,
            hybrid: None,
        });
        write_ours(&ours, &spec);
        let fixed = fixed_guids(&spec);
        assert_eq!(table_of(&ours, &fixed), table_of(&theirs, &fixed), "{name}");
    }
}

#[test]
fn a_table_that_does_not_fit_is_refused_before_a_byte_is_written() {
    let tmp = scratch();
    let img = tmp.path().join("small.img");
    sparse(&img, 64 << 20);
    let spec = TableSpec::Gpt(GptSpec {
        partitions: vec![GptPartition {
            number: 1,
            label: "disk-main-root".into(),
            type_code: "8300".into(),
            start: "0".into(),
            end: "+1G".into(),
            alignment: 0,
            guid: None,
            attributes: vec![],
        }],
        hybrid: None,
    });
    let step = WriteTable {
        device: img.clone(),
        spec,
    };
    let e = step.execute(&mut ()).unwrap_err().to_string();
    assert!(
        e.contains("partition 1 (disk-main-root) does not fit"),
        "{e}"
    );
    let data = std::fs::read(&img).unwrap();
    assert!(data.iter().all(|&b| b == 0), "nothing was written");
}
