//! Snapshot streaming, both directions. raftkv-raft's snapshot I/O is synchronous (a
//! `SnapshotSource` writes to a `Write`, `StateMachine::restore` reads from a `Read`) while the
//! wire is an async stream of [`SnapshotChunk`]s, so each side has an adapter over a bounded
//! channel: memory holds a few chunks, never the whole snapshot.
//!
//! - Sending: [`send`] runs the source on a blocking thread through a [`ChunkWriter`] that cuts
//!   chunks into the channel feeding the `Snapshot` client stream.
//! - Receiving: [`ChunkReader`] is handed to the node thread as the snapshot's `Read`; the
//!   service's async task feeds it [`Piece`]s as chunks arrive.

use std::io::{self, Read, Write};

use protobuf::Message as _;
use raft::prelude::Message;
use raftkv_proto::raftkvpb::peer_client::PeerClient;
use raftkv_proto::raftkvpb::SnapshotChunk;
use raftkv_raft::{SnapshotDone, SnapshotSource};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::error::chain;
use super::{TransportConfig, MAX_MESSAGE_BYTES};

/// Streams `data` to the peer behind `endpoints` (tried in turn until one connects), with `msg`
/// in the first chunk. `Ok` once the peer acknowledged, i.e. installed it.
pub(crate) async fn send(
    peer: u64,
    endpoints: &[Endpoint],
    msg: Message,
    mut data: Box<dyn SnapshotSource>,
    cfg: &TransportConfig,
) -> Result<(), String> {
    let header = msg
        .write_to_bytes()
        .map_err(|e| format!("cannot encode the snapshot message: {e}"))?;
    let mut channel = None;
    let mut last_error = String::from("no URL");
    for endpoint in endpoints {
        match endpoint.connect().await {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {}: {}", endpoint.uri(), chain(&e)),
        }
    }
    let channel = channel.ok_or(last_error)?;
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel(cfg.snapshot_queue_chunks);
    let chunk = cfg.snapshot_chunk_bytes;
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter::new(tx, header, chunk);
        data.write_to(&mut w)?;
        w.finish().map_err(|e| e.to_string())?;
        Ok::<u64, String>(w.written)
    });
    // If the call fails first, the stream (and so the channel) is dropped and the writer's next
    // send fails; if the writer fails first, the stream ends without `last` and the peer refuses.
    let answer = client.snapshot(ReceiverStream::new(rx)).await;
    let written = match writer.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(format!("snapshot source failed: {e}")),
        Err(e) => return Err(format!("snapshot writer thread failed: {e}")),
    };
    match answer {
        Ok(_) => {
            tracing::debug!(peer, bytes = written, "snapshot acknowledged");
            Ok(())
        }
        Err(status) => Err(format!(
            "peer refused the snapshot: {:?} {}",
            status.code(),
            status.message()
        )),
    }
}

/// A `Write` that cuts what it is given into [`SnapshotChunk`]s of `chunk` bytes and sends them
/// into a bounded channel, blocking the (blocking-pool) thread while the channel is full.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<SnapshotChunk>,
    /// The encoded `MsgSnapshot`, sent with the first chunk.
    header: Option<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
    /// Data bytes accepted so far.
    pub(crate) written: u64,
}

impl ChunkWriter {
    pub(crate) fn new(tx: mpsc::Sender<SnapshotChunk>, header: Vec<u8>, chunk: usize) -> Self {
        ChunkWriter {
            tx,
            header: Some(header),
            buf: Vec::with_capacity(chunk),
            chunk,
            written: 0,
        }
    }

