//! authgate: a reverse-proxy authentication gateway.
//!
//! ```text
//! client ─h1/h2/TLS─▶ server ─▶ pipeline: precheck ─▶ route ─▶ strip ─▶ authenticate ─▶ authorize
//!                                 ─▶ rate limit ─▶ rewrite ─▶ forward ─▶ upstream (pooled h1/h2/TLS)
//!                                         │                 │
//!                            key store ◀──┘ JWT validator   limiter (local | Redis)
//! ```
//! `main.rs` only parses the command line and calls [`run`]; tests and benches drive the same
//! code through [`server::start`] and the stage functions.
//!
//! Modules by layer; each imports only from its own layer or the ones below it
//! (`scripts/import_graph.py --check` holds that there is no import circle):
//!
//! | layer | modules |
//! |---|---|
//! | entry | `cli`, `commands` (and `run` here) |
//! | serving | `server` (listeners, the HTTP/1.1 connection, HTTP/2 via hyper), `admin` |
//! | request | `pipeline` (the ordered stages), `gateway` (the live state a request reads) |
//! | configuration | `config`: file → compiled, pure values |
//! | domain | `routes` (table, normalization, access policy), `auth` (credentials, JWTs), `authz`, `keys` (records, cache, sources), `key_service` (the built-in key database and its management API), `limits` (GCRA, Redis, budgets), `revocation` (revoked credentials, in-flight cuts), `forward` (upstream clients, tunnels) |
//! | foundation | `http1` (the sans-IO codec), `connection` (what a client connection hands on), `headers`, `body`, `error`, `telemetry`, `location` |

// Network-facing code never panics on input: no unwrap/expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]

// entry
pub mod cli;
pub mod commands;
// serving
pub mod admin;
pub mod server;
// request
pub mod gateway;
pub mod pipeline;
// configuration
pub mod config;
// domain
pub mod auth;
pub mod authz;
pub mod forward;
pub mod key_service;
pub mod keys;
pub mod limits;
pub mod revocation;
pub mod routes;
// foundation
pub mod body;
pub mod connection;
pub mod error;
pub mod headers;
pub mod http1;
pub mod location;
pub mod outbound;
pub mod telemetry;
pub mod tls;

use std::process::ExitCode;

use cli::{CheckArgs, Cli, Command, ServeArgs};

/// Exit code for invalid input or config.
pub const EXIT_INVALID: u8 = 1;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    install_crypto_provider();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Demo(args) => commands::demo(&args),
        Command::Migrate(args) => commands::database::migrate(&args),
        Command::Keys(command) => commands::keys(command),
    }
}

/// rustls needs one process-wide crypto provider; authgate uses aws-lc-rs everywhere. Config
/// builders also pass it explicitly, so this only guards third-party code paths.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn print_errors(errors: &config::ConfigErrors) {
    for error in &errors.0 {
        eprintln!("{error}");
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let path = args.config.path();
    match config::load(&path) {
        Ok(config) => {
            if config.api_keys.in_use
                && let keys::settings::KeySourceSettings::File(key_file) = &config.api_keys.source
            {
                match keys::file_source::load_key_file_if_present(key_file) {
                    Ok(Some(keys)) => {
                        println!("{}: OK, {} key(s)", key_file.display(), keys.len());
                    }
                    Ok(None) => eprintln!(
                        "{}: warning: the key file does not exist yet: no API key is accepted until `authgate keys add --file` creates it",
                        key_file.display()
                    ),
                    Err(errors) => {
                        for error in errors {
                            eprintln!("{error}");
                        }
                        return ExitCode::from(EXIT_INVALID);
                    }
                }
            }
            for warning in &config.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            println!(
                "{}: OK, {} route(s)",
                path.display(),
                config.routes.routes().len()
            );
            for line in config::compile::describe_routes(&config) {
                println!("  {line}");
            }
            if args.online && !commands::online::check_online(&config) {
                return ExitCode::from(EXIT_INVALID);
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let path = args.config.path();
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let format = args.log_format.unwrap_or(config.log.format);
    telemetry::init_tracing(format, args.log_level.as_deref());

    // One thread: a current-thread runtime, like an nginx worker (no work-stealing or
    // cross-thread wake-ups); otherwise one worker per core unless --threads says otherwise.
    let mut runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().thread_name("authgate-worker");
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    runtime.block_on(async move {
        // Signal handlers first: a SIGHUP arriving while we bind must not kill the process.
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("cannot install signal handlers: {error}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        let access_log = telemetry::AccessLog::stdout();
        let gateway = match gateway::Gateway::open(config, access_log.clone()).await {
            Ok(gateway) => std::sync::Arc::new(gateway),
            Err(error) => {
                eprintln!("cannot start: {error}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        let handle = match server::start_gateway(gateway).await {
            Ok(handle) => handle,
            Err(error) => {
                eprintln!("cannot bind listeners: {error}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        signals.wait(&handle).await;
        handle.shutdown();
        handle.wait().await;
        tracing::info!("authgate stopped.");
        access_log.flush(std::time::Duration::from_secs(2));
        ExitCode::SUCCESS
    })
}

/// SIGTERM/SIGINT stop the gateway; SIGHUP reloads the config.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT; reloads the config on each SIGHUP.
    async fn wait(mut self, handle: &server::ServerHandle) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM received; draining."); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT received; draining."); return; }
                _ = self.hup.recv() => { let _ = handle.gateway.reload_off_runtime().await; }
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn wait(self, _handle: &server::ServerHandle) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
