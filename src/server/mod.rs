//! Listeners and connections: HTTP/1.1 and HTTP/2 on one port (ALPN over TLS, prior knowledge
//! in clear), connection limit, header-read and idle timeouts, graceful drain.
//!
//! HTTP/1.1 connections are served by authgate's own codec ([`h1`]); HTTP/2 ones by hyper.
//! The `[forward_auth]` listener (checks asked by another proxy) speaks HTTP/1.1 in clear
//! only, and is accepted and drained by the same code as the main listener, with its own
//! `max_connections` slots and the same timeouts.
//! What follows is about the HTTP/2 connections.
//!
//! hyper's own timers do not give `idle_timeout` its meaning, so each HTTP/2 connection carries
//! a small activity tracker fed by the pipeline, and the connection task enforces both timeouts
//! itself:
//! - header_read_timeout: from the connection's start until its first request;
//! - idle_timeout: no request in flight since the last one finished (bytes say nothing here:
//!   PING, WINDOW_UPDATE and SETTINGS frames flow on idle HTTP/2 connections).
//!
//! The tracker never wakes the connection task: its timer is never armed further ahead than
//! the shorter of the two timeouts, so a deadline that appears later (a head starting, the
//! last request finishing) can never be earlier than the armed one. The task re-checks when
//! the timer fires, at most once per that period, instead of once or twice per request.

mod h1;
mod handler;
mod memory;

pub(crate) use handler::{ForwardAuth, Handler};

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin;
use crate::config::Config;
use crate::connection::{ConnActivity, Prefixed, Verdict};
use crate::gateway::Gateway;
use crate::pipeline::{self, ConnInfo};
use crate::telemetry::AccessLog;

/// A running gateway: its bound addresses and the means to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The `[forward_auth]` listener's address, when the config has one.
    pub forward_auth_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Starts the graceful drain (what SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the drain has finished (or its grace period ran out), then writes what
    /// the key service counted since its last flush.
    pub async fn wait(self) {
        let _ = self.task.await;
        self.gateway.flush_usage().await;
    }
}

/// Builds the gateway state from `config`, binds both listeners and serves until `shutdown()`.
pub async fn start(config: Config, access_log: AccessLog) -> io::Result<ServerHandle> {
    let gateway = Gateway::open(config, access_log)
        .await
        .map_err(io::Error::other)?;
    start_gateway(Arc::new(gateway)).await
}

/// Binds one listener; the error names the setting and address (two listeners can fail).
async fn bind(addr: SocketAddr, setting: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| io::Error::new(error.kind(), format!("{setting} {addr}: {error}")))
}

/// Binds the listeners of `gateway`'s config and serves until `shutdown()`.
pub async fn start_gateway(gateway: Arc<Gateway>) -> io::Result<ServerHandle> {
    let config = gateway.config();
    let listener = bind(config.server.listen, "server.listen").await?;
    let admin_listener = bind(config.admin.listen, "admin.listen").await?;
    let check_listener = match &config.forward_auth {
        Some(settings) => Some(bind(settings.listen, "forward_auth.listen").await?),
        None => None,
    };
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let forward_auth_addr = check_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    for warning in &config.warnings {
        tracing::warn!(warning = %warning, "Config warning.");
    }
    drop(config);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let admin_task = tokio::spawn(admin::serve(admin_listener, gateway.clone()));
    let check_task = check_listener
        .map(|listener| tokio::spawn(check_loop(listener, gateway.clone(), shutdown_rx.clone())));
    let task = tokio::spawn(accept_loop(
        listener,
        gateway.clone(),
        shutdown_rx,
        admin_task,
        check_task,
    ));
    gateway.set_ready();
    match forward_auth_addr {
        Some(forward_auth_addr) => {
            tracing::info!(%addr, %admin_addr, %forward_auth_addr, "authgate is listening.");
        }
        None => tracing::info!(%addr, %admin_addr, "authgate is listening."),
    }
    Ok(ServerHandle {
        addr,
        admin_addr,
        forward_auth_addr,
        gateway,
        shutdown,
        task,
    })
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses heads above its buffer with its own 431; ours (JSON) applies from
    // max_header_bytes, hyper's from twice that.
    let buffer = (config.server.max_header_bytes * 2).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own head timer (30 s by default) also runs on idle keep-alive connections;
        // the connection task enforces header_read_timeout and idle_timeout instead.
        .header_read_timeout(None)
        .max_buf_size(buffer)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.server.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    admin_task: JoinHandle<()>,
    check_task: Option<JoinHandle<()>>,
) {
    let config = gateway.config();
    let builder = Arc::new(http_builder(&config));
    let tls = config
        .server
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    drop(config);
    let memory_return = memory::spawn_return_of_freed_memory();
    let serving = gateway.clone();
    accept_and_drain(
        listener,
        &gateway,
        shutdown,
        move |stream, peer, shutdown, slot| {
            serve_connection(
                stream,
                peer,
                serving.clone(),
                builder.clone(),
                tls.clone(),
                shutdown,
                slot,
            )
        },
    )
    .await;
    // The check listener drains at the same time (it saw the same signal).
    if let Some(check_task) = check_task {
        let _ = check_task.await;
    }
    gateway.tunnels.abort_all();
    admin_task.abort();
    memory_return.abort();
}

