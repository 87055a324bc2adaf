//! Partition tables identical to disko's: for every example in `disko-examples/` with a `gpt`
//! or legacy `table`, disko's own sgdisk/parted lines (from `NAME.create.sh`) run against one
//! sparse image, our writer against another of the same size, and `sfdisk --json` must agree
//! (numbers, start, size, type, name, attributes; GUIDs where the layout fixes them); for GPTs
//! the MBR sector's table (protective or hybrid) must match byte for byte.
//! Also: 4K-sector loop devices, legacy msdos tables with logical partitions past 4 GiB against
//! parted, and BLKPG making partition nodes appear with the right sizes.
//!
//! Needs gdisk, parted, fdisk (sfdisk), util-linux: `scripts/setup-tables`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nixos_anywhere_rs::disk::device;
use nixos_anywhere_rs::disk::table::spec::*;
use nixos_anywhere_rs::disk::table::{self, WriteTable};
use nixos_anywhere_rs::plan::{Probe, Step};
use serde_json::Value;

/// `disko-examples/`, found beside the repository or one of its parents (or `$DISKO_EXAMPLES`).
fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISKO_EXAMPLES") {
        return dir.into();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared/disko-examples"))
        .find(|d| d.is_dir())
        .expect("disko-examples not found beside the repository; set DISKO_EXAMPLES")
}

fn sh(cmd: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn sparse(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

fn size_bytes(text: &str) -> u64 {
    let (n, unit) = text.split_at(text.len() - 1);
    let n: u64 = n.parse().unwrap();
    n << match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => panic!("imageSize unit {other}"),
    }
}

/// One table found in an example: the device it is written on, the spec, the image size.
struct Found {
    device: String,
    spec: TableSpec,
    bytes: u64,
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_string()
}

/// The test-side conversion from disko's evaluated JSON (the layout planner replaces it).
fn to_spec(content: &Value) -> Option<TableSpec> {
    match content["type"].as_str()? {
        "gpt" => {
            let mut parts: Vec<&Value> = content["partitions"].as_object()?.values().collect();
            parts.sort_by_key(|p| p["_index"].as_u64());
            let partitions: Vec<GptPartition> = parts
                .iter()
                .map(|p| GptPartition {
                    number: p["_index"].as_u64().unwrap() as u32,
                    label: s(p, "label"),
                    type_code: s(p, "type"),
                    start: s(p, "start"),
                    end: s(p, "end"),
                    alignment: p["alignment"].as_u64().unwrap(),
                    guid: p["uuid"].as_str().map(String::from),
                    attributes: p["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| b.as_u64().unwrap() as u8)
                        .collect(),
                })
                .collect();
            let hybrid: Vec<HybridPartition> = parts
                .iter()
                .filter(|p| p["hybrid"].is_object())
                .map(|p| HybridPartition {
                    number: p["_index"].as_u64().unwrap() as u32,
                    mbr_type: p["hybrid"]["mbrPartitionType"].as_str().map(String::from),
                    bootable: p["hybrid"]["mbrBootableFlag"].as_bool().unwrap(),
                })
                .collect();
            let hybrid = (!hybrid.is_empty()).then(|| HybridMbr {
                partitions: hybrid,
                efi_gpt_partition_first: content["efiGptPartitionFirst"].as_bool().unwrap(),
            });
            Some(TableSpec::Gpt(GptSpec { partitions, hybrid }))
        }
        "table" => {
            let format = match content["format"].as_str()? {
                "gpt" => LegacyFormat::Gpt,
                _ => LegacyFormat::Msdos,
            };
            let partitions = content["partitions"]
                .as_array()?
                .iter()
                .map(|p| LegacyPartition {
                    number: p["_index"].as_u64().unwrap() as u32,
                    part_type: match p["part-type"].as_str().unwrap() {
                        "primary" => LegacyPartType::Primary,
                        "extended" => LegacyPartType::Extended,
                        _ => LegacyPartType::Logical,
                    },
                    fs_type: p["fs-type"].as_str().map(String::from),
                    // disko passes the udev-escaped name to parted, which stores it as text.
                    name: p["name"].as_str().map(table::write::udev_escape),
                    start: s(p, "start"),
                    end: s(p, "end"),
                    flags: p["flags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f.as_str().unwrap().to_string())
                        .collect(),
                    bootable: p["bootable"].as_bool().unwrap(),
                })
                .collect();
            Some(TableSpec::Legacy(LegacySpec { format, partitions }))
        }
        _ => None,
    }
}

fn find_tables(json: &Value) -> Vec<Found> {
    let mut out = Vec::new();
    for (section, default_size) in [("disk", None), ("mdadm", Some(2u64 << 30))] {
        let Some(nodes) = json[section].as_object() else {
            continue;
        };
        for node in nodes.values() {
            let content = &node["content"];
            if let Some(spec) = to_spec(content) {
                let bytes = node["imageSize"]
                    .as_str()
                    .map(size_bytes)
                    .or(default_size)
                    .unwrap();
                out.push(Found {
                    device: s(content, "device"),
                    spec,
                    bytes,
                });
            }
        }
    }
    out
}

/// disko's table commands for `device` from its create script: the `sgdisk --align-end` lines
/// (the first try, not the rename fallback), `sgdisk -h`, `sfdisk --label-nested`, and every
/// `parted` line, continuation lines joined.
fn disko_table_commands(script: &str, device: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in script.lines() {
        let t = line.trim();
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let quoted = format!("\"{device}\"");
    joined
        .into_iter()
        .map(|l| l.strip_prefix("if ! ").map(String::from).unwrap_or(l))
        .map(|l| l.trim_end_matches("; then").to_string())
        .filter(|l| {
            (l.starts_with("sgdisk --align-end")
                || l.starts_with("sgdisk -h")
                || l.starts_with("sfdisk --label-nested")
                || l.starts_with("parted -s"))
                && l.contains(&quoted)
        })
        .collect()
}

/// `sfdisk --json`, reduced to what the comparison covers.
fn table_of(path: &Path, fixed_guids: &[u32]) -> Value {
    let j: Value =
        serde_json::from_str(&sh(&format!("sfdisk --json '{}'", path.display()))).unwrap();
    let t = &j["partitiontable"];
    let parts: Vec<Value> = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let number: String = node
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            let mut o = serde_json::json!({
                "number": number, "start": p["start"], "size": p["size"], "type": p["type"],
                "name": p["name"], "attrs": p["attrs"], "bootable": p["bootable"],
            });
            if fixed_guids.iter().any(|n| n.to_string() == number) {
                o["uuid"] = p["uuid"].clone();
            }
            o
        })
        .collect();
    serde_json::json!({
        "label": t["label"], "firstlba": t["firstlba"], "lastlba": t["lastlba"],
        "sectorsize": t["sectorsize"], "partitions": parts,
    })
}

fn head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0; 512];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[446..512].to_vec()
}

