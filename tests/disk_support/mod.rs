//! Helpers shared by the partition-table tests: disko's examples and scripts, sparse images,
//! loop devices, `sfdisk --json` reduced to what is compared.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nixos_anywhere_rs::disk::device;
use nixos_anywhere_rs::disk::table;
use nixos_anywhere_rs::disk::table::spec::*;
use serde_json::Value;

/// disko's evaluated examples, as the repository carries them (`fixtures/disko-examples/`).
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/disko-examples")
}

pub fn sh(cmd: &str) -> String {
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

pub fn sparse(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

pub fn size_bytes(text: &str) -> u64 {
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
pub struct Found {
    pub device: String,
    pub spec: TableSpec,
    pub bytes: u64,
}

pub fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_string()
}

/// The test-side conversion from disko's evaluated JSON (the layout planner replaces it).
pub fn to_spec(content: &Value) -> Option<TableSpec> {
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
                    name: p["name"]
                        .as_str()
                        .map(nixos_anywhere_rs::disk::names::udev_escape),
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

pub fn find_tables(json: &Value) -> Vec<Found> {
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
pub fn disko_table_commands(script: &str, device: &str) -> Vec<String> {
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
pub fn table_of(path: &Path, fixed_guids: &[u32]) -> Value {
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

pub fn head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0; 512];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[446..512].to_vec()
}

pub fn write_ours(path: &Path, spec: &TableSpec) -> table::PlannedTable {
    let file = device::open(path).unwrap();
    let geo = device::geometry(path, &file).unwrap();
    let planned = table::plan(spec, geo).unwrap();
    planned.write(path, &file, Duration::from_secs(10)).unwrap();
    planned
}

/// The partitions whose GUID the layout fixes.
pub fn fixed_guids(spec: &TableSpec) -> Vec<u32> {
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
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A loop device over an image file, detached on drop.
pub struct Loop(pub PathBuf);

impl Loop {
    pub fn new(image: &Path, sector_size: u64) -> Loop {
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
