//! Request-path normalization (SPEC §3): one canonical path for matching and forwarding.
//!
//! The gateway authorizes a request by matching its path against route prefixes and then
//! forwards the *same* string upstream. If matching and forwarding saw different spellings
//! of a path (`/admin` vs `/public/%2e%2e/admin`), an upstream that normalizes differently
//! could be reached on a route the policy never allowed. So every path is reduced to one
//! canonical form first, and anything ambiguous is refused outright rather than guessed at.
//!
//! Steps, in SPEC order: percent-encoded unreserved characters are decoded (other escapes are
//! kept with uppercase hex), repeated slashes are merged, then `.`/`..` segments are removed
//! (RFC 3986 §5.2.4). Because decoding never produces a `/` (encoded slashes are rejected),
//! all three steps can run segment by segment in a single left-to-right scan.
//!
//! This runs on every request, so the common case (an already-canonical path) is a single
//! byte scan that returns `Cow::Borrowed`; at most one `String` is allocated otherwise.

use std::borrow::Cow;

/// Why a request path was refused; every variant maps to `400 Bad Request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (the caller handles `*` separately).
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator would be a second way to spell a segment boundary.
    EncodedSlash,
    /// `%00`: upstreams written in C-like languages may truncate at it.
    EncodedNul,
    /// A raw `\`: some upstreams treat it as a separator.
    RawBackslash,
    /// `%` without two hex digits, or escapes whose bytes are not valid UTF-8.
    InvalidPercentEncoding,
    /// A `..` segment that would climb above `/`.
    AboveRoot,
    /// `..;x` or `.;x`: a dot segment with path parameters, which Tomcat, Jetty and Spring
    /// read as `..` / `.` (the classic `/public/..;/admin` gateway bypass).
    DotSegmentParameters,
    /// A control character, raw space, raw `#`, raw `?` or raw non-ASCII byte.
    ForbiddenCharacter,
}

impl PathError {
    /// Short human text for the `400` response body.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path does not start with '/'",
            Self::EncodedSlash => "encoded slash or backslash in path",
            Self::EncodedNul => "encoded NUL in path",
            Self::RawBackslash => "backslash in path",
            Self::InvalidPercentEncoding => "invalid percent-encoding in path",
            Self::AboveRoot => "path climbs above the root",
            Self::DotSegmentParameters => "dot segment with parameters (..;) in path",
            Self::ForbiddenCharacter => "forbidden character in path",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// Normalizes the raw path component of a request target (no query string).
///
/// Returns `Cow::Borrowed(path)` when the path is already canonical, so the hot path does
/// not allocate. On success the result starts with `/`, has no empty, `.` or `..` segments
/// (except a trailing slash), no escapes of unreserved characters and no lowercase hex, and
/// normalizing it again returns it unchanged.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let normal = normalize_segments(path)?;
    // After every other rule: dot segments with parameters (`..;`), checked on the raw path.
    if path.as_bytes().contains(&b';') {
        path.split('/')
            .try_for_each(|segment| reject_dot_parameters(segment.as_bytes()))?;
    }
    Ok(normal)
}

