//! authgate's HTTP/1.1 codec without IO: every framing rule lives here, once, and both the
//! server connection (`server/h1.rs`) and the upstream client (`forward/h1.rs`) only drive
//! sockets around it.
//!
//! - [`fields`]: field grammar (token lists, lengths, codings, `_`-folded names);
//! - [`request`]: a request head and its framing (server side);
//! - [`response`]: how a response to a client is framed (server side);
//! - [`client`]: the request head going out and the response head coming back;
//! - this module: message bodies, decoded from Content-Length, chunked coding or the end of
//!   the connection, and the chunked encoding.
//!
//! `docs/http1.md` lists each rule with its RFC section and where it is enforced.
//!
//! Nothing here touches a socket. The caller reads into a `BytesMut` and hands it to
//! [`BodyDecoder::decode`], which takes what belongs to the body; payload frames are split
//! off that buffer, so they share its allocation instead of being copied. Every wait for
//! more input is bounded: a decoder never asks for more than [`MAX_CHUNK_LINE`] bytes to
//! finish a chunk-size line or [`MAX_TRAILER_SECTION`] bytes to finish the trailers, so a
//! caller that reads only when `decode` returned `Ok(None)` keeps its buffer bounded too.

mod chunked;
pub mod client;
pub mod fields;
pub mod request;
pub mod response;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

pub use chunked::{
    CHUNK_TERMINATOR, MAX_CHUNK_LINE, MAX_TRAILER_FIELDS, MAX_TRAILER_SECTION, encode_chunk_header,
    encode_last_chunk,
};

use chunked::ChunkedDecoder;

/// Why a body could not be decoded. The connection it came from cannot be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the connection closed before the end of the body")]
    Truncated,
    #[error("invalid chunk-size line")]
    InvalidChunkSize,
    #[error("chunk size does not fit in 64 bits")]
    ChunkSizeOverflow,
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("bare LF in chunked framing")]
    BareLf,
    #[error("trailer section longer than {MAX_TRAILER_SECTION} bytes")]
    TrailersTooLarge,
    #[error("more than {MAX_TRAILER_FIELDS} trailer fields")]
    TooManyTrailers,
    #[error("invalid trailer field")]
    InvalidTrailer,
}

/// Decodes one message body from the bytes that follow its head.
#[derive(Debug)]
pub struct BodyDecoder {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Content-Length: the bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Close-delimited: everything until EOF; `ended` once EOF was seen.
    Eof {
        ended: bool,
    },
}

impl BodyDecoder {
    /// A body of exactly `length` bytes (`Content-Length`; 0 for a message with no body).
    pub fn length(length: u64) -> Self {
        Self {
            kind: Kind::Length(length),
        }
    }

    /// A body in chunked transfer coding.
    pub fn chunked() -> Self {
        Self {
            kind: Kind::Chunked(ChunkedDecoder::new()),
        }
    }

    /// A close-delimited body: it ends when the connection does. (Not named `eof`, which is
    /// the method that reports the end of the connection.)
    pub fn close_delimited() -> Self {
        Self {
            kind: Kind::Eof { ended: false },
        }
    }

    /// Takes the next frame out of `buf`: payload bytes (split off, not copied) or the
    /// trailers. `Ok(None)` means the decoder needs more input, or the body is complete
    /// (see [`is_done`](Self::is_done)); bytes past the end of the body are left in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, DecodeError> {
        match &mut self.kind {
            Kind::Length(remaining) => {
                if *remaining == 0 || buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                *remaining -= take as u64;
                Ok(Some(Frame::data(buf.split_to(take).freeze())))
            }
            Kind::Chunked(chunked) => chunked.decode(buf),
            Kind::Eof { ended } => {
                if *ended || buf.is_empty() {
                    return Ok(None);
                }
                // `split` keeps the spare capacity in `buf` for the next read.
                Ok(Some(Frame::data(buf.split().freeze())))
            }
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Length(remaining) => *remaining == 0,
            Kind::Chunked(chunked) => chunked.is_done(),
            Kind::Eof { ended } => *ended,
        }
    }

    /// The connection reached EOF (after every buffered byte went through `decode`). Fine
    /// for a close-delimited body, which ends here, and for a body already complete; a body
    /// with a length or chunked framing that is not complete was truncated.
    pub fn eof(&mut self) -> Result<(), DecodeError> {
        if let Kind::Eof { ended } = &mut self.kind {
            *ended = true;
        }
        if self.is_done() {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }

    /// The body length still to come when the framing says it; `is_done` for the end.
    pub fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Length(remaining) => SizeHint::with_exact(*remaining),
            Kind::Eof { ended: true } => SizeHint::with_exact(0),
            Kind::Chunked(chunked) if chunked.is_done() => SizeHint::with_exact(0),
            Kind::Chunked(_) | Kind::Eof { ended: false } => SizeHint::default(),
        }
    }
}

