//! Invariants of authgate's HTTP/1.1 codec, written once and checked three ways: by the
//! libFuzzer targets (`fuzz/fuzz_targets/`, which include this file by path), by the property
//! tests (`tests/http1_properties.rs`) and by the differential test against hyper
//! (`tests/http1_differential.rs`). Every check panics with a message when it fails, which is
//! what both a fuzzer and a test harness report.
#![allow(dead_code, unreachable_pub)]

use authgate::http1::client::{MAX_RESPONSE_HEAD, ResponseHeadError, parse_response_head};
use authgate::http1::{
    BodyDecoder, CHUNK_TERMINATOR, DecodeError, MAX_CHUNK_LINE, MAX_TRAILER_SECTION,
    encode_chunk_header, encode_last_chunk,
};
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

/// What a body decoder made of one input, fed in pieces.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// The first error, if any.
    pub result: Result<(), DecodeError>,
    /// Whether the body was complete before the input ended.
    pub done: bool,
    /// The bytes after the body: where the next message starts. Empty after an error (a
    /// caller stops reading there, so how much was buffered depends on the pieces).
    pub rest: Vec<u8>,
    /// What `eof()` said once all the input was in: a close-delimited body ends there, a
    /// body with a length or chunked framing that is not complete was truncated.
    pub at_eof: Result<(), DecodeError>,
}

impl Decoded {
    /// The message ended where its framing says, without an error.
    pub fn complete(&self) -> bool {
        self.result.is_ok() && self.at_eof.is_ok()
    }
}

/// Every decoder keeps less than this buffered while it waits for more input: the longest
/// line it ever has to see whole is a trailer section or a chunk-size line.
pub const MAX_BODY_WAIT: usize = if MAX_TRAILER_SECTION > MAX_CHUNK_LINE {
    MAX_TRAILER_SECTION
} else {
    MAX_CHUNK_LINE
};

/// Feeds `input` to `decoder` in the pieces that `cuts` (offsets, any order, clamped to the
/// input) make, decoding as far as possible after each piece, the way a connection reads and
/// decodes in turn; then reports EOF. Checks the decoder's own promises on the way: no empty
/// data frames, trailers once and last, bounded buffering while waiting.
pub fn decode_body(mut decoder: BodyDecoder, input: &[u8], cuts: &[usize]) -> Decoded {
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers: Option<HeaderMap> = None;
    let mut start = 0;
    for end in piece_ends(input.len(), cuts) {
        buf.extend_from_slice(&input[start..end]);
        start = end;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => match frame.into_data() {
                    Ok(bytes) => {
                        assert!(!bytes.is_empty(), "empty data frame");
                        assert!(trailers.is_none(), "data after the trailers");
                        data.extend_from_slice(&bytes);
                    }
                    Err(frame) => {
                        assert!(trailers.is_none(), "trailers twice");
                        let fields = frame.into_trailers().ok();
                        assert!(fields.is_some(), "a frame neither data nor trailers");
                        trailers = fields;
                        assert!(decoder.is_done(), "trailers before the end of the body");
                    }
                },
                Ok(None) => break,
                Err(error) => {
                    return Decoded {
                        data,
                        trailers,
                        result: Err(error),
                        done: decoder.is_done(),
                        rest: Vec::new(),
                        at_eof: Err(error),
                    };
                }
            }
        }
        assert!(
            decoder.is_done() || buf.len() < MAX_BODY_WAIT,
            "the decoder waits for more input with {} bytes buffered",
            buf.len()
        );
    }
    let done = decoder.is_done();
    let at_eof = decoder.eof();
    if done {
        assert_eq!(at_eof, Ok(()), "a complete body reported as truncated");
    }
    Decoded {
        data,
        trailers,
        result: Ok(()),
        done,
        rest: buf.to_vec(),
        at_eof,
    }
}

/// The ends of the pieces `cuts` make of an input of `len` bytes, ascending, `len` last.
pub fn piece_ends(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut ends: Vec<usize> = cuts.iter().map(|&cut| cut.min(len)).collect();
    ends.push(len);
    ends.sort_unstable();
    ends
}

