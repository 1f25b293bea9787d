//! Field grammar every HTTP/1.1 rule is built on: token lists, `Content-Length` values,
//! `Transfer-Encoding` codings, and the names authgate controls, read the way a backend that
//! folds `_` into `-` reads them.
//!
//! One home: the request parser ([`super::request`]), the response parser
//! ([`super::client`]), the response writer ([`super::response`]) and the header rewriting
//! of the pipeline all call these functions; none of them re-parses a field on its own.

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, HeaderName};

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed of whitespace.
/// Empty elements (`a,,b`) come out empty; callers ignore or refuse them.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&byte| byte == b',').map(<[u8]>::trim_ascii)
}

/// Whether the list holds `token` (case-insensitive, as every token in RFC 9110).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|item| item.eq_ignore_ascii_case(token))
}

/// Whether every element of the list is one of `allowed`.
pub fn only_tokens(value: &[u8], allowed: &[&[u8]]) -> bool {
    tokens(value).all(|item| allowed.iter().any(|token| item.eq_ignore_ascii_case(token)))
}

/// `1*DIGIT` (RFC 9110 §8.6): no sign, no whitespace, no empty value, no overflow. Rust's
/// `str::parse::<u64>` is not this grammar (it takes `+5`), so it is never used on a length.
pub fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &byte| {
        if !byte.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
    })
}

/// A `Content-Length` field value as a response recipient reads it: one length, or a list
/// of identical ones (`5, 5`), which RFC 9110 §8.6 lets a recipient accept as that length.
pub fn parse_length_list(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in tokens(value) {
        let this = parse_digits(item)?;
        if length.is_some_and(|length| length != this) {
            return None;
        }
        length = Some(this);
    }
    length
}

/// The length every `Content-Length` field of `headers` states, read strictly as a request
/// recipient must: each field one bare length (a list in one field is refused, as nginx
/// does), all fields equal. `Ok(None)`: no such field.
pub fn request_content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let this = parse_digits(value.as_bytes()).ok_or("invalid Content-Length")?;
        if length.is_some_and(|length| length != this) {
            return Err("conflicting Content-Length values");
        }
        length = Some(this);
    }
    Ok(length)
}

/// Whether a `Transfer-Encoding` value is exactly the one coding authgate decodes and
/// re-encodes: `chunked` (RFC 9112 §7.1). Any other coding (`gzip, chunked`, `xchunked`,
/// `chunked, chunked`) would reach the next hop still applied but no longer announced once
/// authgate re-frames the body, so it is refused (requests: 400; responses: 502).
pub fn is_only_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Whether `name` (lowercase, as in a `HeaderName`), with `_` read as `-`, equals `target`.
/// WSGI, Rack and CGI servers map `Content_Length` and `Content-Length` to one variable.
pub fn folded_eq(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len() && folded_starts_with(name, target)
}

/// Whether `name`, lowercased and with `_` read as `-`, starts with `prefix` (lowercase).
pub fn folded_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(&n, &p)| {
            let n = if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            };
            n == p
        })
}

/// What a field name spelled with `_` would mean to a backend that reads `_` as `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscored {
    /// `Content_Length`, `Transfer_Encoding`: a second framing the backend could obey.
    /// Refused with 400: never guess which framing the backend reads.
    Framing,
    /// A hop-by-hop field, `Host`, or a field authgate sets itself (`x-forwarded-*`,
    /// `forwarded`, `x-real-ip`, `x-request-id`): removed, whatever the policy.
    Controlled,
    /// Anything else: kept or dropped as `server.underscores_in_headers` says.
    Other,
}

/// Names that frame a message.
const FRAMING: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// Names whose meaning authgate controls on a request: hop-by-hop fields (RFC 9110 §7.6.1),
/// `Host` (routing), and what authgate sets itself (SPEC §6 forwarding headers).
const CONTROLLED: [&[u8]; 11] = [
    b"connection",
    b"keep-alive",
    b"te",
    b"upgrade",
    b"trailer",
    b"host",
    b"forwarded",
    b"x-real-ip",
    b"x-request-id",
    b"x-original-url",
    b"x-rewrite-url",
];

/// Prefixes of controlled names: `proxy-*` (hop-by-hop) and `x-forwarded-*` (set by authgate;
/// also the routing overrides `x-forwarded-uri` and `x-forwarded-prefix`).
const CONTROLLED_PREFIXES: [&[u8]; 2] = [b"proxy-", b"x-forwarded-"];

