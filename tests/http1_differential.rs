//! Differential test of the request parser: every request stream of the committed seed corpus
//! (`fuzz/corpus/request_head/`, see `fuzz/seeds.py`) is read by authgate's
//! `parse_request_head` (plus body decoding, which finds where the next request starts) and
//! by hyper's HTTP/1.1 server over an in-memory duplex; and every request authgate accepts is
//! re-encoded the way it is forwarded and classified by http_desync_guardian.
//!
//! Where the two parsers disagree about what the bytes are, a proxy and its upstream could
//! too, which is request smuggling. So: authgate accepts nothing hyper refuses, and where both
//! accept, method, target, fields and body (so the boundary to the next request) agree;
//! authgate refusing what hyper takes is fine (it is the stricter end). Each known
//! disagreement is in [`ALLOWED`] with its reason; anything else fails with the bytes.

mod http1_invariants;

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use http_desync_guardian::RequestSafetyTier;
use http_desync_guardian::request_analyzer::HttpRequestData;
use http1_invariants as inv;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Corpus cases where authgate and an oracle are known to disagree, and why that is right.
/// (name of the corpus file, which check, reason)
const ALLOWED: &[(&str, Check, &str)] = &[
    // A body on GET or HEAD has no defined semantics (RFC 9110 §9.3.1, §9.3.2), but it is
    // framed: authgate passes the one framing field it read, so any RFC 9112 reader finds the
    // same end. An upstream that ignores the framing of a GET body would read the body as
    // its next request; refusing such requests is the lead's call (reported, issue #11).
    ("cl-on-get", Check::Guardian, GET_BODY),
    ("hdg-ambiguous-12", Check::Guardian, GET_BODY),
    ("hdg-ambiguous-13", Check::Guardian, GET_BODY),
    ("hdg-ambiguous-14", Check::Guardian, GET_BODY),
    ("hdg-ambiguous-15", Check::Guardian, GET_BODY),
    ("hdg-real-life-test-cases-00", Check::Guardian, GET_BODY),
    ("hdg-real-life-test-cases-01", Check::Guardian, GET_BODY),
    // `Transfer---Encoding` is a valid token that no HTTP/1.1 parser reads as
    // Transfer-Encoding (hyper does not either: the test above agrees on the boundary);
    // the guardian flags names close to a framing field by edit distance.
    (
        "hdg-ambiguous-30",
        Check::Guardian,
        "a look-alike name is passed on as an ordinary field; no parser folds `---` to `-`",
    ),
];

const GET_BODY: &str = "a framed body on GET/HEAD is forwarded with its one framing field";

/// Which comparison an [`ALLOWED`] entry excuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// authgate accepts a request that hyper refuses, or reads it differently.
    Hyper,
    /// http_desync_guardian classifies what authgate forwards as Ambiguous or Severe.
    Guardian,
}

/// One request as a parser read it, in the terms both can be compared in.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    target: String,
    version: Version,
    headers: HeaderMap,
    /// The body, or `None` if reading it failed.
    body: Option<Vec<u8>>,
    trailers: Option<HeaderMap>,
}

/// What a parser made of a whole stream: the requests it read, in order, and why it stopped.
#[derive(Debug)]
struct Reading {
    requests: Vec<Seen>,
    /// Set when the parser refused the next request (its reason).
    refused: Option<String>,
}

/// authgate's reading: requests one after another, as the server connection reads them,
/// until one is refused, its body fails, the input ends or the connection would close.
fn authgate_reads(input: &[u8]) -> Reading {
    let limits = inv::request_limits();
    let mut requests = Vec::new();
    let mut rest = input.to_vec();
    loop {
        let request = match inv::read_request(&rest, &[], &limits) {
            Ok(Some(request)) => request,
            Ok(None) => {
                return Reading {
                    requests,
                    refused: None,
                };
            }
            Err(error) => {
                return Reading {
                    requests,
                    refused: Some(error.to_string()),
                };
            }
        };
        let complete = request.body.complete() && request.body.done;
        requests.push(Seen {
            method: request.method.clone(),
            target: request.target.clone(),
            version: request.version,
            headers: request.headers.clone(),
            body: complete.then(|| request.body.data.clone()),
            trailers: request.body.trailers.clone(),
        });
        if !complete || !request.keep_alive || request.body.rest.is_empty() {
            return Reading {
                requests,
                refused: None,
            };
        }
        rest = request.body.rest;
    }
}

/// hyper's reading of the same bytes: its HTTP/1.1 server on one end of a duplex, a service
/// that records each request and reads its body whole, the input written (then EOF) on the
/// other end. hyper answers parse errors itself and closes; its error says so.
async fn hyper_reads(input: &[u8]) -> Reading {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            let (body, trailers) = match body.collect().await {
                Ok(collected) => {
                    let trailers = collected.trailers().cloned();
                    (Some(collected.to_bytes().to_vec()), trailers)
                }
                Err(_) => (None, None),
            };
            record.lock().unwrap().push(Seen {
                method: parts.method,
                target: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers,
                body,
                trailers,
            });
            // 404 to everything: no 2xx to CONNECT and no 101, so no request turns the
            // connection into a tunnel and hyper goes on reading HTTP.
            let response = Response::builder()
                .status(404)
                .body(Empty::<Bytes>::new())
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let (client, server) = tokio::io::duplex(1 << 20);
    let connection = hyper::server::conn::http1::Builder::new()
        // Requests already written are served after the client's EOF, as a pipelining
        // client that has finished sending expects.
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut read_half, mut write_half) = tokio::io::split(client);
    let write = async {
        let _ = write_half.write_all(input).await;
        let _ = write_half.shutdown().await;
    };
    let read = async {
        let mut answers = Vec::new();
        let _ = read_half.read_to_end(&mut answers).await;
    };
    // A safety net only (the exchange is in memory and ends at EOF), never an assertion on
    // timing: a hung exchange fails the test instead of hanging it.
    let run = async { tokio::join!(connection, write, read).0 };
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("hyper did not finish reading the input");
    let refused = match result {
        Err(error) if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() => {
            Some(error.to_string())
        }
        Err(_) | Ok(()) => None,
    };
    let requests = seen.lock().unwrap().clone();
    Reading { requests, refused }
}