/// Cut offsets spread over an input of `len` bytes, read from arbitrary bytes (fuzzer and
/// property-test inputs share this, so a failing split is reproduced the same way).
pub fn cuts_from(seed: &[u8], len: usize) -> Vec<usize> {
    seed.chunks(2)
        .map(|pair| {
            let value = usize::from(pair[0]) << 8 | usize::from(*pair.get(1).unwrap_or(&0));
            value % (len + 1)
        })
        .collect()
}

/// A chunked body decodes to the same payload, trailers, error and next-message boundary
/// however its bytes are split across reads.
pub fn check_chunked_split_invariance(input: &[u8], cuts: &[usize]) -> Decoded {
    let whole = decode_body(BodyDecoder::chunked(), input, &[]);
    let split = decode_body(BodyDecoder::chunked(), input, cuts);
    assert_eq!(split, whole, "chunked body split at {cuts:?}");
    whole
}

/// Writes `chunks` in the chunked coding the way authgate sends a body (empty chunks are
/// skipped: a zero-size chunk is the last one), then the last chunk with `trailers`.
pub fn encode_chunked(chunks: &[&[u8]], trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut out = BytesMut::new();
    for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
        encode_chunk_header(chunk.len(), &mut out);
        out.extend_from_slice(chunk);
        out.extend_from_slice(CHUNK_TERMINATOR);
    }
    encode_last_chunk(trailers, &mut out);
    out.to_vec()
}

/// What authgate encodes as a chunked body decodes to exactly that body, wherever the
/// encoding is split and whatever follows it. `trailers` must hold only fields that may be
/// trailers (the encoder drops framing and routing fields by design).
pub fn check_chunked_roundtrip(
    chunks: &[&[u8]],
    trailers: &HeaderMap,
    next: &[u8],
    cuts: &[usize],
) {
    let mut wire = encode_chunked(chunks, Some(trailers));
    wire.extend_from_slice(next);
    let decoded = decode_body(BodyDecoder::chunked(), &wire, cuts);
    assert_eq!(decoded.result, Ok(()), "own encoding refused: {wire:?}");
    assert!(decoded.done, "own encoding not complete: {wire:?}");
    assert_eq!(decoded.data, chunks.concat());
    let expected = (!trailers.is_empty()).then(|| trailers.clone());
    assert_eq!(decoded.trailers, expected);
    assert_eq!(decoded.rest, next, "the next message moved");
}

/// A response head and its body as authgate read them, for comparing two reads.
#[derive(Debug, PartialEq)]
pub struct ReadResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub reason: Option<Vec<u8>>,
    pub keep_alive: bool,
    pub body: Decoded,
}

/// Reads one response to a `method` request from `input` split at `cuts`, as the upstream
/// connection does: parse the head after each read until it is complete, then decode the
/// body from what follows. `Ok(None)`: the input ended inside the head.
pub fn read_response(
    input: &[u8],
    method: &Method,
    cuts: &[usize],
) -> Result<Option<ReadResponse>, ResponseHeadError> {
    let mut buf = BytesMut::new();
    let mut start = 0;
    for end in piece_ends(input.len(), cuts) {
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let Some(head) = parse_response_head(&mut buf, method)? else {
            assert!(
                buf.len() < MAX_RESPONSE_HEAD,
                "waiting for a response head with {} bytes buffered",
                buf.len()
            );
            continue;
        };
        let mut rest = buf.to_vec();
        rest.extend_from_slice(&input[start..]);
        return Ok(Some(ReadResponse {
            status: head.status,
            version: head.version,
            headers: head.headers,
            reason: head.reason.map(|reason| reason.to_vec()),
            keep_alive: head.keep_alive,
            body: decode_body(head.body, &rest, &[]),
        }));
    }
    Ok(None)
}

/// The methods a response is read for: the framing of a response depends on them.
pub const RESPONSE_METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::CONNECT,
    Method::POST,
    Method::OPTIONS,
];

