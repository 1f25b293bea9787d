//! Request-smuggling guard for HTTP/1: spots a request head that carries both
//! `Content-Length` and `Transfer-Encoding`.
//!
//! hyper resolves that conflict by itself (Transfer-Encoding wins and Content-Length is dropped
//! before the request reaches us), which is safe for authgate but hides the ambiguity that
//! another hop might resolve differently. SPEC §6 asks for a 400, so the connection's IO
//! wrapper feeds the head bytes through this scanner, and the pipeline refuses the request
//! when it is flagged. The scanner is allocation-free, looks only at request heads (it pauses
//! from the end of a head until that request has been answered), and is off for HTTP/2.

/// Header names compared at the start of each head line, lowercase, colon included.
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
/// Heads longer than this are left to hyper's own limit.
const MAX_HEAD_BYTES: usize = 1024 * 1024;
/// The HTTP/2 connection preface's request line.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head.
    Scanning,
    /// A head ended; the next one starts after request number `after` has been answered.
    Waiting { after: u64 },
    /// HTTP/2 or an oversized head: nothing more to check.
    Off,
}

/// What the scanner reports after a head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding` were present.
    Conflict,
}

/// Incremental scanner over the bytes of HTTP/1 request heads.
#[derive(Debug)]
pub struct HeadScanner {
    state: State,
    /// Position in the current line (bytes, `\r` excluded).
    line_pos: usize,
    line_number: usize,
    /// The current line may still be `content-length:` / `transfer-encoding:`.
    may_be_cl: bool,
    may_be_te: bool,
    saw_cl: bool,
    saw_te: bool,
    /// Whether the first line may still be the HTTP/2 preface.
    may_be_h2: bool,
    head_bytes: usize,
}

impl Default for HeadScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadScanner {
    pub fn new() -> Self {
        Self {
            state: State::Scanning,
            line_pos: 0,
            line_number: 0,
            may_be_cl: true,
            may_be_te: true,
            saw_cl: false,
            saw_te: false,
            may_be_h2: true,
            head_bytes: 0,
        }
    }

    /// A scanner that never checks anything (HTTP/2 negotiated by ALPN).
    pub fn off() -> Self {
        Self {
            state: State::Off,
            ..Self::new()
        }
    }

    fn start_head(&mut self) {
        *self = Self {
            may_be_h2: false,
            ..Self::new()
        };
    }

    /// Feeds bytes just read. `answered` is how many requests on this connection have been
    /// answered, `started` how many have started (heads complete). Returns a verdict each
    /// time a head ends.
    pub fn feed(&mut self, bytes: &[u8], started: u64, answered: u64) -> Option<HeadVerdict> {
        if let State::Waiting { after } = self.state {
            // The next head begins once the previous request was answered.
            if started > after && answered >= started {
                self.start_head();
            } else {
                return None;
            }
        }
        if self.state != State::Scanning {
            return None;
        }
        let mut verdict = None;
        for &byte in bytes {
            self.head_bytes += 1;
            if self.head_bytes > MAX_HEAD_BYTES {
                self.state = State::Off;
                return verdict;
            }
            match byte {
                b'\r' => continue,
                b'\n' => {
                    if self.line_number == 0
                        && self.may_be_h2
                        && self.line_pos == H2_PREFACE_LINE.len()
                    {
                        self.state = State::Off;
                        return verdict;
                    }
                    if self.line_pos == 0 {
                        // A blank line ends the head (blank lines before the request line are
                        // ignored, as RFC 9112 §2.2 allows).
                        if self.line_number > 0 {
                            verdict = Some(if self.saw_cl && self.saw_te {
                                HeadVerdict::Conflict
                            } else {
                                HeadVerdict::Clean
                            });
                            self.state = State::Waiting { after: started };
                            return verdict;
                        }
                        continue;
                    }
                    self.line_number += 1;
                    self.line_pos = 0;
                    self.may_be_cl = true;
                    self.may_be_te = true;
                    self.may_be_h2 = false;
                }
                _ => {
                    let lower = byte.to_ascii_lowercase();
                    let pos = self.line_pos;
                    if self.line_number == 0 {
                        self.may_be_h2 &= H2_PREFACE_LINE.get(pos) == Some(&byte);
                    } else {
                        if self.may_be_cl {
                            self.may_be_cl = CONTENT_LENGTH.get(pos) == Some(&lower);
                            if self.may_be_cl && pos + 1 == CONTENT_LENGTH.len() {
                                self.saw_cl = true;
                            }
                        }
                        if self.may_be_te {
                            self.may_be_te = TRANSFER_ENCODING.get(pos) == Some(&lower);
                            if self.may_be_te && pos + 1 == TRANSFER_ENCODING.len() {
                                self.saw_te = true;
                            }
                        }
                    }
                    self.line_pos += 1;
                }
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<HeadVerdict> {
        let mut scanner = HeadScanner::new();
        let mut verdict = None;
        for chunk in chunks {
            verdict = verdict.or(scanner.feed(chunk, 0, 0));
        }
        verdict
    }

    #[test]
    fn both_framing_headers_in_any_case_and_order_are_a_conflict() {
        let heads: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\nbody",
            b"POST / HTTP/1.1\nHost: x\ncontent-length:5\ntransfer-encoding:chunked\n\n",
            b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for head in heads {
            assert_eq!(
                scan(&[head]),
                Some(HeadVerdict::Conflict),
                "{}",
                String::from_utf8_lossy(head)
            );
            // Split at every position: the verdict does not depend on how reads are cut.
            for cut in 1..head.len() {
                assert_eq!(
                    scan(&[&head[..cut], &head[cut..]]),
                    Some(HeadVerdict::Conflict),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn ordinary_heads_are_clean() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nX-Transfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Lengthy: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                scan(&[head]),
                Some(HeadVerdict::Clean),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn bodies_are_not_scanned_until_the_request_was_answered() {
        let mut scanner = HeadScanner::new();
        let head = b"POST / HTTP/1.1\r\nContent-Length: 44\r\n\r\n";
        assert_eq!(scanner.feed(head, 0, 0), Some(HeadVerdict::Clean));
        // The body looks like a conflicting head but belongs to request 1.
        let body = b"Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(scanner.feed(body, 1, 0), None);
        // Request 1 answered: the next head is scanned again.
        let next = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scanner.feed(next, 1, 1), Some(HeadVerdict::Conflict));
    }

    #[test]
    fn http2_preface_turns_the_scanner_off() {
        let mut scanner = HeadScanner::new();
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(scanner.feed(preface, 0, 0), None);
        assert_eq!(
            scanner.feed(b"content-length:\ntransfer-encoding:\n\n", 5, 5),
            None
        );
        let mut off = HeadScanner::off();
        assert_eq!(
            off.feed(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                0,
                0
            ),
            None
        );
    }
}
