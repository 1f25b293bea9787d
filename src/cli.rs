//! Command line (SPEC §1): `serve`, `check`, with exit codes 0 ok, 1 invalid input, 2 usage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;

/// authgate: reverse-proxy authentication gateway.
#[derive(Debug, Parser)]
#[command(name = "authgate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate the config without serving; print the route table.
    Check(ConfigArg),
}

/// Where the config file is.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [env: AUTHGATE_CONFIG] [default: config/authgate.toml]
    #[arg(short, long, env = "AUTHGATE_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Diagnostics format (overrides log.format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Diagnostics filter, e.g. "info" or "authgate=debug" (else RUST_LOG, else info).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Worker threads [env: AUTHGATE_THREADS] [default: number of cores].
    #[arg(long, env = "AUTHGATE_THREADS", hide_env = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}