/// Classifies a field name that contains `_` (call it only for those: names without `_`
/// are what they say). The identity prefix is removed by the pipeline with the same folding.
pub fn classify_underscored(name: &[u8]) -> Underscored {
    if FRAMING.iter().any(|target| folded_eq(name, target)) {
        Underscored::Framing
    } else if CONTROLLED.iter().any(|target| folded_eq(name, target))
        || CONTROLLED_PREFIXES
            .iter()
            .any(|prefix| folded_starts_with(name, prefix))
    {
        Underscored::Controlled
    } else {
        Underscored::Other
    }
}

/// Whether authgate controls a request field of this name, in any spelling: framing and
/// hop-by-hop fields, `Host`, and the fields authgate sets or removes itself. A config may not
/// name one as a field it reads a credential from or sets on forwarded requests.
pub fn is_controlled_request_field(name: &[u8]) -> bool {
    classify_underscored(name) != Underscored::Other
}

/// What `server.underscores_in_headers` does with request fields spelled with `_` that
/// authgate does not control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscorePolicy {
    /// Removed before the request goes on (nginx's default, `underscores_in_headers off`):
    /// the safe choice when the backend's header-to-variable mapping is unknown.
    #[default]
    Drop,
    /// Forwarded as sent.
    Allow,
}

/// Whether a field name holds `_`. Runs on every request field, and names are short: eight
/// bytes at a time (a word has a `_` when `word ^ 0x5f5f..` has a zero byte), rather than
/// `memchr`'s call and dispatch or a byte loop (callgrind: about 30 and 15 instructions more
/// per field).
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const UNDERSCORES: u64 = ONES * b'_' as u64;
    let word_has = |word: [u8; 8]| {
        let x = u64::from_le_bytes(word) ^ UNDERSCORES;
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    let mut chunks = name.chunks_exact(8);
    if chunks.by_ref().any(|chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        word_has(word)
    }) {
        return true;
    }
    chunks.remainder().contains(&b'_')
}

/// What to do with one request field, by its name: `Err` refuses the request.
pub fn request_field_verdict(
    name: &HeaderName,
    policy: UnderscorePolicy,
) -> Result<bool, &'static str> {
    let bytes = name.as_str().as_bytes();
    if !has_underscore(bytes) {
        return Ok(true);
    }
    match classify_underscored(bytes) {
        Underscored::Framing => Err("framing field spelled with an underscore"),
        Underscored::Controlled => Ok(false),
        Underscored::Other => Ok(policy == UnderscorePolicy::Allow),
    }
}

/// Applies [`request_field_verdict`] to a whole map (requests that did not come through the
/// HTTP/1.1 parser, which applies it field by field: HTTP/2).
pub fn apply_underscore_rule(
    headers: &mut HeaderMap,
    policy: UnderscorePolicy,
) -> Result<(), &'static str> {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if !request_field_verdict(name, policy)? {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    Ok(())
}

/// Whether a response field named `name` would be read as a framing or hop-by-hop field by
/// a client that folds `_` into `-`; such a field is removed from relayed responses.
pub fn is_underscored_response_control(name: &HeaderName) -> bool {
    is_underscored_response_control_name(name.as_str().as_bytes())
}

/// [`is_underscored_response_control`] on a raw field name (any case), for the response
/// parser, which has the bytes at hand before it builds the `HeaderName`.
#[inline]
pub fn is_underscored_response_control_name(name: &[u8]) -> bool {
    // Only a name as long as a controlled one, or starting like `proxy-`, can be one, so most
    // response fields are passed over without a scan; this test is inlined into the parsers'
    // loops, the comparison is not (it runs only for a name with `_`, which is rare).
    let candidate = matches!(name.len(), 2 | 7 | 10 | 14 | 17)
        || name
            .first()
            .is_some_and(|first| first.eq_ignore_ascii_case(&b'p'));
    candidate && has_underscore(name) && is_folded_control(name)
}

