//! The plan against disko's own scripts (fixtures/disko-examples/NAME.create.sh, mount.sh): for
//! every example, the commands we would run, in order, with disko's arguments; and every device
//! the installed system's NixOS options name is one the plan makes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nixos_anywhere_rs::disk::layout::{self, Dev};
use nixos_anywhere_rs::disk::plan::table_tools::{parted_commands, sgdisk_new_args};
use nixos_anywhere_rs::disk::plan::{self, DiskPlan, DiskStep, Mode};
use nixos_anywhere_rs::disk::table::spec::TableSpec;
use nixos_anywhere_rs::disk::validate::Context;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/disko-examples")
}

fn names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let stem = n.strip_suffix(".json")?;
            (!stem.ends_with(".nixos")).then(|| stem.to_owned())
        })
        .collect();
    v.sort();
    v
}

fn read(name: &str, ext: &str) -> String {
    std::fs::read_to_string(dir().join(format!("{name}.{ext}"))).unwrap()
}

fn plan_of(name: &str, mode: Mode) -> DiskPlan {
    let l = layout::parse(&read(name, "json"), &[]).unwrap();
    plan::plan(&l, mode, "/mnt", &Context::default()).unwrap()
}

/// Shell logical lines: backslash-newline joined.
fn logical_lines(script: &str) -> Vec<String> {
    script
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Splits a line into words as the shell would for the commands we compare; `<(...)` and
/// `$(...)` stay one word; stops at `|`, `;`, `<`, `>`, `&&`, `||`.
fn words(line: &str) -> Vec<String> {
    let b: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            ' ' | '\t' => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            '\'' => {
                i += 1;
                while i < b.len() && b[i] != '\'' {
                    cur.push(b[i]);
                    i += 1;
                }
                has = true;
            }
            '"' => {
                i += 1;
                while i < b.len() && b[i] != '"' {
                    // In double quotes a backslash escapes only $ ` " \ and newline.
                    if b[i] == '\\' && i + 1 < b.len() && "$`\"\\".contains(b[i + 1]) {
                        i += 1;
                    }
                    cur.push(b[i]);
                    i += 1;
                }
                has = true;
            }
            '<' if b.get(i + 1) == Some(&'(') => {
                let mut depth = 0;
                while i < b.len() {
                    cur.push(b[i]);
                    if b[i] == '(' {
                        depth += 1;
                    } else if b[i] == ')' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                has = true;
            }
            '|' | ';' | '<' | '>' | '&' => break,
            '\\' if i + 1 < b.len() => {
                i += 1;
                cur.push(b[i]);
                has = true;
            }
            _ => {
                cur.push(c);
                has = true;
            }
        }
        i += 1;
    }
    if has {
        out.push(cur);
    }
    out
}

