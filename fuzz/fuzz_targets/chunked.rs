//! Fuzz target: the chunked decoder gives the same payload, trailers, error and boundary
//! however its input is split across reads, and decodes authgate's own chunked encoding
//! of any payload back to that payload.
#![no_main]

#[path = "../../tests/http1_invariants/mod.rs"]
mod invariants;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: how many cut offsets (two bytes each) follow; the rest is the body. Keeps
    // every corpus file a plain chunked body behind one byte, so seeds stay readable.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let seed_len = (usize::from(count % 8) * 2).min(rest.len());
    let (seed, body) = rest.split_at(seed_len);
    let cuts = invariants::cuts_from(seed, body.len());
    invariants::check_chunked_split_invariance(body, &cuts);

    // The same bytes as a payload: cut into chunks where the offsets say, encoded, decoded.
    let ends = invariants::piece_ends(body.len(), &cuts);
    let mut chunks = Vec::new();
    let mut start = 0;
    for end in ends {
        chunks.push(&body[start..end]);
        start = end;
    }
    let mut trailers = http::HeaderMap::new();
    if count & 0x80 != 0 {
        trailers.insert("x-fuzz-length", body.len().into());
    }
    invariants::check_chunked_roundtrip(&chunks, &trailers, b"GET / HTTP/1.1\r\n", &cuts);
});
