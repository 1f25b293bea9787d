//! The dedicated HTTP/1.1 path to plain-http upstreams: a small keep-alive pool of
//! `hyper::client::conn::http1` connections per upstream authority, driven by the request
//! that uses them rather than by a task of their own.
//!
//! Why not the hyper-util legacy client here: it runs every connection in its own task, so a
//! proxied request costs several task wake-ups and channel hops (request task -> connection
//! task -> request task, plus a task spawned per response to put the connection back into
//! the pool), builds a connect future per request even when a pooled connection is ready,
//! and hashes scheme and authority per request to find its pool.
//!
//! Here the request's own task polls the connection: while waiting for the response head,
//! and while the response body streams, the connection is polled first and the response (or
//! its body) second. A response only makes progress inside the connection's poll, so the
//! second poll needs no waker of its own: the task is woken by the upstream socket only.
//! A connection goes back to its pool when the response body was read to the end and hyper
//! is ready for the next request on it; in every other case it is closed.
//!
//! A WebSocket upgrade runs its connection in a task (`with_upgrades`), because the tunnel
//! outlives the request; such a connection is never pooled again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::UPGRADE;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};
use crate::body::{BoxError, ProxyBody, boxed};

type Conn = Connection<TokioIo<TcpStream>, ProxyBody>;

/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: the next upstream may be tried.
    Connect(io::Error),
    /// The exchange failed once the request was handed to a connection.
    Http(hyper::Error),
}

/// The per-authority pools of one client, so routes naming the same upstream share
/// connections. Looked up when a config is compiled, never per request.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    hosts: Mutex<HashMap<Authority, Arc<HostPool>>>,
}

impl Pools {
    /// The pool for `authority`, created on first use.
    pub(crate) fn host(&self, authority: &Authority) -> Arc<HostPool> {
        lock(&self.hosts)
            .entry(authority.clone())
            .or_insert_with(|| Arc::new(HostPool::new(authority.clone())))
            .clone()
    }
}

/// Idle keep-alive connections to one upstream authority, most recently used last.
#[derive(Debug)]
pub(crate) struct HostPool {
    authority: Authority,
    idle: Mutex<VecDeque<Idle>>,
    /// Whether the task that closes connections idle past [`POOL_IDLE_TIMEOUT`] runs.
    reaper: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    conn: Pooled,
    since: Instant,
}

/// A connection and the handle that sends requests on it.
#[derive(Debug)]
struct Pooled {
    sender: SendRequest<ProxyBody>,
    driver: Driver,
}

impl HostPool {
    fn new(authority: Authority) -> Self {
        Self {
            authority,
            idle: Mutex::new(VecDeque::new()),
            reaper: AtomicBool::new(false),
        }
    }

    /// Sends `request` (origin-form URI, Host set) on a pooled or new connection and waits
    /// for the response head. A pooled connection that turns out to be closed before the
    /// request was written is replaced, as the legacy client does.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let upgrade = request.headers().contains_key(UPGRADE);
        loop {
            let (pooled, reused) = match self.checkout() {
                Some(pooled) => (pooled, true),
                None => (self.connect().await.map_err(SendError::Connect)?, false),
            };
            let sent = if upgrade {
                send_upgrade(pooled, request).await
            } else {
                self.exchange(pooled, request).await
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(error.into_error())),
                },
            }
        }
    }

    /// One request on `pooled`, driving the connection until the response head is in.
    async fn exchange(
        self: &Arc<Self>,
        mut pooled: Pooled,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, TrySendError<Request<ProxyBody>>> {
        // Unconstrained: the response is polled with a no-op waker (see `Driver::poll_with`),
        // so it must never be the one to run out of the task's cooperative budget.
        let response = tokio::task::unconstrained(pooled.sender.try_send_request(request));
        let mut response = std::pin::pin!(response);
        let response =
            std::future::poll_fn(|cx| pooled.driver.poll_with(cx, response.as_mut())).await?;
        let (parts, body) = response.into_parts();
        let body = if body.is_end_stream() {
            // hyper never polls a body that is already complete, so nothing would hand the
            // connection back later.
            self.release(pooled);
            boxed(body)
        } else {
            boxed(PooledBody {
                body,
                conn: Some(pooled),
                pool: self.clone(),
            })
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently used idle connection that is still open and ready.
    fn checkout(&self) -> Option<Pooled> {
        loop {
            let mut pooled = self.pop_idle()?;
            // Reads an EOF or error the upstream sent while the connection sat idle.
            pooled.driver.poll(&mut Context::from_waker(Waker::noop()));
            if pooled.driver.is_running() && pooled.sender.is_ready() {
                return Some(pooled);
            }
        }
    }

    fn pop_idle(&self) -> Option<Pooled> {
        let mut idle = lock(&self.idle);
        let entry = idle.pop_back()?;
        if entry.since.elapsed() < POOL_IDLE_TIMEOUT {
            return Some(entry.conn);
        }
        // The newest is past the idle timeout, so every older one is too.
        let expired = std::mem::take(&mut *idle);
        drop(idle);
        drop(expired);
        None
    }

    /// Takes a connection back after its response body ended. hyper has usually already
    /// asked for the next request by then; a connection that is not ready yet (its request
    /// body is still being sent after an early response) finishes in a task of its own first.
    fn release(self: &Arc<Self>, mut pooled: Pooled) {
        if !pooled.sender.is_ready() {
            pooled.driver.poll(&mut Context::from_waker(Waker::noop()));
        }
        if !pooled.driver.is_running() {
            return;
        }
        if pooled.sender.is_ready() {
            self.checkin(pooled);
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                pooled.driver.poll(cx);
                if pooled.driver.is_running() && !pooled.sender.is_ready() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if pooled.driver.is_running() {
                pool.checkin(pooled);
            }
        });
    }

    fn checkin(self: &Arc<Self>, pooled: Pooled) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        if idle.len() >= POOL_MAX_IDLE_PER_HOST {
            return;
        }
        idle.push_back(Idle {
            conn: pooled,
            since: now,
        });
        drop(idle);
        self.start_reaper();
    }

    /// Closes connections idle past the timeout even when no request comes to notice them.
    /// Started on the first release, which always runs inside the runtime.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT / 3);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.reap(),
                    None => return,
                }
            }
        });
    }

    fn reap(&self) {
        let mut idle = lock(&self.idle);
        let fresh = idle
            .iter()
            .position(|entry| entry.since.elapsed() < POOL_IDLE_TIMEOUT)
            .unwrap_or(idle.len());
        let expired: Vec<Idle> = idle.drain(..fresh).collect();
        drop(idle);
        drop(expired);
    }

    /// A new connection: TCP (each resolved address in turn), then the HTTP/1 handshake,
    /// which does no IO.
    async fn connect(&self) -> io::Result<Pooled> {
        let stream = self.connect_tcp().await?;
        stream.set_nodelay(true)?;
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        Ok(Pooled {
            sender,
            driver: Driver {
                conn: Some(Box::new(conn)),
            },
        })
    }

    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        // An IPv6 literal keeps its brackets in the authority.
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.authority.port_u16().unwrap_or(80);
        let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
        // Like hyper-util's connector: the connect timeout is shared among the addresses.
        let per_address = CONNECT_TIMEOUT / u32::try_from(addrs.len().max(1)).unwrap_or(1);
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
        for addr in addrs {
            match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last_error = error,
                Err(_) => {
                    last_error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                }
            }
        }
        Err(last_error)
    }
}

