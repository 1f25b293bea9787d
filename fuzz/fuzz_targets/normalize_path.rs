//! Fuzz target: `normalize_path` output is canonical and a fixed point (see
//! `check_normalize_path`).
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Request targets reach the normalizer as text; invalid UTF-8 never gets that far.
    if let Ok(path) = std::str::from_utf8(data) {
        invariants::check_normalize_path(path);
    }
});
