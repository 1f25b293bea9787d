//! The chunked transfer coding (RFC 9112 §7.1): a strict, bounded decoder and the encoder.
//!
//! The decoder accepts exactly the grammar, with CRLF line endings only (a bare LF is how
//! two parsers come to disagree on where a message ends), and bounds every line it has to
//! wait for: a chunk-size line with its extensions, and the trailer section.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    HOST, MAX_FORWARDS, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::DecodeError;

/// Longest chunk-size line, extensions and CRLF included. Real extensions are rare and
/// short; the bound keeps a peer from making us buffer an endless line.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Longest trailer section, its final empty line included (hyper's limit too).
pub const MAX_TRAILER_SECTION: usize = 16 * 1024;
/// Most trailer fields in one section (hyper's default header count).
pub const MAX_TRAILER_FIELDS: usize = 100;
/// Ends every chunk's data.
pub const CHUNK_TERMINATOR: &[u8] = b"\r\n";

/// Where a chunked body's decoding stands.
#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// A chunk-size line, whose first `scanned` bytes hold no LF (so a line arriving a byte
    /// at a time is not searched again from its start).
    Size {
        scanned: usize,
    },
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk, up to its empty line; `scanned` is the
    /// start of the first line not yet complete.
    Trailers {
        scanned: usize,
    },
    Done,
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        Self {
            state: State::Size { scanned: 0 },
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub(super) fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<Bytes>>, DecodeError> {
        loop {
            match self.state {
                State::Size { scanned } => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    let Some(lf) = find_lf(window, scanned) else {
                        if window.len() == MAX_CHUNK_LINE {
                            return Err(DecodeError::ChunkLineTooLong);
                        }
                        self.state = State::Size {
                            scanned: window.len(),
                        };
                        return Ok(None);
                    };
                    let size = parse_size_line(&window[..lf])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        State::Trailers { scanned: 0 }
                    } else {
                        State::Data { remaining: size }
                    };
                }
                State::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Some(Frame::data(buf.split_to(take).freeze())));
                }
                State::DataEnd => match buf.first_chunk::<2>() {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Size { scanned: 0 };
                    }
                    Some(_) => return Err(crlf_error(buf[0])),
                    None => match buf.first() {
                        None | Some(b'\r') => return Ok(None),
                        Some(&other) => return Err(crlf_error(other)),
                    },
                },
                State::Trailers { mut scanned } => {
                    let Some(end) = trailer_section_end(buf, &mut scanned)? else {
                        self.state = State::Trailers { scanned };
                        return Ok(None);
                    };
                    self.state = State::Done;
                    if end == 2 {
                        // The usual case: no trailers, only the empty line.
                        buf.advance(2);
                        return Ok(None);
                    }
                    let section = buf.split_to(end).freeze();
                    return parse_trailers(&section).map(|fields| Some(Frame::trailers(fields)));
                }
                State::Done => return Ok(None),
            }
        }
    }
}

/// The error for a byte where the CRLF after chunk data belongs.
fn crlf_error(byte: u8) -> DecodeError {
    if byte == b'\n' {
        DecodeError::BareLf
    } else {
        DecodeError::MissingCrlf
    }
}

fn find_lf(window: &[u8], from: usize) -> Option<usize> {
    window[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)
}