/// Response heads: the same read however the input is split; interim responses skipped;
/// no body where RFC 9112 §6.3 says there is none; a kept-alive connection always knows
/// where the body ends; never both framing fields passed on for a response with a body.
pub fn check_response(input: &[u8], method: &Method, cuts: &[usize]) {
    let whole = read_response(input, method, &[]);
    let split = read_response(input, method, cuts);
    assert_eq!(split, whole, "{method} response split at {cuts:?}");
    let Ok(Some(response)) = whole else { return };
    let status = response.status;
    assert!(
        !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS,
        "interim response {status} returned as final"
    );
    let bodiless = method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS
        || (method == Method::CONNECT && status.is_success());
    if bodiless || tunnel {
        assert!(
            response.body.done && response.body.data.is_empty(),
            "a body read for {method} {status}"
        );
    }
    if tunnel {
        assert!(!response.keep_alive, "kept alive after {method} {status}");
    }
    if response.keep_alive && !response.body.done {
        assert!(
            response.body.at_eof.is_err(),
            "a kept-alive response whose body ends with the connection"
        );
    }
    if !(bodiless || tunnel)
        && response
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
    {
        assert!(
            !response.headers.contains_key(http::header::CONTENT_LENGTH),
            "Content-Length passed on beside Transfer-Encoding"
        );
    }
}

/// `normalize_path`: what it accepts comes out canonical and is a fixed point (normalizing
/// it again returns it unchanged and borrowed, so matching and forwarding see one string);
/// the canonical form has no empty, `.` or `..` segment and no encoded separator or NUL.
pub fn check_normalize_path(path: &str) {
    use authgate::routes::normalize::normalize_path;
    let Ok(normal) = normalize_path(path) else {
        return;
    };
    let normal: &str = &normal;
    match normalize_path(normal) {
        Ok(std::borrow::Cow::Borrowed(again)) => {
            assert_eq!(again, normal, "normalizing {normal:?} again changed it");
        }
        Ok(std::borrow::Cow::Owned(again)) => {
            panic!("{path:?} normalized to {normal:?}, which normalizes to {again:?}")
        }
        Err(error) => panic!("{path:?} normalized to {normal:?}, which is refused: {error}"),
    }
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    let upper = normal.to_ascii_uppercase();
    for bad in ["//", "/./", "/../", "%2F", "%5C", "%00", "\\"] {
        assert!(
            !upper.contains(bad),
            "{path:?} normalized to {normal:?}, which has {bad:?}"
        );
    }
    for bad in ["/.", "/.."] {
        assert!(
            !normal.ends_with(bad),
            "{path:?} normalized to {normal:?}, which ends in {bad:?}"
        );
    }
    assert!(
        !normal
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'#' || b == b'?'),
        "{path:?} normalized to {normal:?}, which has a raw byte that may not be there"
    );
    // Escapes left in the canonical form are uppercase and never spell an unreserved byte,
    // so there is one spelling of each path.
    let bytes = normal.as_bytes();
    for (at, _) in normal.match_indices('%') {
        let hex = bytes.get(at + 1..at + 3).expect("a complete escape");
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{normal:?}: escape {hex:?} is not uppercase hex"
        );
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16).unwrap_or(0);
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{normal:?}: unreserved byte {value:#x} left encoded"
        );
    }
}

