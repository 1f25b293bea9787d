//! What a client connection hands the request pipeline and the forwarder, whatever protocol
//! it speaks: the raw connection after a WebSocket upgrade, why its request body failed, and
//! the activity counters its timer reads. The server produces these; pipeline and forward
//! consume them without knowing the server.

mod activity;
mod prefixed;
mod upgrade;

use std::io;

pub use activity::ConnActivity;
pub(crate) use activity::Verdict;
pub use prefixed::Prefixed;
pub use upgrade::{ClientUpgrade, Upgraded};

/// Why a request body could not be read from the client. The forwarding step answers 400
/// for these (the client's fault), not 502.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("malformed request body")]
    Malformed(#[source] crate::http1::DecodeError),
    #[error("the client ended the request body early")]
    Truncated,
    #[error("reading the request body failed")]
    Read(#[source] io::Error),
}
