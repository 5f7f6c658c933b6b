//! Byte progress of a push, reported through the [`Context`] while blobs stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use shipflow_core::Context;
use tokio::io::{AsyncRead, ReadBuf};

/// Emit at least every this many bytes.
const STEP: u64 = 1024 * 1024;

/// Bytes done of a push's total, shared by its blob tasks.
#[derive(Debug)]
pub(crate) struct Progress {
    ctx: Context,
    total: u64,
    done: AtomicU64,
}

impl Progress {
    pub(crate) fn new(ctx: Context, total: u64) -> Self {
        Self {
            ctx,
            total,
            done: AtomicU64::new(0),
        }
    }

    /// Counts `n` more bytes; emits when a 1 MiB boundary is crossed.
    pub(crate) fn add(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if before / STEP != (before + n) / STEP {
            self.emit();
        }
    }

    /// Takes back `n` bytes counted by an attempt that is being retried.
    pub(crate) fn sub(&self, n: u64) {
        self.done.fetch_sub(n, Ordering::Relaxed);
    }

    /// Reports the bytes done so far.
    pub(crate) fn emit(&self) {
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        self.ctx.progress(done, Some(self.total), "bytes");
    }
}

/// What one blob upload has counted, across its attempts.
#[derive(Debug, Clone)]
pub(crate) struct BlobProgress {
    progress: Arc<Progress>,
    counted: Arc<AtomicU64>,
}

impl BlobProgress {
    pub(crate) fn new(progress: Arc<Progress>) -> Self {
        Self {
            progress,
            counted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A counter for one part of the same blob (a chunk), starting at zero.
    pub(crate) fn part(&self) -> Self {
        Self::new(self.progress.clone())
    }

    /// Takes back what this counter counted (its attempt failed).
    pub(crate) fn take_back(&self) {
        self.progress.sub(self.counted.swap(0, Ordering::Relaxed));
    }

    /// Counts `n` bytes the registry confirmed without them streaming through a reader.
    pub(crate) fn confirm(&self, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
        self.progress.add(n);
    }

    /// Wraps `reader` for a new attempt, taking back what earlier attempts counted.
    pub(crate) fn reader<R>(&self, reader: R) -> CountingReader<R> {
        self.progress.sub(self.counted.swap(0, Ordering::Relaxed));
        CountingReader {
            inner: reader,
            blob: self.clone(),
        }
    }
}

/// An [`AsyncRead`] that counts what passes through into a [`BlobProgress`].
#[derive(Debug)]
pub(crate) struct CountingReader<R> {
    inner: R,
    blob: BlobProgress,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.blob.counted.fetch_add(n, Ordering::Relaxed);
            self.blob.progress.add(n);
        }
        polled
    }
}
