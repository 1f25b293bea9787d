//! How often stray upstream bytes answer the next request: a misbehaving raw upstream writes
//! bytes after a complete response (a body to a HEAD, to a 204 or a 304, junk after a
//! Content-Length body, at once or 50 ms later), and another client's request follows on
//! the gateway. The stray bytes are a complete HTTP response (`STRAY`), so a poisoned
//! request is one whose client reads `STRAY` instead of its own answer.
//!
//! `cargo bench --bench stray_bytes` — loopback only, in-process gateway, 60 trials per case,
//! bounded: every exchange has a 3 s limit, the whole run takes about a minute.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Trials per case; `cargo test --all-targets` runs this file without `--bench`, and then
/// one trial per case is a quick smoke test.
const TRIALS: usize = 60;
/// A complete response, so bytes landing on the next request are read as its answer.
const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY";
/// Every exchange with the gateway ends within this.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(3);
/// Between trials: late bytes of the last trial have landed, connections settled.
const SETTLE: Duration = Duration::from_millis(120);

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    /// Path segment routing to this case's upstream.
    slug: &'static str,
    method: &'static str,
    /// Time between the answer and the stray bytes.
    delay: Duration,
    /// Time between the provoking answer and the next client's request.
    gap: Duration,
}

const CASES: &[Case] = &[
    case("HEAD answered with a body at once", "head", "HEAD", 0, 0),
    case(
        "HEAD answered with a body 5 ms later",
        "head5",
        "HEAD",
        5,
        0,
    ),
    case("204 followed by a body 5 ms later", "s204", "GET", 5, 0),
    case("304 followed by a body 5 ms later", "s304", "GET", 5, 0),
    case("200 Content-Length + junk at once", "junk", "GET", 0, 0),
    case(
        "200 Content-Length + junk 50 ms later, next request at once",
        "late",
        "GET",
        50,
        0,
    ),
    case(
        "200 Content-Length + junk 50 ms later, next request 100 ms later",
        "late2",
        "GET",
        50,
        100,
    ),
];

const fn case(
    name: &'static str,
    slug: &'static str,
    method: &'static str,
    delay: u64,
    gap: u64,
) -> Case {
    Case {
        name,
        slug,
        method,
        delay: Duration::from_millis(delay),
        gap: Duration::from_millis(gap),
    }
}

/// The misbehaving upstream: `/<slug>/provoke/<n>` gets the case's answer plus stray bytes,
/// `/<slug>/next/<n>` gets `next-<n>`.
async fn upstream(slug: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, slug));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, slug: &'static str) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                break String::from_utf8_lossy(&head).into_owned();
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buf.extend_from_slice(&chunk[..read]),
            }
        };
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let trial = target.rsplit('/').next().unwrap_or("0").to_owned();
        if target.contains("/next/") {
            let body = format!("next-{trial}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        // The answer, then the stray bytes in a write of their own, as a handler that writes
        // a body after the head would.
        let answer = match slug {
            "head" | "head5" => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", STRAY.len())
            }
            "s204" => "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
            "s304" => "HTTP/1.1 304 Not Modified\r\n\r\n".to_owned(),
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nprovoke".to_owned(),
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let delay = CASES
            .iter()
            .find(|case| case.slug == slug)
            .map_or(Duration::ZERO, |case| case.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if stream.write_all(STRAY).await.is_err() {
            return;
        }
    }
}

/// One request on a new client connection (`Connection: close`); the whole answer.
async fn exchange(gateway: SocketAddr, method: &str, path: &str) -> String {
    match TcpStream::connect(gateway).await {
        Ok(stream) => exchange_on(stream, method, path).await,
        Err(_) => String::new(),
    }
}

/// One request on `stream`, an open client connection (`Connection: close`).
async fn exchange_on(mut stream: TcpStream, method: &str, path: &str) -> String {
    let attempt = async {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(EXCHANGE_LIMIT, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[derive(Default)]
struct Tally {
    correct: usize,
    poisoned: usize,
    failed: usize,
}

async fn run_case(gateway: SocketAddr, case: Case, trials: usize) -> Tally {
    let mut tally = Tally::default();
    for trial in 0..trials {
        tokio::time::sleep(SETTLE).await;
        let slug = case.slug;
        // The other client is connected already, so its request follows the first answer
        // as closely as it can.
        let Ok(next) = TcpStream::connect(gateway).await else {
            tally.failed += 1;
            continue;
        };
        let _ = next.set_nodelay(true);
        exchange(gateway, case.method, &format!("/{slug}/provoke/{trial}")).await;
        if !case.gap.is_zero() {
            tokio::time::sleep(case.gap).await;
        }
        let answer = exchange_on(next, "GET", &format!("/{slug}/next/{trial}")).await;
        let status_ok = answer.starts_with("HTTP/1.1 200");
        if answer.ends_with("STRAY") || answer.contains("\r\n\r\nSTRAY") {
            tally.poisoned += 1;
        } else if status_ok && answer.ends_with(&format!("\r\n\r\nnext-{trial}")) {
            tally.correct += 1;
        } else {
            tally.failed += 1;
        }
    }
    tally
}

async fn run(trials: usize) {
    authgate::install_crypto_provider();
    let mut config =
        String::from("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    for case in CASES {
        let addr = upstream(case.slug).await;
        config.push_str(&format!(
            "[[routes]]\nname = \"{slug}\"\nmatch = {{ path_prefix = \"/{slug}/\" }}\nupstream = \"http://{addr}\"\nauth = \"none\"\n",
            slug = case.slug
        ));
    }
    let config =
        authgate::config::load_str(Path::new("stray_bytes.toml"), &config).expect("config");
    let log = authgate::telemetry::AccessLog::to_writer(Box::new(std::io::sink()));
    let handle = authgate::server::start(config, log)
        .await
        .expect("gateway starts");

    println!("| Case | Next request poisoned | Other failure | Correct |");
    println!("|---|---:|---:|---:|");
    for case in CASES {
        let tally = run_case(handle.addr, *case, trials).await;
        println!(
            "| {} | {}/{trials} | {}/{trials} | {}/{trials} |",
            case.name, tally.poisoned, tally.failed, tally.correct
        );
    }
    handle.shutdown();
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let trials = if std::env::args().any(|arg| arg == "--bench") {
        TRIALS
    } else {
        1
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(trials));
}
