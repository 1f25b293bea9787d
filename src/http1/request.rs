//! The server side of HTTP/1.1 without IO: a request head parsed from the read buffer, with
//! every framing and connection rule decided here, once (RFC 9112 §2–§9).
//!
//! The parser enforces the effective rule itself; nothing after it re-reads a framing field:
//! - a message has one framing: `Transfer-Encoding` (exactly `chunked`, one field, HTTP/1.1
//!   only) or `Content-Length` (digits; identical repeats collapse to one, different ones or
//!   a list in one field are refused), never both (RFC 9112 §6.1, §6.3: request smuggling);
//! - a field spelled with `_` that a backend could read as a framing field is refused, one
//!   it could read as a field authgate controls is removed, any other follows
//!   [`UnderscorePolicy`] ([`super::fields::request_field_verdict`]);
//! - the head is bounded in bytes and fields; obs-fold, bare CR, spaces before the colon and
//!   invalid bytes in names or values are refused by httparse or by the `http` types;
//! - a `#` in the request target is refused (SPEC §3: the URI parser would drop it silently);
//! - keep-alive: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

use super::BodyDecoder;
use super::fields::{
    UnderscorePolicy, has_token, is_only_chunked, parse_digits, request_field_verdict, tokens,
};

/// Fields a request head may carry (hyper's default is 100); more is a 431.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// Room left in the header map for the fields the pipeline adds (x-forwarded-*,
/// x-request-id, identity), so the map never grows on the way to the upstream.
const EXTRA_HEADERS: usize = 16;

/// What one connection holds a request head to.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest head accepted; a longer one is [`RequestHeadError::TooLarge`] (431).
    pub max_head_bytes: usize,
    /// What happens to fields spelled with `_` that authgate does not control.
    pub underscores: UnderscorePolicy,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 32 * 1024,
            underscores: UnderscorePolicy::default(),
        }
    }
}

/// A parsed request head with its framing decided.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The request target as sent (origin-form, or absolute-form for the pipeline to check).
    pub uri: Uri,
    pub version: Version,
    /// The fields, in order; identical repeated `Content-Length` fields collapsed to one.
    pub headers: HeaderMap,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The body's decoder; `None` for a request without a body.
    pub body: Option<BodyDecoder>,
    /// HTTP/1.1 `Expect: 100-continue`: the client waits before sending its body.
    pub expect_continue: bool,
    /// HTTP/1.1 `Connection: upgrade` with an `Upgrade` field.
    pub wants_upgrade: bool,
    /// `TE: trailers`: the client accepts trailers on a chunked response.
    pub trailers_allowed: bool,
}

/// Why a request head was refused; the connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestHeadError {
    /// Over the byte or field limit: 431.
    #[error("request head too large")]
    TooLarge,
    /// Anything else: 400, with the reason as the message.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Where one header's name and value sit in the head buffer.
