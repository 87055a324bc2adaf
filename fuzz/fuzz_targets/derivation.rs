//! Untrusted `.drv` bytes (a received derivation) through the output parser.
//!
//! Invariants: nothing panics; every output it returns has a name and a valid store path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_anywhere_rs::store::StorePath;
use nixos_anywhere_rs::store::drv::derivation_outputs;

fuzz_target!(|data: &[u8]| {
    if let Some(outputs) = derivation_outputs(data) {
        for (name, path) in outputs {
            assert!(!name.is_empty());
            assert_eq!(StorePath::parse(&path.to_absolute()).as_ref(), Ok(&path));
        }
    }
});
