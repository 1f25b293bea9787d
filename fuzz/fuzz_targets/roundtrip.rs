//! Fuzz target: an accepted request, re-encoded the way the forwarder sends it, parses back
//! to the same method, target, fields, framing and body (see `check_roundtrip`).
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    invariants::check_roundtrip(data);
});
