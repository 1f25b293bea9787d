//! Command line (SPEC §1): `serve`, `check`, `demo`, `migrate`, `keys …`, with exit codes 0 ok,
//! 1 invalid input, 2 usage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

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
    /// Validate the config (and key file) without serving; print the route table.
    Check(CheckArgs),
    /// Start an echo upstream and a gateway with a fresh in-memory key; print curl commands.
    Demo(DemoArgs),
    /// Create or update the key service's database tables.
    Migrate(MigrateArgs),
    /// Create, hash, add, revoke, rotate, list and import API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Database URL (sqlite://keys.db, sqlite:///abs/keys.db, postgres://…); overrides the
    /// config's `[database] url`. Relative SQLite paths are relative to the current folder.
    #[arg(long)]
    pub database: Option<String>,
}

/// Where `keys add|list|revoke` keep keys: a key file or the key service's database.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeyStoreArg {
    /// Key file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Database URL (sqlite://keys.db, sqlite:///abs/keys.db, postgres://…). Relative SQLite
    /// paths are relative to the current folder.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// After the config checks out, fetch once what the gateway fetches: each JWT issuer's
    /// discovery document and JWKS, and one key lookup at the control plane; report each
    /// (exit 1 if any fails). Without it nothing is fetched.
    #[arg(long)]
    pub online: bool,
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

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random key and, on a second line, its hash.
    Generate {
        /// Key prefix.
        #[arg(long, default_value = "sgk_")]
        prefix: String,
    },
    /// Print the hash of KEY (or of the first line of stdin).
    Hash {
        /// The key; read from stdin when omitted (keeps it out of shell history).
        key: Option<String>,
    },
    /// Generate a key, append its record (hash only) to the key file, print the key once.
    Add(Box<KeysAddArgs>),
    /// Mark a key revoked in the key file or the database.
    Revoke {
        #[command(flatten)]
        store: KeyStoreArg,
        #[arg(long)]
        key_id: String,
    },
    /// List the records of the key file or the database (hashes shortened).
    List {
        #[command(flatten)]
        store: KeyStoreArg,
    },
    /// Replace a database key with a new one; the old one keeps working for the grace period.
    Rotate {
        /// Database URL (relative SQLite paths: relative to the current folder).
        #[arg(long)]
        database: String,
        #[arg(long)]
        key_id: String,
        /// How long the old key keeps working, e.g. "24h" or "0s".
        #[arg(long, default_value = "24h")]
        grace: String,
    },
    /// Copy a key file's records (hashes only) into the database; keys already there are
    /// skipped.
    Import {
        /// Key file to read.
        #[arg(long)]
        file: PathBuf,
        /// Database URL (relative SQLite paths: relative to the current folder).
        #[arg(long)]
        database: String,
    },
}

#[derive(Debug, Args)]
pub struct KeysAddArgs {
    /// `--file`: the key file to append to (created if missing); or `--database`.
    #[command(flatten)]
    pub store: KeyStoreArg,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub user: Option<String>,
    /// Repeat for several scopes.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// RFC 3339 expiry, e.g. 2027-01-31T00:00:00Z.
    #[arg(long)]
    pub expires: Option<String>,
    /// Requests per second (with --burst).
    #[arg(long, requires = "burst")]
    pub rps: Option<f64>,
    #[arg(long, requires = "rps")]
    pub burst: Option<u32>,
    #[arg(long)]
    pub tokens_per_minute: Option<u64>,
    #[arg(long)]
    pub description: Option<String>,
    /// Custom claim `name=value`; repeat for several.
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// Key id (default: a random `key_…`).
    #[arg(long)]
    pub key_id: Option<String>,
    /// Key prefix.
    #[arg(long, default_value = "sgk_")]
    pub prefix: String,
    /// The key's name in the database (default: its key id); with `--database` only.
    #[arg(long)]
    pub name: Option<String>,
}