fn normalize_segments(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    let Some(mut start) = first_noncanonical_segment(bytes) else {
        return Ok(Cow::Borrowed(path));
    };
    // `None` while the output is still identical to the input prefix `path[..start]`; the
    // buffer is only created at the first segment that changes.
    let mut out: Option<String> = None;
    // SPEC orders decoding before dot removal, so an encoding error anywhere in the path
    // wins over a `..` that climbs too high: remember the climb and keep validating.
    let mut above_root = false;
    loop {
        let (end, kind) = scan_segment(bytes, start)?;
        let last = end == bytes.len();
        if !above_root {
            // Slicing `path[start..end]` cannot split a character: `scan_segment` rejected
            // every non-ASCII byte, and both ends sit next to a `/` or at the end of `path`.
            match kind {
                // While nothing has changed, the output is `path[..end]` and costs nothing.
                Segment::Plain => {
                    if let Some(buf) = out.as_mut() {
                        buf.push_str(&path[start..end]);
                        if !last {
                            buf.push('/');
                        }
                    }
                }
                Segment::Rewrite => {
                    let buf = materialize(&mut out, path, start);
                    push_decoded(buf, &path[start..end]);
                    if !last {
                        buf.push('/');
                    }
                }
                // A trailing empty segment is the trailing slash, which is kept; any other
                // empty segment is a repeated slash, dropped by not copying it.
                Segment::Empty => {
                    if !last {
                        materialize(&mut out, path, start);
                    }
                }
                // The output already ends in `/`, so dropping `.` (even a trailing one)
                // leaves the trailing slash RFC 3986 §5.2.4 asks for.
                Segment::Dot => {
                    materialize(&mut out, path, start);
                }
                Segment::DotDot => {
                    let buf = materialize(&mut out, path, start);
                    if !pop_segment(buf) {
                        above_root = true;
                    }
                }
            }
        }
        if last {
            break;
        }
        start = end + 1;
    }

    if above_root {
        return Err(PathError::AboveRoot);
    }
    Ok(out.map_or(Cow::Borrowed(path), Cow::Owned))
}

/// Fast path: skips the leading segments made only of plain bytes and dots that are not
/// `.`/`..` or empty, which covers nearly every real request path in one tight loop.
///
/// Returns the start of the first segment that needs the full `scan_segment` treatment, or
/// `None` when the whole path is already canonical. `bytes` starts with `/`. Only the segment
/// where this stops is looked at twice; everything before it is output as is.
fn first_noncanonical_segment(bytes: &[u8]) -> Option<usize> {
    let is_dot_segment = |segment: &[u8]| segment == b"." || segment == b"..";
    let mut segment_start = 1;
    let mut i = 1;
    loop {
        match bytes.get(i).map(|&b| BYTE_CLASS[usize::from(b)]) {
            Some(ByteClass::Plain | ByteClass::Dot) => i += 1,
            Some(ByteClass::Slash) => {
                let segment = &bytes[segment_start..i];
                // An empty segment here is a repeated slash.
                if segment.is_empty() || is_dot_segment(segment) {
                    return Some(segment_start);
                }
                i += 1;
                segment_start = i;
            }
            // An empty last segment is the trailing slash, which is canonical.
            None => return is_dot_segment(&bytes[segment_start..]).then_some(segment_start),
            Some(_) => return Some(segment_start),
        }
    }
}

/// What a segment contributes to the output, decided after decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// Already canonical: copied as is.
    Plain,
    /// Has an escape to decode or to uppercase.
    Rewrite,
    /// Nothing between two slashes (or after the last one).
    Empty,
    /// Decodes to `.`.
    Dot,
    /// Decodes to `..`.
    DotDot,
}

/// Validates the segment starting at `start` and classifies it.
///
/// Returns the index of the `/` ending the segment (or `bytes.len()`).
#[inline]
fn scan_segment(bytes: &[u8], start: usize) -> Result<(usize, Segment), PathError> {
    let mut i = start;
    let mut utf8 = Utf8Run::default();
    let mut rewrite = false;
    // Dot-ness is judged on the decoded segment, so `%2e%2E` is `..` too.
    let mut dots = 0usize;
    let mut other = false;
    while let Some(&b) = bytes.get(i) {
        match BYTE_CLASS[usize::from(b)] {
            ByteClass::Plain => {
                utf8.end()?;
                other = true;
                i += 1;
                // Runs of plain bytes are the bulk of every path; skipping them in a tight
                // loop is what keeps the already-canonical fast path cheap.
                let rest = bytes.get(i..).unwrap_or_default();
                i += rest
                    .iter()
                    .position(|&b| BYTE_CLASS[usize::from(b)] != ByteClass::Plain)
                    .unwrap_or(rest.len());
                continue;
            }
            ByteClass::Dot => {
                utf8.end()?;
                dots += 1;
                i += 1;
                continue;
            }
            ByteClass::Slash => break,
            ByteClass::Backslash => return Err(PathError::RawBackslash),
            ByteClass::Forbidden => return Err(PathError::ForbiddenCharacter),
            ByteClass::Percent => {}
        }

        let (value, lowercase) = escape_at(bytes, i).ok_or(PathError::InvalidPercentEncoding)?;
        match value {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' => return Err(PathError::EncodedSlash),
            0x80..=0xFF => {
                // Kept encoded, but only if it is part of well-formed UTF-8: this closes off
                // overlong `..`/`/` spellings (`%C0%AE`, `%C0%AF`) that lax decoders accept.
                utf8.push(value)?;
                other = true;
                rewrite |= lowercase;
            }
            _ => {
                utf8.end()?;
                if is_unreserved(value) {
                    rewrite = true;
                    if value == b'.' {
                        dots += 1;
                    } else {
                        other = true;
                    }
                } else {
                    other = true;
                    rewrite |= lowercase;
                }
            }
        }
        i += 3;
    }
    utf8.end()?;

    let kind = match (i == start, other, dots) {
        (true, _, _) => Segment::Empty,
        (false, false, 1) => Segment::Dot,
        (false, false, 2) => Segment::DotDot,
        _ if rewrite => Segment::Rewrite,
        _ => Segment::Plain,
    };
    Ok((i, kind))
}