/// `chunk-size [ chunk-ext ] CR`, the line before its LF:
/// `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`. Extensions are ignored,
/// as no extension is defined; their bytes are only checked to be visible text or
/// whitespace, so no CR or other control byte hides in the line.
fn parse_size_line(line: &[u8]) -> Result<u64, DecodeError> {
    let Some((b'\r', line)) = line.split_last() else {
        return Err(DecodeError::BareLf);
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(DecodeError::InvalidChunkSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        if size >> 60 != 0 {
            return Err(DecodeError::ChunkSizeOverflow);
        }
        // The byte is a hex digit, so `to_digit` always succeeds.
        let digit = char::from(b).to_digit(16).unwrap_or(0);
        size = (size << 4) | u64::from(digit);
    }
    let rest = &line[digits..];
    let after_space = rest.iter().position(|&b| b != b' ' && b != b'\t');
    match after_space.map(|i| &rest[i..]) {
        None => Ok(size),
        Some([b';', extensions @ ..]) => {
            if extensions
                .iter()
                .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
            {
                Ok(size)
            } else {
                Err(DecodeError::InvalidChunkSize)
            }
        }
        Some(_) => Err(DecodeError::InvalidChunkSize),
    }
}

/// The length of the trailer section at the start of `buf` with its empty line, once it is
/// all there. `line_start` is where the first line not yet checked begins; it is moved past
/// the complete lines when the section is not complete yet.
fn trailer_section_end(buf: &[u8], line_start: &mut usize) -> Result<Option<usize>, DecodeError> {
    let window = &buf[..buf.len().min(MAX_TRAILER_SECTION)];
    loop {
        let Some(lf) = find_lf(window, *line_start) else {
            if window.len() == MAX_TRAILER_SECTION {
                return Err(DecodeError::TrailersTooLarge);
            }
            return Ok(None);
        };
        // Each line ends in CRLF; for an empty line the byte before is the previous LF.
        if lf == 0 || window[lf - 1] != b'\r' {
            return Err(DecodeError::BareLf);
        }
        if lf == *line_start + 1 {
            return Ok(Some(lf + 1));
        }
        *line_start = lf + 1;
    }
}

/// The fields of a complete trailer section (CRLF line endings already checked).
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, DecodeError> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let fields = match httparse::parse_headers(section, &mut parsed) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Err(httparse::Error::TooManyHeaders) => return Err(DecodeError::TooManyTrailers),
        Ok(httparse::Status::Partial) | Err(_) => return Err(DecodeError::InvalidTrailer),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| DecodeError::InvalidTrailer)?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(field.value))
            .map_err(|_| DecodeError::InvalidTrailer)?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// Writes the line that opens a chunk of `len` bytes: `{len:x}\r\n`. A length of 0 is the
/// last-chunk line that ends the body, so callers skip empty data frames.
pub fn encode_chunk_header(len: usize, out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 16 hex digits hold any usize up to 64 bits, then CRLF.
    let mut line = [0u8; 18];
    line[16..].copy_from_slice(b"\r\n");
    let mut start = 16;
    let mut rest = len;
    loop {
        start -= 1;
        line[start] = HEX[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&line[start..]);
}

/// Writes the end of a chunked body: the last chunk, the trailers if any, the empty line.
/// Trailer fields that must not be sent as trailers (framing, routing, authentication and
/// content metadata, as hyper also drops them; RFC 9110 §6.5.1) are left out: a recipient
/// that merged them into the header section could be misled about the message.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if is_allowed_trailer(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn is_allowed_trailer(name: &HeaderName) -> bool {
    // A `_` spelling of a framing or hop-by-hop field is no more allowed than the field.
    !super::fields::is_underscored_response_control(name)
        && !matches!(
            *name,
            AUTHORIZATION
                | CACHE_CONTROL
                | CONTENT_ENCODING
                | CONTENT_LENGTH
                | CONTENT_RANGE
                | CONTENT_TYPE
                | HOST
                | MAX_FORWARDS
                | SET_COOKIE
                | TRAILER
                | TRANSFER_ENCODING
                | TE
        )
}

#[cfg(test)]
mod tests {
    use super::super::BodyDecoder;
    use super::*;