/// `extract_credential` on one Authorization value: never panics, and its classification
/// depends on the token alone, not on the scheme's case or the spaces around the token.
pub fn check_credential(value: &[u8], api_key_prefix: &str) {
    use authgate::auth::{
        Credential, KeyHeaders, MAX_CREDENTIAL_BYTES, extract_credential, looks_like_jwt,
    };
    use http::header::{AUTHORIZATION, HeaderValue};
    let Ok(header) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, header);
    let first = extract_credential(&headers, &KeyHeaders::default(), api_key_prefix);
    assert_eq!(
        first,
        extract_credential(&headers, &KeyHeaders::default(), api_key_prefix),
        "not deterministic"
    );
    match &first {
        Ok(Some(Credential::ApiKey(key))) => {
            assert!(!api_key_prefix.is_empty() && key.starts_with(api_key_prefix.as_bytes()));
            assert!(key.len() <= MAX_CREDENTIAL_BYTES);
            assert!(
                !key.starts_with(b" ") && !key.ends_with(b" "),
                "untrimmed {key:?}"
            );
        }
        Ok(Some(Credential::Jwt(token))) => {
            assert!(
                looks_like_jwt(token.as_bytes()),
                "{token:?} is not JWT-shaped"
            );
        }
        Ok(None) | Err(_) => {}
    }
    // The same token under another spelling of the scheme, with more spaces around it.
    if value.len() > 7 && value[..6].eq_ignore_ascii_case(b"bearer") && value[6] == b' ' {
        let mut respelled = b"bEARER  ".to_vec();
        respelled.extend_from_slice(&value[7..]);
        respelled.push(b' ');
        let Ok(header) = HeaderValue::from_bytes(&respelled) else {
            return;
        };
        let mut other = HeaderMap::new();
        other.insert(AUTHORIZATION, header);
        assert_eq!(
            extract_credential(&other, &KeyHeaders::default(), api_key_prefix),
            first,
            "{value:?} and {respelled:?} classified differently"
        );
    }
    // Two Authorization fields are never resolved by picking one.
    headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    assert!(
        extract_credential(&headers, &KeyHeaders::default(), api_key_prefix).is_err(),
        "two Authorization fields accepted"
    );
}

/// How a request's body is framed, as the parser decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    NoBody,
    Length(u64),
    Chunked,
}

impl Framing {
    fn of(decoder: Option<&BodyDecoder>) -> Self {
        match decoder.map(|decoder| decoder.size_hint().exact()) {
            None => Self::NoBody,
            Some(Some(length)) => Self::Length(length),
            // Only a chunked decoder starts without a known length (requests are never
            // close-delimited).
            Some(None) => Self::Chunked,
        }
    }
}

/// A request head and its body as authgate read them, for comparing two reads.
#[derive(Debug, PartialEq)]
pub struct ReadRequest {
    pub method: Method,
    /// The request target as parsed.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub wants_upgrade: bool,
    pub trailers_allowed: bool,
    pub framing: Framing,
    /// The body, decoded from what followed the head; `rest` is the next request.
    pub body: Decoded,
}

/// The limits the request checks run with: the server's defaults.
pub fn request_limits() -> authgate::http1::request::RequestLimits {
    authgate::http1::request::RequestLimits::default()
}

/// Reads one request from `input` split at `cuts`, as the server connection does: parse the
/// head after each read until it is complete, then decode its body from what follows.
/// `Ok(None)`: the input ended inside the head.
pub fn read_request(
    input: &[u8],
    cuts: &[usize],
    limits: &authgate::http1::request::RequestLimits,
) -> Result<Option<ReadRequest>, authgate::http1::request::RequestHeadError> {
    use authgate::http1::request::parse_request_head;
    let mut buf = BytesMut::new();
    let mut start = 0;
    for end in piece_ends(input.len(), cuts) {
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let before = buf.len();
        let Some(head) = parse_request_head(&mut buf, limits)? else {
            assert_eq!(buf.len(), before, "an incomplete head consumed bytes");
            assert!(
                buf.len() <= limits.max_head_bytes,
                "waiting for a request head with {} bytes buffered",
                buf.len()
            );
            continue;
        };
        let mut rest = buf.to_vec();
        rest.extend_from_slice(&input[start..]);
        let framing = Framing::of(head.body.as_ref());
        let decoder = head.body.unwrap_or_else(|| BodyDecoder::length(0));
        return Ok(Some(ReadRequest {
            method: head.method,
            target: head.uri.to_string(),
            version: head.version,
            headers: head.headers,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            wants_upgrade: head.wants_upgrade,
            trailers_allowed: head.trailers_allowed,
            framing,
            body: decode_body(decoder, &rest, &[]),
        }));
    }
    Ok(None)
}

