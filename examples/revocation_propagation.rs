//! Revocation propagation across instances (used by `benches/revocation_propagation.sh`).
//!
//! Starts INSTANCES gateways in this process through the library API (as the tests do), all
//! with `[redis]` on REDIS_URL under one fresh `key_prefix`, in front of a local upstream that
//! answers 200, with COUNT + 1 API keys. Every key is used once on every instance first (warm
//! key caches, as for keys in use). Then, one key at a time, revokes the key through instance
//! A's admin API and measures, from the moment the API call returned, how long until every
//! instance refuses the key: each instance is polled on its main port with the key, back to
//! back over one keep-alive connection, until it answers 401 `AUTH_KEY_REVOKED`.
//!
//! ```text
//! cargo run --release --example revocation_propagation -- --count 200 \
//!     --redis redis://127.0.0.1:6379 --instances 3 --target-ms 100
//! ```
//! Prints the distribution of the time until all refuse (p50, p99, max) and per instance,
//! and `RESULT ... PASS|FAIL` against the p99 target. Exit status 0 on PASS, 1 on FAIL.
//!
//! Everything shares this process's runtime (as many worker threads as cores): the pollers
//! compete with the gateways' subscribers for the CPU, so the figures are an upper bound of
//! what separate processes would show on the same machine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The allocator the `authgate` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "propagation-bench-admin-token";
/// A poll that has not seen the refusal after this long counts as a failure.
const GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Options {
    redis: String,
    count: usize,
    instances: usize,
    target_ms: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: revocation_propagation [--redis URL=redis://127.0.0.1:6379] [--count N=200] \
         [--instances N=3] [--target-ms P99=100]"
    );
    std::process::exit(2)
}