/// Refuses a segment whose part before its first `;` is `.` or `..` (raw or `%2e`).
#[inline]
fn reject_dot_parameters(segment: &[u8]) -> Result<(), PathError> {
    let Some(semicolon) = segment.iter().position(|&b| b == b';') else {
        return Ok(());
    };
    let head = &segment[..semicolon];
    let mut dots = 0;
    let mut i = 0;
    while i < head.len() {
        if head[i] == b'.' {
            i += 1;
        } else if head[i..].len() >= 3 && head[i..i + 3].eq_ignore_ascii_case(b"%2e") {
            i += 3;
        } else {
            return Ok(());
        }
        dots += 1;
    }
    if matches!(dots, 1 | 2) {
        return Err(PathError::DotSegmentParameters);
    }
    Ok(())
}

/// How `scan_segment` treats a raw (unescaped) byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    /// Allowed and not special to normalization.
    Plain,
    Dot,
    Percent,
    Slash,
    Backslash,
    /// Control characters, space, `#`, `?` and non-ASCII.
    Forbidden,
}

/// Raw-byte classes, as a table so the per-byte cost on the hot path is a single load.
static BYTE_CLASS: [ByteClass; 256] = {
    // Everything starts forbidden, so control characters, DEL and bytes >= 0x80 stay so.
    let mut table = [ByteClass::Forbidden; 256];
    let mut b = b'!';
    while b < 0x7F {
        table[b as usize] = ByteClass::Plain;
        b += 1;
    }
    table[b'.' as usize] = ByteClass::Dot;
    table[b'%' as usize] = ByteClass::Percent;
    table[b'/' as usize] = ByteClass::Slash;
    table[b'\\' as usize] = ByteClass::Backslash;
    // `#` and `?` are delimiters that cannot legitimately reach the path component, so
    // seeing one means the caller did not split the target, and that must not be guessed at.
    table[b'#' as usize] = ByteClass::Forbidden;
    table[b'?' as usize] = ByteClass::Forbidden;
    table
};

/// Decodes the escape whose `%` is at `i`: its byte value and whether its hex used lowercase.
fn escape_at(bytes: &[u8], i: usize) -> Option<(u8, bool)> {
    let hi = *bytes.get(i + 1)?;
    let lo = *bytes.get(i + 2)?;
    if !hi.is_ascii_hexdigit() || !lo.is_ascii_hexdigit() {
        return None;
    }
    let lowercase = hi.is_ascii_lowercase() || lo.is_ascii_lowercase();
    Some((hex_value(hi) << 4 | hex_value(lo), lowercase))
}

/// Value of an ASCII hex digit; callers have checked `is_ascii_hexdigit` already.
fn hex_value(digit: u8) -> u8 {
    // '0'..='9' keep their low nibble; 'A'..='F' and 'a'..='f' have low nibble 1..=6 and
    // bit 6 set, which adds the missing 9. Branch-free and total, so no unwrap is needed.
    (digit & 0x0F) + 9 * (digit >> 6)
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Returns the output buffer, creating it from the unchanged prefix `path[..upto]` on the
/// first change.
fn materialize<'a>(out: &'a mut Option<String>, path: &str, upto: usize) -> &'a mut String {
    out.get_or_insert_with(|| {
        // The result is never longer than the input, so this is the only allocation.
        let mut buf = String::with_capacity(path.len());
        buf.push_str(&path[..upto]);
        buf
    })
}

