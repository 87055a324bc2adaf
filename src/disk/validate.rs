//! Checks of the whole layout before anything is touched: each error names the node by its path
//! in the layout, so the user can find it, and a bad layout never gets as far as a wipe.

use std::collections::{BTreeMap, BTreeSet};

use super::facts::DeviceFacts;
use super::layout::*;
use super::order::{self, DeviceId};
use super::size;

/// What validation knows of the run.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The machine's block devices, by the path the layout names (after `--disk`).
    pub facts: BTreeMap<String, DeviceFacts>,
    /// When true, every disk must be among `facts`.
    pub require_devices: bool,
    /// No terminal to ask a LUKS passphrase on.
    pub unattended: bool,
}

/// Every content node of the layout with the top-level device it belongs to, in device order
/// within each kind (not toposorted).
pub fn contents(layout: &Layout) -> Vec<(DeviceId, &Content)> {
    fn push<'a>(top: DeviceId, c: Option<&'a Content>, out: &mut Vec<(DeviceId, &'a Content)>) {
        if let Some(c) = c {
            let mut all = Vec::new();
            c.walk(&mut all);
            out.extend(all.into_iter().map(|c| (top.clone(), c)));
        }
    }
    let id = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    let mut out = Vec::new();
    for d in &layout.disk {
        push(id("disk", &d.attr), d.content.as_ref(), &mut out);
    }
    for vg in &layout.lvm_vg {
        for lv in &vg.lvs {
            push(id("lvm_vg", &vg.attr), lv.content.as_ref(), &mut out);
        }
    }
    for md in &layout.mdadm {
        push(id("mdadm", &md.attr), md.content.as_ref(), &mut out);
    }
    for pool in &layout.zpool {
        for ds in &pool.datasets {
            if let DatasetKind::Volume { content, .. } = &ds.kind {
                push(id("zpool", &pool.attr), content.as_deref(), &mut out);
            }
        }
    }
    out
}

/// The top-level devices in disko's creation order (§1, §12).
pub fn device_order(layout: &Layout) -> Result<Vec<DeviceId>, LayoutError> {
    let mut ids: Vec<DeviceId> = Vec::new();
    let mut path_of: BTreeMap<DeviceId, String> = BTreeMap::new();
    let mut add = |k: &str, attr: &str, path: &str| {
        ids.push((k.to_owned(), attr.to_owned()));
        path_of.insert((k.to_owned(), attr.to_owned()), path.to_owned());
    };
    for x in &layout.bcachefs_filesystems {
        add("bcachefs_filesystems", &x.attr, &x.path);
    }
    for x in &layout.disk {
        add("disk", &x.attr, &x.path);
    }
    for x in &layout.lvm_vg {
        add("lvm_vg", &x.attr, &x.path);
    }
    for x in &layout.mdadm {
        add("mdadm", &x.attr, &x.path);
    }
    for x in &layout.nodev {
        add("nodev", &x.attr, &x.path);
    }
    for x in &layout.zpool {
        add("zpool", &x.attr, &x.path);
    }
    let mut deps: BTreeMap<DeviceId, Vec<DeviceId>> = BTreeMap::new();
    for (top, c) in contents(layout) {
        let target = match &c.kind {
            ContentKind::LvmPv { vg } => ("lvm_vg", vg),
            ContentKind::Mdraid { name } => ("mdadm", name),
            ContentKind::Zfs { pool } => ("zpool", pool),
            ContentKind::Bcachefs(b) => ("bcachefs_filesystems", &b.filesystem),
            _ => continue,
        };
        deps.entry((target.0.to_owned(), target.1.clone()))
            .or_default()
            .push(top);
    }
    order::device_order(&ids, &deps).map_err(|cycle| {
        let names: Vec<String> = cycle.iter().map(|(k, n)| format!("{k}.{n}")).collect();
        LayoutError::invalid(
            path_of.get(&cycle[0]).cloned().unwrap_or_default(),
            format!(
                "the devices depend on each other in a cycle: {}",
                names.join(" -> ")
            ),
        )
    })
}

