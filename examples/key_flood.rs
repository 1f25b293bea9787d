//! A flood of distinct, well-formed, unknown API keys against a gateway backed by a (mock)
//! control plane or by the key service's database, while one valid key keeps calling. Every
//! 5 s it prints the process's resident memory, the key-source lookups per second, what the
//! flood got (401 / 503 / 429) and how the valid key fared.
//!
//!     cargo run --release --example key_flood -- [before|after] [SECONDS] [CONCURRENCY]
//!
//! `after` runs the defaults. `before` reproduces by config what the gateway did before
//! unknown keys had a store of their own, lookups a budget and failures a per-client limit:
//! a million unknown keys remembered, no lookup budget to speak of, no failure limit.
//!
//! The key source is a mock control plane (404 for every key but the valid one), unless
//! `KEY_FLOOD_DATABASE` names a key-service database (`sqlite://…`, `postgres://…`) that
//! holds the valid key given in `KEY_FLOOD_VALID_KEY` (`benches/key_flood.sh` with
//! `SOURCE=database` seeds one with `authgate keys add --database`). With the database the
//! flood's keys carry valid checksums, so every one of them passes the checksum check that
//! `source = "database"` requires and is a real lookup candidate: the worst case.
//! Lookups are counted by the mock, or read from `authgate_key_source_requests_total`.
//! Gateway, key source, upstream and flooder share the process (as in the tests); the
//! flooder's own memory is bounded by CONCURRENCY, so RSS growth is the gateway's (and, with
//! SQLite, its page cache). Driven by `benches/key_flood.sh`.

#[path = "../benches/support/mod.rs"]
mod support;

/// The allocator the `authgate` binary uses (src/main.rs), so RSS is what a gateway pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use support::rss_mb;

