//! The client side of HTTP/1.1 without IO: the request head going out, the response head
//! coming in, and how the response body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::BodyDecoder;
use super::fields::{
    has_token, is_underscored_response_control_name, only_tokens, parse_length_list, tokens,
};

/// Longest response head (status line, fields, empty line). Longer is an error, not a wait.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most fields in a response head (hyper's default too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no framing field (a complete empty body without Content-Length).
    Empty,
    /// Exactly this many bytes, as the request's own `Content-Length` says.
    Declared(u64),
    /// Exactly this many bytes, known from the body; `Content-Length` is added.
    Sized(u64),
    /// `Transfer-Encoding: chunked` is added; trailers go after the last chunk.
    Chunked,
}

impl RequestFraming {
    /// The framing for a request with these fields and a body in this state. A
    /// `Content-Length` field wins, as with hyper's client (the pipeline has already refused
    /// malformed or conflicting ones); then a complete body goes without any framing field,
    /// as hyper sends it (it adds no `Content-Length: 0` either), a body of known size
    /// gets `Content-Length`, and any other body is chunked.
    pub fn of(
        headers: &HeaderMap,
        body_is_end_stream: bool,
        exact_size: Option<u64>,
    ) -> Result<Self, FramingError> {
        if headers.contains_key(CONTENT_LENGTH) {
            return match content_length(headers) {
                Some(length) => Ok(Self::Declared(length)),
                None => Err(FramingError::InvalidContentLength),
            };
        }
        Ok(if body_is_end_stream {
            Self::Empty
        } else if let Some(length) = exact_size {
            Self::Sized(length)
        } else {
            Self::Chunked
        })
    }

    /// The body length the framing promises, if it is a length.
    pub fn length(self) -> Option<u64> {
        match self {
            Self::Empty => Some(0),
            Self::Declared(length) | Self::Sized(length) => Some(length),
            Self::Chunked => None,
        }
    }
}

/// Why a message's framing fields cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid or conflicting Content-Length")]
    InvalidContentLength,
}

/// Writes `METHOD SP request-target SP HTTP/1.1 CRLF`, the fields, `field_lines`, and the
/// framing field `framing` calls for, then the empty line. `target` is the origin-form path
/// and query. `Transfer-Encoding` fields in `headers` are left out: the framing is decided here
/// alone. `field_lines` are complete `name: value\r\n` lines that authgate serialized itself
/// from valid names and values (the caller's identity fields), written as they are.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    field_lines: &[u8],
    framing: RequestFraming,
    out: &mut BytesMut,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(field_lines);
    match framing {
        RequestFraming::Empty | RequestFraming::Declared(_) => {}
        RequestFraming::Sized(length) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = itoa_buffer();
            out.extend_from_slice(format_u64(length, &mut digits));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// `value` in decimal, written at the end of `buf` (20 digits hold any u64).
fn format_u64(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast keeps it exactly.
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[start..];
        }
    }
}

/// A final response head, split off the read buffer, with its body framing decided.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The reason phrase, when it is not the status code's canonical one.
    pub reason: Option<Bytes>,
    pub body: BodyDecoder,
    /// Whether the connection may carry another request once this body is read to its
    /// end: HTTP/1.1, no `Connection: close`, and a body that does not end with the
    /// connection.
    pub keep_alive: bool,
    /// The response has no body by definition (a 1xx, 204 or 304 status, or an answer to
    /// HEAD, RFC 9110 §6.4.1): a body the peer sends anyway would be read as the next
    /// response, which the caller may want to guard against.
    pub no_body: bool,
    /// Interim (1xx) responses were skipped before this one.
    pub interim: bool,
}

/// Why a response head was refused. The connection cannot be used any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseHeadError {
    #[error("response head longer than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("more than {MAX_RESPONSE_HEADERS} response header fields")]
    TooManyHeaders,
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("invalid response header field")]
    InvalidField,
    #[error("invalid or conflicting Content-Length in the response")]
    InvalidContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("response transfer coding other than chunked alone")]
    UnsupportedTransferCoding,
}

/// Parses the response head at the start of `buf`, for a request with `method`. Interim
/// 1xx responses other than 101 are consumed and skipped, as hyper's client does.
/// `Ok(None)`: the head is not complete yet (nothing consumed); read more into `buf`.
///
/// The end of the head is found first, the head split off the buffer, and only then parsed,
/// once: the field values are slices of the split-off head, so they share the read buffer
/// without a copy, and nothing has to be carried from a parse of the unsplit buffer.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    let mut interim = false;
    loop {
        // Empty lines before the status line are ignored (RFC 9112 §2.2), as httparse does.
        let blank = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            buf.advance(blank);
        }
        // A head is looked for in the first MAX_RESPONSE_HEAD bytes only.
        let Some(len) = head_len(&buf[..buf.len().min(MAX_RESPONSE_HEAD)]) else {
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(ResponseHeadError::TooLarge);
            }
            return Ok(None);
        };
        let head = buf.split_to(len).freeze();
        if let Some(mut head) = parse_head(&head, method)? {
            head.interim = interim;
            return Ok(Some(head));
        }
        interim = true;
    }
}

