//! Parallel, deterministic gzip: the stream is cut into fixed-size chunks, each
//! chunk is compressed on its own into a complete gzip member, and the members are
//! written in order. Concatenated members are one valid gzip stream (RFC 1952 §2.2)
//! that every reader (GNU gzip, Go's `compress/gzip`, flate2's `MultiGzDecoder`)
//! decompresses whole. The output depends only on the input, the chunk size and the
//! level, never on the number of threads.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

/// Uncompressed bytes per gzip member: large enough that the ratio loss against one
/// member is negligible, small enough to keep both cores busy on small layers.
pub(crate) const CHUNK_SIZE: usize = 1024 * 1024;

/// What a compressed stream came to.
#[derive(Debug, Clone)]
pub(crate) struct Compressed {
    /// sha256 of the uncompressed stream (the layer's `diff_id`).
    pub(crate) diff_id: Sha256,
    /// sha256 of the compressed stream (the blob's digest).
    pub(crate) digest: Sha256,
    /// Compressed size in bytes.
    pub(crate) size: u64,
}

/// Why [`compress`] failed.
#[derive(Debug)]
pub(crate) enum Failed<E> {
    /// The producer failed.
    Produce(E),
    /// The output could not be written.
    Write(io::Error),
}

/// Runs `produce` with a writer whose bytes are gzip-compressed on `threads`
/// threads and written to `out`, hashing both sides on the way.
pub(crate) fn compress<W, E>(
    out: &mut W,
    threads: usize,
    level: u32,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<Compressed, Failed<E>>
where
    W: Write + Send,
{
    let threads = threads.max(1);
    thread::scope(|scope| {
        let (chunk_tx, chunk_rx) = sync_channel::<(u64, Vec<u8>)>(threads);
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        let (done_tx, done_rx) = sync_channel::<(u64, Vec<u8>, Vec<u8>)>(threads * 2);
        for _ in 0..threads {
            let chunk_rx = chunk_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || compress_chunks(&chunk_rx, &done_tx, level));
        }
        drop(done_tx);
        let writer = scope.spawn(move || write_in_order(out, done_rx));

        let mut chunks = Chunker {
            buf: Vec::with_capacity(CHUNK_SIZE),
            next: 0,
            tx: Some(chunk_tx),
        };
        let produced = produce(&mut chunks)
            .map_err(Failed::Produce)
            .and_then(|()| chunks.finish().map_err(Failed::Write));
        // Closing the channel lets the workers and then the writer finish.
        chunks.tx = None;
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A failed writer makes the producer fail with a broken pipe: report the
        // writer's cause first.
        let compressed = written.map_err(Failed::Write)?;
        produced?;
        Ok(compressed)
    })
}

/// Cuts what is written into numbered chunks for the workers.
struct Chunker {
    buf: Vec<u8>,
    next: u64,
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
}

impl Chunker {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send((self.next, chunk)).map_err(|_| closed())?;
        self.next += 1;
        Ok(())
    }

    /// Sends the last partial chunk (or one empty chunk for an empty stream, which
    /// still needs one gzip member).
    fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() || self.next == 0 {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for Chunker {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the layer writer stopped (see its error)",
    )
}

fn compress_chunks(
    chunks: &Mutex<Receiver<(u64, Vec<u8>)>>,
    done: &SyncSender<(u64, Vec<u8>, Vec<u8>)>,
    level: u32,
) {
    loop {
        let next = chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        let Ok((seq, raw)) = next else { return };
        let member = gzip_member(&raw, level);
        if done.send((seq, raw, member)).is_err() {
            return;
        }
    }
}

/// One complete gzip member with a fixed header: no name, mtime 0, OS "unknown".
fn gzip_member(raw: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = GzBuilder::new().mtime(0).operating_system(255).write(
        Vec::with_capacity(raw.len() / 2 + 64),
        Compression::new(level),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(raw);
    encoder.finish().unwrap_or_default()
}

fn write_in_order<W: Write>(
    out: &mut W,
    done: Receiver<(u64, Vec<u8>, Vec<u8>)>,
) -> io::Result<Compressed> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut result = Compressed {
        diff_id: Sha256::new(),
        digest: Sha256::new(),
        size: 0,
    };
    for (seq, raw, member) in done {
        pending.insert(seq, (raw, member));
        while let Some((raw, member)) = pending.remove(&next) {
            result.diff_id.update(&raw);
            result.digest.update(&member);
            result.size += member.len() as u64;
            out.write_all(&member)?;
            next += 1;
        }
    }
    out.flush()?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gzip(data: &[u8], threads: usize) -> (Vec<u8>, Compressed) {
        let mut out = Vec::new();
        let Ok(c) = compress::<_, io::Error>(&mut out, threads, 6, |w| w.write_all(data)) else {
            panic!("compress failed");
        };
        (out, c)
    }

    #[test]
    fn output_is_one_gzip_stream_independent_of_threads() {
        let data: Vec<u8> = (0..(3 * CHUNK_SIZE + 12_345))
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        let (one, c1) = gzip(&data, 1);
        let (four, c4) = gzip(&data, 4);
        assert_eq!(one, four);
        assert_eq!(c1.size, one.len() as u64);
        assert_eq!(c1.digest.finalize(), c4.digest.finalize());
        assert_eq!(c1.diff_id.finalize(), Sha256::digest(&data));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .expect("decompress");
        assert_eq!(back, data);
    }

    #[test]
    fn an_empty_stream_is_one_empty_member() {
        let (out, _) = gzip(b"", 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .expect("decompress");
        assert!(back.is_empty());
    }
}
