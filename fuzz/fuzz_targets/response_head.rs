//! Fuzz target: response heads read by the upstream connection, for each request method
//! whose response framing differs (HEAD, CONNECT, …): never panics, same read however the
//! input is split, body boundaries as RFC 9112 §6.3 says (see `check_response`).
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: which method, and the cut offsets; the rest is the response stream.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method =
        &invariants::RESPONSE_METHODS[usize::from(selector) % invariants::RESPONSE_METHODS.len()];
    let seed_len = (usize::from(selector >> 4) * 2).min(rest.len());
    let (seed, input) = rest.split_at(seed_len);
    let cuts = invariants::cuts_from(seed, input.len());
    invariants::check_response(input, method, &cuts);
});