/// The length of the head at the start of `buf`, through the first empty line (ended by
/// CRLF or by a bare LF, as httparse also accepts), if that line has arrived.
fn head_len(buf: &[u8]) -> Option<usize> {
    for lf in memchr::memchr_iter(b'\n', buf) {
        match buf.get(lf + 1..)? {
            [b'\n', ..] => return Some(lf + 2),
            [b'\r', b'\n', ..] => return Some(lf + 3),
            [b'\r'] => return None,
            _ => {}
        }
    }
    None
}

/// Parses a complete head; `None` for an interim response to skip.
fn parse_head(head: &Bytes, method: &Method) -> Result<Option<ResponseHead>, ResponseHeadError> {
    // Uninitialized slots: httparse fills what it uses, and nothing is zeroed per response.
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_RESPONSE_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        head,
        &mut slots,
    );
    match parsed {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        // The head ends at its first empty line for httparse too; anything else is broken.
        Ok(_) => return Err(ResponseHeadError::Malformed(httparse::Error::NewLine)),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseHeadError::TooManyHeaders),
        Err(error) => return Err(ResponseHeadError::Malformed(error)),
    }
    let code = response
        .code
        .ok_or(ResponseHeadError::Malformed(httparse::Error::Status))?;
    let status = StatusCode::from_u16(code)
        .map_err(|_| ResponseHeadError::Malformed(httparse::Error::Status))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(None);
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = response
        .reason
        .filter(|reason| status.canonical_reason() != Some(*reason))
        .map(|reason| head.slice_ref(reason.as_bytes()));

    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let mut length: Option<u64> = None;
    let mut length_invalid = false;
    let mut transfer_encoding = false;
    // Codings listed over every Transfer-Encoding field, in order (RFC 9110 §5.3: several
    // fields make one list); only a list of exactly `chunked` is relayed.
    let mut codings = 0usize;
    let mut chunked = false;
    let mut close = false;
    for field in response.headers.iter() {
        // A `_` spelling of a framing or hop-by-hop field is not relayed: authgate re-frames
        // the response, and a client that folds `_` into `-` must not see a second framing.
        if is_underscored_response_control_name(field.name.as_bytes()) {
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ResponseHeadError::InvalidField)?;
        // The framing fields are looked at here, while the names are at hand, rather than
        // found again in the map.
        if name == CONTENT_LENGTH {
            match (parse_length_list(field.value), length) {
                (Some(new), None) => length = Some(new),
                (Some(new), Some(old)) if new == old => {}
                _ => length_invalid = true,
            }
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
            for coding in tokens(field.value) {
                // Empty list elements do not count (RFC 9110 §5.6.1.2).
                if !coding.is_empty() {
                    codings += 1;
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        } else if name == CONNECTION {
            close |= has_token(field.value, b"close");
            if only_tokens(field.value, &[b"close", b"keep-alive"]) {
                // Connection management for this hop alone, consumed here: the proxy removes
                // `Connection` before answering its client anyway. A field naming other
                // fields is kept, so that those are removed too.
                continue;
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| ResponseHeadError::InvalidField)?;
        headers.append(name, value);
    }

    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD;
    // A 2xx to CONNECT turns the connection into a tunnel; 101 switches protocols. Neither
    // leaves an HTTP/1.1 connection behind.
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS
        || (method == Method::CONNECT && status.is_success());
    let mut keep_alive = version == Version::HTTP_11 && !close && !tunnel;
    let body = if no_body || tunnel {
        BodyDecoder::length(0)
    } else if transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(ResponseHeadError::TransferEncodingInHttp10);
        }
        if length.is_some() || length_invalid {
            // Both framings: Transfer-Encoding wins, the Content-Length must not be passed
            // on, and the connection is not trusted with another message (RFC 9112 §6.3).
            headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
        // Any other coding list cannot be relayed faithfully: authgate decodes chunked
        // and frames the body again for its client, so a coding applied under chunked
        // (`gzip, chunked`) would reach the client without the field that names it, and a
        // body whose last coding is not chunked is delimited by the close (RFC 9112
        // §6.3, rule 4) in a coding authgate does not know (RFC 9112 §7: a recipient
        // must not process a coding it does not understand). A repeated chunked is
        // invalid (RFC 9112 §7.1: chunked is applied at most once). Refused, the client
        // gets 502 and the connection is closed.
        if !(chunked && codings == 1) {
            return Err(ResponseHeadError::UnsupportedTransferCoding);
        }
        BodyDecoder::chunked()
    } else if length_invalid {
        return Err(ResponseHeadError::InvalidContentLength);
    } else if let Some(length) = length {
        BodyDecoder::length(length)
    } else {
        keep_alive = false;
        BodyDecoder::close_delimited()
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        reason,
        body,
        keep_alive,
        no_body,
        interim: false,
    }))
}

