#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/<name>, from the cases below.

The byte cases are transcribed by hand from authgate's raw-socket tests
(tests/server_http1.rs, tests/forwarding.rs, tests/upstream_http1.rs), the unit tests of
src/http1/chunked.rs and src/http1/client.rs, plus classic request-smuggling payloads
(CL.TE, TE.CL, TE.TE obfuscations) written for authgate. The "hdg-" cases are generated
from http_desync_guardian's YAML test suite (Apache-2.0, tests/*.yaml of that crate, read
from cargo's registry), one raw request per case; see fuzz/README.md. Re-run after editing: `python3 fuzz/seeds.py`. Each file name
says what the case is; tests/http1_differential.rs loads fuzz/corpus/request_head/ too.
"""

import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
HOST = "Host: h\r\n"
SMUGGLED = "GET /smuggled HTTP/1.1\r\n" + HOST + "\r\n"


def req(method, target, extra="", body="", version="1.1", host=True):
    """A request head with `extra` header lines, then `body` verbatim."""
    return f"{method} {target} HTTP/{version}\r\n{HOST if host else ''}{extra}\r\n{body}"


def post(extra, body, version="1.1"):
    """A POST with a pipelined GET behind its body: where the body ends decides what the
    next request is, which is the whole point of a smuggling case."""
    return req("POST", "/x", extra, body, version) + SMUGGLED


CHUNKED = "5\r\nhello\r\n0\r\n\r\n"

REQUESTS = {
    # tests/server_http1.rs: malformed heads (400 and close).
    "garbage-line": "this is not http at all\r\n\r\n",
    "tls-client-hello": bytes([0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03, 0x00, 0x01]),
    "bad-method-char": req("G@T", "/pub/x"),
    "nul-in-method": req("GE\0T", "/pub/x"),
    "space-in-target": req("GET", "/pub/a b"),
    "two-spaces-after-method": "GET  /pub/x HTTP/1.1\r\n" + HOST + "\r\n",
    "fragment-in-target": req("GET", "/pub/x#frag"),
    "missing-version": "GET /pub/x\r\n" + HOST + "\r\n",
    "http2-version-over-h1": "GET /pub/x HTTP/2.0\r\n" + HOST + "\r\n",
    "lowercase-protocol": "GET /pub/x http/1.1\r\n" + HOST + "\r\n",
    "space-in-header-name": req("GET", "/pub/x", "Bad Name: x\r\n"),
    "space-before-colon": req("GET", "/pub/x", "X-A : x\r\n"),
    "header-without-colon": req("GET", "/pub/x", "JustAName\r\n"),
    "empty-header-name": req("GET", "/pub/x", ": value\r\n"),
    "bare-cr-in-value": req("GET", "/pub/x", "X-A: a\rb\r\n"),
    "nul-in-value": req("GET", "/pub/x", "X-A: a\0b\r\n"),
    "del-in-value": req("GET", "/pub/x", "X-A: a\x7fb\r\n"),
    "obs-fold": req("GET", "/pub/x", "X-A: one\r\n two\r\n"),
    "latin1-value": req("GET", "/pub/latin", "X-Latin: caf\xe9 \xff\xfe\r\nConnection: close\r\n"),
    "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # tests/server_http1.rs: request framing refused (400, nothing forwarded).
    "cl-plus": post("Content-Length: +5\r\n", "hello"),
    "cl-minus": post("Content-Length: -5\r\n", "hello"),
    "cl-hex": post("Content-Length: 0x5\r\n", "hello"),
    "cl-space-list": post("Content-Length: 5 5\r\n", "hello"),
    "cl-list-differs": post("Content-Length: 5, 6\r\n", "hello!"),
    "cl-list-same": post("Content-Length: 5, 5\r\n", "hello"),
    "cl-empty": post("Content-Length: \r\n", "hello"),
    "cl-over-u64": post("Content-Length: 99999999999999999999\r\n", "hello"),
    "cl-two-different": post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
    "te-gzip": post("Transfer-Encoding: gzip\r\n", "hello"),
    "te-chunked-gzip": post("Transfer-Encoding: chunked, gzip\r\n", CHUNKED),
    "te-gzip-chunked": post("Transfer-Encoding: gzip, chunked\r\n", CHUNKED),
    "te-chunked-twice": post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
    "te-chunked-chunked": post("Transfer-Encoding: chunked, chunked\r\n", CHUNKED),
    "te-gzip-then-chunked-fields": post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
    "te-in-http10": post("Transfer-Encoding: chunked\r\n", CHUNKED, version="1.0"),
    "cl-te": post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
    "te-cl": post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"),
    # tests/forwarding.rs and tests/server_http1.rs: accepted requests.
    "get": req("GET", "/pub/x"),
    "get-query": req("GET", "/pub/items/42?a=1&b=%20", "Connection: close\r\n"),
    "post-cl": req("POST", "/pub/two", "Content-Length: 9\r\n", "post body"),
    "cl-duplicate-same": req("POST", "/pub/dup", "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n", "hello"),
    "head": req("HEAD", "/pub/4"),
    "pipelined-get-post-get": req("GET", "/pub/1") + req("POST", "/pub/2", "Content-Length: 5\r\n", "hello") + req("GET", "/pub/3"),
    "chunked-ext-trailers": req("POST", "/pub/chunked", "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n",
                                "5;name=value\r\nhello\r\n6;quoted=\"a b\";flag\r\n world\r\n0;last=1\r\nX-Sum: 11\r\nX-Other: y\r\n\r\n") + req("GET", "/pub/after"),
    "chunked-bad-hex": post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\nzz\r\ngarbage\r\n0\r\n\r\n"),
    "chunked-overlong-data": post("Transfer-Encoding: chunked\r\n", "5\r\nhelloXXXX\r\n0\r\n\r\n"),
    "chunked-bare-lf-size": post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
    "chunked-size-overflow": post("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    "chunked-bad-trailer": post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nnot a trailer\r\n\r\n"),
    "chunked-truncated": req("POST", "/x", "Transfer-Encoding: chunked\r\n", "5\r\nhel"),
    "http10-get": req("GET", "/pub/a", version="1.0"),
    "http10-keep-alive": req("GET", "/pub/b", "Connection: keep-alive\r\n", version="1.0"),
    "http10-te-trailers": req("GET", "/pub/t", "TE: trailers\r\n", version="1.0"),
    "te-trailers": req("GET", "/pub/t", "TE: trailers\r\n"),
    "connection-close": req("GET", "/pub/last", "Connection: close\r\n"),
    "expect-100": req("POST", "/private/x", "Content-Length: 5\r\nExpect: 100-continue\r\n", "hello"),
    "websocket-upgrade": req("GET", "/ws/", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") + "\x81\x04pong",
    "large-cl-no-body": req("POST", "/lim/x", "Content-Length: 100000\r\n"),
    "no-host": req("GET", "/pub/x", host=False),
    "absolute-form": req("GET", "http://h/pub/x"),
    "asterisk-options": req("OPTIONS", "*"),
    "connect-authority": req("CONNECT", "h:443"),
    "many-headers": req("GET", "/pub/many", "".join(f"x-h{i}: {'v' * 50}\r\n" for i in range(99))),
    "too-many-headers": req("GET", "/pub/many", "".join(f"x-h{i}: v\r\n" for i in range(101))),
    "big-header": req("GET", "/pub/x", "x-big: " + "b" * 9000 + "\r\n"),
    "head-incomplete": "GET /pub/half HTTP/1.1\r\n" + HOST,
    "leading-crlf": "\r\n" + req("GET", "/pub/x"),
    # Classic smuggling payloads: CL.TE, TE.CL and TE.TE obfuscations.
    "clte-classic": "POST / HTTP/1.1\r\n" + HOST + "Content-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
    "tecl-classic": "POST / HTTP/1.1\r\n" + HOST + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "te-space-before-colon": post("Transfer-Encoding : chunked\r\n", CHUNKED),
    "te-xchunked": post("Transfer-Encoding: xchunked\r\n", CHUNKED),
    "te-tab": post("Transfer-Encoding:\tchunked\r\n", CHUNKED),
    "te-tab-trailing": post("Transfer-Encoding: chunked\t\r\n", CHUNKED),
    "te-no-space": post("Transfer-Encoding:chunked\r\n", CHUNKED),
    "te-uppercase": post("TRANSFER-ENCODING: CHUNKED\r\n", CHUNKED),
    "te-obs-fold": post("Transfer-Encoding:\r\n chunked\r\n", CHUNKED),
    "te-obs-fold-after-other": post("X-A: b\r\n Transfer-Encoding: chunked\r\n", CHUNKED),
    "te-leading-space-line": post(" Transfer-Encoding: chunked\r\n", CHUNKED),
    "te-underscore": post("Transfer_Encoding: chunked\r\n", CHUNKED),
    "cl-underscore": post("Content_Length: 5\r\n", "hello"),
    "te-quoted": post('Transfer-Encoding: "chunked"\r\n', CHUNKED),
    "te-chunked-comma": post("Transfer-Encoding: chunked,\r\n", CHUNKED),
    "te-identity-chunked": post("Transfer-Encoding: identity, chunked\r\n", CHUNKED),
    "te-chunked-identity": post("Transfer-Encoding: chunked, identity\r\n", CHUNKED),
    "te-x-then-chunked": post("Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
    "te-chunked-then-x": post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", CHUNKED),
    "te-cow": post("Transfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n", CHUNKED),
    "te-nul": post("Transfer-Encoding: chunked\0\r\n", CHUNKED),
    "te-vertical-tab": post("Transfer-Encoding:\x0bchunked\r\n", CHUNKED),
    "te-empty": post("Transfer-Encoding: \r\n", CHUNKED),
    "te-with-cl-zero": post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
    "cl-leading-zeros": post("Content-Length: 005\r\n", "hello"),
    "cl-trailing-space": post("Content-Length: 5 \r\n", "hello"),
    "cl-tab": post("Content-Length:\t5\r\n", "hello"),
    "cl-two-same-and-differs": post("Content-Length: 5\r\nContent-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
    "cl-space-before-colon": post("Content-Length : 5\r\n", "hello"),
    "cl-obs-fold": post("Content-Length:\r\n 5\r\n", "hello"),
    "cl-on-get": req("GET", "/x", "Content-Length: 5\r\n", "hello") + SMUGGLED,
    "cl-zero-on-get": req("GET", "/x", "Content-Length: 0\r\n") + SMUGGLED,
    "bare-lf-head": "GET /x HTTP/1.1\n" + "Host: h\n\n",
    "bare-lf-in-headers": "POST /x HTTP/1.1\r\nHost: h\nContent-Length: 5\r\n\r\nhello" + SMUGGLED,
    "bare-cr-line-end": "GET /x HTTP/1.1\rHost: h\r\n\r\n",
    "nul-in-target": req("GET", "/x\0y"),
    "nul-before-request": "\0" + req("GET", "/x"),
    "chunked-size-leading-space": post("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-huge": post("Transfer-Encoding: chunked\r\n", "ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-0x": post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-many-zeros": post("Transfer-Encoding: chunked\r\n", "0000000000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunked-ext-bare-cr": post("Transfer-Encoding: chunked\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n"),
    "chunked-last-chunk-lf": post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\n\n"),
    "chunked-data-lf": post("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"),
    "chunked-trailer-te": post("Transfer-Encoding: chunked\r\n", "0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
    "absolute-form-host-differs": req("GET", "http://other/x"),
    "two-hosts": req("GET", "/x", "Host: other\r\n"),
    "method-lowercase": req("get", "/x"),
    "version-http11-trailing": "GET /x HTTP/1.1 \r\n" + HOST + "\r\n",
    "version-http12": "GET /x HTTP/1.2\r\n" + HOST + "\r\n",
    "version-http09": "GET /x\r\n\r\n",
    "target-backslash": req("GET", "/x\\y"),
    "target-dotdot-param": req("GET", "/public/..;/admin"),
    "target-encoded-slash": req("GET", "/public/%2e%2e%2fadmin"),
    "expect-100-get": req("GET", "/x", "Expect: 100-continue\r\n"),
    "upgrade-h2c": req("GET", "/x", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"),
    "connection-names-cl": post("Connection: content-length\r\nContent-Length: 5\r\n", "hello"),
}

# More obfuscations, written for authgate.
OBFUSCATIONS = {
    "cl-list-1000": post("Content-Length: 1000,1000\r\n", "x"),
    "te-chunked-space-x": post("Transfer-Encoding: chunked x\r\n", CHUNKED),
    "te-nbsp": post("Transfer-Encoding: \xa0chunked\r\n", CHUNKED),
    "te-chunked-cr-junk": post("Transfer-Encoding: chunked\rx\r\n", CHUNKED),
    "te-similar-name": post("Transfer-Encodings: chunked\r\n", CHUNKED),
    "uri-tab": "GET /foo\tbar HTTP/1.1\r\n" + HOST + "\r\n",
}


def hdg_cases():
    """http_desync_guardian's YAML test suite (Apache-2.0), each case (method, uri, version,
    headers) written as a raw request followed by an empty chunked body and a pipelined GET,
    so that where its body ends is visible. Read from the crate in cargo's registry."""
    import glob
    import yaml

    dirs = sorted(glob.glob(str(pathlib.Path.home() / ".cargo/registry/src/*/http_desync_guardian-0.1.3/tests")))
    if not dirs:
        raise SystemExit("http_desync_guardian 0.1.3 is not in cargo's registry: run cargo test once")
    cases = {}
    for path in sorted(pathlib.Path(dirs[0]).glob("*.yaml")):
        for index, case in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))):
            head = f"{case['method']} {case['uri']} {case['version']}".rstrip(" ") + "\r\n"
            for field in case.get("headers") or []:
                value = str(field["value"])
                gap = "" if value[:1] in (" ", "\t") else " "
                head += f"{field['name']}:{gap}{value}\r\n"
            data = (head + "\r\n0\r\n\r\n" + SMUGGLED).encode("utf-8")
            cases[f"hdg-{path.stem}-{index:02}"] = data
    return cases


