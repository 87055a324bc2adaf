//! disko's 38 evaluated examples (fixtures/disko-examples) as the oracle: every layout parses and
//! validates, and the names, numbers and devices we derive are the ones disko derived.

use std::path::PathBuf;

use nixos_anywhere_rs::disk::layout::{self, ContentKind, Layout};
use nixos_anywhere_rs::disk::validate::{self, Context};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/disko-examples")
}

fn examples() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?;
            if stem.ends_with(".nixos") {
                return None;
            }
            Some((stem.to_owned(), std::fs::read_to_string(e.path()).unwrap()))
        })
        .collect();
    out.sort();
    out
}

fn load(json: &str) -> Layout {
    layout::parse(json, &[]).unwrap()
}

#[test]
fn all_examples_parse_and_validate() {
    let all = examples();
    assert_eq!(all.len(), 38, "the fixture set has 38 layouts");
    for (name, json) in &all {
        let l = layout::parse(json, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        validate::validate(&l, &Context::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Partition numbers, labels, priorities and devices agree with disko's evaluation, for tables
/// on disks, arrays, LUKS and zvols alike.
#[test]
fn gpt_partitions_match_disko() {
    let mut checked = 0;
    for (name, json) in examples() {
        let l = load(&json);
        let v: Value = serde_json::from_str(&json).unwrap();
        for (_, c) in validate::contents(&l) {
            let ContentKind::Gpt(g) = &c.kind else {
                continue;
            };
            let pointer = json_pointer(&c.path);
            let node = v
                .pointer(&pointer)
                .unwrap_or_else(|| panic!("{name}: {pointer}"));
            for p in &g.partitions {
                let want = &node["partitions"][&p.attr];
                assert_eq!(want["_index"], p.index, "{name} {}", p.path);
                assert_eq!(want["label"], p.label.as_str(), "{name} {}", p.path);
                assert_eq!(want["device"], p.dev.path.as_str(), "{name} {}", p.path);
                assert_eq!(want["priority"], p.priority, "{name} {}", p.path);
                assert_eq!(want["end"], p.end.as_str(), "{name} {}", p.path);
                assert_eq!(want["type"], p.type_code.as_str(), "{name} {}", p.path);
                if let Some(content) = &p.content {
                    assert_eq!(
                        want["content"]["device"],
                        content.dev.path.as_str(),
                        "{name} {}",
                        p.path
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} partitions compared");
}

/// The same examples with every default left out (the form a person writes) give the same
/// model as the evaluated form: the defaults we fill in are disko's.
#[test]
fn defaults_left_out_give_the_same_layout() {
    for (name, json) in examples() {
        let full = load(&json);
        let mut v: Value = serde_json::from_str(&json).unwrap();
        strip_defaults(&mut v, "");
        let stripped = layout::parse(&v.to_string(), &[])
            .unwrap_or_else(|e| panic!("{name} without defaults: {e}"));
        let a = serde_json::to_value(&stripped).unwrap();
        let b = serde_json::to_value(&full).unwrap();
        assert_eq!(first_difference(&a, &b, String::new()), None, "{name}");
    }
}

/// Removes the fields disko derives or defaults (where the default does not depend on a value
/// the example overrides), so parsing must fill them back.
fn strip_defaults(v: &mut Value, key: &str) {
    match v {
        Value::Object(map) => {
            let derived = ["_index", "_name", "_createFilesystem", "device"];
            let is_disk = map.get("type").and_then(Value::as_str) == Some("disk");
            let is_nodev = map.get("type").and_then(Value::as_str) == Some("nodev");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let keep_device = (is_disk || is_nodev) && k == "device";
                if (derived.contains(&k.as_str()) && !keep_device)
                    || (k.ends_with("Hook") && map[&k] == "")
                    || (k == "mountOptions" && map[&k] == serde_json::json!(["defaults"]))
                    || (k == "extraArgs" && map[&k] == serde_json::json!([]))
                    || (k == "label" && key == "partitions_member")
                    || (k == "priority"
                        && key == "partitions_member"
                        && [100, 1000, 9001].contains(&map[&k].as_i64().unwrap_or(0)))
                {
                    map.remove(&k);
                }
            }
            for (k, child) in map.iter_mut() {
                let ctx = if key == "partitions" {
                    "partitions_member"
                } else {
                    k.as_str()
                };
                strip_defaults(child, ctx);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| strip_defaults(i, key)),
        _ => {}
    }
}

/// `disk.main.content.partitions.ESP` → `/disk/main/content/partitions/ESP` (names in the
/// examples hold no `.`).
fn json_pointer(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        out.push('/');
        if let Some((name, idx)) = seg.split_once('[') {
            out.push_str(name);
            out.push('/');
            out.push_str(idx.trim_end_matches(']'));
        } else {
            out.push_str(&seg.replace('~', "~0").replace('/', "~1"));
        }
    }
    out
}

fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let d = first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    format!("{at}/{k}"),
                );
                if d.is_some() {
                    return d;
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} != {b}")),
    }
}

/// `--disk NAME DEVICE` replaces a disk's device everywhere it is derived (the table's device,
/// legacy partition paths), but not the by-partlabel names; an unknown NAME is an error.
#[test]
fn disk_override_reaches_derived_devices() {
    let json = std::fs::read_to_string(dir().join("legacy-table.json")).unwrap();
    let over = [("main".to_owned(), "/dev/vdx".to_owned())];
    let l = layout::parse(&json, &over).unwrap();
    assert_eq!(l.disk[0].device, "/dev/vdx");
    let c = l.disk[0].content.as_ref().unwrap();
    assert_eq!(c.dev.path, "/dev/vdx");
    let ContentKind::Table(t) = &c.kind else {
        panic!("legacy-table has a table")
    };
    assert_eq!(t.partitions[1].dev.path, "/dev/vdx2");
    let err = layout::parse(&json, &[("nope".into(), "/dev/vdx".into())]).unwrap_err();
    assert_eq!(err.path(), "disk.nope");
    assert!(err.to_string().contains("it has: main"), "{err}");
}
