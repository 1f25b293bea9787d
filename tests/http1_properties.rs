//! Property tests of the HTTP/1.1 codec: the invariants the fuzz targets check
//! (`tests/http1_invariants/`), on inputs built from the grammar's own pieces so that most
//! of them get past the first line. A fixed seed keeps every run the same; a failure prints
//! the shrunk input, to keep as a regression (fuzz/regressions/).

mod http1_invariants;

use http::{HeaderMap, HeaderValue, Method};
use http1_invariants as inv;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Deterministic runs, small enough that the whole file takes a few seconds.
fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x1107_5eed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Bytes glued from `pieces` (the grammar's tokens and the bytes that break it), with a run
/// of filler now and then: random bytes alone would almost never reach past a size line.
fn glued(pieces: &'static [&'static [u8]], max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(pieces).prop_map(<[u8]>::to_vec),
            1 => (0usize..40).prop_map(|len| vec![b'a'; len]),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

/// Cut offsets for an input of unknown length (clamped by `piece_ends`).
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..400, 0..4)
}

const CHUNK_PIECES: &[&[u8]] = &[
    b"0",
    b"1",
    b"5",
    b"a",
    b"F",
    b"ffffffffffffffff",
    b"\r",
    b"\n",
    b"\r\n",
    b";",
    b" ",
    b"\t",
    b"=",
    b"\"",
    b"x",
    b":",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"5\r\nhello\r\n",
    b"0\r\n",
    b"0\r\n\r\n",
    b"x-a: b\r\n",
    b" folded\r\n",
    b"content-length: 5\r\n",
];

/// What may follow a body on the connection.
const NEXT_MESSAGES: &[&[u8]] = &[b"", b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n"];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn chunked_bodies_decode_the_same_however_they_are_split(
        body in glued(CHUNK_PIECES, 24),
        cuts in cuts(),
    ) {
        inv::check_chunked_split_invariance(&body, &cuts);
    }

    #[test]
    fn chunked_encoding_decodes_to_what_was_encoded(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        trailers in prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,20}"), 0..4),
        next in prop::sample::select(NEXT_MESSAGES),
        cuts in cuts(),
    ) {
        let mut fields = HeaderMap::new();
        for (name, value) in &trailers {
            // A field value has no leading or trailing whitespace once parsed.
            let value = HeaderValue::from_str(value.trim()).expect("visible ASCII");
            fields.append(name.parse::<http::HeaderName>().expect("a token"), value);
        }
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        inv::check_chunked_roundtrip(&chunks, &fields, next, &cuts);
    }
}

const PATH_PIECES: &[&str] = &[
    "/", "/", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%5C", "%00", "%41", "%7e", "%c3%a9",
    "%C3", "%zz", ";", ";x", "..;", "~", "-", "\\", "?", "#", " ", "%", "é",
];

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn normalized_paths_are_canonical_fixed_points(
        parts in prop::collection::vec(prop::sample::select(PATH_PIECES), 0..16),
    ) {
        let path = format!("/{}", parts.concat());
        inv::check_normalize_path(&path);
    }

    #[test]
    fn credentials_are_classified_by_the_token_alone(
        scheme in prop::sample::select(&["Bearer ", "bearer  ", "BEARER ", "Basic ", "Bearer", ""][..]),
        token in glued(&[b"ag_", b"eyJ", b"abc", b".", b"-", b"_", b" ", b"\t", b"=", b"+", b"\xe9"], 12),
        prefix in prop::sample::select(&["", "ag_", "x"][..]),
    ) {
        let mut value = scheme.as_bytes().to_vec();
        value.extend_from_slice(&token);
        inv::check_credential(&value, prefix);
    }
}

const RESPONSE_PIECES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 304 Not Modified\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"HTTP/1.0 200 OK\r\n",
    b"HTTP/1.1 407 Proxy Authentication Required\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 6\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"X-A: b\r\n",
    b"\r\n",
    b"\n",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
];

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn response_heads_read_the_same_however_they_are_split(
        stream in glued(RESPONSE_PIECES, 12),
        method in prop::sample::select(&inv::RESPONSE_METHODS[..]),
        cuts in cuts(),
    ) {
        inv::check_response(&stream, &method, &cuts);
    }
}

#[test]
fn a_head_response_never_has_a_body() {
    // The property test's methods include HEAD; this pins the one case that matters most.
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    let read = inv::read_response(stream, &Method::HEAD, &[])
        .expect("valid")
        .expect("complete");
    assert!(read.body.done && read.body.data.is_empty());
    assert_eq!(read.body.rest, b"HTTP/1.1 200 OK\r\n\r\n");
}

const REQUEST_LINES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /a?b=c HTTP/1.1\r\n",
    b"PUT http://h/x HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"HEAD /x HTTP/1.0\r\n",
    b"\r\nGET /x HTTP/1.1\r\n",
];

const REQUEST_FIELDS: &[&[u8]] = &[
    b"Host: h\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 005\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer_Encoding: chunked\r\n",
    b"Content_Length: 5\r\n",
    b"X_Custom: 1\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, x-a\r\n",
    b"Connection: upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"TE: trailers\r\n",
    b"Trailer: x-sum\r\n",
    b"X-A: b\r\n",
    b"X-A:  spaced \r\n",
    b" folded\r\n",
    b"X-Bad : x\r\n",
    b"Keep-Alive: timeout=5\r\n",
];

const REQUEST_BODIES: &[&[u8]] = &[
    b"",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"0\r\nx-sum: 5\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
];

/// A request stream: a request line, fields from the list above, the empty line, then body
/// pieces (some of them a next request).
fn request_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(REQUEST_LINES),
        prop::collection::vec(prop::sample::select(REQUEST_FIELDS), 0..6),
        prop::bool::weighted(0.95),
        prop::collection::vec(prop::sample::select(REQUEST_BODIES), 0..3),
    )
        .prop_map(|(line, fields, ended, bodies)| {
            let mut stream = line.to_vec();
            stream.extend(fields.concat());
            if ended {
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend(bodies.concat());
            stream
        })
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn request_heads_read_the_same_however_they_are_split(
        stream in request_stream(),
        cuts in cuts(),
    ) {
        inv::check_request(&stream, &cuts);
    }

    #[test]
    fn forwarded_requests_parse_back_to_what_was_read(stream in request_stream()) {
        inv::check_roundtrip(&stream);
    }
}

/// Heads around the field limit: the identity's lines are added while the head stays within
/// it, and a head at the limit is still forwarded as read (fuzz/regressions/roundtrip/).
#[test]
fn forwarded_requests_near_the_field_limit_parse_back_to_what_was_read() {
    for fields in 90..=authgate::http1::request::MAX_REQUEST_HEADERS {
        let mut stream = b"GET /pub/many HTTP/1.1\r\nHost: h\r\n".to_vec();
        for index in 1..fields {
            stream.extend_from_slice(format!("x-h{index}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        stream.extend_from_slice(b"\r\n");
        inv::check_roundtrip(&stream);
    }
}