/// The commands of `script` whose program is one we plan, with disko's shell expansions
/// replaced by what they expand to.
fn script_commands(script: &str) -> Vec<Vec<String>> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut bcachefs_lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending_printf: Vec<String> = Vec::new();
    let mut current_bcachefs = String::new();
    let mut out = Vec::new();
    let script = regex_lite_replace_raid_count(script);
    for line in logical_lines(&script) {
        // Member hand-off: `echo "DEV" >>"$disko_devices_dir"/lvm_pool`.
        if let Some(rest) = line.strip_prefix("echo \"")
            && let Some((dev, file)) = rest.split_once("\" >>\"$disko_devices_dir\"/")
        {
            members
                .entry(file.to_owned())
                .or_default()
                .push(dev.to_owned());
            continue;
        }
        if let Some(fs) = line.strip_prefix("done < \"$disko_devices_dir/bcachefs-") {
            current_bcachefs = fs.trim_end_matches("\";").to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("printf '%s\\n' '") {
            pending_printf.push(
                rest.trim_end_matches("';")
                    .trim_end_matches('\'')
                    .to_owned(),
            );
            continue;
        }
        if line.starts_with("} >> \"$disko_devices_dir/bcachefs-") {
            let fs = line
                .trim_start_matches("} >> \"$disko_devices_dir/bcachefs-")
                .trim_end_matches("\";");
            bcachefs_lines
                .entry(fs.to_owned())
                .or_default()
                .extend(std::mem::take(&mut pending_printf));
            continue;
        }
        let line = line
            .strip_prefix("if ! ")
            .or_else(|| line.strip_prefix("echo 'y' | "))
            .unwrap_or(&line)
            .to_owned();
        let mut w = words(&line);
        let Some(prog) = w.first().cloned() else {
            continue;
        };
        let keep = prog.starts_with("mkfs.")
            || prog == "mkswap"
            || prog == "pvcreate"
            || prog == "vgcreate"
            || prog == "lvcreate"
            || prog == "modprobe"
            || prog == "bcachefs" && w.get(1).is_some_and(|a| a == "format")
            || prog == "cryptsetup"
                && w.get(1)
                    .is_some_and(|a| ["-q", "open", "luksAddKey"].contains(&a.as_str()))
            || prog == "mdadm" && w.get(1).is_some_and(|a| a == "--create")
            || prog == "zpool" && w.get(1).is_some_and(|a| a == "create")
            || prog == "zfs" && w.get(1).is_some_and(|a| a == "create")
            || prog == "sgdisk" && w.get(1).is_some_and(|a| a == "--align-end")
            || prog == "parted";
        if !keep {
            continue;
        }
        // Expansions disko's snippets rely on.
        let mut expanded = Vec::new();
        for word in w.drain(..) {
            if word == "${lvm_devices[@]}" {
                let vg = expanded_vg(&expanded);
                expanded.extend(
                    members
                        .get(&format!("lvm_{vg}"))
                        .cloned()
                        .unwrap_or_default(),
                );
            } else if word == "${disk_devices[@]}" {
                let md = expanded[2].trim_start_matches("/dev/md/").to_owned();
                expanded.extend(
                    members
                        .get(&format!("raid_{md}"))
                        .cloned()
                        .unwrap_or_default(),
                );
            } else if let Some(md) = word.strip_prefix("--raid-devices=@COUNT@") {
                let n = members.get(&format!("raid_{md}")).map_or(0, Vec::len);
                expanded.push(format!("--raid-devices={n}"));
            } else if word == "$@" {
                let fs = current_bcachefs.clone();
                expanded.extend(bcachefs_lines.get(&fs).cloned().unwrap_or_default());
            } else if word.starts_with("<(") && word.contains("cat ") {
                expanded.push("-".into());
            } else if word.starts_with("${topology") {
                expanded.push("@TOPOLOGY@".into());
            } else if word.starts_with("$topology") {
                // the second half of `${topology:+ $topology}`
            } else {
                expanded.push(word);
            }
        }
        if prog == "bcachefs"
            && line.contains("--encrypted")
            && !expanded.contains(&"--encrypted".to_owned())
        {
            expanded.push("--encrypted".into());
        }
        out.push(expanded);
    }
    out
}

fn expanded_vg(sofar: &[String]) -> String {
    sofar.get(1).cloned().unwrap_or_default()
}