/// Cut offsets taken from a request stream itself, so that a corpus file is just the raw
/// request (readable, and shared with the differential test) and still gets split.
pub fn cuts_within(input: &[u8]) -> Vec<usize> {
    let sum = input.iter().fold(0usize, |sum, &b| {
        sum.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    vec![input.len() / 2, sum % (input.len() + 1)]
}

/// Request heads: the same read however the input is split, bounded buffering, and one
/// unambiguous framing for every request accepted (RFC 9112 §6): the framing field that
/// decided it is the only one passed on, and where the body ends follows from it alone.
pub fn check_request(input: &[u8], cuts: &[usize]) -> Option<ReadRequest> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
    let limits = request_limits();
    let whole = read_request(input, &[], &limits);
    let split = read_request(input, cuts, &limits);
    assert_eq!(split, whole, "request split at {cuts:?}");
    let request = whole.ok()??;
    let lengths: Vec<_> = request.headers.get_all(CONTENT_LENGTH).iter().collect();
    let te = request.headers.contains_key(TRANSFER_ENCODING);
    assert!(
        lengths.len() <= 1,
        "Content-Length passed on {} times",
        lengths.len()
    );
    match request.framing {
        Framing::Chunked => {
            assert!(
                te && lengths.is_empty(),
                "chunked body without its one framing field"
            );
            assert_eq!(
                request.version,
                Version::HTTP_11,
                "chunked HTTP/1.0 request"
            );
        }
        Framing::Length(length) => {
            assert!(!te, "Transfer-Encoding beside a length");
            assert!(length > 0, "a zero-length body is no body");
            // The value is passed on as sent (`005` stays `005`): the same number to any reader.
            let passed_on = lengths
                .first()
                .and_then(|v| authgate::http1::fields::parse_digits(v.as_bytes()));
            assert_eq!(
                passed_on,
                Some(length),
                "Content-Length passed on is not the length read"
            );
        }
        Framing::NoBody => {
            assert!(!te, "Transfer-Encoding on a request without a body");
            let zero =
                |v: &&HeaderValue| authgate::http1::fields::parse_digits(v.as_bytes()) == Some(0);
            assert!(
                lengths.iter().all(zero),
                "a length on a request without a body"
            );
        }
    }
    for name in request.headers.keys() {
        let folded = name.as_str().replace('_', "-");
        assert!(
            !(name.as_str().contains('_')
                && (folded == "content-length" || folded == "transfer-encoding")),
            "framing field spelled {name} passed on"
        );
    }
    assert!(
        !request.target.contains('#'),
        "fragment in {:?}",
        request.target
    );
    if request.expect_continue || request.wants_upgrade {
        assert_eq!(request.version, Version::HTTP_11);
    }
    if request.wants_upgrade {
        assert!(request.headers.contains_key(UPGRADE));
    }
    if request.version == Version::HTTP_10 && request.keep_alive {
        assert!(request.headers.contains_key(http::header::CONNECTION));
    }
    Some(request)
}

/// The identity fields an API key adds, as the pipeline hands them to the forwarder: lines
/// serialized by the identity itself (`Identity::upstream_fields`), written after the
/// request's own fields.
pub fn identity_lines() -> bytes::Bytes {
    static LINES: std::sync::LazyLock<bytes::Bytes> =
        std::sync::LazyLock::new(build_identity_lines);
    LINES.clone()
}

fn build_identity_lines() -> bytes::Bytes {
    use authgate::auth::{AuthMethod, Identity, IdentityFields, IdentityHeaderNames};
    let scopes = ["inference:write".to_owned()];
    let identity = Identity::new(
        AuthMethod::ApiKey,
        &IdentityFields {
            subject: "k1",
            key_id: Some("k1"),
            tenant_id: Some("acme"),
            scopes: &scopes,
            ..IdentityFields::default()
        },
    );
    let mut lines = Vec::new();
    identity.upstream_fields(&IdentityHeaderNames::new("x-auth-"), &mut lines);
    bytes::Bytes::from(lines)
}

/// The head authgate sends upstream for `request`, the way the forwarder writes it:
/// hop-by-hop fields stripped (the pipeline's step), framing from the fields and the body's
/// state, origin-form target, `field_lines` (such as [`identity_lines`]) after the request's
/// fields; then the body in that framing.
pub fn forwarded_bytes(
    request: &ReadRequest,
    field_lines: &[u8],
) -> (Vec<u8>, Option<authgate::http1::client::RequestFraming>) {
    use authgate::http1::client::{RequestFraming, encode_request_head};
    let mut headers = request.headers.clone();
    authgate::headers::strip_hop_by_hop(&mut headers, false);
    let (end_stream, exact) = match request.framing {
        Framing::NoBody => (true, Some(0)),
        Framing::Length(length) => (false, Some(length)),
        Framing::Chunked => (false, None),
    };
    let Ok(framing) = RequestFraming::of(&headers, end_stream, exact) else {
        return (Vec::new(), None);
    };
    let uri: http::Uri = request.target.parse().expect("the target parsed before");
    let target = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut out = BytesMut::new();
    encode_request_head(
        &request.method,
        target,
        &headers,
        field_lines,
        framing,
        &mut out,
    );
    match framing {
        RequestFraming::Chunked => {
            let data: [&[u8]; 1] = [&request.body.data];
            out.extend_from_slice(&encode_chunked(&data, request.body.trailers.as_ref()));
        }
        _ => out.extend_from_slice(&request.body.data),
    }
    (out.to_vec(), Some(framing))
}

/// What authgate forwards is read by the next hop exactly as authgate read it: re-encoding
/// an accepted request the forwarder's way and parsing it again gives the same method,
/// target, fields and framing, and the body ends exactly where the bytes do.
pub fn check_roundtrip(input: &[u8]) {
    use authgate::http1::client::RequestFraming;
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let Some(request) = check_request(input, &[]) else {
        return;
    };
    if !(request.body.complete() && request.body.done) {
        // A body that breaks off is never forwarded whole; nothing to compare.
        return;
    }
    // The identity's lines are added when the head stays within the field limit authgate
    // reads it back with: past it, the next hop's own limit decides (as for the byte limit
    // below), and a head at the limit is still checked without them.
    let mut stripped = request.headers.clone();
    authgate::headers::strip_hop_by_hop(&mut stripped, false);
    let identity = identity_lines();
    let identity_fields = identity.split(|&b| b == b'\n').count() - 1;
    // One more for the framing field the forwarder may add.
    let fits =
        stripped.len() + 1 + identity_fields <= authgate::http1::request::MAX_REQUEST_HEADERS;
    let lines: &[u8] = if fits { &identity } else { b"" };
    let (wire, framing) = forwarded_bytes(&request, lines);
    let framing = framing.expect("the parser let through a Content-Length the forwarder refuses");
    let limits = authgate::http1::request::RequestLimits {
        // The forwarder does not check the head's size; the next hop's limit is its own.
        max_head_bytes: usize::MAX,
        ..request_limits()
    };
    let again = match read_request(&wire, &[], &limits) {
        Ok(Some(again)) => again,
        other => panic!(
            "authgate forwards {:?}, which it reads as {other:?}",
            String::from_utf8_lossy(&wire)
        ),
    };
    assert_eq!(again.method, request.method);
    let uri: http::Uri = request.target.parse().expect("parsed before");
    assert_eq!(
        again.target,
        uri.path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
    );
    let mut expected = stripped;
    // The identity's lines come back as fields of their own, after the request's.
    let before = expected.len();
    authgate::headers::append_field_lines(lines, &mut expected);
    assert_eq!(
        expected.len(),
        before + if fits { identity_fields } else { 0 }
    );
    match framing {
        RequestFraming::Chunked => {
            expected.append(TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        }
        RequestFraming::Sized(length) => {
            expected.append(CONTENT_LENGTH, length.into());
        }
        RequestFraming::Empty | RequestFraming::Declared(_) => {}
    }
    assert_eq!(
        again.headers,
        expected,
        "fields changed on the way: {:?}",
        String::from_utf8_lossy(&wire)
    );
    assert_eq!(
        again.framing, request.framing,
        "the framing changed on the way"
    );
    assert_eq!(
        again.body.data, request.body.data,
        "the body changed on the way"
    );
    assert!(
        again.body.done && again.body.rest.is_empty(),
        "the forwarded body does not end where its bytes do"
    );
}