/// A WebSocket handshake: the connection runs in its own task with upgrades on, so the
/// upgraded stream reaches `hyper::upgrade::on` of the response and outlives this request.
async fn send_upgrade(
    mut pooled: Pooled,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, TrySendError<Request<ProxyBody>>> {
    if let Some(conn) = pooled.driver.conn.take() {
        tokio::spawn(async move {
            if let Err(error) = (*conn).with_upgrades().await {
                tracing::debug!(%error, "Upstream connection ended with an error.");
            }
        });
    }
    let response = pooled.sender.try_send_request(request).await?;
    Ok(response.map(boxed))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (plain pushes and pops).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls a connection from whatever task is using it; `None` once it has ended. Boxed: the
/// connection state is large and a pooled connection moves through several futures and the
/// idle list on every request.
struct Driver {
    conn: Option<Box<Conn>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Driver {
    fn is_running(&self) -> bool {
        self.conn.is_some()
    }

    /// Lets the connection make progress; drops it once it has ended (which also fails a
    /// response still waiting on it).
    fn poll(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Poll::Ready(result) = Pin::new(&mut **conn).poll(cx) {
            if let Err(error) = result {
                tracing::debug!(%error, "Upstream connection ended with an error.");
            }
            self.conn = None;
        }
    }

    /// Polls the connection with the task's waker, then `future`, which only the
    /// connection's poll can move forward, with a no-op one: the task is woken by the
    /// socket, never again by the future completing during the same poll.
    fn poll_with<F: Future>(
        &mut self,
        cx: &mut Context<'_>,
        future: Pin<&mut F>,
    ) -> Poll<F::Output> {
        self.poll(cx);
        if self.is_running() {
            future.poll(&mut Context::from_waker(Waker::noop()))
        } else {
            future.poll(cx)
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that drives its connection while it streams and hands the
    /// connection back to the pool once it has been read to the end. Dropped before that,
    /// it closes the connection.
    struct PooledBody {
        #[pin]
        body: Incoming,
        conn: Option<Pooled>,
        pool: Arc<HostPool>,
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = match this.conn.as_mut() {
            Some(pooled) => pooled
                .driver
                .poll_with(cx, Pin::new(&mut PollFrame(this.body.as_mut()))),
            None => this.body.as_mut().poll_frame(cx),
        };
        // The end: no more frames, or the last bytes of a known length (after which hyper
        // stops polling, so there may be no `None` to see).
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended && let Some(pooled) = this.conn.take() {
            this.pool.release(pooled);
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `Body::poll_frame` as a future, for [`Driver::poll_with`].
struct PollFrame<'a>(Pin<&'a mut Incoming>);

impl Future for PollFrame<'_> {
    type Output = Option<Result<Frame<Bytes>, hyper::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll_frame(cx)
    }
}
