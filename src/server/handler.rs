//! The seam between the HTTP/1.1 server and what answers its requests: the connection loop
//! ([`super::h1`]) takes a [`Handler`] instead of calling the pipeline by name, so it can be
//! driven (and its timers tested on paused time) with a scripted handler and no gateway.
//!
//! Why a trait with an `impl Future` return, and not `dyn Handler` or a closure: `serve` is
//! generic over it and monomorphized, so the per-request path is the same direct call into
//! `pipeline::answer` it was before (no boxed future, no vtable; the 401 path is measured in
//! instructions). A generic closure (`F: Fn(..) -> Fut`) would be as cheap for `answer`, but
//! the loop also asks `is_draining` between requests: that would be a second closure passed
//! next to the first. A trait names both in one place, and the gateway implements it as is.

use std::future::Future;
use std::sync::Arc;

use http::Request;

use crate::body::ProxyBody;
use crate::gateway::Gateway;
use crate::pipeline::{self, Answer, ConnInfo};

/// What the HTTP/1.1 server asks about each request and, between requests, about the drain.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request. Its body, when it has one, reads from the connection on demand
    /// (`Expect: 100-continue` is answered when it is first read).
    fn answer(
        self: &Arc<Self>,
        conn: &Arc<ConnInfo>,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Answer> + Send;

    /// Whether the server is draining: a response written then closes its connection.
    fn is_draining(&self) -> bool;
}

impl Handler for Gateway {
    fn answer(
        self: &Arc<Self>,
        conn: &Arc<ConnInfo>,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Answer> + Send {
        pipeline::answer(self.clone(), conn.clone(), request)
    }

    fn is_draining(&self) -> bool {
        Gateway::is_draining(self)
    }
}

/// The `[forward_auth]` listener's requests: each one a check, answered by the same stages.
#[derive(Debug)]
pub(crate) struct ForwardAuth(pub(crate) Arc<Gateway>);

impl Handler for ForwardAuth {
    fn answer(
        self: &Arc<Self>,
        conn: &Arc<ConnInfo>,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Answer> + Send {
        pipeline::check(self.0.clone(), conn.clone(), request)
    }

    fn is_draining(&self) -> bool {
        self.0.is_draining()
    }
}