# Chunked bodies (target `chunked`: one control byte, then the body). 0x00: no cuts.
CHUNKED_BODIES = {
    "with-trailers": b"5\r\nhello\r\n6;name=value\r\n world\r\nA ; a=\"b c\"\r\n0123456789\r\n0\r\nx-usage-tokens: 42\r\nx-usage-model:  m1 \r\n\r\nNEXT",
    "no-trailers": b"3\r\nabc\r\n0\r\n\r\n",
    "incomplete-size": b"1f",
    "largest-size": b"ffffffffffffffff\r\nab",
    "overflow": b"10000000000000000\r\n",
    "leading-zeros": b"00000000000000000003\r\nabc\r\n0\r\n\r\n",
    "space-before-size": b" 5\r\nhello\r\n0\r\n\r\n",
    "plus-size": b"+5\r\n",
    "size-cr-cr-lf": b"5\r\r\n",
    "ext-nul": b"5;a\x00\r\n",
    "ext-del": b"5;a\x7f\r\n",
    "bare-lf-size": b"5\nhello\r\n0\r\n\r\n",
    "bare-lf-data": b"5\r\nhello\n0\r\n\r\n",
    "bare-lf-trailer": b"0\r\nx: y\n\r\n",
    "bare-lf-last": b"0\r\nx: y\r\n\n",
    "missing-crlf": b"5\r\nhelloX",
    "too-long-data": b"5\r\nhello world\r\n",
    "long-ext-line": b"5;" + b"a" * (4096 - 4) + b"\r\nhello\r\n0\r\n\r\n",
    "trailer-folded": b"0\r\nx-a: 1\r\n folded\r\n\r\n",
    "trailer-space-colon": b"0\r\nx-a : spaced\r\n\r\n",
    "trailer-no-colon": b"0\r\nno-colon\r\n\r\n",
    "trailer-framing": b"0\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
    "truncated": b"5\r\nabcde\r\n",
    "split-everywhere": b"3\r\nabc\r\n0\r\n\r\n",
}

