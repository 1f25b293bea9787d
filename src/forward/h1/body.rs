//! The body of a response from an upstream, read from its connection as it is polled;
//! read to its end, it hands the connection back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::READ_BUFFER;
use super::{Exchange, ExchangeError, HostPool};
use crate::body::BoxError;
use crate::http1::{BodyDecoder, DecodeError};

/// Most bytes asked for in one read of a response body. Reads start at [`READ_BUFFER`] and
/// double each time one fills the room it was given, as hyper's adaptive reads do, so
/// small bodies keep small buffers and large ones take few syscalls.
const MAX_BODY_READ: usize = 256 * 1024;

/// A response body read from its connection as it is polled. Read to its end on a
/// reusable connection, it puts the connection back into the pool; dropped or failed
/// before that, it closes it.
#[derive(Debug)]
pub(super) struct ResponseBody {
    /// The exchange, until the body has ended or failed.
    exchange: Option<Exchange>,
    decoder: BodyDecoder,
    /// The frame after the one last returned, decoded from bytes already read, so the end
    /// of a chunked body is known with its last data frame (and `is_end_stream` says so).
    lookahead: Option<Result<Frame<Bytes>, DecodeError>>,
    reusable: bool,
    /// Reused only once proven quiet (see the pool).
    probation: bool,
    pool: Arc<HostPool>,
    /// How much the next read of an unsized body asks for (see [`MAX_BODY_READ`]).
    read_size: usize,
}

impl ResponseBody {
    /// The body `decoder` reads from `exchange`'s connection (none for a 101 that took it).
    pub(super) fn new(
        exchange: Option<Exchange>,
        decoder: BodyDecoder,
        reusable: bool,
        probation: bool,
        pool: Arc<HostPool>,
    ) -> Self {
        let mut body = Self {
            exchange,
            decoder,
            lookahead: None,
            reusable,
            probation,
            pool,
            read_size: READ_BUFFER,
        };
        if body.decoder.is_done() {
            // Nothing will poll a body that is already complete.
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        // Leftover bytes would be an answer to no request: never reuse such a connection
        // (check-in refuses one with bytes buffered or waiting).
        if self.reusable && exchange.sent && exchange.write_error.is_none() {
            self.pool.idle.checkin(exchange.conn, self.probation);
        }
    }

    fn fail(&mut self, error: ExchangeError) -> BoxError {
        tracing::debug!(%error, "Upstream response body failed.");
        self.exchange = None;
        Box::new(error)
    }

    /// Room for the next read: what a sized body still needs, up to the current read size.
    fn read_room(&self) -> usize {
        match self.decoder.size_hint().exact() {
            Some(remaining) => {
                usize::try_from(remaining).map_or(self.read_size, |r| r.clamp(1, self.read_size))
            }
            None => self.read_size,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(next) = this.lookahead.take() {
            return Poll::Ready(Some(next.map_err(|error| this.fail(error.into()))));
        }
        loop {
            let room = this.read_room();
            let Some(exchange) = this.exchange.as_mut() else {
                return Poll::Ready(None);
            };
            if let Err(error) = exchange.poll_upload(cx) {
                return Poll::Ready(Some(Err(this.fail(error))));
            }
            match this.decoder.decode(&mut exchange.conn.read_buf) {
                Ok(Some(frame)) => {
                    if frame.is_data() && !this.decoder.is_done() {
                        this.lookahead =
                            this.decoder.decode(&mut exchange.conn.read_buf).transpose();
                    }
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(this.fail(error.into())))),
            }
            let Poll::Ready(read) = exchange.conn.poll_read(cx, room) else {
                // A body waiting for its next bytes (a stream between events) keeps no read
                // buffer while it holds nothing: the next read allocates one again.
                exchange.conn.release_empty_read_buffer();
                return Poll::Pending;
            };
            match read {
                Ok(0) => {
                    // EOF ends a close-delimited body and truncates any other.
                    let ended = this.decoder.eof();
                    this.exchange = None;
                    return match ended {
                        Ok(()) => Poll::Ready(None),
                        Err(error) => Poll::Ready(Some(Err(this.fail(error.into())))),
                    };
                }
                Ok(read) => {
                    if read >= room && this.read_size < MAX_BODY_READ {
                        this.read_size *= 2;
                    }
                }
                Err(error) => {
                    let error = this.fail(ExchangeError::Read(error));
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lookahead.is_none() && self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.lookahead {
            Some(Ok(frame)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(frame.data_ref().map_or(0, |data| data.len() as u64));
                hint
            }
            Some(Err(_)) | None => self.decoder.size_hint(),
        }
    }
}
