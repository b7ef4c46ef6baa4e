//! Bodies on the client's path: the boxed body type both directions use, the tee that copies
//! (by reference count, not by bytes) the legacy response into a capture for the comparison
//! while it streams to the client, and the replay body that sends an already-read prefix of a
//! request body followed by the rest of the stream.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type the proxy sends, to clients and to upstreams.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(b: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// What the tee saw of the legacy body.
#[derive(Debug)]
pub enum Capture {
    /// The whole body, as the chunks that went to the client.
    Complete(Vec<Bytes>),
    /// The body passed the cap: not compared.
    TooLarge,
    /// The upstream body failed mid-stream.
    Failed,
}

/// Streams `inner` unchanged and hands a copy of it (up to `cap` bytes) to the comparison.
/// If the client goes away first, the sender is dropped and the comparison sees that.
pub struct TeeBody<B> {
    inner: B,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    /// The exact length the upstream declared, if it did: hyper stops polling a body once
    /// that many bytes went out, so the end is recognised by the count, not by a final poll.
    declared: Option<u64>,
    tx: Option<oneshot::Sender<Capture>>,
}

impl<B: Body> TeeBody<B> {
    pub fn new(inner: B, cap: usize, tx: oneshot::Sender<Capture>) -> TeeBody<B> {
        let declared = inner.size_hint().exact();
        let mut tee = TeeBody {
            inner,
            chunks: Vec::new(),
            len: 0,
            cap,
            declared,
            tx: Some(tx),
        };
        if declared == Some(0) {
            tee.finish(Capture::Complete(Vec::new()));
        }
        tee
    }
}

impl<B> TeeBody<B> {
    fn finish(&mut self, c: Capture) {
        if let Some(tx) = self.tx.take() {
            // The comparison may have given up already; nothing to do then.
            let _ = tx.send(c);
        }
        self.chunks = Vec::new();
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.tx.is_some() {
                    if let Some(data) = frame.data_ref() {
                        this.len += data.len();
                        if this.len > this.cap {
                            this.finish(Capture::TooLarge);
                        } else {
                            if !data.is_empty() {
                                this.chunks.push(data.clone());
                            }
                            if this.declared == Some(this.len as u64) {
                                let chunks = std::mem::take(&mut this.chunks);
                                this.finish(Capture::Complete(chunks));
                            }
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Capture::Failed),
            Poll::Ready(None) => {
                let chunks = std::mem::take(&mut this.chunks);
                this.finish(Capture::Complete(chunks));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `prefix` (already read from the client) and then the rest of `rest`; the size hint
/// stays exact when the original request had a Content-Length.
pub struct ReplayBody<B> {
    prefix: std::collections::VecDeque<Bytes>,
    rest: B,
    exact: Option<u64>,
}

impl<B> ReplayBody<B> {
    pub fn new(prefix: Vec<Bytes>, rest: B, exact: Option<u64>) -> ReplayBody<B> {
        ReplayBody {
            prefix: prefix.into(),
            rest,
            exact,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Concatenates chunks, without copying when there is only one.
/// The chunks as one `Bytes` of its own memory, never a slice of a larger buffer.
pub fn concat_owned(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        1 => Bytes::copy_from_slice(&chunks[0]),
        _ => concat(chunks),
    }
}

pub fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let total = chunks.iter().map(Bytes::len).sum();
            let mut v = Vec::with_capacity(total);
            for c in &chunks {
                v.extend_from_slice(c);
            }
            Bytes::from(v)
        }
    }
}

/// A request body spooled to a file, sent from the file: `len` bytes, an exact size.
pub struct FileBody {
    stream: tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>>,
    remaining: u64,
}

impl FileBody {
    pub fn new(file: tokio::fs::File, len: u64) -> FileBody {
        use tokio::io::AsyncReadExt;
        FileBody {
            stream: tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024),
            remaining: len,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use futures_util::Stream;
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the spooled request body is shorter than it was",
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body that holds `guard` until it ends (or is dropped): something that must last as long
/// as the response is on its way out.
pub struct Guarded<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Guarded<B, G> {
        Guarded {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
