//! One upstream connection, plain TCP or TLS over TCP, with its read and write buffers: how
//! it is opened, and how an idle one is checked for bytes nobody asked for.
//!
//! The stream is an enum rather than a boxed trait object, so the plain path pays one match
//! per read or write and no indirect call.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::super::CONNECT_TIMEOUT;

/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A new connection's read buffer. Response heads and small bodies are split off it and
/// handed on, so one allocation serves many small responses before it is replaced.
pub(super) const READ_BUFFER: usize = 16 * 1024;
/// A new connection's write buffer: a request head usually fits.
pub(super) const WRITE_BUFFER: usize = 1024;

/// The byte stream to an upstream.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and the plain variant should not carry its size.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, slices),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, slices),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // Nothing is buffered above a TCP socket: no call needed.
            Self::Plain(_) => Poll::Ready(Ok(())),
            // rustls may keep records that did not fit the socket's buffer.
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection and the bytes read from it or encoded for it that are still pending.
/// Both buffers are empty while the connection is idle.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: Stream,
    pub(super) read_buf: BytesMut,
    /// Framing bytes not written yet: the request head, a chunk-size line, the last chunk.
    pub(super) write_buf: BytesMut,
    /// A read asked for more room than [`READ_BUFFER`].
    pub(super) large_reads: bool,
}

impl Conn {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            read_buf: BytesMut::with_capacity(READ_BUFFER),
            write_buf: BytesMut::with_capacity(WRITE_BUFFER),
            large_reads: false,
        }
    }

    /// Polls an idle connection for input, registering `cx`'s waker for the next: `Ready`
    /// when anything came (bytes, EOF, an error) and the connection must be closed. Without
    /// a read-readiness event from the reactor this costs no syscall on a plain socket. A
    /// TLS record that carries no application data (a session ticket) is consumed and the
    /// connection stays.
    pub(super) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.stream {
            // The readiness alone, cheaper than a read through a `ReadBuf`: this runs at
            // every check-in.
            Stream::Plain(tcp) => loop {
                match tcp.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => {
                        // Reported readable: the report may predate the last read.
                        let mut probe = [0u8; 1];
                        match tcp.try_read(&mut probe) {
                            // The stale report is cleared; the next round registers `cx`.
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                            _ => return Poll::Ready(()),
                        }
                    }
                }
            },
            Stream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                match Pin::new(tls.as_mut()).poll_read(cx, &mut probe) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                }
            }
        }
    }

    /// Whether an idle connection is still open and silent, as far as the reactor knows:
    /// nothing (no EOF, no stray bytes) has come in since it was pooled. tokio answers
    /// `WouldBlock` without a syscall while the socket has not been reported readable, which
    /// is the usual case.
    pub(super) fn is_open(&mut self) -> bool {
        match &self.stream {
            Stream::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(_) => self
                .poll_idle(&mut Context::from_waker(Waker::noop()))
                .is_pending(),
        }
    }

    /// Asks the kernel, not the reactor, whether anything has arrived: one `recv(MSG_PEEK)`
    /// syscall, for the connections that must be proven quiet (see the pool). Any byte on
    /// the socket counts, a TLS record without application data too.
    pub(super) fn is_quiet(&self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket2::SockRef::from(self.stream.tcp()).peek(&mut probe);
        matches!(peeked, Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Drops the read buffer's allocation when it holds no bytes (see `ResponseBody`).
    pub(super) fn release_empty_read_buffer(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }

    /// Waits until the socket is reported readable (bytes, EOF or an error are waiting).
    pub(super) async fn readable(&self) {
        let _ = self.stream.tcp().readable().await;
    }

    /// Reads what is available into `read_buf` after making room for `room` bytes; 0 at EOF.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
    ) -> Poll<io::Result<usize>> {
        self.large_reads |= room > READ_BUFFER;
        self.read_buf.reserve(room);
        // tokio's `read_buf` reads into the spare capacity without initializing it first.
        std::future::Future::poll(std::pin::pin!(self.stream.read_buf(&mut self.read_buf)), cx)
    }
}

/// How a pool opens connections to its authority: TCP, then TLS for an https upstream.
#[derive(Debug)]
pub(super) struct Connector {
    authority: Authority,
    tls: Option<TlsTarget>,
}

#[derive(Debug)]
struct TlsTarget {
    /// What a `TlsConnector` wraps; kept as is because the connector is not `Debug`.
    config: Arc<rustls::ClientConfig>,
    /// From the authority's host; `None` if it cannot be one (every connect then fails).
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    /// Plain TCP when `tls` is `None`; otherwise TLS with that configuration, the
    /// certificate checked against the authority's host.
    pub(super) fn new(authority: Authority, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let tls = tls.map(|config| TlsTarget {
            config,
            server_name: ServerName::try_from(host_of(&authority))
                .ok()
                .map(|name| name.to_owned()),
        });
        Self { authority, tls }
    }

    /// A new connection: each resolved address in turn within the connect timeout, then the
    /// TLS handshake within another.
    pub(super) async fn connect(&self) -> io::Result<Conn> {
        let tcp = self.connect_tcp().await?;
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
        let Some(tls) = &self.tls else {
            return Ok(Conn::new(Stream::Plain(tcp)));
        };
        let server_name = tls.server_name.clone().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "invalid TLS server name")
        })?;
        let handshake = TlsConnector::from(tls.config.clone()).connect(server_name, tcp);
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(Conn::new(Stream::Tls(Box::new(stream)))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = self.authority.port_u16().unwrap_or(default_port);
        let addrs: Vec<_> = tokio::net::lookup_host((host_of(&self.authority), port))
            .await?
            .collect();
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

/// The host of `authority`; an IPv6 literal keeps its brackets in the authority.
fn host_of(authority: &Authority) -> &str {
    authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

#[cfg(test)]
pub(super) fn plain(stream: TcpStream) -> Conn {
    Conn::new(Stream::Plain(stream))
}

#[cfg(test)]
impl Conn {
    pub(super) fn stream_local_port(&self) -> u16 {
        self.stream.tcp().local_addr().map_or(0, |addr| addr.port())
    }
}