fn write_ours(path: &Path, spec: &TableSpec) -> table::PlannedTable {
    let file = device::open(path).unwrap();
    let geo = device::geometry(path, &file).unwrap();
    let planned = table::plan(spec, geo).unwrap();
    planned.write(path, &file, Duration::from_secs(10)).unwrap();
    planned
}

/// The partitions whose GUID the layout fixes.
fn fixed_guids(spec: &TableSpec) -> Vec<u32> {
    match spec {
        TableSpec::Gpt(g) => g
            .partitions
            .iter()
            .filter(|p| p.guid.is_some())
            .map(|p| p.number)
            .collect(),
        TableSpec::Legacy(_) => Vec::new(),
    }
}

/// Images on tmpfs where there is one: sgdisk syncs after each write, which on a shared disk
/// flushes everyone's dirty pages.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A loop device over an image file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn new(image: &Path, sector_size: u64) -> Loop {
        let dev = sh(&format!(
            "losetup -b {sector_size} --show -f '{}'",
            image.display()
        ));
        Loop(PathBuf::from(dev.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Runs disko's lines and ours for one table and compares them.
fn compare_one(dir: &Path, tmp: &Path, name: &str, i: usize, f: &Found) {
    compare_on(dir, tmp, name, i, f, None)
}

/// The same on image files, or (with a sector size) on loop devices over them.
fn compare_on(dir: &Path, tmp: &Path, name: &str, i: usize, f: &Found, sector_size: Option<u64>) {
    let script = std::fs::read_to_string(dir.join(format!("{name}.create.sh"))).unwrap();
    let theirs_img = tmp.join(format!("{name}-{i}-disko.img"));
    let ours_img = tmp.join(format!("{name}-{i}-ours.img"));
    sparse(&theirs_img, f.bytes);
    sparse(&ours_img, f.bytes);
    let loops = sector_size.map(|ss| (Loop::new(&theirs_img, ss), Loop::new(&ours_img, ss)));
    let (theirs, ours) = match &loops {
        Some((a, b)) => (a.0.clone(), b.0.clone()),
        None => (theirs_img.clone(), ours_img.clone()),
    };
    let commands = disko_table_commands(&script, &f.device);
    assert!(
        !commands.is_empty(),
        "{name}: no table commands for {}",
        f.device
    );
    if matches!(f.spec, TableSpec::Gpt(_)) {
        sh(&format!("sgdisk --clear '{}' >/dev/null", theirs.display()));
    }
    let quoted = format!("\"{}\"", f.device);
    for c in &commands {
        sh(&format!(
            "{} >/dev/null",
            c.replace(&quoted, &format!("'{}'", theirs.display()))
        ));
    }
    write_ours(&ours, &f.spec);
    let fixed = fixed_guids(&f.spec);
    assert_eq!(
        table_of(&ours, &fixed),
        table_of(&theirs, &fixed),
        "{name}: {} differs from disko's",
        f.device
    );
    if matches!(f.spec, TableSpec::Gpt(_)) {
        assert_eq!(
            head(&ours),
            head(&theirs),
            "{name}: {}: the MBR differs from sgdisk's",
            f.device
        );
    }
    // The step's probe sees the table it wrote.
    let step = WriteTable {
        device: ours.clone(),
        spec: f.spec.clone(),
    };
    assert_eq!(step.probe(&()).unwrap(), Probe::Done, "{name}");
    // ... and not on a blank image.
    let blank = tmp.join(format!("{name}-{i}-blank.img"));
    sparse(&blank, f.bytes);
    let step = WriteTable {
        device: blank.clone(),
        spec: f.spec.clone(),
    };
    assert_eq!(step.probe(&()).unwrap(), Probe::Needed, "{name}");
    drop(loops);
    for p in [theirs_img, ours_img, blank] {
        std::fs::remove_file(p).unwrap();
    }
}

fn example(name: &str) -> Vec<Found> {
    let path = examples_dir().join(format!("{name}.json"));
    find_tables(&serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
}

#[test]
fn four_k_sector_loop_devices_match_sgdisk_and_parted() {
    let tmp = scratch();
    for name in [
        "simple-efi",
        "swap",
        "gpt-bios-compat",
        "hybrid-mbr",
        "legacy-table",
        "negative-size",
    ] {
        for (i, f) in example(name).iter().enumerate() {
            compare_on(&examples_dir(), tmp.path(), name, i, f, Some(4096));
        }
    }
}

fn sysfs_size(node: &Path) -> u64 {
    let name = node.file_name().unwrap().to_string_lossy().into_owned();
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

#[test]
fn blkpg_makes_the_partition_nodes_with_their_sizes() {
    let tmp = scratch();
    let img = tmp.path().join("blkpg.img");
    sparse(&img, 2 << 30);
    let lo = Loop::new(&img, 512);
    // swap has four partitions; simple-efi two: writing one after the other must remove the
    // kernel's stale partitions 3 and 4 and resize 2.
    for name in ["swap", "simple-efi"] {
        let f = &example(name)[0];
        let planned = write_ours(&lo.0, &f.spec);
        let wanted = planned.kernel_partitions();
        let have = device::kernel_partitions(&lo.0).unwrap();
        assert_eq!(have, wanted, "{name}");
        for (n, _, len) in wanted {
            let node = device::partition_node(&lo.0, n);
            assert!(node.exists(), "{}", node.display());
            assert_eq!(sysfs_size(&node), len, "{}", node.display());
            let got = sh(&format!("blockdev --getsize64 '{}'", node.display()));
            assert_eq!(got.trim().parse::<u64>().unwrap(), len);
        }
    }
    assert!(!device::partition_node(&lo.0, 3).exists());
}

#[test]
fn every_example_table_matches_disko() {
    let dir = examples_dir();
    let tmp = scratch();
    let mut jobs: Vec<(String, usize, Found)> = Vec::new();
    let mut examples = 0;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json") && !n.ends_with(".nixos.json")
        })
        .collect();
    names.sort();
    for json_path in names {
        let name = json_path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let found = find_tables(&json);
        examples += usize::from(!found.is_empty());
        jobs.extend(
            found
                .into_iter()
                .enumerate()
                .map(|(i, f)| (name.clone(), i, f)),
        );
    }
    // sgdisk sleeps a second after each write: run the examples side by side.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((name, i, f)) = jobs.get(k) else {
                        break;
                    };
                    compare_one(&dir, tmp.path(), name, *i, f);
                }
            });
        }
    });
    // Every example but the ZFS/LVM-only ones has a gpt or table; each was compared.
    assert!(examples >= 30, "only {examples} examples with tables found");
    eprintln!("compared {} tables from {examples} examples", jobs.len());
}

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
