//! `copy --to local --root DIR`: the copy is what Nix itself would have (it verifies, and path
//! infos are identical to the source's), canonical, idempotent, and an interrupted copy leaves
//! a store that verifies and that a re-run completes.

mod nix_oracle;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use nix_oracle::{BIN, assert_verifies, closure, closure_paths, nix, output, path_infos, run};
use nixos_anywhere_rs::nar;
use nixos_anywhere_rs::store::{StorePath, StoreRoot, query_closure};

/// What `copy --json` prints.
#[derive(Debug, serde::Deserialize)]
struct Summary {
    paths_sent: u64,
    paths_skipped: u64,
    nar_bytes: u64,
}

fn copy(root: &Path, top: &str) -> Summary {
    let out = run(Command::new(BIN)
        .args(["copy", "--to", "local", "--json", "--root"])
        .arg(root)
        .arg(top));
    serde_json::from_slice(&out).expect("copy --json prints a summary")
}

/// The store root holds `top`'s closure with the same narHash, narSize and references as the
/// local store.
fn assert_same_path_infos(root: &Path, top: &str) {
    let source = path_infos(top, None);
    let copied = path_infos(top, Some(root));
    assert_eq!(copied.len(), source.len());
    for (path, info) in &source {
        assert_eq!(copied.get(path), Some(info), "{path}");
    }
}

/// Paths registered in the store root, sorted.
fn registered(root: &Path) -> Vec<String> {
    let out = run(nix().args(["path-info", "--all", "--store"]).arg(root));
    let mut paths: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths
}

/// Entries of the store directory that are not store paths (Nix's own `.links` aside).
fn leftovers(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".links" && StorePath::from_base_name(name).is_err())
        .collect()
}

#[test]
fn copy_small_closure_is_what_nix_has() {
    let top = closure("small");
    let n = closure_paths(&top).len() as u64;
    let tmp = nix_oracle::tempdir();
    let root = tmp.path();

    let first = copy(root, &top);
    assert_eq!((first.paths_sent, first.paths_skipped), (n, 0));
    let source = path_infos(&top, None);
    assert_eq!(
        first.nar_bytes,
        source.values().map(|i| i.nar_size).sum::<u64>()
    );
    assert_verifies(root);
    assert_same_path_infos(root, &top);
    assert!(leftovers(root).is_empty(), "{:?}", leftovers(root));

    let second = copy(root, &top);
    assert_eq!((second.paths_sent, second.paths_skipped), (0, n));
    assert_verifies(root);

    // Every entry of every copied path has Nix's canonical metadata.
    let is_root = rustix::process::geteuid().is_root();
    let (mut checked, mut in_source) = (0, 0);
    for path in closure_paths(&top) {
        let copied = StorePath::parse(&path).unwrap().under_root(root);
        checked += check_canonical(&copied, is_root);
        in_source += count_entries(Path::new(&path));
    }
    assert_eq!(
        checked, in_source,
        "entries copied and entries in the source"
    );
}

fn count_entries(path: &Path) -> usize {
    let meta = fs::symlink_metadata(path).unwrap();
    if !meta.is_dir() {
        return 1;
    }
    let children = fs::read_dir(path).unwrap();
    1 + children
        .map(|e| count_entries(&e.unwrap().path()))
        .sum::<usize>()
}

/// Checks mtime 1, no write bits, modes 0444/0555 and (as root) owner root below `path`;
/// returns how many entries it checked.
fn check_canonical(path: &Path, is_root: bool) -> usize {
    let meta = fs::symlink_metadata(path).unwrap();
    let what = path.display();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1, 0), "{what}: mtime");
    if is_root {
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{what}: owner");
    }
    let mode = meta.mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_dir() {
        assert_eq!(mode, 0o555, "{what}: mode");
        let mut checked = 1;
        for entry in fs::read_dir(path).unwrap() {
            checked += check_canonical(&entry.unwrap().path(), is_root);
        }
        checked
    } else if kind.is_file() {
        assert!(mode == 0o444 || mode == 0o555, "{what}: mode {mode:o}");
        1
    } else {
        assert!(kind.is_symlink(), "{what}: a NAR holds no other type");
        1
    }
}

/// Library-level interruption: some paths registered, some renamed into place but not yet
/// registered, then the stream breaks inside a NAR and the process goes away without flushing.
/// Nix finds the store consistent (exactly the registered prefix, intact) and a re-run of the
/// binary completes it.
#[test]
fn copy_interrupted_in_the_library_is_completed_by_a_rerun() {
    let top = closure("small");
    let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
    let tmp = nix_oracle::tempdir();
    let root = tmp.path();
    let (registered_first, pending, broken) = (20, 5, 25);

    let mut store = StoreRoot::open(root).unwrap();
    for (i, info) in closure.iter().take(broken + 1).enumerate() {
        let mut bytes = Vec::new();
        nar::dump(Path::new(&info.path.to_absolute()), &mut bytes).unwrap();
        if i == broken {
            let cut = &bytes[..bytes.len() / 2];
            let e = store.receive(info, cut).expect_err("half a NAR");
            assert!(e.to_string().contains(&info.path.to_string()), "{e}");
            break;
        }
        store.receive(info, bytes.as_slice()).unwrap();
        if i + 1 == registered_first {
            store.flush().unwrap();
        }
    }
    // Gone without flushing: the last `pending` paths are in place but not registered.
    drop(store);
    let in_place = closure[registered_first..broken]
        .iter()
        .filter(|i| i.path.under_root(root).exists())
        .count();
    assert_eq!(in_place, pending);

    let mut expected: Vec<String> = closure[..registered_first]
        .iter()
        .map(|i| i.path.to_absolute())
        .collect();
    expected.sort();
    assert_eq!(registered(root), expected);
    assert_verifies(root);

    let rerun = copy(root, &top);
    assert_eq!(rerun.paths_sent, (closure.len() - registered_first) as u64);
    assert_verifies(root);
    assert_same_path_infos(root, &top);
    assert!(leftovers(root).is_empty(), "{:?}", leftovers(root));
}

/// A real interruption: the binary is killed by the kernel (SIGXFSZ, from a 4 MiB file size
/// limit) in the middle of writing a file, leaving a partial temporary tree. Nix still finds the
/// store consistent, and a re-run cleans up and completes it.
#[test]
fn copy_killed_mid_file_is_completed_by_a_rerun() {
    let top = closure("small");
    let tmp = nix_oracle::tempdir();
    let root = tmp.path();

    let out = output(
        Command::new("bash")
            .args(["-c", r#"ulimit -f 4096 && exec "$@""#, "copy-limited", BIN])
            .args(["copy", "--to", "local", "--root"])
            .arg(root)
            .arg(&top),
    );
    assert_eq!(
        out.status.signal(),
        Some(rustix::process::Signal::XFSZ.as_raw()),
        "the copy should die writing a file over 4 MiB: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let left = leftovers(root);
    assert!(
        left.iter()
            .any(|n| n.starts_with(".nixos-anywhere-rs-tmp-")),
        "a partial temporary tree is left: {left:?}"
    );
    let before = registered(root);
    assert_verifies(root);

    let rerun = copy(root, &top);
    let n = closure_paths(&top).len();
    assert_eq!(rerun.paths_sent as usize, n - before.len());
    assert_verifies(root);
    assert_same_path_infos(root, &top);
    assert!(leftovers(root).is_empty(), "{:?}", leftovers(root));
}
