//! A fixed set of requests and what authgate does with them, byte for byte: the raw responses
//! clients get, the raw requests the upstream gets, the access-log lines and the metrics.
//! Compared with `tests/snapshots/behaviour.txt`, so a change meant to move code without
//! changing behaviour (a refactor) proves it. Timestamps, request ids, durations and ports are
//! replaced by placeholders; nothing else is.
//!
//! After a deliberate behaviour change: `UPDATE_SNAPSHOT=1 cargo test --test behaviour_snapshot`,
//! then review the diff of the snapshot like code.
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SNAPSHOT: &str = "tests/snapshots/behaviour.txt";
/// A fixed key, so the run is the same every time (only its hash is in the key file).
const KEY: &str = "sgk_snapshotsnapshotsnapshotsnapshotsnaps1";
const KEY_WITHOUT_SCOPE: &str = "sgk_snapshotsnapshotsnapshotsnapshotsnaps2";

/// An upstream that records each raw request head (and body) and answers by path, with
/// fixed responses, so the upstream side adds nothing that varies.
async fn scripted_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_scripted(stream, recorded.clone()));
        }
    });
    (addr, seen)
}

async fn serve_scripted(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let lower = head.to_ascii_lowercase();
        // Bodies in this script are small and sent whole: length or chunked.
        let body_len = if let Some(at) = lower.find("content-length: ") {
            lower[at + 16..]
                .split("\r\n")
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                if let Some(end) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                    break end + 5;
                }
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        } else {
            0
        };
        while buf.len() < body_len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..body_len).collect();
        seen.lock()
            .unwrap()
            .push(format!("{head}{}", String::from_utf8_lossy(&body)));
        let path = head.split(' ').nth(1).unwrap_or_default();
        let response: &[u8] = if path.ends_with("/204") {
            b"HTTP/1.1 204 No Content\r\nx-upstream: 204\r\n\r\n"
        } else if path.ends_with("/stream") {
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n7\r\ndata: 2\r\n0\r\n\r\n"
        } else if path.ends_with("/missing") {
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot here\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream: yes\r\ncontent-length: 11\r\n\r\nupstream ok"
        };
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

