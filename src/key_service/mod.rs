//! The built-in key service: API keys kept in authgate's own database (SQLite or
//! PostgreSQL), managed over HTTP by the callers the gateway authenticates, and served to the
//! key cache as a key source like the key file and the control plane.
//!
//! `model.rs` is what is stored and shown, `policy.rs` who may do what.

pub mod database;
pub mod model;
pub mod policy;
pub mod settings;