/// Serves `answer` on 127.0.0.1:0 (HTTP/1.1 and HTTP/2) until the process ends.
async fn serve<F>(answer: F) -> SocketAddr
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn text(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

/// Counts of what the flood got.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    unauthorized: AtomicU64,
    throttled: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    valid_ok: AtomicU64,
    valid_failed: AtomicU64,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "after".into());
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let api_keys = match mode.as_str() {
        "after" => String::new(),
        "before" => "negative_cache_capacity = 1000000\nmax_source_lookups_per_second = 1000000000\nfailed_auth_limit = \"off\"\n".to_owned(),
        other => panic!("mode must be before or after, not {other}"),
    };
    authgate::install_crypto_provider();

    let database = std::env::var("KEY_FLOOD_DATABASE").ok();
    let lookups = Arc::new(AtomicU64::new(0));
    let (valid, source) = match &database {
        Some(url) => {
            let valid = std::env::var("KEY_FLOOD_VALID_KEY")
                .expect("KEY_FLOOD_VALID_KEY: a key the database holds");
            let source =
                format!("source = \"database\"\n{api_keys}\n[database]\nurl = \"{url}\"\n");
            (valid, source)
        }
        None => {
            let valid = authgate::keys::generate_key("sgk_").unwrap();
            let valid_path = format!("/v1/keys/{}", authgate::keys::KeyHash::of(&valid).to_hex());
            let counted = lookups.clone();
            let control_plane = serve(move |request| {
                counted.fetch_add(1, Ordering::Relaxed);
                if request.uri().path() == valid_path {
                    text(200, r#"{"key_id":"flood-valid","tenant_id":"acme"}"#)
                } else {
                    text(404, "unknown")
                }
            })
            .await;
            let source = format!(
                "source = \"control_plane\"\n{api_keys}\n[control_plane]\nurl = \"http://{control_plane}\"\n"
            );
            (valid, source)
        }
    };
    let source_kind = if database.is_some() {
        "database"
    } else {
        "control_plane"
    };
    let upstream = serve(|_| text(200, "ok")).await;

    let dir = std::env::temp_dir().join(format!("authgate-key-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("authgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32"]
[admin]
listen = "127.0.0.1:0"
[log]
access_log = false
[api_keys]
{source}
[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "http://{upstream}"
auth = ["api_key"]
"#
        ),
    )
    .unwrap();
    let config = authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let access_log = authgate::telemetry::AccessLog::to_writer(Box::new(std::io::sink()));
    let handle = authgate::server::start(config, access_log).await.unwrap();
    let url = format!("http://{}/v1/x", handle.addr);
    let metrics_url = format!("http://{}/metrics", handle.admin_addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency + 1)
        .build()
        .unwrap();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let checksummed = database.is_some();
    for task in 0..concurrency {
        let (client, url, tally, stop) = (client.clone(), url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Distinct keys; clients spread over 65,536 addresses.
                let key = if checksummed {
                    // 34 characters, then the checksum: a key the database must look up.
                    let body = format!("sgk_flood{task:0>4}x{n:0>24}");
                    let checksum = authgate::keys::checksum_chars(body.as_bytes());
                    format!("{body}{}", std::str::from_utf8(&checksum).unwrap())
                } else {
                    format!("sgk_flood{task:0>4}x{n:0>30}")
                };
                let spread = (n as usize * concurrency + task) % 65_536;
                let ip = format!("10.64.{}.{}", spread / 256, spread % 256);
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let counter = match client
                    .get(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .header("x-forwarded-for", ip)
                    .send()
                    .await
                {
                    Ok(response) => match response.status().as_u16() {
                        401 => &tally.unauthorized,
                        503 => &tally.throttled,
                        429 => &tally.limited,
                        _ => &tally.other,
                    },
                    Err(_) => &tally.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (client, url, tally, stop) = (client.clone(), url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = client
                    .get(&url)
                    .header("authorization", format!("Bearer {valid}"))
                    .header("x-forwarded-for", "192.0.2.1")
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == 200);
                let counter = if ok {
                    &tally.valid_ok
                } else {
                    &tally.valid_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    // The key source's lookups so far: the mock's count, or the gateway's own metric.
    let source_lookups = {
        let client = client.clone();
        let lookups = lookups.clone();
        let from_metrics = database.is_some();
        move || {
            let (client, lookups, metrics_url) =
                (client.clone(), lookups.clone(), metrics_url.clone());
            async move {
                if !from_metrics {
                    return lookups.load(Ordering::Relaxed);
                }
                let text = match client.get(&metrics_url).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                text.lines()
                    .filter(|line| line.starts_with("authgate_key_source_requests_total{"))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            }
        }
    };

    println!("mode={mode} source={source_kind} seconds={seconds} concurrency={concurrency}");
    println!(
        "   t_s  rss_mb  lookups_per_s  flood_per_s     401     503     429  other  valid_ok  valid_failed"
    );
    println!("{:>6} {:>7.1}", 0, rss_mb());
    let started = Instant::now();
    let (mut last_lookups, mut last_sent) = (0, 0);
    let step = 5;
    for t in (step..=seconds).step_by(step as usize) {
        tokio::time::sleep_until((started + Duration::from_secs(t)).into()).await;
        let (now_lookups, now_sent) = (source_lookups().await, tally.sent.load(Ordering::Relaxed));
        println!(
            "{:>6} {:>7.1} {:>14.0} {:>12.0} {:>7} {:>7} {:>7} {:>6} {:>9} {:>13}",
            t,
            rss_mb(),
            (now_lookups - last_lookups) as f64 / step as f64,
            (now_sent - last_sent) as f64 / step as f64,
            tally.unauthorized.load(Ordering::Relaxed),
            tally.throttled.load(Ordering::Relaxed),
            tally.limited.load(Ordering::Relaxed),
            tally.other.load(Ordering::Relaxed),
            tally.valid_ok.load(Ordering::Relaxed),
            tally.valid_failed.load(Ordering::Relaxed),
        );
        (last_lookups, last_sent) = (now_lookups, now_sent);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let total = source_lookups().await;
    println!(
        "total: {} flood requests, {total} {source_kind} lookups ({:.0}/s), final RSS {:.1} MB",
        tally.sent.load(Ordering::Relaxed),
        total as f64 / seconds as f64,
        rss_mb()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
