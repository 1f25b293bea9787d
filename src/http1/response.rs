//! How a response written to an HTTP/1.x client is framed: every re-framing decision the
//! server makes, in one function with its RFC reference ([`frame_response`]).
//!
//! The upstream's own framing fields never reach the client as they came: the response
//! writer drops `Transfer-Encoding`, `Connection` and every `Content-Length`, and writes what
//! this function decides (the upstream's length is kept where it is still true).

use http::{StatusCode, Version};

/// What the request decides about its response's framing.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext {
    /// A response to HEAD has no body, whatever its fields say (RFC 9110 §9.3.2).
    pub method_is_head: bool,
    /// HTTP/1.0 clients cannot read chunked coding (RFC 9112 §7).
    pub request_version: Version,
    /// A 101 that switches this connection to another protocol.
    pub upgrading: bool,
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body bytes are written.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, trailers allowed.
    Chunked,
    /// HTTP/1.0 client, unknown length: the body ends when the connection closes.
    Close,
}

/// The framing of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    /// The `Content-Length` field to write, if any.
    pub content_length: Option<u64>,
    pub body: BodyFraming,
}

impl ResponseFraming {
    /// Whether the connection must close after this response (a close-delimited body).
    pub fn closes(&self) -> bool {
        self.body == BodyFraming::Close
    }
}

/// Whether a response with `status` to this request carries no body (RFC 9110 §6.4.1).
fn is_bodiless(context: &ResponseContext, status: StatusCode) -> bool {
    context.method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Decides the framing of a response: `declared` is the upstream's `Content-Length` (its
/// first valid value), `body_length` the body's exact size when known.
///
/// - 1xx and 204: no `Content-Length`, no body (RFC 9110 §8.6: a server MUST NOT send
///   Content-Length with them; §15.2, §15.3.5), and no 101 body either.
/// - HEAD and 304: no body; a declared length is passed on, since it states the length the
///   GET would have had (RFC 9110 §8.6, §15.4.5). An empty body answering HEAD says nothing
///   about that length, so none is made up.
/// - A declared length frames the body (the writer stops there and closes if the body runs
///   past it or falls short).
/// - A body of known size gets `Content-Length`; an unknown size gets chunked coding for
///   HTTP/1.1 clients (RFC 9112 §7.1) and the end of the connection for HTTP/1.0 ones
///   (RFC 9112 §6.3 rule 8).
pub fn frame_response(
    context: &ResponseContext,
    status: StatusCode,
    declared: Option<u64>,
    body_length: Option<u64>,
) -> ResponseFraming {
    const NONE: ResponseFraming = ResponseFraming {
        content_length: None,
        body: BodyFraming::None,
    };
    if context.upgrading || status.is_informational() || status == StatusCode::NO_CONTENT {
        return NONE;
    }
    let bodiless = is_bodiless(context, status);
    if let Some(length) = declared {
        return ResponseFraming {
            content_length: Some(length),
            body: if bodiless {
                BodyFraming::None
            } else {
                BodyFraming::Length(length)
            },
        };
    }
    if let Some(length) = body_length {
        let unknown_head = context.method_is_head && length == 0;
        return ResponseFraming {
            content_length: (status != StatusCode::NOT_MODIFIED && !unknown_head).then_some(length),
            body: if bodiless {
                BodyFraming::None
            } else {
                BodyFraming::Length(length)
            },
        };
    }
    if bodiless {
        return NONE;
    }
    ResponseFraming {
        content_length: None,
        body: if context.request_version == Version::HTTP_11 {
            BodyFraming::Chunked
        } else {
            BodyFraming::Close
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_11: ResponseContext = ResponseContext {
        method_is_head: false,
        request_version: Version::HTTP_11,
        upgrading: false,
    };
    const HEAD_11: ResponseContext = ResponseContext {
        method_is_head: true,
        ..GET_11
    };
    const GET_10: ResponseContext = ResponseContext {
        request_version: Version::HTTP_10,
        ..GET_11
    };

    fn framing(length: Option<u64>, body: BodyFraming) -> ResponseFraming {
        ResponseFraming {
            content_length: length,
            body,
        }
    }

    /// Why, request, status, declared length, body size -> framing.
    type Row = (
        &'static str,
        ResponseContext,
        StatusCode,
        Option<u64>,
        Option<u64>,
        ResponseFraming,
    );

    /// Each row: request, status, declared length, body size -> framing (and its RFC).
    #[test]
    fn framing_table() {
        use BodyFraming::{Chunked, Close, Length, None as NoBody};
        let ok = StatusCode::OK;
        let rows: &[Row] = &[
            (
                "declared length frames the body",
                GET_11,
                ok,
                Some(5),
                None,
                framing(Some(5), Length(5)),
            ),
            (
                "known size gets Content-Length",
                GET_11,
                ok,
                None,
                Some(3),
                framing(Some(3), Length(3)),
            ),
            (
                "unknown size: chunked (9112 §7.1)",
                GET_11,
                ok,
                None,
                None,
                framing(None, Chunked),
            ),
            (
                "unknown size to 1.0: close (9112 §6.3)",
                GET_10,
                ok,
                None,
                None,
                framing(None, Close),
            ),
            (
                "204 never has Content-Length (9110 §8.6)",
                GET_11,
                StatusCode::NO_CONTENT,
                Some(5),
                Some(5),
                framing(None, NoBody),
            ),
            (
                "1xx never has Content-Length (9110 §8.6)",
                GET_11,
                StatusCode::CONTINUE,
                Some(5),
                None,
                framing(None, NoBody),
            ),
            (
                "304 keeps the declared length (9110 §15.4.5)",
                GET_11,
                StatusCode::NOT_MODIFIED,
                Some(5),
                None,
                framing(Some(5), NoBody),
            ),
            (
                "304 gets no made-up length",
                GET_11,
                StatusCode::NOT_MODIFIED,
                None,
                Some(0),
                framing(None, NoBody),
            ),
            (
                "HEAD keeps the declared length (9110 §9.3.2)",
                HEAD_11,
                ok,
                Some(7),
                None,
                framing(Some(7), NoBody),
            ),
            (
                "HEAD with an empty body: no length",
                HEAD_11,
                ok,
                None,
                Some(0),
                framing(None, NoBody),
            ),
            (
                "HEAD with a sized body: its length",
                HEAD_11,
                ok,
                None,
                Some(4),
                framing(Some(4), NoBody),
            ),
            (
                "HEAD with unknown size: nothing",
                HEAD_11,
                ok,
                None,
                None,
                framing(None, NoBody),
            ),
        ];
        for (why, context, status, declared, body, expected) in rows {
            assert_eq!(
                frame_response(context, *status, *declared, *body),
                *expected,
                "{why}"
            );
        }
        let upgrading = ResponseContext {
            upgrading: true,
            ..GET_11
        };
        assert_eq!(
            frame_response(&upgrading, StatusCode::SWITCHING_PROTOCOLS, Some(3), None),
            framing(None, NoBody)
        );
    }
}
