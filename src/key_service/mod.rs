//! The built-in key service: API keys kept in authgate's own database (SQLite or
//! PostgreSQL), managed over HTTP by the callers the gateway authenticates, and served to the
//! key cache as a key source like the key file and the control plane.
//!
//! ```text
//! api.rs (HTTP) ─▶ service.rs (operations) ─▶ policy.rs (who may do what)
//!                        │                 └▶ database.rs (SQLite | PostgreSQL)
//!                        └▶ sync.rs (key changes and revocations to every instance)
//! request path: key cache miss ─▶ source.rs ─▶ database.rs;  usage.rs counts, flushes in batches
//! edge gateways: GET /v1/keys/{hash} ─▶ lookup.rs ─▶ database.rs (the §4.1 control plane)
//! ```
//! `model.rs` is what is stored and shown, `settings.rs` the `[database]` and
//! `[key_management]` sections compiled.

pub mod api;
pub mod database;
pub mod lookup;
pub mod model;
pub mod policy;
pub mod service;
pub mod settings;
pub mod source;
pub mod sync;
pub mod usage;
