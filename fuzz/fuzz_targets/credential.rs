//! Fuzz target: bearer credential extraction never panics and classifies a token the same
//! whatever the scheme's case and the spaces around it (see `check_credential`).
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

/// API-key prefixes to try: none (JWT only), the shipped default, and a one-byte one.
const PREFIXES: [&str; 3] = ["", "ag_", "x"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    invariants::check_credential(value, PREFIXES[usize::from(selector) % PREFIXES.len()]);
});
