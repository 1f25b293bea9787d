//! The upstream side of a WebSocket tunnel: the connection that answered 101, with the bytes
//! already read past the response head, handed to the tunnel and never pooled again.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::{Conn, Stream};
use super::pool::lock;

/// An upgraded upstream connection: bytes already read after the 101 head, then the stream.
#[derive(Debug)]
pub struct Upgraded {
    pre: Bytes,
    stream: Stream,
}

impl Upgraded {
    pub(super) fn new(conn: Conn) -> Self {
        Self {
            pre: conn.read_buf.freeze(),
            stream: conn.stream,
        }
    }
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
    pub fn take(&self) -> Option<Upgraded> {
        lock(&self.0).take()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
