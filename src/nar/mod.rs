//! Nix ARchives: the canonical serialisation of a store path.
//!
//! A NAR is a sequence of strings, each a little-endian `u64` length, the bytes, and zero padding
//! to a multiple of eight:
//!
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <target>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Directory entries are sorted by name, bytewise. [`dump`] writes a NAR from the filesystem,
//! byte-identical to `nix-store --dump`; [`NarReader`] parses untrusted NARs; [`restore`] unpacks
//! one safely below a directory.

mod dump;
pub mod hash;
mod reader;
mod restore;

pub use dump::{dump, dump_hash};
pub use hash::NarHash;
pub use reader::{Entry, NarError, NarReader, Problem};
pub use restore::{Canonical, RestoreError, remove_tree, restore, restore_into};

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Longest symlink target accepted (`PATH_MAX` less the terminating NUL).
pub const MAX_TARGET_LEN: usize = 4095;

/// Longest entry name accepted (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Deepest directory nesting accepted; the unpacker holds one descriptor per level.
pub const MAX_DEPTH: usize = 256;

/// Length of the zero padding that follows `len` bytes.
const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}
