//! The non-serving commands: `keys …` (key lifecycle on a key file; on the key service's
//! database in `database.rs`, with `migrate`), `demo`, and `check --online` (`online.rs`).
//!
//! A plain key is printed exactly once (by `generate` or `add`) and never written anywhere.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{ProxyBody, full};
use crate::cli::{DemoArgs, KeysAddArgs, KeysCommand};
use crate::keys::file_source::{append_record, load_key_file, revoke_record};
use crate::keys::record::RecordRate;
use crate::keys::{KeyHash, KeyMap, KeyRecord, KeySource, KeyStore, Timestamp, generate_key};

pub mod database;
pub mod online;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(crate::EXIT_INVALID)
}

/// `authgate keys …`.
pub fn keys(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Generate { prefix } => match new_key(&prefix) {
            Ok(key) => {
                println!("{key}");
                println!("{}", KeyHash::of(&key).to_hex());
                ExitCode::SUCCESS
            }
            Err(message) => fail(message),
        },
        KeysCommand::Hash { key } => {
            let key = match key {
                Some(key) => key,
                None => {
                    let mut line = String::new();
                    if std::io::stdin().lock().read_line(&mut line).is_err() {
                        return fail("cannot read the key from stdin");
                    }
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if key.is_empty() {
                return fail("no key given");
            }
            println!("{}", KeyHash::of(&key).to_hex());
            ExitCode::SUCCESS
        }
        KeysCommand::Add(args) => match &args.store.database {
            Some(url) => database::add(url, &args),
            None => add(&args),
        },
        KeysCommand::Revoke { store, key_id } => match (&store.database, &store.file) {
            (Some(url), _) => database::revoke(url, &key_id),
            (None, Some(file)) => match revoke_record(file, &key_id) {
                Ok(()) => {
                    println!("revoked {key_id}");
                    ExitCode::SUCCESS
                }
                Err(message) => fail(message),
            },
            (None, None) => usage("--file or --database is required"),
        },
        KeysCommand::List { store } => match (&store.database, &store.file) {
            (Some(url), _) => database::list(url),
            (None, Some(file)) => list(file),
            (None, None) => usage("--file or --database is required"),
        },
        KeysCommand::Rotate {
            database,
            key_id,
            grace,
        } => database::rotate(&database, &key_id, &grace),
        KeysCommand::Import { file, database } => database::import(&file, &database),
    }
}

/// A usage error clap could not catch (exit 2).
fn usage(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

pub(crate) fn new_key(prefix: &str) -> Result<String, String> {
    let valid = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(format!(
            "prefix {prefix:?} must be 1 to 32 characters of [A-Za-z0-9_-]"
        ));
    }
    generate_key(prefix).map_err(|e| format!("the OS random generator failed: {e}"))
}

/// The record `keys add` describes with its flags, validated.
pub(crate) fn record_from_args(args: &KeysAddArgs, key_id: String) -> Result<KeyRecord, String> {
    let expires_at = match args
        .expires
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
    {
        Ok(expires) => expires,
        Err(message) => return Err(format!("--expires: {message}")),
    };
    let mut custom_claims = BTreeMap::new();
    for claim in &args.claims {
        let Some((name, value)) = claim.split_once('=') else {
            return Err(format!("--claim {claim:?} must be name=value"));
        };
        custom_claims.insert(name.to_owned(), value.to_owned());
    }
    let record = KeyRecord {
        key_id,
        tenant_id: args.tenant.clone(),
        user_id: args.user.clone(),
        scopes: args.scopes.clone(),
        rate_limit: match (args.rps, args.burst) {
            (Some(requests_per_second), Some(burst)) => Some(RecordRate {
                requests_per_second,
                burst,
            }),
            _ => None,
        },
        tokens_per_minute: args.tokens_per_minute,
        expires_at,
        revoked: false,
        custom_claims,
        description: args.description.clone(),
    };
    record.validate()?;
    Ok(record)
}

fn add(args: &KeysAddArgs) -> ExitCode {
    let Some(file) = &args.store.file else {
        return usage("--file or --database is required");
    };
    if args.name.is_some() {
        // A key file has no names; taking the flag silently would lose what was asked for.
        return usage("--name needs --database: key files hold no names");
    }
    let key = match new_key(&args.prefix) {
        Ok(key) => key,
        Err(message) => return fail(message),
    };
    let key_id = match &args.key_id {
        Some(id) => id.clone(),
        None => match generate_key("key_") {
            Ok(id) => id[..20].to_owned(),
            Err(e) => return fail(format!("the OS random generator failed: {e}")),
        },
    };
    let record = match record_from_args(args, key_id.clone()) {
        Ok(record) => record,
        Err(message) => return fail(message),
    };
    match append_record(file, &KeyHash::of(&key), &record) {
        Ok(()) => {
            // The only time the key exists outside the client: print it once.
            println!("{key}");
            println!("{key_id}");
            ExitCode::SUCCESS
        }
        Err(message) => fail(message),
    }
}

fn list(file: &Path) -> ExitCode {
    let keys = match load_key_file(file) {
        Ok(keys) => keys,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::from(crate::EXIT_INVALID);
        }
    };
    let mut rows: Vec<(&KeyHash, &KeyRecord)> = keys.iter().collect();
    rows.sort_by(|a, b| a.1.key_id.cmp(&b.1.key_id));
    println!(
        "{:<24} {:<9} {:<16} {:<16} {:<21} {:<8} scopes",
        "key_id", "hash", "tenant", "user", "expires", "status"
    );
    let now = Timestamp::now();
    for (hash, record) in rows {
        let status = record.status(now);
        println!(
            "{:<24} {:<9} {:<16} {:<16} {:<21} {:<8} {}",
            record.key_id,
            hash.short(),
            record.tenant_id,
            record.user_id.as_deref().unwrap_or("-"),
            record
                .expires_at
                .map_or_else(|| "-".to_owned(), Timestamp::to_rfc3339),
            status,
            record.scopes.join(" ")
        );
    }
    ExitCode::SUCCESS
}

