//! The upstream side of a WebSocket tunnel: the connection that answered 101, with the bytes
//! already read past the response head, handed to the tunnel and never pooled again.

use std::sync::{Arc, Mutex};

use http::Response;

use super::conn::{Conn, Stream};
use super::pool::lock;
use crate::connection::Prefixed;

/// An upgraded upstream connection: bytes already read after the 101 head, then the stream.
pub(crate) type Upgraded = Prefixed<Stream>;

/// The connection that answered 101, never pooled again.
pub(super) fn upgraded(conn: Conn) -> Upgraded {
    Prefixed::new(conn.read_buf.freeze(), conn.stream)
}

/// Where a 101 response from the own client carries its upgraded connection (response
/// extensions must be `Clone`, hence the shared slot; only one clone ever takes it).
#[derive(Debug, Clone, Default)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<Upgraded>>>);

impl UpstreamUpgrade {
    pub(super) fn new(upgraded: Upgraded) -> Self {
        Self(Arc::new(Mutex::new(Some(upgraded))))
    }

    /// The upgrade carried by `response`; an empty one if it carries none (an HTTP/2
    /// upstream cannot switch protocols).
    pub fn from_response<B>(response: &mut Response<B>) -> Self {
        response
            .extensions_mut()
            .remove::<Self>()
            .unwrap_or_default()
    }

    /// The connection, once.
    pub(crate) fn take(&self) -> Option<Upgraded> {
        lock(&self.0).take()
    }
}