/// (u32: heads are far below 4 GiB; keeps the per-request array small to initialize.)
#[derive(Clone, Copy, Default)]
struct FieldIndex {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the head at the start of `buf`; `Ok(None)` if it is not complete yet (nothing
/// consumed). The head's bytes are split off `buf`; what follows (a body, a pipelined
/// request) stays. Field values are slices of the split-off head: no copy.
pub fn parse_request_head(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<RequestHead>, RequestHeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_REQUEST_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut indices = [FieldIndex::default(); MAX_REQUEST_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    // Offsets into `buf`; `max_head_bytes` keeps them far below u32::MAX.
    let offset = |slice: &[u8]| {
        let start = slice.as_ptr() as usize - base;
        (start as u32, slice.len() as u32)
    };
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(RequestHeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestHeadError::TooLarge),
        Err(_) => return Err(RequestHeadError::Invalid("malformed request head")),
    };
    if head_len > limits.max_head_bytes {
        return Err(RequestHeadError::TooLarge);
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| RequestHeadError::Invalid("invalid method"))?;
    let target = parsed.path.unwrap_or_default().as_bytes();
    // SPEC §3: a fragment has no business in a request target. The URI parser would drop it
    // silently, so it is refused here, where the raw target is still visible.
    if target.contains(&b'#') {
        return Err(RequestHeadError::Invalid("fragment in the request target"));
    }
    let target = offset(target);
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let count = parsed.headers.len();
    for (index, field) in indices.iter_mut().zip(parsed.headers.iter()) {
        *index = FieldIndex {
            name: offset(field.name.as_bytes()),
            value: offset(field.value),
        };
    }
    let head = buf.split_to(head_len).freeze();
    let slice = |(start, len): (u32, u32)| head.slice(start as usize..(start + len) as usize);

    let uri = Uri::from_maybe_shared(slice(target))
        .map_err(|_| RequestHeadError::Invalid("invalid request target"))?;
    let mut headers = HeaderMap::with_capacity(count + EXTRA_HEADERS);
    let mut fields = FramingFields::default();
    for index in &indices[..count] {
        let (start, len) = (index.name.0 as usize, index.name.1 as usize);
        let name = HeaderName::from_bytes(&head[start..start + len])
            .map_err(|_| RequestHeadError::Invalid("invalid header name"))?;
        if !request_field_verdict(&name, limits.underscores).map_err(RequestHeadError::Invalid)? {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(slice(index.value))
            .map_err(|_| RequestHeadError::Invalid("invalid header value"))?;
        if fields.note(&name, &value)? == Note::Repeat {
            continue;
        }
        headers.append(name, value);
    }

    let keep_alive = match version {
        Version::HTTP_10 => fields.connection_keep_alive && !fields.connection_close,
        _ => !fields.connection_close,
    };
    let body = fields.body(version)?;
    let expect_continue = version == Version::HTTP_11 && fields.expect_continue;
    let wants_upgrade =
        version == Version::HTTP_11 && fields.connection_upgrade && headers.contains_key(UPGRADE);
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        keep_alive,
        body,
        expect_continue,
        wants_upgrade,
        trailers_allowed: fields.te_trailers,
    }))
}

/// What a field said to [`FramingFields::note`].
#[derive(PartialEq, Eq)]
enum Note {
    Keep,
    /// An identical repeat of a `Content-Length` already seen: says nothing new, dropped.
    Repeat,
}

/// What the head's framing and connection fields say, gathered while the fields are read.
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    /// How many `Transfer-Encoding` fields came, and whether the last said only `chunked`.
    transfer_encodings: u32,
    only_chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    expect_continue: bool,
    te_trailers: bool,
}

impl FramingFields {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<Note, RequestHeadError> {
        if name == CONTENT_LENGTH {
            // One bare length per field: a list (`5, 5`) is refused, as nginx does.
            let length = parse_digits(value.as_bytes())
                .ok_or(RequestHeadError::Invalid("invalid Content-Length"))?;
            match self.content_length {
                Some(seen) if seen == length => return Ok(Note::Repeat),
                Some(_) => {
                    return Err(RequestHeadError::Invalid(
                        "conflicting Content-Length values",
                    ));
                }
                None => self.content_length = Some(length),
            }
        } else if name == TRANSFER_ENCODING {
            self.transfer_encodings += 1;
            self.only_chunked = is_only_chunked(value.as_bytes());
        } else if name == CONNECTION {
            for token in tokens(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.connection_upgrade = true;
                }
            }
        } else if name == EXPECT {
            self.expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == TE {
            self.te_trailers |= has_token(value.as_bytes(), b"trailers");
        }
        Ok(Note::Keep)
    }

