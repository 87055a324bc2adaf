//! Path infos: what Nix knows about a store path besides its contents.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::path::StorePath;
use crate::exec::Cmd;
use crate::nar::NarHash;

/// Everything the target needs to register a path: its NAR hash and size, references, deriver,
/// signatures and content address. Serialises as `nix path-info --json` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: NarHash,
    pub nar_size: u64,
    #[serde(default)]
    pub references: BTreeSet<StorePath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deriver: Option<StorePath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl Serialize for NarHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.to_sri())
    }
}

impl<'de> Deserialize<'de> for NarHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        NarHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The closures of `paths` in the local Nix store, dependencies first.
///
/// Asks Nix (`nix path-info --json -r`), which works for a user of a multi-user install as well
/// as for root.
pub fn query_closure(paths: &[StorePath]) -> Result<Vec<PathInfo>, StoreError> {
    query_closure_in(None, paths)
}

/// The same, in the store `store` names (Nix's `--store`), or the local one.
pub(super) fn query_closure_in(
    store: Option<&str>,
    paths: &[StorePath],
) -> Result<Vec<PathInfo>, StoreError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Cmd::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        "--recursive",
    ]);
    if let Some(store) = store {
        cmd = cmd.args(["--store", store]);
    }
    let json = cmd
        .args(paths.iter().map(StorePath::to_absolute))
        .output()?;
    let infos: Vec<PathInfo> = serde_json::from_slice(&json).map_err(StoreError::PathInfoJson)?;
    dependency_order(infos)
}

/// Sorts a closure so that every path comes after the paths it references (self-references
/// aside); ties are broken by path, so the order is stable.
pub fn dependency_order(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>, StoreError> {
    let mut by_path: BTreeMap<StorePath, PathInfo> = infos
        .into_iter()
        .map(|info| (info.path.clone(), info))
        .collect();
    let mut waiting_on: BTreeMap<&StorePath, usize> = BTreeMap::new();
    let mut referrers: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
    for info in by_path.values() {
        let deps = info.references.iter().filter(|r| **r != info.path);
        let mut count = 0;
        for dep in deps {
            if !by_path.contains_key(dep) {
                return Err(StoreError::IncompleteClosure {
                    path: info.path.clone(),
                    reference: dep.clone(),
                });
            }
            referrers.entry(dep).or_default().push(&info.path);
            count += 1;
        }
        waiting_on.insert(&info.path, count);
    }
    let mut ready: BTreeSet<&StorePath> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| *p)
        .collect();
    let mut order = Vec::with_capacity(by_path.len());
    while let Some(path) = ready.pop_first() {
        order.push(path.clone());
        for referrer in referrers.get(path).into_iter().flatten() {
            let n = waiting_on.get_mut(referrer).expect("every path is counted");
            *n -= 1;
            if *n == 0 {
                ready.insert(referrer);
            }
        }
    }
    if order.len() != by_path.len() {
        let stuck = waiting_on
            .iter()
            .find(|(_, n)| **n > 0)
            .map(|(p, _)| (*p).clone());
        return Err(StoreError::ReferenceCycle(
            stuck.expect("some path is left"),
        ));
    }
    Ok(order
        .into_iter()
        .map(|p| by_path.remove(&p).expect("came from the map"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-{name}")).unwrap()
    }

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: path(name),
            nar_hash: NarHash::digest(name.as_bytes()),
            nar_size: 8,
            references: refs.iter().map(|r| path(r)).collect(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn orders_dependencies_first_with_self_references() {
        let infos = vec![
            info("top", &["top", "left", "right"]),
            info("left", &["base"]),
            info("right", &["base", "right"]),
            info("base", &[]),
        ];
        let order: Vec<String> = dependency_order(infos)
            .unwrap()
            .iter()
            .map(|i| i.path.name().to_owned())
            .collect();
        assert_eq!(order, ["base", "left", "right", "top"]);
    }

    #[test]
    fn rejects_cycles_and_missing_references() {
        let cycle = vec![info("a", &["b"]), info("b", &["a"])];
        assert!(matches!(
            dependency_order(cycle),
            Err(StoreError::ReferenceCycle(_))
        ));
        let missing = vec![info("a", &["gone"])];
        assert!(matches!(
            dependency_order(missing),
            Err(StoreError::IncompleteClosure { .. })
        ));
    }

    #[test]
    fn parses_nix_path_info_json() {
        let json = r#"[{"path":"/nix/store/k5g2zrm2k2xwavb4pf1d93z9hkd0rk8r-odd+name_v1.0=x?y",
            "narHash":"sha256-tGN3475txAhFa1Bj9L6E3GbviqzCnc9w82/Uf+v3zTA=","narSize":344,
            "references":["/nix/store/k5g2zrm2k2xwavb4pf1d93z9hkd0rk8r-odd+name_v1.0=x?y"],
            "closureSize":344,"deriver":"/nix/store/d7mmsj9w0gq529i3ksh6gl5b4r2wkk2p-x.drv",
            "registrationTime":1795584613,"ultimate":true}]"#;
        let infos: Vec<PathInfo> = serde_json::from_str(json).unwrap();
        assert_eq!(infos[0].nar_size, 344);
        assert_eq!(
            infos[0].nar_hash.to_base16(),
            "sha256:b46377e3be6dc408456b5063f4be84dc66ef8aacc29dcf70f36fd47febf7cd30"
        );
        assert!(infos[0].references.contains(&infos[0].path));
        assert_eq!(infos[0].deriver.as_ref().unwrap().name(), "x.drv");
    }
}
