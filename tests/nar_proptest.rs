//! Property tests for the NAR code: random trees round-trip through dump and restore, and the
//! reader, fed mutations of valid archives, never panics and accepts only canonical archives
//! (re-dumping what it unpacked gives back exactly the bytes it accepted).

mod nix_oracle;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nixos_anywhere_rs::nar::{self, Canonical, NarReader};
use nixos_anywhere_rs::store::NarHash;
use proptest::prelude::*;
use proptest::sample::Index;

/// A filesystem tree as a NAR can hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { contents: Vec<u8>, executable: bool },
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

/// Names of any bytes but `/` and NUL, not `.` or `..`; mostly short, some near `NAME_MAX`.
fn name() -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_filter("no slash or NUL", |b| *b != b'/' && *b != 0);
    prop_oneof![
        8 => prop::collection::vec(byte.clone(), 1..12),
        1 => prop::collection::vec(byte, 240..=255),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

/// Symlink targets: any bytes but NUL, often dangling, absolute or relative paths.
fn target() -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_filter("no NUL", |b| *b != 0);
    prop_oneof![
        prop::collection::vec(byte, 1..40),
        "(/|\\.\\./|)[a-z./]{0,30}".prop_map(|s| if s.is_empty() {
            b"x".to_vec()
        } else {
            s.into_bytes()
        }),
        Just(b"/nix/store/does-not-exist".to_vec()),
        prop::collection::vec(Just(b'a'), 4000..=4095),
    ]
}

fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..17),
        prop::collection::vec(any::<u8>(), 0..3000),
    ]
}

fn tree() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (contents(), any::<bool>()).prop_map(|(contents, executable)| Node::File {
            contents,
            executable
        }),
        target().prop_map(Node::Symlink),
        Just(Node::Dir(BTreeMap::new())),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Node::Dir)
    })
}

fn write_tree(path: &Path, node: &Node) {
    match node {
        Node::File {
            contents,
            executable,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Symlink(target) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).unwrap()
        }
        Node::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                write_tree(&path.join(OsStr::from_bytes(name)), child);
            }
        }
    }
}

fn read_tree(path: &Path) -> Node {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_symlink() {
        Node::Symlink(fs::read_link(path).unwrap().into_os_string().into_vec())
    } else if meta.is_dir() {
        let entries = fs::read_dir(path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_vec(), read_tree(&e.path()))
            })
            .collect();
        Node::Dir(entries)
    } else {
        Node::File {
            contents: fs::read(path).unwrap(),
            executable: meta.permissions().mode() & 0o100 != 0,
        }
    }
}

fn dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let written = nar::dump(path, &mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// tree → dump → restore → the same tree, and the same bytes when dumped again.
    #[test]
    fn dump_restore_round_trip(node in tree(), canonical in any::<bool>()) {
        let tmp = nix_oracle::tempdir();
        let src = tmp.path().join("src");
        write_tree(&src, &node);
        let bytes = dump(&src);
        let (hash, size) = nar::dump_hash(&src).unwrap();
        prop_assert_eq!(hash, NarHash::digest(&bytes));
        prop_assert_eq!(size, bytes.len() as u64);

        let dest = tmp.path().join("dest");
        let mut reader = NarReader::new(bytes.as_slice());
        let canonical = if canonical { Canonical::Yes } else { Canonical::No };
        nar::restore(&mut reader, &dest, canonical).unwrap();
        let (hash, size) = reader.finish_at_eof().unwrap();
        prop_assert_eq!(hash, NarHash::digest(&bytes));
        prop_assert_eq!(size, bytes.len() as u64);
        prop_assert_eq!(read_tree(&dest), node);
        prop_assert!(dump(&dest) == bytes, "the restored tree dumps differently");
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Mutated archives: no panic, and whatever is accepted is canonical.
    #[test]
    fn mutated_archives_are_rejected_or_canonical(
        node in tree(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let tmp = nix_oracle::tempdir();
        let src = tmp.path().join("src");
        write_tree(&src, &node);
        let mut bytes = dump(&src);
        for m in &mutations {
            m.apply(&mut bytes);
        }
        let dest = tmp.path().join("dest");
        let mut reader = NarReader::new(bytes.as_slice());
        match nar::restore(&mut reader, &dest, Canonical::No) {
            Ok(()) => match reader.finish_at_eof() {
                Ok((hash, size)) => {
                    prop_assert_eq!(hash, NarHash::digest(&bytes));
                    prop_assert_eq!(size, bytes.len() as u64);
                    prop_assert!(dump(&dest) == bytes, "accepted a non-canonical archive");
                }
                Err(e) => prop_assert!(e.problem().is_some(), "{e}"),
            },
            Err(e) => {
                prop_assert!(fs::symlink_metadata(&dest).is_err(), "{e}: dest left behind");
            }
        }
    }
}

/// One change to an archive's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrite the 8-byte-aligned word at an index, where lengths and tags live.
    SetWord(Index, u64),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Copy a range of the archive to another place (repeats entries, tokens, names).
    Duplicate(Index, usize, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(0u64),
        Just(1),
        Just(8),
        Just(13),
        Just(255),
        Just(256),
        Just(4095),
        Just(4096),
        Just(1 << 40),
        Just(u64::MAX),
        any::<u64>(),
    ];
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), word).prop_map(|(i, w)| Mutation::SetWord(i, w)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..128, any::<Index>())
            .prop_map(|(from, n, to)| Mutation::Duplicate(from, n, to)),
    ]
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match self {
            Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::SetByte(i, v) => bytes[i.index(len)] = *v,
            Mutation::SetWord(i, w) => {
                let at = i.index(len) / 8 * 8;
                let end = (at + 8).min(len);
                bytes[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
            }
            Mutation::Insert(i, v) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Duplicate(from, n, to) => {
                let at = from.index(len);
                let copy = bytes[at..(at + n).min(len)].to_vec();
                let to = to.index(len + 1);
                bytes.splice(to..to, copy);
            }
        }
    }
}
