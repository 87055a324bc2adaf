//! `nar dump` of many store paths in one process, for `benches/nar-dump`: the same code path as
//! `nixos-anywhere-rs nar dump` (the library's `dump` into a 1 MiB `BufWriter` on stdout),
//! without a process start per path, so that it compares fairly with `nix-store --export`.
//!
//! ```sh
//! cargo bench --bench nar_dump -- PATH... > /dev/null
//! ```
//!
//! Prints the NAR bytes written and the time taken on stderr.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

fn main() -> io::Result<()> {
    // `cargo bench` passes `--bench`; anything else is a path.
    let paths: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if paths.is_empty() {
        eprintln!("nar_dump: no paths given; benches/nar-dump runs this with a closure");
        return Ok(());
    }
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let mut bytes = 0;
    for path in &paths {
        bytes += nixos_anywhere_rs::nar::dump(Path::new(path), &mut out)?;
    }
    out.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "nar_dump: {} paths, {bytes} bytes in {seconds:.3} s ({:.0} MiB/s)",
        paths.len(),
        bytes as f64 / (1 << 20) as f64 / seconds
    );
    Ok(())
}