/// The `[forward_auth]` listener: HTTP/1.1 connections whose every request is a check.
async fn check_loop(listener: TcpListener, gateway: Arc<Gateway>, shutdown: watch::Receiver<bool>) {
    let handler = Arc::new(ForwardAuth(gateway.clone()));
    accept_and_drain(
        listener,
        &gateway,
        shutdown,
        move |stream, peer, shutdown, slot| {
            serve_check_connection(stream, peer, handler.clone(), shutdown, slot)
        },
    )
    .await;
}

/// Accepts connections on `listener` until the shutdown signal, each holding one of
/// `server.max_connections` slots of this listener, each run by `serve`; then drains: stops
/// accepting, tells the connections to finish their requests, waits up to
/// `server.shutdown_grace` and cuts what is left.
async fn accept_and_drain<F, Fut>(
    listener: TcpListener,
    gateway: &Gateway,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>, Arc<OwnedSemaphorePermit>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let config = gateway.config();
    let max_connections = config.server.max_connections;
    let grace = config.server.shutdown_grace;
    drop(config);
    let limit = Arc::new(Semaphore::new(max_connections));
    // Every connection task, so the ones still running when the grace period ends can be cut.
    let mut connections = tokio::task::JoinSet::new();

    // Finished connection tasks are reaped as they finish, not at the next accept: a finished
    // task keeps its whole allocation (sized for the connection's future, several KiB) until
    // reaped, so thousands of streams that just ended would otherwise hold their memory for
    // as long as no new client comes.
    'accepting: loop {
        // Take a connection slot first: over max_connections, new clients wait in the backlog.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => break pair,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = shutdown.changed() => break 'accepting,
            }
        };
        // The slot is released when the connection and any tunnel it opened are done.
        let slot = Arc::new(permit);
        connections.spawn(serve(stream, peer, shutdown.clone(), slot));
    }

    // Drain: stop accepting (closing the socket refuses new connections), tell every
    // connection to finish its in-flight requests, and wait up to the grace period.
    drop(listener);
    gateway.start_draining();
    tracing::info!(grace = ?grace, "Draining connections.");
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, limit.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "Shutdown grace period ended with requests still in flight; closing them."
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// The HTTP/1.1 connection settings of both listeners.
fn h1_settings(config: &Config) -> h1::Settings {
    h1::Settings {
        limits: crate::http1::request::RequestLimits {
            // Heads up to max_header_bytes reach the pipeline, which answers its own 431
            // with the route's context; the connection refuses what is far over it.
            max_head_bytes: (config.server.max_header_bytes * 2).max(8192),
            underscores: config.server.underscores_in_headers,
        },
        header_timeout: config.server.header_read_timeout,
        idle_timeout: config.server.idle_timeout,
    }
}

