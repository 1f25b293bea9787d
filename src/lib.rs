//! authgate: a reverse-proxy authentication gateway.
//!
//! ```text
//! client ─h1/h2/TLS─▶ server ─▶ pipeline: route ─▶ authenticate ─▶ rewrite headers ─▶ forward ─▶ upstream
//! ```
//! `main.rs` only parses the command line and calls [`run`]; tests and benches drive the same
//! code through [`server::start`] and the stage functions.

// Network-facing code never panics on input: no unwrap/expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod auth;
pub mod authz;
pub mod body;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod keys;
pub mod pipeline;
pub mod routes;
pub mod server;
pub mod telemetry;

use std::process::ExitCode;

use cli::{Cli, Command, ConfigArg, ServeArgs};
use config::LogFormat;

/// Exit code for invalid input or config.
pub const EXIT_INVALID: u8 = 1;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    install_crypto_provider();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Demo(args) => commands::demo(&args),
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

fn check(args: &ConfigArg) -> ExitCode {
    let path = args.path();
    match config::load(&path) {
        Ok(config) => {
            if config.api_keys.in_use
                && let config::KeySourceSettings::File(key_file) = &config.api_keys.source
            {
                match keys::file_source::load_key_file(key_file) {
                    Ok(keys) => println!("{}: OK, {} key(s)", key_file.display(), keys.len()),
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

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("authgate-worker");
    if let Some(threads) = args.threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    runtime.block_on(async move {
        let handle = match server::start(config, telemetry::AccessLog::stdout()).await {
            Ok(handle) => handle,
            Err(error) => {
                eprintln!("cannot bind listeners: {error}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        wait_for_signals(&handle).await;
        handle.shutdown();
        handle.wait().await;
        tracing::info!("authgate stopped.");
        ExitCode::SUCCESS
    })
}

/// Returns on SIGTERM or SIGINT; reloads the config on SIGHUP.
#[cfg(unix)]
async fn wait_for_signals(handle: &server::ServerHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("Cannot install signal handlers; stopping.");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received; draining."); return; }
            _ = int.recv() => { tracing::info!("SIGINT received; draining."); return; }
            _ = hup.recv() => { let _ = handle.gateway.reload(); }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_handle: &server::ServerHandle) {
    let _ = tokio::signal::ctrl_c().await;
}

/// The default log format, for callers that have no config yet.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Json;