/// Appends a segment already validated by `scan_segment`, decoding unreserved escapes and
/// uppercasing the hex of the others.
fn push_decoded(buf: &mut String, segment: &str) {
    let mut bytes = segment.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            buf.push(char::from(b));
            continue;
        }
        // `scan_segment` guarantees two hex digits after every `%`.
        let (Some(hi), Some(lo)) = (bytes.next(), bytes.next()) else {
            break;
        };
        let value = hex_value(hi) << 4 | hex_value(lo);
        if is_unreserved(value) {
            buf.push(char::from(value));
        } else {
            buf.push('%');
            buf.push(char::from(hi.to_ascii_uppercase()));
            buf.push(char::from(lo.to_ascii_uppercase()));
        }
    }
}

/// Drops the last segment of `buf` (which always ends in `/`) for a `..`.
///
/// Returns `false` when `buf` is just `/`, i.e. the `..` would climb above the root.
fn pop_segment(buf: &mut String) -> bool {
    let body = buf.strip_suffix('/').unwrap_or(buf);
    match body.rfind('/') {
        Some(slash) => {
            buf.truncate(slash + 1);
            true
        }
        None => false,
    }
}

/// Incremental UTF-8 check over one run of consecutive escapes decoding to bytes >= 0x80.
///
/// Any other byte or escape, a `/`, or the end of the path ends the run; a run that ends in
/// the middle of a character is invalid.
#[derive(Debug, Default)]
struct Utf8Run {
    /// Continuation bytes still expected.
    need: u8,
    /// Allowed range of the next continuation byte; narrower than 0x80..=0xBF only right
    /// after leads that would otherwise admit overlongs, surrogates or code points > U+10FFFF.
    lo: u8,
    hi: u8,
}

impl Utf8Run {
    fn push(&mut self, b: u8) -> Result<(), PathError> {
        if self.need > 0 {
            if !(self.lo..=self.hi).contains(&b) {
                return Err(PathError::InvalidPercentEncoding);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            return Ok(());
        }
        // Table 3-7 of the Unicode standard (well-formed UTF-8 byte sequences).
        let (need, lo, hi) = match b {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            // Lone continuation bytes, overlong leads C0/C1, and F5..FF.
            _ => return Err(PathError::InvalidPercentEncoding),
        };
        *self = Self { need, lo, hi };
        Ok(())
    }

    fn end(&self) -> Result<(), PathError> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidPercentEncoding)
        }
    }
}

