//! A paced HTTP load driver for rate-limit accuracy (used by `benches/limit_accuracy.sh`).
//!
//! Sends GETs with `Authorization: Bearer KEY` to every URL at a steady RATE requests per
//! second each, for DURATION seconds, over CONNECTIONS keep-alive connections per URL (each
//! connection sends at RATE / CONNECTIONS, phase-shifted, so the URL sees one evenly spaced
//! stream). Requests are scheduled at fixed instants: a slow answer delays only its own
//! connection's next send, which then catches up. Counts 2xx as admitted, 429 as refused,
//! anything else (other statuses, transport errors) as other.
//!
//! ```text
//! cargo run --release --example limit_load -- --key sgk_... --rate 50 --duration 10 \
//!     --connections 4 http://127.0.0.1:8080/v1/x http://127.0.0.1:8081/v1/x
//! ```
//! Prints one `target` line per URL and a final `total` line, `name=value` pairs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    /// Largest delay of a send behind its scheduled instant, in microseconds.
    late_max_us: AtomicU64,
}

#[derive(Debug)]
struct Options {
    key: String,
    rate: f64,
    duration: Duration,
    connections: usize,
    urls: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: limit_load --key KEY [--rate PER_URL_PER_SEC=50] [--duration SECS=10] \
         [--connections PER_URL=4] URL..."
    );
    std::process::exit(2)
}

fn parse() -> Options {
    let mut options = Options {
        key: String::new(),
        rate: 50.0,
        duration: Duration::from_secs(10),
        connections: 4,
        urls: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--key" => options.key = value(),
            "--rate" => options.rate = value().parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                let secs: f64 = value().parse().unwrap_or_else(|_| usage());
                options.duration = Duration::from_secs_f64(secs);
            }
            "--connections" => options.connections = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            url if url.starts_with("http://") => options.urls.push(url.to_owned()),
            _ => usage(),
        }
    }
    if options.key.is_empty()
        || options.urls.is_empty()
        || options.rate <= 0.0
        || options.connections == 0
    {
        usage();
    }
    options
}

/// When one connection sends: at `first + k * period` while before `end`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: Instant,
    period: Duration,
    end: Instant,
}

/// One keep-alive connection following its schedule.
async fn connection(
    client: reqwest::Client,
    url: String,
    key: Arc<str>,
    schedule: Schedule,
    counts: Arc<Counts>,
) {
    let mut due = schedule.first;
    while due < schedule.end {
        tokio::time::sleep_until(due).await;
        let late = Instant::now().saturating_duration_since(due);
        counts
            .late_max_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = client.get(&url).bearer_auth(&*key).send().await;
        let counter = match outcome {
            Ok(response) => {
                let status = response.status();
                // Read the body so the connection is reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    &counts.admitted
                } else if status.as_u16() == 429 {
                    &counts.refused
                } else {
                    &counts.other
                }
            }
            Err(_) => &counts.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        due += schedule.period;
    }
}

#[tokio::main]
async fn main() {
    let options = parse();
    let key: Arc<str> = options.key.into();
    let per_connection = options.rate / options.connections as f64;
    let period = Duration::from_secs_f64(1.0 / per_connection);
    let spacing = Duration::from_secs_f64(1.0 / options.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + options.duration;
    let targets: Vec<(String, Arc<Counts>)> = options
        .urls
        .iter()
        .map(|url| (url.clone(), Arc::new(Counts::default())))
        .collect();
    let mut tasks = Vec::new();
    for (t, (url, counts)) in targets.iter().enumerate() {
        for c in 0..options.connections {
            // One client per connection: it keeps exactly one keep-alive connection busy.
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client");
            // Spread the URLs' streams too, so the gateways do not all get a request at once.
            let offset = spacing.mul_f64(c as f64 + t as f64 / targets.len() as f64);
            tasks.push(tokio::spawn(connection(
                client,
                url.clone(),
                key.clone(),
                Schedule {
                    first: start + offset,
                    period,
                    end,
                },
                counts.clone(),
            )));
        }
    }
    for task in tasks {
        task.await.expect("load task");
    }
    let mut total = [0u64; 4];
    let mut late_max_us = 0;
    for (url, counts) in &targets {
        let values = [
            counts.sent.load(Ordering::Relaxed),
            counts.admitted.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
            counts.other.load(Ordering::Relaxed),
        ];
        let late = counts.late_max_us.load(Ordering::Relaxed);
        late_max_us = late_max_us.max(late);
        for (sum, value) in total.iter_mut().zip(values) {
            *sum += value;
        }
        println!(
            "target url={url} sent={} admitted={} refused={} other={} late_max_ms={:.1}",
            values[0],
            values[1],
            values[2],
            values[3],
            late as f64 / 1000.0
        );
    }
    println!(
        "total sent={} admitted={} refused={} other={} late_max_ms={:.1} seconds={}",
        total[0],
        total[1],
        total[2],
        total[3],
        late_max_us as f64 / 1000.0,
        options.duration.as_secs_f64()
    );
}