/// hyper's fields in authgate's terms: authgate's documented normalisations applied.
fn as_authgate_would_keep(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        // Fields spelled with `_` are dropped (server.underscores_in_headers = drop, the
        // default) or, where they fold to a framing field, refused.
        if name.as_str().contains('_') {
            continue;
        }
        // Identical repeated Content-Length fields are collapsed to one.
        if name == CONTENT_LENGTH && kept.get(CONTENT_LENGTH) == Some(value) {
            continue;
        }
        kept.append(name, value.clone());
    }
    kept
}

/// The seed corpus the fuzzer starts from: (file name, bytes), sorted by name.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request_head");
    let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    cases.sort();
    assert!(cases.len() > 100, "the seed corpus is missing");
    cases
}

fn allowed(name: &str, check: Check) -> bool {
    ALLOWED
        .iter()
        .any(|(case, which, _)| *case == name && *which == check)
}

/// Compares the two readings of one case; `Some(why)` for a disagreement that counts.
fn disagreement(ours: &Reading, theirs: &Reading) -> Option<String> {
    for (index, (a, h)) in ours.requests.iter().zip(&theirs.requests).enumerate() {
        let h = Seen {
            headers: as_authgate_would_keep(&h.headers),
            ..h.clone()
        };
        if *a != h {
            return Some(format!(
                "request {index} read differently:\n  authgate {a:?}\n  hyper    {h:?}"
            ));
        }
    }
    if ours.requests.len() > theirs.requests.len() {
        let extra = &ours.requests[theirs.requests.len()];
        return Some(format!(
            "authgate reads request {} ({} {}) where hyper {}",
            theirs.requests.len(),
            extra.method,
            extra.target,
            match &theirs.refused {
                Some(error) => format!("refuses: {error}"),
                None => "reads nothing more".to_owned(),
            }
        ));
    }
    None
}

/// What http_desync_guardian says of the head authgate forwards for each request it read.
fn guardian_verdicts(input: &[u8]) -> Vec<(RequestSafetyTier, String)> {
    let limits = inv::request_limits();
    let mut verdicts = Vec::new();
    let mut rest = input.to_vec();
    while let Ok(Some(request)) = inv::read_request(&rest, &[], &limits) {
        let (wire, _) = inv::forwarded_bytes(&request, &inv::identity_lines());
        let head_end = wire
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map_or(wire.len(), |at| at + 4);
        let result = HttpRequestData::analyze_raw_request(&wire[..head_end]);
        verdicts.push((
            result.tier,
            format!(
                "{:?}: {} in {:?}",
                result.reason,
                result.message.unwrap_or_default(),
                String::from_utf8_lossy(&wire[..head_end])
            ),
        ));
        let complete = request.body.complete() && request.body.done;
        if !complete || !request.keep_alive || request.body.rest.is_empty() {
            break;
        }
        rest = request.body.rest;
    }
    verdicts
}

#[tokio::test]
async fn authgate_reads_the_corpus_as_hyper_does_or_stricter() {
    let mut failures = Vec::new();
    let mut stricter = 0;
    let mut compared = 0;
    for (name, input) in corpus() {
        let ours = authgate_reads(&input);
        let theirs = hyper_reads(&input).await;
        if theirs.requests.len() > ours.requests.len() {
            stricter += 1;
        }
        compared += ours.requests.len().min(theirs.requests.len());
        if let Some(why) = disagreement(&ours, &theirs)
            && !allowed(&name, Check::Hyper)
        {
            failures.push(format!("{name}: {why}\n  bytes {:?}", Bytes::from(input)));
        }
    }
    // Guards against a vacuous pass (a hyper side that never got a request through).
    assert!(compared > 100, "only {compared} requests read by both");
    assert!(
        failures.is_empty(),
        "{} disagreement(s) with hyper ({stricter} cases where authgate is stricter are fine):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn what_authgate_forwards_is_compliant_or_acceptable_to_http_desync_guardian() {
    let mut failures = Vec::new();
    for (name, input) in corpus() {
        for (tier, why) in guardian_verdicts(&input) {
            let fine = matches!(
                tier,
                RequestSafetyTier::Compliant | RequestSafetyTier::Acceptable
            );
            if !fine && !allowed(&name, Check::Guardian) {
                failures.push(format!("{name}: {tier:?}, {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} forwarded head(s) http_desync_guardian calls risky:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_allow_list_entry_names_a_corpus_case() {
    let names: Vec<String> = corpus().into_iter().map(|(name, _)| name).collect();
    for (name, _, reason) in ALLOWED {
        assert!(names.iter().any(|n| n == name), "{name}: no such case");
        assert!(!reason.is_empty(), "{name}: no reason given");
    }
}