/// Writes each field as `name: value\r\n`, the form of header and trailer sections. The
/// names and values of a `HeaderMap` were validated when they were built, so they cannot
/// carry a CR or LF that would split the section.
pub fn encode_fields(fields: &HeaderMap, out: &mut BytesMut) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(frame: Frame<Bytes>) -> Bytes {
        frame.into_data().expect("a data frame")
    }

    #[test]
    fn length_body_takes_its_bytes_and_leaves_the_rest() {
        let mut decoder = BodyDecoder::length(5);
        assert_eq!(decoder.size_hint().exact(), Some(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(data(decoder.decode(&mut buf).unwrap().unwrap()), "hel");
        assert!(!decoder.is_done());
        assert_eq!(decoder.size_hint().exact(), Some(2));
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"loHTTP/1.1");
        assert_eq!(data(decoder.decode(&mut buf).unwrap().unwrap()), "lo");
        assert!(decoder.is_done());
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            &buf[..],
            b"HTTP/1.1",
            "the next message stays in the buffer"
        );
        assert_eq!(decoder.eof(), Ok(()));
    }

    #[test]
    fn length_body_frames_share_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"abcdef");
        let start = buf.as_ptr();
        let mut decoder = BodyDecoder::length(6);
        let frame = data(decoder.decode(&mut buf).unwrap().unwrap());
        assert_eq!(
            frame.as_ptr(),
            start,
            "zero-copy: the frame is the buffer's own bytes"
        );
    }

    #[test]
    fn empty_length_body_is_done_at_once() {
        let mut decoder = BodyDecoder::length(0);
        assert!(decoder.is_done());
        assert_eq!(decoder.size_hint().exact(), Some(0));
        let mut buf = BytesMut::from(&b"next"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn truncated_length_body_is_an_error_at_eof() {
        let mut decoder = BodyDecoder::length(10);
        let mut buf = BytesMut::from(&b"abc"[..]);
        decoder.decode(&mut buf).unwrap();
        assert_eq!(decoder.eof(), Err(DecodeError::Truncated));
    }

    #[test]
    fn close_delimited_body_ends_at_eof() {
        let mut decoder = BodyDecoder::close_delimited();
        assert_eq!(decoder.size_hint().exact(), None);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(data(decoder.decode(&mut buf).unwrap().unwrap()), "abc");
        assert!(buf.is_empty());
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert!(!decoder.is_done());
        assert_eq!(decoder.eof(), Ok(()));
        assert!(decoder.is_done());
        assert_eq!(decoder.size_hint().exact(), Some(0));
    }

    #[test]
    fn truncated_chunked_body_is_an_error_at_eof() {
        for input in [
            &b""[..],
            b"5\r\nab",
            b"5\r\nabcde",
            b"5\r\nabcde\r\n",
            b"0\r\n",
        ] {
            let mut decoder = BodyDecoder::chunked();
            let mut buf = BytesMut::from(input);
            while decoder.decode(&mut buf).unwrap().is_some() {}
            assert_eq!(decoder.eof(), Err(DecodeError::Truncated), "{input:?}");
        }
        let mut decoder = BodyDecoder::chunked();
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert_eq!(decoder.eof(), Ok(()));
    }

    #[test]
    fn fields_are_written_one_per_line() {
        let mut fields = HeaderMap::new();
        fields.insert("x-one", "1".parse().unwrap());
        fields.append("x-two", "a".parse().unwrap());
        fields.append("x-two", "b".parse().unwrap());
        let mut out = BytesMut::new();
        encode_fields(&fields, &mut out);
        assert_eq!(&out[..], b"x-one: 1\r\nx-two: a\r\nx-two: b\r\n");
    }
}