fn parse() -> Options {
    let mut options = Options {
        redis: "redis://127.0.0.1:6379".into(),
        count: 200,
        instances: 3,
        target_ms: 100.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--redis" => options.redis = value(),
            "--count" => options.count = value().parse().unwrap_or_else(|_| usage()),
            "--instances" => options.instances = value().parse().unwrap_or_else(|_| usage()),
            "--target-ms" => options.target_ms = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if options.count == 0 || options.instances == 0 {
        usage();
    }
    options
}

/// An upstream on 127.0.0.1:0 that answers every request `200 ok`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Instance {
    handle: authgate::server::ServerHandle,
    /// Polls this instance's main port (one keep-alive connection, reused).
    client: reqwest::Client,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://{}/v1/x", self.handle.addr)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.admin_addr)
    }

    /// The status of one GET with the key.
    async fn status(&self, key: &str) -> u16 {
        match self.client.get(self.url()).bearer_auth(key).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }

    /// Polls with the key until refused: the time since `since`, or `None` after `GIVE_UP`.
    async fn until_refused(&self, key: &str, since: Instant) -> Option<Duration> {
        loop {
            match self.status(key).await {
                401 => return Some(since.elapsed()),
                200 => {}
                other => panic!("unexpected status {other} while polling"),
            }
            if since.elapsed() > GIVE_UP {
                return None;
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// `q` quantile (0..=1) of sorted durations, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn summary(name: &str, durations: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = durations.to_vec();
    sorted.sort();
    let (p50, p99, max) = (
        quantile(&sorted, 0.50),
        quantile(&sorted, 0.99),
        *sorted.last().unwrap(),
    );
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    println!(
        "{name}: n={} min={:.2}ms p50={:.2}ms mean={:.2}ms p99={:.2}ms max={:.2}ms",
        sorted.len(),
        ms(sorted[0]),
        ms(p50),
        ms(mean),
        ms(p99),
        ms(max)
    );
    (p50, p99, max)
}

#[tokio::main]
async fn main() {
    let options = parse();
    authgate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let prefix = format!("authgate-bench-propagation-{}:", uuid::Uuid::new_v4());

    // COUNT keys to revoke, and one never revoked (checks nothing else is refused).
    let keys: Vec<(String, String)> = (0..=options.count)
        .map(|i| {
            (
                authgate::keys::generate_key("sgk_").unwrap(),
                format!("bench-{i}"),
            )
        })
        .collect();
    let records: String = keys
        .iter()
        .map(|(key, id)| {
            format!(
                "[[keys]]\nhash = \"{}\"\nkey_id = \"{id}\"\ntenant_id = \"bench\"\n",
                authgate::keys::KeyHash::of(key).to_hex()
            )
        })
        .collect();
    std::fs::write(dir.path().join("keys.toml"), records).unwrap();

    let mut instances = Vec::new();
    for n in 0..options.instances {
        let path = dir.path().join(format!("authgate-{n}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"

[api_keys]
file = "keys.toml"

[revocation]
max_entries = {max_entries}

[redis]
url = "{redis}"
key_prefix = "{prefix}"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "http://{upstream}"
auth = ["api_key"]
"#,
                redis = options.redis,
                max_entries = options.count + 100,
            ),
        )
        .unwrap();
        let config = authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let access_log = authgate::telemetry::AccessLog::to_writer(Box::new(std::io::sink()));
        let handle = authgate::server::start(config, access_log).await.unwrap();
        instances.push(Instance {
            handle,
            client: client(),
        });
    }
    let admin = client();
    for (n, instance) in instances.iter().enumerate() {
        let started = Instant::now();
        loop {
            let ready = admin
                .get(instance.admin_url("/ready"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "instance {n} never became ready (is Redis at {} up?)",
                options.redis
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (key, id) in &keys {
        for instance in &instances {
            assert_eq!(instance.status(key).await, 200, "{id} before the run");
        }
    }
    println!(
        "revocation propagation: {} instances on {} (prefix {prefix}), {} revocations of distinct keys through instance A's admin API",
        options.instances, options.redis, options.count
    );

    let a = &instances[0];
    let mut all = Vec::with_capacity(options.count);
    let mut per_instance = vec![Vec::with_capacity(options.count); options.instances];
    let mut api_calls = Vec::with_capacity(options.count);
    let mut failures = 0;
    for (key, id) in &keys[..options.count] {
        let called = Instant::now();
        let response = admin
            .post(a.admin_url("/admin/revocations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "key_id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        let returned = Instant::now();
        api_calls.push(returned - called);
        if answer["cluster"] != "published" {
            eprintln!("{id}: cluster = {}", answer["cluster"]);
            failures += 1;
        }
        let delays = futures_util::future::join_all(
            instances
                .iter()
                .map(|instance| instance.until_refused(key, returned)),
        )
        .await;
        let mut slowest = Duration::ZERO;
        for (n, delay) in delays.into_iter().enumerate() {
            match delay {
                Some(delay) => {
                    per_instance[n].push(delay);
                    slowest = slowest.max(delay);
                }
                None => {
                    eprintln!("{id}: instance {n} did not refuse within {GIVE_UP:?}");
                    failures += 1;
                    slowest = slowest.max(GIVE_UP);
                }
            }
        }
        all.push(slowest);
    }
    let (spared, _) = &keys[options.count];
    for (n, instance) in instances.iter().enumerate() {
        assert_eq!(
            instance.status(spared).await,
            200,
            "instance {n} refuses a key never revoked"
        );
    }

    summary("admin API call (POST, until answered)", &api_calls);
    for (n, delays) in per_instance.iter().enumerate() {
        let name = format!(
            "instance {} refuses{}",
            (b'A' + n as u8) as char,
            if n == 0 { " (where revoked)" } else { "" }
        );
        summary(&name, delays);
    }
    let (p50, p99, max) = summary("all instances refuse (after the API call returned)", &all);
    let pass = failures == 0 && ms(p99) <= options.target_ms;
    println!(
        "RESULT propagation to all {} instances: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} revocations (target p99 <= {} ms, failures {failures}): {}",
        options.instances,
        ms(p50),
        ms(p99),
        ms(max),
        all.len(),
        options.target_ms,
        if pass { "PASS" } else { "FAIL" }
    );
    for instance in &instances {
        instance.handle.shutdown();
    }
    // Leave nothing behind in a shared Redis.
    if let Ok(client) = redis::Client::open(options.redis.as_str())
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(format!("{prefix}revocations:all"))
            .query_async(&mut connection)
            .await;
    }
    std::process::exit(if pass { 0 } else { 1 });
}