/// Validates the whole layout; the first problem found is returned.
pub fn validate(layout: &Layout, cx: &Context) -> Result<(), LayoutError> {
    let bad = |path: &str, msg: String| Err(LayoutError::invalid(path, msg));
    let mut disk_names = BTreeMap::new();
    let mut disk_devices = BTreeMap::new();
    for d in &layout.disk {
        if !d.device.starts_with('/') {
            return bad(
                &format!("{}.device", d.path),
                format!(
                    "`{}` is not an absolute path; name the device as /dev/...",
                    d.device
                ),
            );
        }
        if let Some(other) = disk_names.insert(d.name.clone(), d.attr.clone()) {
            return bad(
                &format!("{}.name", d.path),
                format!(
                    "disk `{other}` has the same name `{}`; their partition labels would clash",
                    d.name
                ),
            );
        }
        if let Some(other) = disk_devices.insert(d.device.clone(), d.attr.clone()) {
            return bad(
                &format!("{}.device", d.path),
                format!("disk `{other}` names the same device `{}`", d.device),
            );
        }
        let facts = cx.facts.get(&d.device);
        if facts.is_none() && cx.require_devices {
            return bad(
                &format!("{}.device", d.path),
                format!(
                    "`{}` is not a block device on this machine (use --disk {} /dev/... to name another)",
                    d.device, d.attr
                ),
            );
        }
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut luks_names: BTreeMap<String, String> = BTreeMap::new();
    let vgs: BTreeSet<&str> = layout.lvm_vg.iter().map(|v| v.name.as_str()).collect();
    let mds: BTreeSet<&str> = layout.mdadm.iter().map(|v| v.name.as_str()).collect();
    let pools: BTreeSet<&str> = layout.zpool.iter().map(|v| v.name.as_str()).collect();
    let bcfs: BTreeSet<&str> = layout
        .bcachefs_filesystems
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let mut members: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (_, c) in contents(layout) {
        match &c.kind {
            ContentKind::Gpt(g) => check_gpt(g, &c.path, &mut labels)?,
            ContentKind::Table(t) => {
                for p in &t.partitions {
                    if p.part_type != crate::disk::table::spec::LegacyPartType::Primary
                        && t.format == crate::disk::table::spec::LegacyFormat::Gpt
                    {
                        return bad(
                            &format!("{}.part-type", p.path),
                            "logical and extended partitions exist only in an msdos table".into(),
                        );
                    }
                }
            }
            ContentKind::Filesystem(f) => {
                if f.format.is_empty()
                    || !f
                        .format
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return bad(
                        &format!("{}.format", c.path),
                        format!(
                            "`{}` is not a file system type (mkfs.<format> must be a program name)",
                            f.format
                        ),
                    );
                }
            }
            ContentKind::Luks(l) => {
                if l.name.is_empty() || l.name.contains('/') {
                    return bad(
                        &format!("{}.name", c.path),
                        format!("`{}` is not a device-mapper name", l.name),
                    );
                }
                if let Some(other) = luks_names.insert(l.name.clone(), c.path.clone()) {
                    return bad(
                        &format!("{}.name", c.path),
                        format!("LUKS name `{}` is also used at {other}", l.name),
                    );
                }
                if luks_key_file(l).is_none() && cx.unattended {
                    return bad(
                        &format!("{}.askPassword", c.path),
                        format!(
                            "LUKS device `{}` asks for a passphrase, but no terminal can answer; set \
                         settings.keyFile or passwordFile, or run with a terminal",
                            l.name
                        ),
                    );
                }
            }
            ContentKind::Swap(_) => {}
            ContentKind::LvmPv { vg } => {
                if !vgs.contains(vg.as_str()) {
                    return bad(
                        &format!("{}.vg", c.path),
                        format!("there is no lvm_vg named `{vg}`"),
                    );
                }
                *members.entry(("lvm_vg", vg.clone())).or_default() += 1;
            }
            ContentKind::Mdraid { name } => {
                if !mds.contains(name.as_str()) {
                    return bad(
                        &format!("{}.name", c.path),
                        format!("there is no mdadm array named `{name}`"),
                    );
                }
                *members.entry(("mdadm", name.clone())).or_default() += 1;
            }
            ContentKind::Zfs { pool } => {
                if !pools.contains(pool.as_str()) {
                    return bad(
                        &format!("{}.pool", c.path),
                        format!("there is no zpool named `{pool}`"),
                    );
                }
                *members.entry(("zpool", pool.clone())).or_default() += 1;
            }
            ContentKind::Bcachefs(b) => {
                if !bcfs.contains(b.filesystem.as_str()) {
                    return bad(
                        &format!("{}.filesystem", c.path),
                        format!(
                            "there is no bcachefs_filesystems entry named `{}`",
                            b.filesystem
                        ),
                    );
                }
                *members
                    .entry(("bcachefs", b.filesystem.clone()))
                    .or_default() += 1;
            }
            ContentKind::Btrfs(b) => {
                let mut seen = BTreeSet::new();
                for s in &b.subvolumes {
                    if !seen.insert(s.name.trim_start_matches('/')) {
                        return bad(
                            &format!("{}.name", s.path),
                            format!("subvolume `{}` is declared twice", s.name),
                        );
                    }
                    for f in &s.swap {
                        check_swapfile(&s.path, f)?;
                    }
                }
                for f in &b.swap {
                    check_swapfile(&c.path, f)?;
                }
            }
        }
    }
    for vg in &layout.lvm_vg {
        if !members.contains_key(&("lvm_vg", vg.name.clone())) {
            return bad(
                &vg.path,
                format!("volume group `{}` has no lvm_pv member", vg.name),
            );
        }
        let mut seen = BTreeSet::new();
        for lv in &vg.lvs {
            if !seen.insert(&lv.name) {
                return bad(
                    &format!("{}.name", lv.path),
                    format!("LV `{}` is declared twice in `{}`", lv.name, vg.name),
                );
            }
            if !size::valid_lv_size(&lv.size) {
                return bad(
                    &format!("{}.size", lv.path),
                    format!(
                        "`{}` is not an LV size (like 10G, 100%FREE or 50%VG)",
                        lv.size
                    ),
                );
            }
            let known = [
                "mirror",
                "raid0",
                "raid1",
                "raid4",
                "raid5",
                "raid6",
                "thin-pool",
                "thinlv",
            ];
            if let Some(t) = &lv.lvm_type
                && !known.contains(&t.as_str())
            {
                return bad(
                    &format!("{}.lvm_type", lv.path),
                    format!("`{t}` is not one of {}", known.join(", ")),
                );
            }
            if lv.lvm_type.as_deref() == Some("thinlv") {
                let pool_ok = lv.pool.as_ref().is_some_and(|p| {
                    vg.lvs
                        .iter()
                        .any(|o| &o.name == p && o.lvm_type.as_deref() == Some("thin-pool"))
                });
                if !pool_ok {
                    return bad(
                        &format!("{}.pool", lv.path),
                        format!(
                            "a thinlv needs `pool` naming a thin-pool LV of `{}`",
                            vg.name
                        ),
                    );
                }
            }
        }
    }
    for md in &layout.mdadm {
        if !members.contains_key(&("mdadm", md.name.clone())) {
            return bad(
                &md.path,
                format!("array `{}` has no mdraid member", md.name),
            );
        }
        if ![0, 1, 4, 5, 6, 10].contains(&md.level) {
            return bad(
                &format!("{}.level", md.path),
                format!(
                    "RAID level {} is not one mdadm creates (0, 1, 4, 5, 6, 10)",
                    md.level
                ),
            );
        }
    }
    for pool in &layout.zpool {
        if !members.contains_key(&("zpool", pool.name.clone())) {
            return bad(
                &pool.path,
                format!("pool `{}` has no zfs member", pool.name),
            );
        }
        for ds in &pool.datasets {
            if let DatasetKind::Volume { size, .. } = &ds.kind
                && !size::valid_unit_size(size)
            {
                return bad(
                    &format!("{}.size", ds.path),
                    format!("`{size}` is not a volume size like 10M"),
                );
            }
        }
    }
    for fs in &layout.bcachefs_filesystems {
        if !members.contains_key(&("bcachefs", fs.name.clone())) {
            return bad(
                &fs.path,
                format!("bcachefs file system `{}` has no bcachefs member", fs.name),
            );
        }
    }
    check_mounts(layout)?;
    device_order(layout)?;
    // Sizes against the real devices last, once their syntax is known to be good.
    for d in &layout.disk {
        if let (Some(f), Some(c)) = (cx.facts.get(&d.device), &d.content) {
            check_fit(c, f)?;
        }
    }
    Ok(())
}