# Response streams (target `response_head`: one selector byte, the method: 0 GET, 1 HEAD,
# 2 CONNECT, 3 POST, 4 OPTIONS; high nibble 0: no cuts).
RESPONSES = {
    "cl-then-next": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Usage: 42\r\n\r\nhelloNEXT"),
    "continue-then-201": (3, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Made It\r\nContent-Length: 2\r\nA: b\r\n\r\nok"),
    "continue-early-hints": (0, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    "switching-protocols": (0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x04pong"),
    "head-with-length": (1, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
    "head-chunked": (1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
    "no-content-with-length": (0, b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
    "not-modified-chunked": (0, b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "connect-200": (2, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\ntunnel bytes"),
    "connect-407": (2, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno"),
    "gzip-chunked": (0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "chunked-gzip": (0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc"),
    "close-delimited": (0, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
    "cl-and-te": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    "keep-alive-close": (0, b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"),
    "http10-keep-alive": (0, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
    "http10-chunked": (0, b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "http10-close-delimited": (0, b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\nbytes"),
    "cl-same-list": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc"),
    "cl-differs": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    "cl-list-differs": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n"),
    "cl-plus": (0, b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
    "cl-over-u64": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"),
    "status-2000": (0, b"HTTP/1.1 2000 OK\r\n\r\n"),
    "bad-field-name": (0, b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"),
    "folded": (0, b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n"),
    "nul-value": (0, b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n"),
    "connection-names-field": (0, b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n"),
    "blank-lines-bare-lf": (0, b"\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    "mixed-line-ends": (0, b"HTTP/1.1 204 No Content\nX-A: b\r\n\r\n"),
    "incomplete-cr": (0, b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r"),
    "lf-then-crlf-body": (0, b"HTTP/1.1 200 OK\nContent-Length: 8\n\nab\r\n\r\ncd"),
    "chunked-trailers": (0, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntrailer: x-checksum\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n"),
    "payload-too-large": (3, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!"),
    "short-body": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
    "options-ok": (4, b"HTTP/1.1 200 OK\r\nAllow: GET\r\nContent-Length: 0\r\n\r\n"),
}

PATHS = {
    "root": "/",
    "plain": "/api/v1/items/42",
    "trailing-slash": "/api/",
    "double-slash": "/a//b",
    "dot": "/a/./b",
    "dotdot": "/a/b/../c",
    "dotdot-above-root": "/../etc/passwd",
    "encoded-dot": "/a/%2e%2E/b",
    "encoded-slash": "/a%2Fb",
    "encoded-backslash": "/a%5cb",
    "encoded-nul": "/a%00b",
    "raw-backslash": "/a\\b",
    "dot-param": "/public/..;/admin",
    "encoded-dot-param": "/public/%2e%2e;x/admin",
    "lowercase-escape": "/caf%c3%a9",
    "unreserved-escape": "/%7euser/%41",
    "overlong-dot": "/%C0%AE%C0%AE/x",
    "bad-escape": "/a%zz",
    "trailing-dot": "/a/.",
    "trailing-dotdot": "/a/b/..",
    "query-mark": "/a?b",
    "space": "/a b",
}

CREDENTIALS = {
    # One selector byte (the API-key prefix: 0 none, 1 "ag_", 2 "x"), then the value.
    "jwt": (0, b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
    "jwt-alg-none": (0, b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
    "api-key": (1, b"Bearer ag_live_0123456789abcdef"),
    "api-key-spaces": (1, b"bearer    ag_live_0123456789abcdef   "),
    "basic": (0, b"Basic dXNlcjpwYXNz"),
    "bearer-empty": (0, b"Bearer "),
    "bearer-no-space": (0, b"Bearertoken"),
    "bearer-tab": (0, b"Bearer\teyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
    "four-parts": (0, b"Bearer a.b.c.d"),
    "latin1": (2, b"Bearer x\xe9\xff"),
}


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode("latin-1")
    (ROOT / target).mkdir(parents=True, exist_ok=True)
    (ROOT / target / name).write_bytes(data)


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    for name, data in {**REQUESTS, **OBFUSCATIONS, **hdg_cases()}.items():
        # The roundtrip target starts from these too (scripts/fuzz.sh points it here).
        write("request_head", name, data)
    for name, body in CHUNKED_BODIES.items():
        write("chunked", name, b"\x00" + body)
    # Two cut offsets (control byte 2), inside the size line and the trailers.
    write("chunked", "split-with-trailers", b"\x82\x00\x02\x00\x20" + CHUNKED_BODIES["with-trailers"])
    for name, (method, data) in RESPONSES.items():
        write("response_head", name, bytes([method]) + data)
    for name, path in PATHS.items():
        write("normalize_path", name, path)
    for name, (prefix, value) in CREDENTIALS.items():
        write("credential", name, bytes([prefix]) + value)


if __name__ == "__main__":
    main()