#[cfg(test)]
// A failed unwrap in a test is just a failed test, with the value in the message.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use PathError::*;

    /// Expected outcome of one corpus case.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        /// Already canonical: returned borrowed, unchanged.
        Same,
        /// Rewritten into this owned string.
        To(&'static str),
        /// Rejected.
        Fails(PathError),
    }
    use Want::*;

    const CASES: &[(&str, Want)] = &[
        // Identity fast path.
        ("/", Same),
        ("/admin", Same),
        ("/v1/chat/completions", Same),
        ("/a/", Same),
        ("/a;b=c/d", Same),
        ("/...", Same),
        ("/.a/b.", Same),
        ("/a..b/..c", Same),
        ("/a-b_c~d.e", Same),
        ("/:@!$&'()*+,=", Same),
        ("/%C3%A9", Same),
        ("/%E2%82%AC/%F0%9F%98%80", Same),
        ("/%20", Same),
        ("/%25", Same),
        ("/%3F%23", Same),
        ("/%0A", Same),
        // Decoding unreserved escapes, uppercasing the rest.
        ("/%41", To("/A")),
        ("/%7e", To("/~")),
        ("/%7E", To("/~")),
        ("/%c3%a9", To("/%C3%A9")),
        ("/%C3%a9", To("/%C3%A9")),
        ("/%41%C3%A9", To("/A%C3%A9")),
        ("/%c3%a9%41", To("/%C3%A9A")),
        ("/%2d%2E%5f%7E", To("/-._~")),
        ("/%30%39%61%7A", To("/09az")),
        ("/%3f", To("/%3F")),
        ("/%e2%82%ac", To("/%E2%82%AC")),
        ("/caf%c3%a9/menu", To("/caf%C3%A9/menu")),
        ("/%25%32%66", To("/%252f")),
        ("/a%2e", To("/a.")),
        ("/%2e%2e%2e", To("/...")),
        ("/v1/%63hat/completions", To("/v1/chat/completions")),
        // Merging slashes.
        ("//admin", To("/admin")),
        ("//", To("/")),
        ("///", To("/")),
        ("/a///b", To("/a/b")),
        ("/a//", To("/a/")),
        // Dot segments.
        ("/%2e", To("/")),
        ("/.", To("/")),
        ("/./", To("/")),
        ("/public/../admin", To("/admin")),
        ("/public/%2e%2e/admin", To("/admin")),
        ("/public/.%2e/admin", To("/admin")),
        ("/public/%2E./admin", To("/admin")),
        ("/a/./b", To("/a/b")),
        ("/a/%2e/b", To("/a/b")),
        ("/a/b/..", To("/a/")),
        ("/a/.", To("/a/")),
        ("/a/..", To("/")),
        ("/a//..", To("/")),
        ("/a/.//b", To("/a/b")),
        ("/a/b/../../c", To("/c")),
        ("/a/b/./../c/", To("/a/c/")),
        ("/%41/..", To("/")),
        // Encoded separators and NUL.
        ("/public/%2E%2E%2Fadmin", Fails(EncodedSlash)),
        ("/a%2fb", Fails(EncodedSlash)),
        ("/a%2Fb", Fails(EncodedSlash)),
        ("/a%5cb", Fails(EncodedSlash)),
        ("/a%5Cb", Fails(EncodedSlash)),
        ("/a%00", Fails(EncodedNul)),
        ("/a\\b", Fails(RawBackslash)),
        ("/..\\admin", Fails(RawBackslash)),
        // Invalid percent-encoding.
        ("/%", Fails(InvalidPercentEncoding)),
        ("/%4", Fails(InvalidPercentEncoding)),
        ("/%4/", Fails(InvalidPercentEncoding)),
        ("/%zz", Fails(InvalidPercentEncoding)),
        ("/%4g", Fails(InvalidPercentEncoding)),
        ("/%%41", Fails(InvalidPercentEncoding)),
        ("/%+1", Fails(InvalidPercentEncoding)),
        // Escapes that are not valid UTF-8.
        ("/%C0%AE%C0%AE", Fails(InvalidPercentEncoding)),
        ("/%c0%ae%c0%ae/admin", Fails(InvalidPercentEncoding)),
        ("/%C0%AF", Fails(InvalidPercentEncoding)),
        ("/%E0%80%AF", Fails(InvalidPercentEncoding)),
        ("/%E0%80%AE", Fails(InvalidPercentEncoding)),
        ("/%80", Fails(InvalidPercentEncoding)),
        ("/%ED%A0%80", Fails(InvalidPercentEncoding)),
        ("/%FF", Fails(InvalidPercentEncoding)),
        ("/%F5%80%80%80", Fails(InvalidPercentEncoding)),
        ("/%F4%90%80%80", Fails(InvalidPercentEncoding)),
        ("/%C3", Fails(InvalidPercentEncoding)),
        ("/%C3/%A9", Fails(InvalidPercentEncoding)),
        ("/%C3%41%A9", Fails(InvalidPercentEncoding)),
        ("/%C3a", Fails(InvalidPercentEncoding)),
        ("/%E2%82", Fails(InvalidPercentEncoding)),
        // Climbing above the root.
        ("/..", Fails(AboveRoot)),
        ("/../", Fails(AboveRoot)),
        ("/../admin", Fails(AboveRoot)),
        ("/a/../../b", Fails(AboveRoot)),
        ("/%2e%2e", Fails(AboveRoot)),
        ("//..", Fails(AboveRoot)),
        // Decoding comes first in SPEC order, so its errors win over a climb before them.
        ("/../%2f", Fails(EncodedSlash)),
        ("/../a b", Fails(ForbiddenCharacter)),
        // Forbidden raw characters.
        ("/a b", Fails(ForbiddenCharacter)),
        ("/a\tb", Fails(ForbiddenCharacter)),
        ("/a\nb", Fails(ForbiddenCharacter)),
        ("/a\rb", Fails(ForbiddenCharacter)),
        ("/a\0b", Fails(ForbiddenCharacter)),
        ("/a\x7f", Fails(ForbiddenCharacter)),
        ("/a#frag", Fails(ForbiddenCharacter)),
        ("/a?q=1", Fails(ForbiddenCharacter)),
        ("/café", Fails(ForbiddenCharacter)),
        ("/\u{1F600}", Fails(ForbiddenCharacter)),
        // Not absolute.
        ("", Fails(NotAbsolute)),
        ("admin", Fails(NotAbsolute)),
        ("*", Fails(NotAbsolute)),
        ("%2Fadmin", Fails(NotAbsolute)),
    ];

    #[test]
    fn corpus() {
        assert!(CASES.len() >= 60, "corpus too small: {}", CASES.len());
        for &(input, want) in CASES {
            let got = normalize_path(input);
            match (want, &got) {
                (Same, Ok(Cow::Borrowed(out))) => assert_eq!(*out, input),
                (To(expected), Ok(Cow::Owned(out))) => {
                    assert_eq!(out, expected, "input {input:?}");
                }
                (Fails(expected), Err(err)) => assert_eq!(*err, expected, "input {input:?}"),
                _ => panic!("input {input:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn corpus_outputs_are_fixed_points() {
        for &(input, _) in CASES {
            if let Ok(out) = normalize_path(input) {
                let again = normalize_path(&out);
                assert!(
                    matches!(again, Ok(Cow::Borrowed(_))),
                    "{input:?} -> {out:?} -> {again:?}"
                );
            }
        }
    }

    #[test]
    fn long_canonical_path_is_borrowed() {
        let path = "/a".repeat(5 * 1024);
        assert_eq!(path.len(), 10 * 1024);
        assert!(matches!(normalize_path(&path), Ok(Cow::Borrowed(p)) if p == path));
    }

    #[test]
    fn long_path_with_late_change_is_rewritten() {
        let prefix = "/a".repeat(5 * 1024);
        let input = format!("{prefix}//%62/./c/..");
        let out = normalize_path(&input).unwrap();
        assert_eq!(out, format!("{prefix}/b/"));
    }

    #[test]
    fn long_climb_back_to_root() {
        let input = format!("{}{}", "/a".repeat(1000), "/..".repeat(1000));
        assert_eq!(normalize_path(&input).unwrap(), "/");
        let input = format!("{}{}", "/a".repeat(1000), "/..".repeat(1001));
        assert_eq!(normalize_path(&input), Err(AboveRoot));
    }

    #[test]
    fn every_escape_byte_is_classified() {
        for value in 0..=255u8 {
            let input = format!("/x%{value:02x}y");
            let got = normalize_path(&input);
            let expected = match value {
                0 => Err(EncodedNul),
                b'/' | b'\\' => Err(EncodedSlash),
                0x80..=0xFF => Err(InvalidPercentEncoding),
                v if is_unreserved(v) => Ok(format!("/x{}y", char::from(v))),
                v => Ok(format!("/x%{v:02X}y")),
            };
            assert_eq!(got.map(Cow::into_owned), expected, "escape {value:#04x}");
        }
    }

    #[test]
    fn every_raw_byte_is_classified() {
        for value in 0..=0x7Fu8 {
            let input = format!("/x{}y", char::from(value));
            let got = normalize_path(&input);
            let expected = match value {
                b'\\' => Err(RawBackslash),
                0x00..=0x1F | 0x7F | b' ' | b'#' | b'?' => Err(ForbiddenCharacter),
                b'%' => Err(InvalidPercentEncoding),
                _ => Ok(Cow::Borrowed(input.as_str())),
            };
            assert_eq!(got, expected, "byte {value:#04x}");
        }
    }

    #[test]
    fn all_valid_utf8_is_kept_encoded() {
        // One character from each UTF-8 length and the edges of the special lead bytes.
        for c in [
            '\u{80}', '\u{7FF}', '\u{800}', '\u{D7FF}', '\u{E000}', '\u{FFFF}',
        ] {
            check_char_roundtrip(c);
        }
        for c in ['\u{10000}', '\u{10FFFF}', 'é', '€', '😀'] {
            check_char_roundtrip(c);
        }
    }

    fn check_char_roundtrip(c: char) {
        let mut utf8 = [0u8; 4];
        let lower: String = c
            .encode_utf8(&mut utf8)
            .bytes()
            .map(|b| format!("%{b:02x}"))
            .collect();
        let input = format!("/{lower}");
        let expected = input.to_ascii_uppercase();
        assert_eq!(normalize_path(&input).unwrap(), expected, "char {c:?}");
    }

    #[test]
    fn reasons_and_display() {
        let all = [
            NotAbsolute,
            EncodedSlash,
            EncodedNul,
            RawBackslash,
            InvalidPercentEncoding,
            AboveRoot,
            ForbiddenCharacter,
        ];
        for err in all {
            assert!(!err.reason().is_empty());
            assert_eq!(err.to_string(), err.reason());
            let boxed: Box<dyn std::error::Error> = Box::new(err);
            assert_eq!(boxed.to_string(), err.reason());
        }
        assert_eq!(EncodedSlash.reason(), "encoded slash or backslash in path");
    }

    /// Straightforward multi-pass model of SPEC §3 used as an oracle: decode the whole path,
    /// collapse slashes, then run RFC 3986 §5.2.4 literally.
    fn reference(path: &str) -> Result<String, PathError> {
        let normal = reference_without_parameters(path)?;
        // Dot segments with parameters are refused after every other rule.
        for segment in path.split('/') {
            if let Some((head, _)) = segment.split_once(';') {
                let decoded = head.to_ascii_lowercase().replace("%2e", ".");
                if decoded.bytes().all(|b| b == b'.') && matches!(decoded.len(), 1 | 2) {
                    return Err(DotSegmentParameters);
                }
            }
        }
        Ok(normal)
    }

    fn reference_without_parameters(path: &str) -> Result<String, PathError> {
        if !path.starts_with('/') {
            return Err(NotAbsolute);
        }
        let bytes = path.as_bytes();
        let mut decoded = String::new();
        let mut run: Vec<u8> = Vec::new();
        let flush = |run: &mut Vec<u8>, decoded: &mut String| -> Result<(), PathError> {
            std::str::from_utf8(run).map_err(|_| InvalidPercentEncoding)?;
            for b in run.drain(..) {
                decoded.push_str(&format!("%{b:02X}"));
            }
            Ok(())
        };
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = path.get(i + 1..i + 3).ok_or(InvalidPercentEncoding)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err(InvalidPercentEncoding);
                }
                let v = u8::from_str_radix(hex, 16).map_err(|_| InvalidPercentEncoding)?;
                match v {
                    0 => return Err(EncodedNul),
                    b'/' | b'\\' => return Err(EncodedSlash),
                    0x80.. => run.push(v),
                    _ => {
                        flush(&mut run, &mut decoded)?;
                        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                            decoded.push(char::from(v));
                        } else {
                            decoded.push_str(&format!("%{v:02X}"));
                        }
                    }
                }
                i += 3;
            } else {
                match b {
                    b'\\' => return Err(RawBackslash),
                    b if !(0x20..0x7F).contains(&b) || b" #?".contains(&b) => {
                        return Err(ForbiddenCharacter);
                    }
                    _ => {}
                }
                flush(&mut run, &mut decoded)?;
                decoded.push(char::from(b));
                i += 1;
            }
        }
        flush(&mut run, &mut decoded)?;

        let mut input = String::new();
        for c in decoded.chars() {
            if !(c == '/' && input.ends_with('/')) {
                input.push(c);
            }
        }

        let mut output = String::new();
        let mut input = input.as_str();
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../") {
                input = rest;
            } else if let Some(rest) = input.strip_prefix("./") {
                input = rest;
            } else if input.starts_with("/./") {
                input = &input[2..];
            } else if input == "/." {
                input = "/";
            } else if input.starts_with("/../") || input == "/.." {
                if output.is_empty() {
                    return Err(AboveRoot);
                }
                input = if input == "/.." { "/" } else { &input[3..] };
                let cut = output.rfind('/').unwrap_or(0);
                output.truncate(cut);
            } else if input == "." || input == ".." {
                input = "";
            } else {
                let first = usize::from(input.starts_with('/'));
                let end = input[first..].find('/').map_or(input.len(), |p| p + first);
                output.push_str(&input[..end]);
                input = &input[end..];
            }
        }
        Ok(output)
    }

    /// xorshift64*: deterministic, dependency-free randomness for the property test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Checks the output invariants promised by `normalize_path`'s docs.
    fn assert_canonical(input: &str, out: &str) {
        assert!(out.starts_with('/'), "{input:?} -> {out:?}");
        assert!(!out.contains("//"), "{input:?} -> {out:?}");
        let body = &out[1..];
        for segment in body.split('/') {
            assert!(
                segment != "." && segment != "..",
                "dot segment in {input:?} -> {out:?}"
            );
        }
        let bytes = out.as_bytes();
        for (i, _) in out.match_indices('%') {
            let hex = &bytes[i + 1..i + 3];
            assert!(
                hex.iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "bad hex in {input:?} -> {out:?}"
            );
            let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            assert!(
                !is_unreserved(value),
                "unreserved escape in {input:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn random_paths_hold_invariants_and_match_reference() {
        // Single characters chosen to collide into escapes, dots and slashes, plus whole
        // tokens so that valid escapes and dot segments are common enough to matter.
        const CHARS: &[u8] = b"///..%2eEfF5cCaA0~\\39841D; #";
        const TOKENS: &[&str] = &[
            "%2e", "%2E", "%41", "%7e", "%25", "%c3", "%A9", "%C3%A9", "%E2%82", "%AC", "..", "//",
            "/../", "/./", "é",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut ok = 0;
        let mut changed = 0;
        for _ in 0..20_000 {
            let mut path = String::new();
            if rng.below(20) != 0 {
                path.push('/');
            }
            for _ in 0..rng.below(24) {
                if rng.below(3) == 0 {
                    path.push_str(TOKENS[rng.below(TOKENS.len())]);
                } else {
                    path.push(char::from(CHARS[rng.below(CHARS.len())]));
                }
            }

            let got = normalize_path(&path);
            let oracle = reference(&path);
            match (&got, &oracle) {
                (Ok(out), Ok(expected)) => assert_eq!(out, expected, "input {path:?}"),
                // The incremental UTF-8 check can spot a bad run earlier than the oracle's
                // batch check, so only the fact of rejection must agree for those.
                (Err(InvalidPercentEncoding), Err(_)) | (Err(_), Err(InvalidPercentEncoding)) => {}
                (Err(a), Err(b)) => assert_eq!(a, b, "input {path:?}"),
                _ => panic!("input {path:?}: got {got:?}, reference {oracle:?}"),
            }

            if let Ok(out) = got {
                ok += 1;
                assert_canonical(&path, &out);
                // Borrowed exactly when nothing changed: the fast path is never skipped.
                assert_eq!(
                    matches!(out, Cow::Borrowed(_)),
                    out == path,
                    "input {path:?}"
                );
                if matches!(out, Cow::Owned(_)) {
                    changed += 1;
                }
                // `Cow`'s `==` ignores borrowedness, so match on the variant explicitly.
                let again = normalize_path(&out);
                assert!(
                    matches!(again, Ok(Cow::Borrowed(s)) if s == &*out),
                    "not idempotent: {path:?} -> {out:?} -> {again:?}"
                );
            }
        }
        // Guard against a generator that only ever produces rejections.
        assert!(ok > 2_000, "only {ok} accepted paths");
        assert!(changed > 1_000, "only {changed} rewritten paths");
    }
}