/// The key file a LUKS node formats and opens with: `settings.keyFile`, else `passwordFile`,
/// else the deprecated `keyFile`; `None` when it asks for a passphrase.
pub fn luks_key_file(l: &Luks) -> Option<String> {
    if let Some(k) = l.settings.get("keyFile").and_then(|v| v.as_str()) {
        return Some(k.to_owned());
    }
    if l.ask_password {
        return None;
    }
    l.password_file.clone().or_else(|| l.key_file.clone())
}

fn check_swapfile(path: &str, f: &SwapFile) -> Result<(), LayoutError> {
    if !f.size.is_empty() && !size::valid_unit_size(&f.size) {
        return Err(LayoutError::invalid(
            format!("{path}.swap.{}.size", f.path),
            format!("`{}` is not a swap file size like 512M", f.size),
        ));
    }
    Ok(())
}

fn check_gpt(
    g: &Gpt,
    path: &str,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), LayoutError> {
    let bad = |p: String, m: String| Err(LayoutError::invalid(p, m));
    let mut full: Option<&str> = None;
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &g.partitions {
        if !size::valid_partition_size(&p.size) {
            return bad(
                format!("{}.size", p.path),
                format!(
                    "`{}` is not a partition size: use 100% or a whole number with an optional K, M, G, T or P",
                    p.size
                ),
            );
        }
        if p.size == "100%" {
            if let Some(other) = full {
                return bad(
                    format!("{}.size", p.path),
                    format!("only one partition of a table can be 100%; `{other}` already is"),
                );
            }
            full = Some(&p.attr);
        }
        for (key, v) in [("start", &p.start), ("end", &p.end)] {
            if size::parse_sgdisk(v, 512).is_none() {
                return bad(
                    format!("{}.{key}", p.path),
                    format!("`{v}` is not an sgdisk {key} (like 1M, +512M, -0)"),
                );
            }
        }
        if let Some(other) = names.insert(&p.name, &p.attr) {
            return bad(
                format!("{}.name", p.path),
                format!("partition `{other}` has the same name `{}`", p.name),
            );
        }
        if !valid_type_code(&p.type_code) {
            return bad(
                format!("{}.type", p.path),
                format!(
                    "`{}` is not a GPT type: use an sgdisk code of 4 hex digits (8300, EF00) or a type GUID",
                    p.type_code
                ),
            );
        }
        if let Some(u) = &p.uuid
            && !valid_guid(u)
        {
            return bad(format!("{}.uuid", p.path), format!("`{u}` is not a GUID"));
        }
        if p.label.len() > 36 || p.label.encode_utf16().count() > 36 {
            return bad(
                format!("{}.label", p.path),
                "a GPT partition name holds at most 36 characters".into(),
            );
        }
        if let Some(other) = labels.insert(p.label.clone(), p.path.clone()) {
            return bad(
                format!("{}.label", p.path),
                format!(
                    "the partition label `{}` is also used at {other}; /dev/disk/by-partlabel would be ambiguous",
                    p.label
                ),
            );
        }
    }
    let _ = path;
    Ok(())
}