/// The requests, in order; each on its own connection, closed by the client.
fn requests(host: &str) -> Vec<(&'static str, String)> {
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    let bearer = |key: &str| format!("Authorization: Bearer {key}\r\n");
    vec![
        ("public GET", get("/pub/x?q=1", "")),
        (
            "public HEAD",
            format!("HEAD /pub/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "public POST with a body",
            format!(
                "POST /pub/echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            ),
        ),
        (
            "public chunked POST",
            format!(
                "POST /pub/echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        ("upstream 204", get("/pub/204", "")),
        ("upstream 404", get("/pub/missing", "")),
        ("streamed response", get("/pub/stream", "")),
        (
            "spoofed identity and forwarding headers",
            get(
                "/pub/spoof",
                "X-Auth-Tenant-Id: evil\r\nX-Forwarded-For: 6.6.6.6\r\nX-Original-URL: /admin\r\nx-request-id: client-id-1\r\n",
            ),
        ),
        ("no credential", get("/keys/x", "")),
        (
            "unknown key",
            get("/keys/x", &bearer(&format!("sgk_{}", "u".repeat(40)))),
        ),
        ("malformed key", get("/keys/x", &bearer("sgk_short"))),
        (
            "not a bearer",
            get("/keys/x", "Authorization: Basic dXNlcjpwYXNz\r\n"),
        ),
        (
            "key without the scope",
            get("/keys/x", &bearer(KEY_WITHOUT_SCOPE)),
        ),
        ("valid key", get("/keys/x", &bearer(KEY))),
        ("valid key again", get("/keys/y", &bearer(KEY))),
        ("over the rate limit", get("/keys/z", &bearer(KEY))),
        ("no route", get("/nope", "")),
        ("encoded slash", get("/pub/a%2Fb", "")),
        ("dot segments", get("/pub/a/../b/./c", "")),
        (
            "declared body over max_body_bytes",
            format!(
                "POST /small/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            "both framings",
            format!(
                "POST /pub/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "head too large",
            get("/pub/x", &format!("x-big: {}\r\n", "a".repeat(40_000))),
        ),
        (
            "headers over max_header_bytes",
            get("/pub/x", &format!("x-big: {}\r\n", "a".repeat(9_000))),
        ),
    ]
}

/// Replaces what legitimately varies from run to run.
fn normalize(text: &str, ports: &[(u16, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("date: ") {
            out.push_str("date: <date>\r\n");
        } else if lower.starts_with("x-request-id: ") && !lower.contains("client-id") {
            out.push_str("x-request-id: <id>\r\n");
        } else {
            out.push_str(line);
        }
    }
    for (port, name) in ports {
        out = out.replace(&format!(":{port}"), &format!(":<{name}>"));
    }
    // Generated request ids in JSON error bodies.
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("\"request_id\":\"") {
        let start = at + "\"request_id\":\"".len();
        result.push_str(&rest[..start]);
        let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
        let id = &rest[start..end];
        result.push_str(if id.starts_with("client-id") {
            id
        } else {
            "<id>"
        });
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

/// An access-log line with its varying fields replaced.
fn normalize_log_line(line: &serde_json::Value) -> String {
    let mut line = line.clone();
    if let Some(object) = line.as_object_mut() {
        for field in ["time", "duration_ms", "upstream_ms"] {
            if object.contains_key(field) {
                object.insert(
                    field.into(),
                    serde_json::Value::String(format!("<{field}>")),
                );
            }
        }
        if let Some(id) = object.get("request_id").and_then(|v| v.as_str())
            && !id.starts_with("client-id")
        {
            object.insert("request_id".into(), "<id>".into());
        }
    }
    line.to_string()
}

/// Metrics lines that do not depend on timing: every counter and gauge, and histogram counts.
/// A family's series come out in hash order, so they are sorted within each family.
fn stable_metrics(text: &str) -> String {
    let mut out = String::new();
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_unstable();
        for sample in samples.drain(..) {
            out.push_str(sample);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else if !line.contains("_bucket{")
            && !line.contains("_sum")
            // Set by the limiter's housekeeping timer, not by the requests.
            && !line.starts_with("authgate_rate_limit_principals")
        {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

#[tokio::test]
async fn a_fixed_set_of_requests_gives_the_recorded_bytes() {
    let (upstream, seen) = scripted_upstream().await;
    let keys = format!(
        "{}{}",
        key_record(
            KEY,
            "key_id = \"k1\"\ntenant_id = \"acme\"\nuser_id = \"alice\"\nscopes = [\"inference:write\"]\nrate_limit = { requests_per_second = 0.001, burst = 2 }\ncustom_claims = { plan = \"pro\" }"
        ),
        key_record(
            KEY_WITHOUT_SCOPE,
            "key_id = \"k2\"\ntenant_id = \"acme\"\nscopes = [\"other\"]"
        )
    );
    let url = format!("http://{upstream}");
    let config = format!(
        "[server]\nmax_header_bytes = 8192\n[api_keys]\nfile = \"keys.toml\"\n\n{}{}[[routes]]\nname = \"keys\"\nmatch = {{ path_prefix = \"/keys/\" }}\nupstream = \"{url}\"\nauth = [\"api_key\"]\nscopes = [\"inference:write\"]\n\n[[routes]]\nname = \"small\"\nmatch = {{ path_prefix = \"/small/\" }}\nupstream = \"{url}\"\nauth = \"none\"\nmax_body_bytes = 10\n",
        public_route("pub", "/pub/", &url),
        "",
    );
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;
    let host = gw.addr.to_string();
    let ports = [
        (gw.addr.port(), "gateway-port"),
        (upstream.port(), "upstream-port"),
    ];

    let mut report = String::new();
    let script = requests(&host);
    for (name, request) in &script {
        let response = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        report.push_str(&format!("=== {name}\n{}\n", normalize(&response, &ports)));
    }
    report.push_str("=== upstream received\n");
    for request in seen.lock().unwrap().iter() {
        report.push_str(&normalize(request, &ports));
        report.push_str("\n---\n");
    }
    report.push_str("=== access log\n");
    // One line per request that reached the pipeline (refused heads have none).
    let lines = gw.wait_for_log_lines(script.len() - 2).await;
    let mut logged: Vec<String> = lines.iter().map(normalize_log_line).collect();
    // Lines are written when each response ends; requests are sequential, so this is their
    // order, but sort anyway so the writer thread's timing cannot reorder them.
    logged.sort();
    for line in logged {
        report.push_str(&normalize(&line, &ports));
        report.push('\n');
    }
    report.push_str("=== metrics\n");
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    report.push_str(&stable_metrics(&metrics));

    if std::env::var_os("UPDATE_SNAPSHOT").is_some() {
        std::fs::create_dir_all("tests/snapshots").unwrap();
        std::fs::write(SNAPSHOT, &report).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(SNAPSHOT)
        .expect("tests/snapshots/behaviour.txt (UPDATE_SNAPSHOT=1 writes it)");
    if report != expected {
        let diff: Vec<String> = expected
            .lines()
            .zip(report.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  recorded: {a}\n  now:      {b}", i + 1))
            .collect();
        panic!(
            "behaviour changed ({} vs {} lines); first differences:\n{}\n(UPDATE_SNAPSHOT=1 records the new behaviour)",
            expected.lines().count(),
            report.lines().count(),
            diff.join("\n")
        );
    }
}