    /// What a decoder produced: the payload, the trailers, and how it stopped.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        result: Result<(), DecodeError>,
        done: bool,
        leftover: Vec<u8>,
    }

    /// Feeds `input` in the pieces given by `cuts` (ascending offsets), decoding after each
    /// piece as far as possible, like a caller that reads and decodes in turn.
    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Decoded {
        let mut decoder = BodyDecoder::chunked();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut start = 0;
        let ends = cuts.iter().copied().chain([input.len()]);
        for end in ends {
            buf.extend_from_slice(&input[start..end]);
            start = end;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => match frame.into_data() {
                        Ok(bytes) => {
                            assert!(!bytes.is_empty(), "no empty data frames");
                            data.extend_from_slice(&bytes);
                        }
                        Err(frame) => {
                            assert!(trailers.is_none(), "trailers come once");
                            trailers = frame.into_trailers().ok();
                        }
                    },
                    Ok(None) => break,
                    Err(error) => {
                        return Decoded {
                            data,
                            trailers,
                            result: Err(error),
                            done: decoder.is_done(),
                            leftover: buf.to_vec(),
                        };
                    }
                }
            }
        }
        Decoded {
            data,
            trailers,
            result: Ok(()),
            done: decoder.is_done(),
            leftover: buf.to_vec(),
        }
    }

    fn decode_all(input: &[u8]) -> Decoded {
        decode_in_pieces(input, &[])
    }

    fn error_of(input: &[u8]) -> DecodeError {
        decode_all(input).result.expect_err("input must be refused")
    }

    fn trailer_map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const WITH_TRAILERS: &[u8] =
        b"5\r\nhello\r\n6;name=value\r\n world\r\nA ; a=\"b c\"\r\n0123456789\r\n0\r\nx-usage-tokens: 42\r\nx-usage-model:  m1 \r\n\r\nNEXT";

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let decoded = decode_all(WITH_TRAILERS);
        assert_eq!(decoded.result, Ok(()));
        assert_eq!(decoded.data, b"hello world0123456789");
        assert_eq!(
            decoded.trailers,
            Some(trailer_map(&[
                ("x-usage-tokens", "42"),
                ("x-usage-model", "m1")
            ]))
        );
        assert!(decoded.done);
        assert_eq!(
            decoded.leftover, b"NEXT",
            "the next message stays in the buffer"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let whole = decode_all(WITH_TRAILERS);
        for cut in 0..=WITH_TRAILERS.len() {
            assert_eq!(
                decode_in_pieces(WITH_TRAILERS, &[cut]),
                whole,
                "cut at {cut}"
            );
        }
        for first in 0..=WITH_TRAILERS.len() {
            for second in first..=WITH_TRAILERS.len() {
                assert_eq!(
                    decode_in_pieces(WITH_TRAILERS, &[first, second]),
                    whole,
                    "cuts at {first} and {second}"
                );
            }
        }
        let bytewise: Vec<usize> = (1..WITH_TRAILERS.len()).collect();
        assert_eq!(decode_in_pieces(WITH_TRAILERS, &bytewise), whole);
    }

    #[test]
    fn body_without_trailers_ends_with_no_trailer_frame() {
        let input = b"3\r\nabc\r\n0\r\n\r\n";
        let whole = decode_all(input);
        assert_eq!(whole.result, Ok(()));
        assert_eq!(whole.data, b"abc");
        assert_eq!(whole.trailers, None);
        assert!(whole.done);
        assert!(whole.leftover.is_empty());
        for cut in 0..=input.len() {
            assert_eq!(decode_in_pieces(input, &[cut]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn incomplete_input_waits_without_consuming_a_partial_line() {
        let mut decoder = BodyDecoder::chunked();
        let mut buf = BytesMut::from(&b"1f"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"1f");
        assert!(!decoder.is_done());
        buf.extend_from_slice(b"\r\n");
        assert!(
            decoder.decode(&mut buf).unwrap().is_none(),
            "size line, no data yet"
        );
        assert!(buf.is_empty());
        assert_eq!(decoder.size_hint().exact(), None);
    }

    #[test]
    fn data_frames_share_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"4\r\nabcd\r\n");
        let data_at = buf[3..].as_ptr();
        let mut decoder = BodyDecoder::chunked();
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().as_ptr(), data_at);
    }

    #[test]
    fn largest_chunk_size_is_accepted_and_one_more_digit_overflows() {
        let mut decoder = BodyDecoder::chunked();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert_eq!(
            error_of(b"10000000000000000\r\n"),
            DecodeError::ChunkSizeOverflow
        );
        assert_eq!(
            error_of(b"fffffffffffffffff\r\n"),
            DecodeError::ChunkSizeOverflow
        );
        // Leading zeros are part of the grammar and cost no overflow.
        assert_eq!(
            decode_all(b"00000000000000000003\r\nabc\r\n0\r\n\r\n").data,
            b"abc"
        );
    }

    #[test]
    fn malformed_size_lines_are_refused() {
        for input in [
            &b"\r\n"[..],
            b"g\r\n",
            b" 5\r\n",
            b"+5\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5 5\r\n",
            b"5 x\r\n",
            b"5;a\rb\r\n",
            b"5;a\x00\r\n",
            b"5;a\x7f\r\n",
            b"5\r\r\n",
        ] {
            assert_eq!(
                error_of(input),
                DecodeError::InvalidChunkSize,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bare_lf_is_refused_everywhere() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"\n",
            b"5;ext\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: y\n\r\n",
            b"0\r\nx: y\r\n\n",
        ] {
            assert_eq!(
                error_of(input),
                DecodeError::BareLf,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunk_data_must_end_in_crlf() {
        for input in [
            &b"5\r\nhelloX"[..],
            b"5\r\nhello\rX",
            b"5\r\nhello world\r\n",
        ] {
            assert_eq!(
                error_of(input),
                DecodeError::MissingCrlf,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunk_line_is_bounded() {
        // Exactly the limit, CRLF included, is fine.
        let mut line = b"5;".to_vec();
        line.resize(MAX_CHUNK_LINE - 2, b'a');
        line.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&line).data, b"hello");

        let mut line = b"5;".to_vec();
        line.resize(MAX_CHUNK_LINE - 1, b'a');
        line.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&line).result, Err(DecodeError::ChunkLineTooLong));

        // An endless line is refused once the limit is buffered, not when it ends.
        let mut decoder = BodyDecoder::chunked();
        let mut buf = BytesMut::from(&b"5;"[..]);
        buf.resize(MAX_CHUNK_LINE - 1, b'a');
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"a");
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err(),
            DecodeError::ChunkLineTooLong
        );
    }

    #[test]
    fn trailer_section_is_bounded() {
        let mut input = b"0\r\nx-big: ".to_vec();
        input.resize(3 + MAX_TRAILER_SECTION, b'a');
        assert_eq!(
            decode_all(&input).result,
            Err(DecodeError::TrailersTooLarge)
        );
        // Just under the limit, the section is accepted.
        let mut input = b"0\r\nx-big: ".to_vec();
        input.resize(3 + MAX_TRAILER_SECTION - 4, b'a');
        input.extend_from_slice(b"\r\n\r\n");
        let decoded = decode_all(&input);
        assert_eq!(decoded.result, Ok(()));
        assert_eq!(
            decoded.trailers.unwrap()["x-big"].len(),
            MAX_TRAILER_SECTION - 4 - 7
        );
    }

    #[test]
    fn trailer_field_count_is_bounded() {
        let section = |count: usize| {
            let mut input = b"0\r\n".to_vec();
            for i in 0..count {
                input.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
            }
            input.extend_from_slice(b"\r\n");
            input
        };
        let decoded = decode_all(&section(MAX_TRAILER_FIELDS));
        assert_eq!(decoded.trailers.unwrap().len(), MAX_TRAILER_FIELDS);
        assert_eq!(
            decode_all(&section(MAX_TRAILER_FIELDS + 1)).result,
            Err(DecodeError::TooManyTrailers)
        );
    }

    #[test]
    fn invalid_trailer_fields_are_refused() {
        for input in [
            &b"0\r\nbad name: x\r\n\r\n"[..],
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: empty-name\r\n\r\n",
            b"0\r\nx-a: 1\r\n folded\r\n\r\n",
            b"0\r\nx-ctl: a\x01b\r\n\r\n",
            b"0\r\nx-a : spaced\r\n\r\n",
            b"0\r\nx-cr: a\rb\r\n\r\n",
        ] {
            assert_eq!(
                error_of(input),
                DecodeError::InvalidTrailer,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// A small deterministic generator, so the hostile-input test needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_never_buffers_past_the_bounds() {
        // Fragments of valid and broken framing, glued together at random.
        const PIECES: &[&[u8]] = &[
            b"0",
            b"1",
            b"f",
            b"F",
            b"a",
            b"\r",
            b"\n",
            b"\r\n",
            b";",
            b" ",
            b"\t",
            b"=",
            b"x",
            b":",
            b"\x00",
            b"\xff",
            b"10\r\n",
            b"0\r\n",
            b"x: y\r\n",
            b"ffffffffffffffff",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut decoder = BodyDecoder::chunked();
            let mut buf = BytesMut::new();
            let pieces = 1 + rng.below(40);
            for _ in 0..pieces {
                buf.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                if rng.below(8) == 0 {
                    let len = rng.below(300);
                    buf.extend(std::iter::repeat_n(b'a', len));
                }
                match drain(&mut decoder, &mut buf) {
                    Ok(()) if !decoder.is_done() => assert!(
                        buf.len() < MAX_TRAILER_SECTION,
                        "waiting for more input with {} bytes buffered",
                        buf.len()
                    ),
                    Ok(()) | Err(_) => break,
                }
            }
        }
    }

    fn drain(decoder: &mut BodyDecoder, buf: &mut BytesMut) -> Result<(), DecodeError> {
        while decoder.decode(buf)?.is_some() {}
        Ok(())
    }

    #[test]
    fn chunk_header_is_lowercase_hex() {
        for (len, line) in [
            (0, &b"0\r\n"[..]),
            (1, b"1\r\n"),
            (10, b"a\r\n"),
            (255, b"ff\r\n"),
            (4096, b"1000\r\n"),
            (usize::MAX, b"ffffffffffffffff\r\n"),
        ] {
            let mut out = BytesMut::new();
            encode_chunk_header(len, &mut out);
            assert_eq!(&out[..], line, "{len}");
        }
    }

    #[test]
    fn last_chunk_carries_trailers_but_not_framing_fields() {
        let mut out = BytesMut::new();
        encode_last_chunk(None, &mut out);
        assert_eq!(&out[..], b"0\r\n\r\n");

        let trailers = trailer_map(&[
            ("x-usage-tokens", "42"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("content_length", "5"),
            ("transfer_encoding", "chunked"),
            ("x-usage-tokens", "43"),
        ]);
        let mut out = BytesMut::new();
        encode_last_chunk(Some(&trailers), &mut out);
        assert_eq!(
            &out[..],
            b"0\r\nx-usage-tokens: 42\r\nx-usage-tokens: 43\r\n\r\n"
        );
    }

    #[test]
    fn encoded_bodies_decode_to_what_was_encoded() {
        let mut rng = XorShift(7);
        for _ in 0..200 {
            let mut payload = Vec::new();
            let mut wire = BytesMut::new();
            for _ in 0..rng.below(6) {
                let len = 1 + rng.below(5000);
                let chunk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                encode_chunk_header(chunk.len(), &mut wire);
                wire.extend_from_slice(&chunk);
                wire.extend_from_slice(CHUNK_TERMINATOR);
                payload.extend_from_slice(&chunk);
            }
            let trailers = trailer_map(&[("x-usage-tokens", "7")]);
            let with_trailers = rng.below(2) == 0;
            encode_last_chunk(with_trailers.then_some(&trailers), &mut wire);
            let cut = rng.below(wire.len() + 1);
            let decoded = decode_in_pieces(&wire, &[cut]);
            assert_eq!(decoded.result, Ok(()));
            assert_eq!(decoded.data, payload);
            assert_eq!(decoded.trailers, with_trailers.then_some(trailers));
            assert!(decoded.done);
        }
    }
}