fn valid_type_code(t: &str) -> bool {
    (t.len() == 4 && t.bytes().all(|b| b.is_ascii_hexdigit())) || valid_guid(t)
}

fn valid_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_fit(c: &Content, f: &DeviceFacts) -> Result<(), LayoutError> {
    let ContentKind::Gpt(g) = &c.kind else {
        return Ok(());
    };
    let parts: Vec<size::FitPart> = g
        .partitions
        .iter()
        .map(|p| size::FitPart {
            start: &p.start,
            end: &p.end,
            alignment: p.alignment,
        })
        .collect();
    size::check_gpt_fit(f.size_bytes, f.logical_sector_size, &parts).map_err(|e| {
        let p = &g.partitions[e.index];
        LayoutError::invalid(
            format!("{}.size", p.path),
            format!(
                "partition `{}` does not fit on {}: {}",
                p.name, f.path, e.reason
            ),
        )
    })
}

/// Every mount point absolute and mounted once.
fn check_mounts(layout: &Layout) -> Result<(), LayoutError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (mp, path) in mount_points(layout) {
        if !mp.starts_with('/') {
            return Err(LayoutError::invalid(
                format!("{path}.mountpoint"),
                format!("`{mp}` is not an absolute mount point"),
            ));
        }
        let norm = if mp.len() > 1 {
            mp.trim_end_matches('/')
        } else {
            &mp
        }
        .to_owned();
        if let Some(other) = seen.insert(norm, path.clone()) {
            return Err(LayoutError::invalid(
                format!("{path}.mountpoint"),
                format!("`{mp}` is also the mount point of {other}"),
            ));
        }
    }
    Ok(())
}

/// Every mount point the layout declares, with the node declaring it.
pub fn mount_points(layout: &Layout) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (_, c) in contents(layout) {
        match &c.kind {
            ContentKind::Filesystem(f) => {
                out.extend(f.mountpoint.clone().map(|m| (m, c.path.clone())))
            }
            ContentKind::Btrfs(b) => {
                out.extend(b.mountpoint.clone().map(|m| (m, c.path.clone())));
                for s in &b.subvolumes {
                    out.extend(s.mountpoint.clone().map(|m| (m, s.path.clone())));
                }
            }
            _ => {}
        }
    }
    for n in &layout.nodev {
        out.extend(n.mountpoint.clone().map(|m| (m, n.path.clone())));
    }
    for p in &layout.zpool {
        out.extend(p.mountpoint.clone().map(|m| (m, p.path.clone())));
        for d in &p.datasets {
            if let DatasetKind::Fs {
                mountpoint: Some(m),
            } = &d.kind
            {
                out.push((m.clone(), d.path.clone()));
            }
        }
    }
    for b in &layout.bcachefs_filesystems {
        out.extend(b.mountpoint.clone().map(|m| (m, b.path.clone())));
        for s in &b.subvolumes {
            out.extend(s.mountpoint.clone().map(|m| (m, s.path.clone())));
        }
    }
    out
}