/// The value of every `Content-Length` field of `headers`, if they all hold one and the
/// same valid length (a list of identical values counts as that value, RFC 9110 §8.6).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let this = parse_length_list(value.as_bytes())?;
        if length.is_some_and(|length| length != this) {
            return None;
        }
        length = Some(this);
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn parse(input: &[u8], method: &Method) -> Result<Option<ResponseHead>, ResponseHeadError> {
        let mut buf = BytesMut::from(input);
        parse_response_head(&mut buf, method)
    }

    fn head(input: &[u8]) -> ResponseHead {
        parse(input, &Method::GET)
            .unwrap()
            .expect("a complete head")
    }

    fn body_of(head: &mut ResponseHead, rest: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::from(rest);
        let mut body = Vec::new();
        while let Some(frame) = head.body.decode(&mut buf).unwrap() {
            if let Ok(data) = frame.into_data() {
                body.extend_from_slice(&data);
            }
        }
        body
    }

    #[test]
    fn request_head_is_written_with_the_framing_it_needs() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("api.internal"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let cases = [
            (RequestFraming::Empty, ""),
            (RequestFraming::Sized(1234), "content-length: 1234\r\n"),
            (RequestFraming::Sized(0), "content-length: 0\r\n"),
            (RequestFraming::Chunked, "transfer-encoding: chunked\r\n"),
        ];
        let identity = "x-auth-method: api_key\r\nx-auth-subject: alice\r\n";
        for field_lines in ["", identity] {
            for (framing, field) in cases {
                let mut out = BytesMut::new();
                encode_request_head(
                    &Method::POST,
                    "/v1/x?q=1",
                    &headers,
                    field_lines.as_bytes(),
                    framing,
                    &mut out,
                );
                // The map's fields, the given lines, then the framing authgate decided: the
                // lines can neither split a field nor follow the head's end.
                let expected = format!(
                    "POST /v1/x?q=1 HTTP/1.1\r\nhost: api.internal\r\nx-request-id: r1\r\n{field_lines}{field}\r\n"
                );
                assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
                // What an upstream parses back: every field, once, and the head's end where
                // it was written.
                let mut parsed = [httparse::EMPTY_HEADER; 8];
                let mut request = httparse::Request::new(&mut parsed);
                assert_eq!(
                    request.parse(&out).unwrap(),
                    httparse::Status::Complete(out.len())
                );
                let names: Vec<&str> = request.headers.iter().map(|field| field.name).collect();
                let lines = field_lines.matches("\r\n").count();
                assert_eq!(names.len(), 2 + lines + usize::from(!field.is_empty()));
            }
        }
    }

    #[test]
    fn request_framing_follows_hyper_client_rules() {
        let mut with_length = HeaderMap::new();
        with_length.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let none = HeaderMap::new();
        assert_eq!(
            RequestFraming::of(&with_length, false, None),
            Ok(RequestFraming::Declared(5))
        );
        assert_eq!(
            RequestFraming::of(&with_length, true, Some(0)),
            Ok(RequestFraming::Declared(5)),
            "the declared length stands; a body that falls short is an error later"
        );
        assert_eq!(
            RequestFraming::of(&none, true, Some(0)),
            Ok(RequestFraming::Empty)
        );
        assert_eq!(
            RequestFraming::of(&none, false, Some(7)),
            Ok(RequestFraming::Sized(7))
        );
        assert_eq!(
            RequestFraming::of(&none, false, None),
            Ok(RequestFraming::Chunked)
        );
        let mut bad = HeaderMap::new();
        bad.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        bad.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert_eq!(
            RequestFraming::of(&bad, false, None),
            Err(FramingError::InvalidContentLength)
        );
    }

    #[test]
    fn decimal_formatting() {
        for value in [0, 7, 10, 1234, u64::MAX] {
            let mut buf = itoa_buffer();
            assert_eq!(format_u64(value, &mut buf), value.to_string().as_bytes());
        }
    }

    #[test]
    fn content_length_response_with_values_sharing_the_read_buffer() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Usage: 42\r\n\r\nhelloNEXT";
        let mut buf = BytesMut::from(&input[..]);
        let value_at = buf[buf.len() - 15..].as_ptr();
        let mut head = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        assert!(head.keep_alive);
        assert!(
            head.reason.is_none(),
            "canonical reason phrases are not kept"
        );
        assert_eq!(head.headers["x-usage"], "42");
        assert_eq!(head.headers["x-usage"].as_bytes().as_ptr(), value_at);
        assert_eq!(head.body.size_hint().exact(), Some(5));
        let data = head
            .body
            .decode(&mut buf)
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(data, "hello");
        assert!(head.body.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn every_split_point_waits_then_parses_the_same_head() {
        let input: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Made It\r\nContent-Length: 2\r\nA: b\r\n\r\nok";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            let parsed = parse_response_head(&mut buf, &Method::POST).unwrap();
            if cut < input.len() - 2 {
                assert!(parsed.is_none(), "cut at {cut}");
                buf.extend_from_slice(&input[cut..]);
            } else {
                buf.extend_from_slice(&input[cut..]);
                let mut head = parsed.unwrap();
                assert_eq!(body_of(&mut head, &buf), b"ok");
                continue;
            }
            let mut head = parse_response_head(&mut buf, &Method::POST)
                .unwrap()
                .unwrap();
            assert_eq!(head.status, StatusCode::CREATED, "cut at {cut}");
            assert_eq!(head.reason.as_deref(), Some(&b"Made It"[..]));
            assert_eq!(head.headers["a"], "b");
            assert_eq!(body_of(&mut head, &buf), b"ok");
        }
    }

    #[test]
    fn interim_responses_are_skipped_but_101_is_final() {
        let head = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.headers.get("link").is_none());
        assert!(head.body.is_done());

        let head = self::head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(head.body.is_done());
        assert!(!head.keep_alive);
    }

    #[test]
    fn bodiless_responses_ignore_their_length_fields() {
        for (input, method) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..],
                Method::HEAD,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                Method::GET,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
            ),
        ] {
            let head = parse(input, &method).unwrap().unwrap();
            assert!(head.body.is_done(), "{}", String::from_utf8_lossy(input));
            assert!(head.keep_alive);
        }
        let head = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.headers[CONTENT_LENGTH], "1234", "kept for the client");
    }

    #[test]
    fn chunked_and_close_delimited_framing() {
        let mut chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n");
        assert!(chunked.keep_alive);
        assert_eq!(body_of(&mut chunked, b"2\r\nhi\r\n0\r\n\r\n"), b"hi");
        assert!(chunked.body.is_done());

        let no_length = head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        assert!(!no_length.keep_alive);
        assert_eq!(no_length.body.size_hint().exact(), None);

        let both =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!both.keep_alive);
        assert!(both.headers.get(CONTENT_LENGTH).is_none());
    }

    #[test]
    fn keep_alive_needs_http11_without_close() {
        assert!(
            !head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        let old = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(old.version, Version::HTTP_10);
        assert!(!old.keep_alive);
        assert_eq!(
            parse(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &Method::GET
            )
            .unwrap_err(),
            ResponseHeadError::TransferEncodingInHttp10
        );
    }

    #[test]
    fn content_length_must_be_one_valid_value() {
        let same = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(same.body.size_hint().exact(), Some(3));
        for input in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse(input, &Method::GET).unwrap_err(),
                ResponseHeadError::InvalidContentLength,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD, b'a');
        assert_eq!(
            parse(&big, &Method::GET).unwrap_err(),
            ResponseHeadError::TooLarge
        );
        big.truncate(MAX_RESPONSE_HEAD - 1);
        assert!(
            parse(&big, &Method::GET).unwrap().is_none(),
            "still waiting"
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse(&big, &Method::GET).unwrap_err(),
            ResponseHeadError::TooLarge
        );

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&many, &Method::GET).unwrap_err(),
            ResponseHeadError::TooManyHeaders
        );
    }

    /// `_` spellings of framing and hop-by-hop fields are left out of relayed responses (a
    /// client folding `_` into `-` would read a second framing); other `_` fields pass, and
    /// the real framing still frames the body.
    #[test]
    fn underscored_control_fields_are_left_out() {
        let mut parsed = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent_Length: 40\r\nTRANSFER_ENCODING: chunked\r\nKeep_Alive: x\r\nProxy_Authenticate: y\r\nx_other: 1\r\n\r\n",
        );
        let names: Vec<&str> = parsed.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "x_other"]);
        assert_eq!(body_of(&mut parsed, b"okSTRAY"), b"ok");
    }

    /// Byte level, the split check (a length test in the loop, the comparison out of line):
    /// every controlled name spelled with `_` is left out whatever its case, and `_` names of
    /// the same lengths that control nothing pass.
    #[test]
    fn underscored_controls_of_every_length_are_left_out_and_lookalikes_pass() {
        let mut input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for dropped in [
            "content_length",
            "Transfer_Encoding",
            "KEEP_ALIVE",
            "Proxy_Authorization",
            "proxy_anything",
        ] {
            input.extend_from_slice(format!("{dropped}: 1\r\n").as_bytes());
        }
        // Same lengths as controlled names (10, 14, 17), and a `p` start that is not `proxy-`.
        for kept in ["x_a_b_c_de", "content_lengtx", "transfer_encodinx", "p_ath"] {
            input.extend_from_slice(format!("{kept}: 1\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let parsed = head(&input);
        let names: Vec<&str> = parsed.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "content-length",
                "x_a_b_c_de",
                "content_lengtx",
                "transfer_encodinx",
                "p_ath"
            ]
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for input in [
            &b"HTTP/2.0 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse(input, &Method::GET),
                    Err(ResponseHeadError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn connection_management_is_consumed_but_named_fields_are_kept() {
        let plain = head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(plain.headers.get(CONNECTION).is_none());
        assert!(plain.keep_alive);
        let closing = head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert!(closing.headers.get(CONNECTION).is_none());
        assert!(!closing.keep_alive);
        let naming = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(naming.headers[CONNECTION], "keep-alive, x-secret");
        assert!(naming.keep_alive);
    }

    #[test]
    fn bare_lf_heads_and_leading_empty_lines_are_accepted_like_httparse_does() {
        let mut head = head(b"\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 2\n\nok");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(body_of(&mut head, b"ok"), b"ok");
        let mixed = self::head(b"HTTP/1.1 204 No Content\nX-A: b\r\n\r\n");
        assert_eq!(mixed.headers["x-a"], "b");
        let waiting = b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r";
        let mut buf = BytesMut::from(&waiting[..]);
        assert!(
            parse_response_head(&mut buf, &Method::GET)
                .unwrap()
                .is_none()
        );
        assert_eq!(buf.len(), waiting.len(), "nothing consumed while waiting");
    }

    #[test]
    fn bare_lf_head_followed_by_crlf_crlf_in_the_body_keeps_the_body() {
        let input = b"HTTP/1.1 200 OK\nContent-Length: 8\n\nab\r\n\r\ncd";
        let mut buf = BytesMut::from(&input[..]);
        let mut head = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(body_of(&mut head, &buf), b"ab\r\n\r\ncd");
    }

    #[test]
    fn token_lists() {
        assert!(has_token(b"keep-alive, close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), None);
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("10"));
        headers.append(CONTENT_LENGTH, HeaderValue::from_static(" 10 ,10"));
        assert_eq!(content_length(&headers), Some(10));
    }

    #[test]
    fn transfer_codings_other_than_chunked_alone_are_refused() {
        for codings in [
            &b"Transfer-Encoding: gzip\r\n"[..],
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Transfer-Encoding: chunked, gzip\r\n",
            b"Transfer-Encoding: chunked, chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: x-unknown\r\n",
            b"Transfer-Encoding: chunked;ext=1\r\n",
            b"Transfer-Encoding: \r\n",
            b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n",
        ] {
            let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
            input.extend_from_slice(codings);
            input.extend_from_slice(b"\r\n2\r\nhi\r\n0\r\n\r\n");
            let mut buf = BytesMut::from(&input[..]);
            assert_eq!(
                parse_response_head(&mut buf, &Method::GET).unwrap_err(),
                ResponseHeadError::UnsupportedTransferCoding,
                "{}",
                String::from_utf8_lossy(codings)
            );
        }
        // Empty list elements do not count; chunked alone, in any case, is relayed.
        let head = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , CHUNKED,\r\n\r\n");
        assert!(head.keep_alive);
        // A response without a body has nothing to re-frame: its framing fields are ignored.
        let bodiless = parse(
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(bodiless.body.is_done());
    }

    #[test]
    fn bodiless_and_interim_responses_are_flagged() {
        assert!(!head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").no_body);
        let no_content = head(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(no_content.no_body && !no_content.interim);
        let answer_to_head = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert!(answer_to_head.no_body);
        let after_interim =
            head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(after_interim.interim && !after_interim.no_body);
    }
}