    /// The body decoder, `None` for a request without a body (RFC 9112 §6.3).
    fn body(&self, version: Version) -> Result<Option<BodyDecoder>, RequestHeadError> {
        if self.transfer_encodings > 0 {
            if version == Version::HTTP_10 {
                // RFC 9112 §6.1: an HTTP/1.0 recipient cannot be trusted with chunked.
                return Err(RequestHeadError::Invalid(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if self.content_length.is_some() {
                // RFC 9112 §6.3 rule 3: a request with both is a smuggling attempt until
                // proven otherwise; answered 400 and the connection closed.
                return Err(RequestHeadError::Invalid(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if self.transfer_encodings > 1 || !self.only_chunked {
                // Only `chunked` is decoded; any other coding would reach the upstream still
                // applied but no longer announced (RFC 9112 §6.1 lets a server answer 501;
                // 400 keeps one status for every framing refusal, as before).
                return Err(RequestHeadError::Invalid("unsupported Transfer-Encoding"));
            }
            return Ok(Some(BodyDecoder::chunked()));
        }
        Ok(match self.content_length {
            Some(0) | None => None,
            Some(length) => Some(BodyDecoder::length(length)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<RequestHead>, RequestHeadError> {
        parse_request_head(&mut BytesMut::from(input), &RequestLimits::default())
    }

    fn head(input: &[u8]) -> RequestHead {
        parse(input).unwrap().expect("a complete head")
    }

    fn refusal(input: &[u8]) -> RequestHeadError {
        parse(input).expect_err("refused")
    }

    /// RFC 9112 §6.3: the framing each head gets, and what stays in the buffer.
    #[test]
    fn framing_table() {
        let cases: &[(&[u8], Option<u64>, bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, false),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                None,
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Some(5),
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                Some(5),
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                None,
                true,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                None,
                true,
            ),
        ];
        for (input, length, chunked) in cases {
            let parsed = head(input);
            match &parsed.body {
                None => assert!(length.is_none() && !chunked, "{input:?}"),
                Some(decoder) => {
                    assert_eq!(decoder.size_hint().exact(), *length, "{input:?}");
                }
            }
            assert!(parsed.headers.get_all(CONTENT_LENGTH).iter().count() <= 1);
        }
    }

    /// Every framing the parser will not guess at: RFC 9112 §6.1, §6.3, RFC 9110 §8.6.
    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for input in cases {
            assert!(
                matches!(refusal(input), RequestHeadError::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn underscored_fields_follow_the_policy() {
        let input: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\nKeep_Alive: 1\r\nX_Custom: 1\r\nX-Plain: 1\r\n\r\n";
        let dropped = head(input);
        assert!(dropped.headers.contains_key("x-plain"));
        assert!(!dropped.headers.contains_key("x_custom"));
        assert!(!dropped.headers.contains_key("x_forwarded_for"));
        assert!(!dropped.headers.contains_key("keep_alive"));
        let allow = RequestLimits {
            underscores: UnderscorePolicy::Allow,
            ..RequestLimits::default()
        };
        let allowed = parse_request_head(&mut BytesMut::from(input), &allow)
            .unwrap()
            .unwrap();
        assert!(allowed.headers.contains_key("x_custom"));
        assert!(!allowed.headers.contains_key("x_forwarded_for"));
        assert!(!allowed.headers.contains_key("keep_alive"));
    }

    #[test]
    fn connection_rules() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let upgrade =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(upgrade.wants_upgrade);
        assert!(
            !head(b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .wants_upgrade
        );
        let expect = head(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(expect.expect_continue);
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n").trailers_allowed);
    }

    #[test]
    fn partial_heads_wait_and_leave_the_buffer_alone() {
        let full: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        for cut in 0..full.len() - 6 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                parse_request_head(&mut buf, &RequestLimits::default())
                    .unwrap()
                    .is_none()
            );
            assert_eq!(&buf[..], &full[..cut]);
        }
        let mut buf = BytesMut::from(full);
        let parsed = parse_request_head(&mut buf, &RequestLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.body.unwrap().size_hint().exact(), Some(3));
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn heads_are_bounded() {
        let limits = RequestLimits {
            max_head_bytes: 64,
            ..RequestLimits::default()
        };
        let mut long = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        long.extend_from_slice(&[b'a'; 80]);
        assert_eq!(
            parse_request_head(&mut long, &limits).unwrap_err(),
            RequestHeadError::TooLarge
        );
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_REQUEST_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            refusal(many.as_bytes()),
            RequestHeadError::TooLarge,
            "too many fields"
        );
    }
}
