//! `nixos-anywhere-rs nar`: the NAR tools, on standard input and output.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::nar::{self, Canonical, NarReader};

#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to standard output (byte-identical to `nix-store --dump`).
    Dump { path: PathBuf },
    /// Unpack a NAR from standard input to DEST, which must not exist (nor will it on failure).
    Restore { dest: PathBuf },
    /// Print the NAR hash of PATH as `nix hash path` does (SRI).
    Hash {
        /// Print it as `nix-hash --type sha256 --base32` does instead.
        #[arg(long)]
        base32: bool,
        path: PathBuf,
    },
}

impl NarCommand {
    pub fn run(self) -> Result<()> {
        match self {
            Self::Dump { path } => {
                let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
                nar::dump(&path, &mut out)?;
                out.flush()?;
            }
            Self::Restore { dest } => {
                let mut reader =
                    NarReader::new(BufReader::with_capacity(1 << 20, io::stdin().lock()));
                nar::restore(&mut reader, &dest, Canonical::No)?;
                if let Err(e) = reader.finish_at_eof() {
                    // Best effort: the archive's own error is what the user needs to see.
                    let _ = std::fs::remove_dir_all(&dest).or_else(|_| std::fs::remove_file(&dest));
                    return Err(e.into());
                }
            }
            Self::Hash { base32, path } => {
                let (hash, _) = nar::dump_hash(&path)?;
                let text = if base32 {
                    hash.to_nix32()
                } else {
                    hash.to_sri()
                };
                println!("{text}");
            }
        }
        Ok(())
    }
}
