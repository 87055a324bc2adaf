//! disko's two orders, reproduced exactly: the order top-level devices are created and opened
//! in (nixpkgs `lib.toposort` over `[kind, name]` pairs in attribute-name order), and the order
//! file systems are mounted in (the same toposort with NixOS's `fsBefore`). The result of
//! `lib.toposort` depends on its input order, so the algorithm is copied, not just "a" topological
//! order.

use std::collections::BTreeMap;

/// nixpkgs `lib.toposort`: `Ok(sorted)` or `Err(cycle)` (the elements of the first cycle found,
/// as indices into `items`). `before(a, b)` says `a` must come before `b`.
pub fn toposort<T>(items: &[T], before: impl Fn(&T, &T) -> bool) -> Result<Vec<usize>, Vec<usize>> {
    let list: Vec<usize> = (0..items.len()).collect();
    sort(list, &|a, b| before(&items[a], &items[b]))
}

fn sort(list: Vec<usize>, before: &dyn Fn(usize, usize) -> bool) -> Result<Vec<usize>, Vec<usize>> {
    let mut result = Vec::with_capacity(list.len());
    let mut list = list;
    // `[minimal] ++ toposort(visited ++ rest)`, unrolled.
    while list.len() >= 2 {
        let mut us = list[0];
        let mut visited: Vec<usize> = Vec::new();
        let mut rest: Vec<usize> = list[1..].to_vec();
        loop {
            if visited.iter().any(|&x| before(x, us)) {
                let mut cycle = vec![us];
                cycle.extend(&visited);
                cycle.reverse();
                return Err(cycle);
            }
            let (right, wrong): (Vec<usize>, Vec<usize>) =
                rest.iter().partition(|&&x| before(x, us));
            if right.is_empty() {
                break;
            }
            visited.insert(0, us);
            us = right[0];
            rest = right[1..].iter().chain(&wrong).copied().collect();
        }
        result.push(us);
        visited.extend(rest);
        list = visited;
    }
    result.extend(list);
    Ok(result)
}

/// A top-level device: its kind (`disk`, `lvm_vg`, ...) and attribute name.
pub type DeviceId = (String, String);

/// Device order: `ids` in kind order then attribute-name order, toposorted so that a device
/// comes after every top-level device in `deps[it]`. `Err` names the devices of a cycle.
pub fn device_order(
    ids: &[DeviceId],
    deps: &BTreeMap<DeviceId, Vec<DeviceId>>,
) -> Result<Vec<DeviceId>, Vec<DeviceId>> {
    let before = |a: &DeviceId, b: &DeviceId| deps.get(b).is_some_and(|d| d.contains(a));
    match toposort(ids, before) {
        Ok(order) => Ok(order.into_iter().map(|i| ids[i].clone()).collect()),
        Err(cycle) => Err(cycle.into_iter().map(|i| ids[i].clone()).collect()),
    }
}

/// One `fileSystems` entry as NixOS's `fsBefore` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEntry {
    pub mount_point: String,
    pub device: String,
}

fn slash(p: &str) -> String {
    if p.ends_with('/') {
        p.to_owned()
    } else {
        format!("{p}/")
    }
}

/// NixOS `fsBefore`: `a` before `b` when `a`'s mount point (with a trailing slash) is a prefix of
/// `b`'s device or mount point (each with a trailing slash).
pub fn fs_before(a: &FsEntry, b: &FsEntry) -> bool {
    let mp = slash(&a.mount_point);
    slash(&b.device).starts_with(&mp) || slash(&b.mount_point).starts_with(&mp)
}

/// Mount order: the entries sorted by mount point (attribute-name order), then toposorted with
/// `fs_before`. Returns indices into `entries`, or the mount points of a cycle.
pub fn mount_order(entries: &[FsEntry]) -> Result<Vec<usize>, Vec<String>> {
    let mut by_name: Vec<usize> = (0..entries.len()).collect();
    by_name.sort_by(|&a, &b| {
        entries[a]
            .mount_point
            .as_bytes()
            .cmp(entries[b].mount_point.as_bytes())
    });
    let sorted: Vec<&FsEntry> = by_name.iter().map(|&i| &entries[i]).collect();
    match toposort(&sorted, |a, b| fs_before(a, b)) {
        Ok(order) => Ok(order.into_iter().map(|i| by_name[i]).collect()),
        Err(cycle) => Err(cycle
            .into_iter()
            .map(|i| sorted[i].mount_point.clone())
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from nixpkgs' own documentation of `lib.toposort`.
    #[test]
    fn toposort_matches_nixpkgs_doc_examples() {
        let items = ["/", "/home/user", "other", "/home"];
        let before = |a: &&str, b: &&str| b.starts_with(a) && a != b;
        let order: Vec<&str> = toposort(&items, before)
            .unwrap()
            .into_iter()
            .map(|i| items[i])
            .collect();
        assert_eq!(order, ["/", "/home", "/home/user", "other"]);
        // The cycle example: every element before every other.
        let items = ["/", "/home", "/home/user"];
        let err = toposort(&items, |_, _| true).unwrap_err();
        assert!(!err.is_empty());
    }

    /// Not just any topological order: elements with no constraint keep disko's input order,
    /// and the DFS picks the *first* predecessor.
    #[test]
    fn order_depends_on_input_as_in_nix() {
        // c before a; b free. Nix gives [c, a, b]? toposort [a b c]: us=a, rest=[b,c];
        // before(c,a) so us=c, visited=[a], rest=[b]; nothing before c: minimal c;
        // then toposort [a, b] = [a, b].
        let items = ["a", "b", "c"];
        let order = toposort(&items, |x, y| *x == "c" && *y == "a").unwrap();
        assert_eq!(order, [2, 0, 1]);
    }

    #[test]
    fn mounts_root_first_then_byte_order() {
        let e = |mp: &str, dev: &str| FsEntry {
            mount_point: mp.into(),
            device: dev.into(),
        };
        let entries = [
            e("/zfs_fs", "zroot/zfs_fs"),
            e("/boot", "/dev/disk/by-partlabel/disk-disk0-ESP"),
            e("/", "zroot"),
            e("/ext4onzfs", "/dev/zvol/zroot/zfs_testvolume"),
        ];
        let order: Vec<&str> = mount_order(&entries)
            .unwrap()
            .into_iter()
            .map(|i| entries[i].mount_point.as_str())
            .collect();
        assert_eq!(order, ["/", "/boot", "/ext4onzfs", "/zfs_fs"]);
    }
}