    /// Sends what is buffered as the final chunk (`last = true`).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.send_chunk(true)
    }

    fn send_chunk(&mut self, last: bool) -> io::Result<()> {
        let next = if last {
            Vec::new()
        } else {
            Vec::with_capacity(self.chunk)
        };
        let chunk = SnapshotChunk {
            raft_message: self.header.take().unwrap_or_default(),
            data: std::mem::replace(&mut self.buf, next),
            last,
        };
        self.tx.blocking_send(chunk).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "snapshot stream closed by the transport",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() >= self.chunk {
            self.send_chunk(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks leave when full or at `finish`: a flush must not cut a short chunk.
        Ok(())
    }
}

/// Calls a [`SnapshotDone`] exactly once: with the outcome, or `false` if the sending task is
/// dropped first (aborted with its peer, or the runtime shut down).
pub(crate) struct DoneGuard(Option<SnapshotDone>);

impl DoneGuard {
    pub(crate) fn new(done: SnapshotDone) -> Self {
        DoneGuard(Some(done))
    }

    pub(crate) fn finish(mut self, ok: bool) {
        if let Some(done) = self.0.take() {
            done(ok);
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(false);
        }
    }
}

/// What the receiving service hands the [`ChunkReader`].
#[derive(Debug)]
pub(crate) enum Piece {
    /// More data.
    Data(Vec<u8>),
    /// The final data: the snapshot is complete after it.
    Last(Vec<u8>),
    /// The stream failed: the read fails with this reason.
    Broken(String),
}

/// The `Read` side of an incoming snapshot, read on the node thread (never inside the async
/// runtime: it blocks on the channel while the next chunk is in flight). A stream that ends
/// before its last chunk is an error, never a clean end of file.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Piece>,
    current: Vec<u8>,
    pos: usize,
    finished: bool,
}

impl ChunkReader {
    /// A reader and the sender that feeds it, `depth` pieces deep.
    pub(crate) fn channel(depth: usize) -> (mpsc::Sender<Piece>, Self) {
        let (tx, rx) = mpsc::channel(depth);
        let reader = ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
            finished: false,
        };
        (tx, reader)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            if self.finished {
                return Ok(0);
            }
            let (data, last) = match self.rx.blocking_recv() {
                Some(Piece::Data(d)) => (d, false),
                Some(Piece::Last(d)) => (d, true),
                Some(Piece::Broken(why)) => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, why))
                }
                // Not `UnexpectedEof`: a reader that stops at that error would take a
                // truncated snapshot for a complete one.
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "snapshot stream ended before its last chunk",
                    ))
                }
            };
            (self.current, self.pos, self.finished) = (data, 0, last);
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_cuts_chunks_with_the_header_first_and_last_at_the_end() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = ChunkWriter::new(tx, b"msg".to_vec(), 4);
        w.write_all(b"0123456789").unwrap();
        w.finish().unwrap();
        drop(w);
        let mut chunks = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            chunks.push((c.raft_message, c.data, c.last));
        }
        assert_eq!(
            chunks,
            vec![
                (b"msg".to_vec(), b"0123".to_vec(), false),
                (vec![], b"4567".to_vec(), false),
                (vec![], b"89".to_vec(), true),
            ]
        );
    }

    #[test]
    fn writer_fails_once_the_stream_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter::new(tx, Vec::new(), 2);
        let err = w.write_all(b"abcd").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_reassembles_and_refuses_a_truncated_stream() {
        let (tx, mut r) = ChunkReader::channel(8);
        tx.try_send(Piece::Data(b"ab".to_vec())).unwrap();
        tx.try_send(Piece::Data(Vec::new())).unwrap();
        tx.try_send(Piece::Last(b"cd".to_vec())).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");

        let (tx, mut r) = ChunkReader::channel(8);
        tx.try_send(Piece::Data(b"ab".to_vec())).unwrap();
        drop(tx);
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);

        let (tx, mut r) = ChunkReader::channel(8);
        tx.try_send(Piece::Broken("gone".into())).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn done_guard_reports_failure_when_dropped() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = tx.clone();
        drop(DoneGuard::new(Box::new(move |ok| t.send(ok).unwrap())));
        DoneGuard::new(Box::new(move |ok| tx.send(ok).unwrap())).finish(true);
        assert_eq!(rx.iter().collect::<Vec<_>>(), vec![false, true]);
    }
}
