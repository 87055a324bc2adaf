//! Untrusted NAR bytes through the pull parser alone and through `restore` into a directory.
//!
//! Invariants: nothing panics; the parser alone and the unpacker accept exactly the same
//! inputs and reject the others with the same error; an accepted input hashes and counts as the whole input, and dumping the unpacked
//! tree gives back exactly the input (canonical form: no two archives map to one tree); a
//! rejected input leaves nothing behind.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nixos_anywhere_rs::nar::{self, Canonical, Entry, NarError, NarReader};
use nixos_anywhere_rs::store::NarHash;

/// A directory of this process's own (libFuzzer may run several), kept for the whole run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nar-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Walks the archive with the parser alone, reading every file's contents.
fn parse(data: &[u8]) -> Result<(NarHash, u64), NarError> {
    let mut reader = NarReader::new(data);
    let mut depth = 0usize;
    while let Some(entry) = reader.next_entry()? {
        match entry {
            Entry::Directory { .. } => depth += 1,
            Entry::DirectoryEnd => depth = depth.checked_sub(1).expect("balanced directories"),
            Entry::File { size, .. } => {
                let mut read = 0u64;
                reader.contents_to(|piece| -> Result<(), NarError> {
                    read += piece.len() as u64;
                    Ok(())
                })?;
                assert_eq!(read, size);
            }
            Entry::Symlink { target, .. } => assert!(!target.is_empty() && !target.contains(&0)),
        }
    }
    assert_eq!(depth, 0, "every directory ends");
    reader.finish_at_eof()
}

fn remove(path: &Path) {
    std::fs::remove_dir_all(path)
        .or_else(|_| std::fs::remove_file(path))
        .expect("the restored tree can be removed");
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data).map_err(|e| e.to_string());

    let dest = scratch().join("dest");
    let mut reader = NarReader::new(data);
    let restored = match nar::restore(&mut reader, &dest, Canonical::No) {
        Err(e) => {
            let left = std::fs::symlink_metadata(&dest).is_ok();
            assert!(!left, "{e}: the unpacker left {} behind", dest.display());
            Err(e.to_string())
        }
        // Trailing bytes are found after the tree is complete: the caller removes it.
        Ok(()) => reader.finish_at_eof().map_err(|e| {
            remove(&dest);
            e.to_string()
        }),
    };
    match (&parsed, &restored) {
        (Ok(parsed), Ok(restored)) => {
            assert_eq!(parsed, restored);
            assert_eq!(restored.0, NarHash::digest(data));
            assert_eq!(restored.1, data.len() as u64);
            let mut again = Vec::new();
            nar::dump(&dest, &mut again).expect("an unpacked tree dumps");
            assert!(again == data, "accepted a non-canonical archive");
            remove(&dest);
        }
        (Err(parsed), Err(restored)) => assert_eq!(parsed, restored, "the same problem"),
        _ => panic!("the parser says {parsed:?} and the unpacker says {restored:?}"),
    }
});