/// `authgate demo`: an echo upstream plus a gateway with one in-memory key.
pub fn demo(args: &DemoArgs) -> ExitCode {
    crate::telemetry::init_tracing(crate::telemetry::LogFormat::Pretty, Some("warn"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the async runtime: {error}")),
    };
    runtime.block_on(run_demo(args.port))
}

async fn run_demo(port: u16) -> ExitCode {
    let echo = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => return fail(format!("cannot bind the echo upstream: {error}")),
    };
    let Ok(echo_addr) = echo.local_addr() else {
        return fail("cannot read the echo upstream address");
    };
    tokio::spawn(serve_echo(echo));

    // Port 8080 unless taken: then any free one.
    let port = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(probe) => {
            drop(probe);
            port
        }
        Err(_) => 0,
    };
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:0"
[log]
format = "pretty"
access_log = false

[[routes]]
name = "demo-api"
match = {{ path_prefix = "/v1/" }}
upstream = "http://{echo_addr}"
auth = ["api_key"]
scopes = ["demo:read"]

[[routes]]
name = "demo-public"
match = {{ path_prefix = "/public/" }}
upstream = "http://{echo_addr}"
auth = "none"
"#
    );
    let config = match crate::config::load_str(Path::new("demo.toml"), &text) {
        Ok(config) => config,
        Err(errors) => return fail(errors),
    };
    let key = match new_key("sgk_") {
        Ok(key) => key,
        Err(message) => return fail(message),
    };
    let record = KeyRecord {
        key_id: "demo-key".into(),
        tenant_id: "demo-tenant".into(),
        user_id: Some("demo-user".into()),
        scopes: vec!["demo:read".into()],
        rate_limit: None,
        tokens_per_minute: None,
        expires_at: None,
        revoked: false,
        custom_claims: BTreeMap::from([("plan".to_owned(), "demo".to_owned())]),
        description: Some("authgate demo".into()),
    };
    let mut keys = KeyMap::new();
    keys.insert(KeyHash::of(&key), record);
    let settings = config.api_keys.clone();
    let access_log = crate::telemetry::AccessLog::stdout();
    let gateway = match crate::gateway::Gateway::with_key_store(config, access_log, |metrics| {
        KeyStore::new(
            settings,
            KeySource::Memory(keys),
            crate::keys::cache::KeyMetrics::of(metrics),
        )
    }) {
        Ok(gateway) => gateway,
        Err(error) => return fail(error),
    };
    let handle = match crate::server::start_gateway(Arc::new(gateway)).await {
        Ok(handle) => handle,
        Err(error) => return fail(format!("cannot bind the demo gateway: {error}")),
    };
    let base = format!("http://{}", handle.addr);
    println!("authgate demo is running. Press Ctrl-C to stop.\n");
    println!("API key (held in memory only): {key}\n");
    println!(
        "An authenticated call; the echo upstream shows the identity headers authgate injected:"
    );
    println!("  curl -s -H 'Authorization: Bearer {key}' {base}/v1/hello\n");
    println!("Spoofed identity headers are stripped before authgate sets its own:");
    println!(
        "  curl -s -H 'Authorization: Bearer {key}' -H 'X-Auth-Tenant-Id: evil' {base}/v1/hello\n"
    );
    println!("No key, or a wrong one: 401, and nothing reaches the upstream:");
    println!("  curl -si {base}/v1/hello");
    println!(
        "  curl -si -H 'Authorization: Bearer sgk_wrongwrongwrongwrongwrongwrongwrong' {base}/v1/hello\n"
    );
    println!("A public route (no identity):");
    println!("  curl -s {base}/public/hello\n");
    println!("Metrics: curl -s http://{}/metrics", handle.admin_addr);
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown();
    handle.wait().await;
    ExitCode::SUCCESS
}

/// Answers every request with the method, path and headers it received, as JSON.
async fn serve_echo(listener: tokio::net::TcpListener) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(echo(&request))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn echo(request: &Request<Incoming>) -> Response<ProxyBody> {
    let headers: BTreeMap<&str, String> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": "authgate demo echo",
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|pq| pq.as_str()),
        "headers": headers,
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(full(Bytes::from(text)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
