//! Fuzz target: request heads and their bodies as the server connection reads them: never
//! panics, bounded buffering, the same read however the bytes arrive, one unambiguous
//! framing per accepted request (see `check_request`).
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    invariants::check_request(data, &invariants::cuts_within(data));
});