/// The names [`is_underscored_response_control_name`] removes, compared with `_` read as `-`.
#[cold]
#[inline(never)]
fn is_folded_control(name: &[u8]) -> bool {
    FRAMING.iter().any(|target| folded_eq(name, target))
        || [
            b"connection".as_slice(),
            b"keep-alive",
            b"te",
            b"upgrade",
            b"trailer",
        ]
        .iter()
        .any(|target| folded_eq(name, target))
        || folded_starts_with(name, b"proxy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names a config may not read a credential from or set on forwarded requests, byte
    /// for byte: every case and `-`/`_` spelling of the framing, hop-by-hop, Host and
    /// forwarding fields, and nothing that merely resembles one.
    #[test]
    fn controlled_request_fields_in_every_spelling() {
        for name in [
            &b"content-length"[..],
            b"Content_Length",
            b"TRANSFER-ENCODING",
            b"transfer_encoding",
            b"Host",
            b"connection",
            b"Keep_Alive",
            b"te",
            b"upgrade",
            b"proxy-authorization",
            b"Proxy_Connection",
            b"x-forwarded-for",
            b"X_Forwarded_Host",
            b"x-real-ip",
            b"x-request-id",
            b"forwarded",
        ] {
            assert!(
                is_controlled_request_field(name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        for name in [
            &b"authorization"[..],
            b"x-api-key",
            b"api-key",
            b"api_key",
            b"content-lengthx",
            b"hosts",
            b"x-forwarded",
            b"proxy",
            b"tee",
            b"",
            b"\xffhost",
        ] {
            assert!(
                !is_controlled_request_field(name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }
    use http::HeaderValue;

    #[test]
    fn digits_only_without_overflow() {
        assert_eq!(parse_digits(b"0"), Some(0));
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b" 5",
            b"5 ",
            b"0x5",
            b"5,5",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_lengths_accept_identical_lists_only() {
        assert_eq!(parse_length_list(b"5"), Some(5));
        assert_eq!(parse_length_list(b"5, 5,5"), Some(5));
        assert_eq!(parse_length_list(b"5, 6"), None);
        assert_eq!(parse_length_list(b"5,"), None);
        assert_eq!(parse_length_list(b""), None);
    }

    #[test]
    fn request_lengths_are_strict() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_content_length(&headers), Ok(None));
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(request_content_length(&headers), Ok(Some(5)));
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(request_content_length(&headers).is_err());
        let mut list = HeaderMap::new();
        list.append(CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        assert!(request_content_length(&list).is_err());
    }

    #[test]
    fn only_a_single_chunked_coding_is_chunked() {
        assert!(is_only_chunked(b"chunked"));
        assert!(is_only_chunked(b"Chunked"));
        for other in [
            &b"gzip, chunked"[..],
            b"chunked, chunked",
            b"xchunked",
            b"chunked;q=1",
            b"gzip",
            b"",
        ] {
            assert!(!is_only_chunked(other), "{other:?}");
        }
    }

    #[test]
    fn underscored_names_are_classified_as_a_folding_backend_reads_them() {
        for framing in ["content_length", "transfer_encoding", "content-length_"] {
            let expected = if framing.ends_with('_') {
                Underscored::Other
            } else {
                Underscored::Framing
            };
            assert_eq!(
                classify_underscored(framing.as_bytes()),
                expected,
                "{framing}"
            );
        }
        for controlled in [
            "connection_",
            "keep_alive",
            "proxy_authorization",
            "x_forwarded_for",
            "x-forwarded_host",
            "x_real_ip",
            "x_request_id",
            "x_original_url",
            "x_rewrite_url",
            "trailer_",
        ] {
            let expected = if controlled.ends_with('_') {
                Underscored::Other
            } else {
                Underscored::Controlled
            };
            assert_eq!(
                classify_underscored(controlled.as_bytes()),
                expected,
                "{controlled}"
            );
        }
        assert_eq!(classify_underscored(b"x_custom"), Underscored::Other);
    }

    #[test]
    fn verdicts_follow_the_policy_for_other_names_only() {
        let name = |text: &str| HeaderName::from_bytes(text.as_bytes()).unwrap();
        for policy in [UnderscorePolicy::Drop, UnderscorePolicy::Allow] {
            assert_eq!(request_field_verdict(&name("x-plain"), policy), Ok(true));
            assert!(request_field_verdict(&name("transfer_encoding"), policy).is_err());
            assert_eq!(
                request_field_verdict(&name("x_forwarded_for"), policy),
                Ok(false)
            );
        }
        assert_eq!(
            request_field_verdict(&name("x_custom"), UnderscorePolicy::Drop),
            Ok(false)
        );
        assert_eq!(
            request_field_verdict(&name("x_custom"), UnderscorePolicy::Allow),
            Ok(true)
        );
    }

    #[test]
    fn underscores_are_found_at_every_position_and_length() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(!has_underscore(&clean), "{len}");
            for at in 0..len {
                let mut with = clean.clone();
                with[at] = b'_';
                assert!(has_underscore(&with), "{len} {at}");
            }
        }
        // Bytes next to 0x5f in value must not count.
        assert!(!has_underscore(b"^^^^````^^^^````^"));
    }

    #[test]
    fn token_lists() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(only_tokens(
            b"close , keep-alive",
            &[b"close", b"keep-alive"]
        ));
        assert!(!only_tokens(
            b"close, x-auth-user",
            &[b"close", b"keep-alive"]
        ));
    }
}