/// One connection to the `[forward_auth]` listener.
async fn serve_check_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<ForwardAuth>,
    shutdown: watch::Receiver<bool>,
    slot: Arc<OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let gateway = &handler.0;
    let settings = h1_settings(&gateway.config());
    let conn = Arc::new(ConnInfo {
        peer,
        peer_header: crate::headers::peer_header(peer.ip()),
        tls: false,
        activity: None,
        slot,
        tunnels: gateway.tunnels.clone(),
    });
    let (rd, wr) = stream.into_split();
    let buf = BytesMut::with_capacity(READ_BUFFER);
    h1::serve(rd, wr, buf, conn, handler, shutdown, settings).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    slot: Arc<OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let settings = h1_settings(&gateway.config());
    let (header_timeout, idle_timeout) = (settings.header_timeout, settings.idle_timeout);
    let conn = |tls: bool, activity: Option<Arc<ConnActivity>>| {
        Arc::new(ConnInfo {
            peer,
            slot: slot.clone(),
            tunnels: gateway.tunnels.clone(),
            peer_header: crate::headers::peer_header(peer.ip()),
            tls,
            activity,
        })
    };
    let timeouts = (header_timeout, idle_timeout);
    match tls {
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(tls_stream)) => {
                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                if h2 {
                    let activity = Arc::new(ConnActivity::new());
                    let conn = conn(true, Some(activity.clone()));
                    drive(
                        tls_stream, conn, activity, gateway, &builder, shutdown, timeouts,
                    )
                    .await;
                } else {
                    let (rd, wr) = tokio::io::split(tls_stream);
                    let buf = BytesMut::with_capacity(READ_BUFFER);
                    let conn = conn(true, None);
                    h1::serve(rd, wr, buf, conn, gateway, shutdown, settings).await;
                }
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed."),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
        },
        None => {
            let mut stream = stream;
            let mut buf = BytesMut::with_capacity(READ_BUFFER);
            match tokio::time::timeout(header_timeout, sniff_h2(&mut stream, &mut buf)).await {
                Ok(Ok(true)) => {
                    let stream = Prefixed::new(buf.freeze(), stream);
                    let activity = Arc::new(ConnActivity::new());
                    let conn = conn(false, Some(activity.clone()));
                    drive(
                        stream, conn, activity, gateway, &builder, shutdown, timeouts,
                    )
                    .await;
                }
                Ok(Ok(false)) => {
                    let (rd, wr) = stream.into_split();
                    let conn = conn(false, None);
                    h1::serve(rd, wr, buf, conn, gateway, shutdown, settings).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "Connection failed."),
                Err(_) => tracing::debug!(%peer, "No request started in time; closing."),
            }
        }
    }
}

/// Initial read buffer of a connection (grows up to the head limit when a head needs it).
const READ_BUFFER: usize = 8 * 1024;

/// The HTTP/2 connection preface a client with prior knowledge starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the connection's first bytes into `buf` until they show whether it starts with the
/// HTTP/2 preface. An HTTP/1 request line differs from it at its first byte, so this is the
/// read the HTTP/1 server would have done anyway.
async fn sniff_h2(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    loop {
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok(false);
        }
        if seen == H2_PREFACE.len() {
            return Ok(true);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
}

async fn drive<I>(
    stream: I,
    conn: Arc<ConnInfo>,
    activity: Arc<ConnActivity>,
    gateway: Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
    (header_timeout, idle_timeout): (Duration, Duration),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let gateway = gateway.clone();
        let conn = conn.clone();
        let request = request.map(crate::body::boxed);
        // Boxed: hyper moves each stream's future by value several times on its way into the
        // stream's task (the stream wrapper, the spawn, the task cell), and the pipeline's
        // future is several KiB; one allocation is cheaper than copying it each time (about
        // 17,000 of 76,000 instructions per HTTP/2 request were those copies, callgrind).
        // Allocated first and built in place: `Box::pin(future)` builds the future on the
        // stack and then copies all of it into the allocation.
        let slot = Box::new_uninit();
        Box::into_pin(Box::write(slot, async move {
            Ok::<_, Infallible>(pipeline::handle(gateway, conn, request).await)
        }))
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    // One timer for the connection's life, moved only when the next deadline is earlier than
    // the one it is set to: a timer that fires early just re-checks, which is cheaper than
    // re-arming it on every request. It is never armed more than `horizon` ahead (see the
    // module doc), which is what lets the activity tracker leave this task alone.
    let horizon = header_timeout.min(idle_timeout);
    let timer = tokio::time::sleep_until(Instant::now() + horizon);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "Connection ended with an error.");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                continue;
            }
            () = &mut timer => {}
        }
        match activity.check(header_timeout, idle_timeout) {
            Verdict::WaitUntil(at) => {
                let at = at.min(Instant::now() + horizon);
                if at < timer.deadline() || timer.is_elapsed() {
                    timer.as_mut().reset(at);
                }
            }
            Verdict::HeaderTimeout => {
                tracing::debug!("Request headers not received in time; closing the connection.");
                return;
            }
            Verdict::Idle if closing => return,
            Verdict::Idle => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                // Give a graceful close one more header period before dropping it.
                timer.as_mut().reset(Instant::now() + header_timeout);
            }
        }
    }
}
