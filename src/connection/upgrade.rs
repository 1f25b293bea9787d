//! The WebSocket hand-off: the raw client connection (and the bytes already read from it)
//! given to the tunnel once the 101 is written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::Prefixed;

/// The client side of a WebSocket upgrade: resolves to the raw connection once the 101 has
/// been written. Placed in the request's extensions by the HTTP/1.1 server (extensions must
/// be `Clone`, hence the shared slot; only one clone ever gets the connection).
#[derive(Debug, Clone)]
pub struct ClientUpgrade(Arc<std::sync::Mutex<oneshot::Receiver<Upgraded>>>);

impl ClientUpgrade {
    /// The handle for the connection `receiver` will get once the 101 is written.
    pub fn new(receiver: oneshot::Receiver<Upgraded>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(receiver)))
    }
}

impl Future for ClientUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut receiver = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(&mut *receiver).poll(cx).map(|result| {
            result.map_err(|_| io::Error::other("the client connection was not upgraded"))
        })
    }
}

/// An upgraded client connection: bytes the server had already read, then the socket.
pub struct Upgraded {
    reader: Prefixed<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Upgraded {
    /// The connection's two halves, and `pre`: what was read past the request head, which
    /// the tunnel reads first.
    pub fn new(
        pre: Bytes,
        reader: Box<dyn AsyncRead + Unpin + Send>,
        writer: Box<dyn AsyncWrite + Unpin + Send>,
    ) -> Self {
        Self {
            reader: Prefixed::new(pre, reader),
            writer,
        }
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.reader.buffered())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