/// `--raid-devices="$(wc -l "$disko_devices_dir"/raid_NAME | cut -f 1 -d " ")"` → a token we
/// expand to the member count.
fn regex_lite_replace_raid_count(script: &str) -> String {
    let mut out = String::new();
    let mut rest = script;
    let open = "--raid-devices=\"$(wc -l \"$disko_devices_dir\"/raid_";
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        let after = &rest[i + open.len()..];
        let end = after.find(' ').unwrap();
        out.push_str(&format!("--raid-devices=@COUNT@{}", &after[..end]));
        let close = after.find(")\"").unwrap();
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Our commands for the same kinds, with disko's device paths.
fn plan_commands(p: &DiskPlan) -> Vec<Vec<String>> {
    let path = |d: &Dev| d.path.clone();
    let mut out = Vec::new();
    for s in &p.steps {
        match s {
            DiskStep::WriteTable { device, spec } => match spec {
                TableSpec::Gpt(g) => {
                    for (new, _) in sgdisk_new_args(g) {
                        let mut v = vec!["sgdisk".to_owned()];
                        v.extend(new);
                        v.push(device.path.clone());
                        out.push(v);
                    }
                }
                TableSpec::Legacy(l) => {
                    for c in parted_commands(l) {
                        let mut v = vec![
                            "parted".to_owned(),
                            "-s".into(),
                            device.path.clone(),
                            "--".into(),
                        ];
                        v.extend(c);
                        out.push(v);
                    }
                }
            },
            DiskStep::ZpoolCreate { .. } => {
                let mut v = s.argv(&path).unwrap();
                // The member list is built by disko's shell at run time: compare up to it.
                let mut i = 6; // zpool create -f NAME -R ROOT
                while i < v.len() && ["-m", "-o", "-O"].contains(&v[i].as_str()) {
                    i += 2;
                }
                v.truncate(i);
                v.push("@TOPOLOGY@".into());
                out.push(v);
            }
            DiskStep::Mkfs { .. }
            | DiskStep::Mkswap { .. }
            | DiskStep::PvCreate { .. }
            | DiskStep::VgCreate { .. }
            | DiskStep::LvCreate { .. }
            | DiskStep::Modprobe { .. }
            | DiskStep::LuksFormat { .. }
            | DiskStep::LuksOpen { .. }
            | DiskStep::LuksAddKey { .. }
            | DiskStep::MdCreate { .. }
            | DiskStep::ZfsCreate { .. }
            | DiskStep::BcachefsFormat { .. } => out.push(s.argv(&path).unwrap()),
            _ => {}
        }
    }
    out
}

#[test]
fn format_commands_match_disko_create_scripts() {
    let mut failures = Vec::new();
    let mut compared = 0;
    for name in names() {
        let p = plan_of(&name, Mode::Format);
        let ours = plan_commands(&p);
        let theirs = script_commands(&read(&name, "create.sh"));
        compared += theirs.len();
        if ours != theirs {
            let first = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            failures.push(format!(
                "{name}: command {first} differs (ours {} commands, disko {}):\n  ours:  {:?}\n  disko: {:?}",
                ours.len(),
                theirs.len(),
                ours.get(first),
                theirs.get(first)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared > 200, "only {compared} commands compared");
}

/// (device, target, type, options without X-mount.mkdir) of each mount in mount.sh, in order.
fn script_mounts(script: &str) -> Vec<(String, String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for line in logical_lines(script) {
        let w = words(&line);
        if w.first().map(String::as_str) != Some("mount") {
            continue;
        }
        let mut fstype = String::new();
        let mut opts = BTreeSet::new();
        let mut pos = Vec::new();
        let mut i = 1;
        while i < w.len() {
            match w[i].as_str() {
                "-t" => {
                    fstype = w[i + 1].clone();
                    i += 1;
                }
                "-o" => {
                    for o in w[i + 1].split(',') {
                        opts.insert(o.to_owned());
                    }
                    i += 1;
                }
                other => pos.push(other.to_owned()),
            }
            i += 1;
        }
        opts.remove("X-mount.mkdir");
        let target = pos[1].trim_end_matches('/').to_owned();
        out.push((pos[0].clone(), target, fstype, opts));
    }
    out
}

#[test]
fn mounts_match_disko_mount_scripts_in_order() {
    let mut failures = Vec::new();
    for name in names() {
        let p = plan_of(&name, Mode::Mount);
        let ours: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                DiskStep::Mount {
                    device,
                    target,
                    fstype,
                    options,
                } => {
                    let mut opts: BTreeSet<String> = options
                        .iter()
                        .flat_map(|o| o.split(','))
                        .map(str::to_owned)
                        .collect();
                    opts.remove("X-mount.mkdir");
                    Some((device.path.clone(), target.clone(), fstype.clone(), opts))
                }
                _ => None,
            })
            .collect();
        let mut theirs = script_mounts(&read(&name, "mount.sh"));
        // disko mounts btrfs without `-t`; we name the type.
        for (t, o) in theirs.iter_mut().zip(&ours) {
            if t.2.is_empty() {
                t.2 = o.2.clone();
            }
        }
        if ours != theirs {
            failures.push(format!("{name}:\n  ours:  {ours:?}\n  disko: {theirs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `device` the installed system's `fileSystems`, `swapDevices` and
/// `boot.initrd.luks.devices` name is one the plan makes or mounts.
#[test]
fn every_nixos_device_is_planned() {
    for name in names() {
        let p = plan_of(&name, Mode::DestroyFormatMount);
        let l = layout::parse(&read(&name, "json"), &[]).unwrap();
        let mut known: BTreeSet<String> = BTreeSet::new();
        collect_strings(&serde_json::to_value(&p).unwrap(), &mut known);
        collect_strings(&serde_json::to_value(&l).unwrap(), &mut known);
        let nixos: Value = serde_json::from_str(&read(&name, "nixos.json")).unwrap();
        let mut devices = Vec::new();
        if let Some(fs) = nixos["fileSystems"].as_object() {
            devices.extend(fs.values().filter_map(|v| v["device"].as_str()));
        }
        if let Some(sw) = nixos["swapDevices"].as_array() {
            devices.extend(sw.iter().filter_map(|v| v["device"].as_str()));
        }
        if let Some(l) = nixos["boot"]["initrd"]["luks"]["devices"].as_object() {
            devices.extend(l.values().filter_map(|v| v["device"].as_str()));
        }
        for d in devices {
            // btrfs swap files are `<mountpoint>/<path>`: planned as files, checked by path.
            let swapfile = p.steps.iter().any(|s| match s {
                DiskStep::BtrfsSubvolumes { swap_files, .. } => swap_files
                    .iter()
                    .any(|f| d.ends_with(f.path.rsplit('/').next().unwrap())),
                _ => false,
            });
            assert!(known.contains(d) || swapfile, "{name}: {d} is not planned");
        }
    }
}

fn collect_strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Unmount in disko's order: file systems and swap in reverse key order, then devices in reverse
/// device order (LUKS closed, VGs deactivated, pools exported, arrays stopped).
#[test]
fn unmount_matches_disko_unmount_scripts_in_order() {
    let mut failures = Vec::new();
    for name in names() {
        let Ok(script) = std::fs::read_to_string(dir().join(format!("{name}.unmount.sh"))) else {
            continue;
        };
        let theirs: Vec<String> = logical_lines(&script)
            .iter()
            .filter_map(|l| {
                let w = words(l);
                let first = w.first()?.as_str();
                let norm = match (first, w.get(1).map(String::as_str)) {
                    ("umount", Some(t)) => format!("umount {}", t.trim_end_matches('/')),
                    ("swapoff", Some(d)) => format!("swapoff {d}"),
                    ("cryptsetup", Some("close")) => format!("cryptsetup close {}", w[2]),
                    ("vgchange", Some("-a")) => "vgchange -a n".to_owned(),
                    ("zpool", Some("export")) => format!("zpool export {}", w[2]),
                    ("mdadm", Some("--stop")) => format!("mdadm --stop {}", w[2]),
                    _ => return None,
                };
                Some(norm)
            })
            .collect();
        let p = plan_of(&name, Mode::Unmount);
        let ours: Vec<String> = p
            .steps
            .iter()
            .filter_map(|s| {
                let a = s.argv(&|d| d.path.clone())?;
                Some(match a[0].as_str() {
                    "vgchange" => "vgchange -a n".to_owned(),
                    _ => a.join(" "),
                })
            })
            .collect();
        if ours != theirs {
            failures.push(format!("{name}:\n  ours:  {ours:?}\n  disko: {theirs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The members each VG, array and pool receives (disko's hand-off files) are the ones the plan
/// passes, in the same order; for plain zpools, also the vdev mode.
#[test]
fn members_reach_their_parents_in_disko_order() {
    let mut checked = 0;
    for name in names() {
        let script = read(&name, "create.sh");
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut modes: Vec<String> = Vec::new();
        for line in logical_lines(&script) {
            if let Some(rest) = line.strip_prefix("echo \"")
                && let Some((dev, file)) = rest.split_once("\" >>\"$disko_devices_dir\"/")
            {
                members
                    .entry(file.to_owned())
                    .or_default()
                    .push(dev.to_owned());
            }
            if let Some(m) = line.strip_prefix("mode=\"")
                && !m.starts_with('$')
            {
                modes.push(m.trim_end_matches('"').to_owned());
            }
        }
        let p = plan_of(&name, Mode::Format);
        let mut pools = 0;
        for s in &p.steps {
            let (file, ours): (String, Vec<String>) = match s {
                DiskStep::VgCreate { name, pvs } => (
                    format!("lvm_{name}"),
                    pvs.iter().map(|d| d.path.clone()).collect(),
                ),
                DiskStep::MdCreate { name, devices, .. } => (
                    format!("raid_{name}"),
                    devices.iter().map(|d| d.path.clone()).collect(),
                ),
                DiskStep::ZpoolCreate { name, args } => {
                    let mode = modes.get(pools).cloned().unwrap_or_default();
                    pools += 1;
                    if mode == "prescribed" {
                        continue;
                    }
                    let theirs = members
                        .get(&format!("zfs_{name}"))
                        .cloned()
                        .unwrap_or_default();
                    let mut want = Vec::new();
                    if !mode.is_empty() {
                        want.push(mode.clone());
                    }
                    want.extend(theirs);
                    let tail = args[args.len() - want.len()..].to_vec();
                    assert_eq!(tail, want, "{name}: zpool {name}");
                    checked += 1;
                    continue;
                }
                _ => continue,
            };
            assert_eq!(Some(&ours), members.get(&file), "{name}: {file}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} parents compared");
}
