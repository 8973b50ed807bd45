//! A filter on accepted client connections with one job: make HTTP/2 requests whose
//! `:authority` is a whole URL (`http://127.0.0.1:2379`) acceptable to the Rust HTTP/2 server.
//!
//! Why: etcdctl 3.4, given `--endpoints=http://host:port`, dials each endpoint for its
//! Maintenance calls (`endpoint status`, `defrag`, `endpoint hashkv`) with the whole URL as the
//! `:authority` (etcd issue #13192). Go's server ignores it; the `h2` crate under tonic rejects it
//! as a malformed authority and resets the stream with PROTOCOL_ERROR, and has no setting to
//! relax that (hyperium/h2 #525). So the fix happens on the bytes, before h2 sees them.
//!
//! How: [`AuthorityFilter`] wraps an accepted socket. Server-to-client bytes pass untouched. On
//! the way in, anything that does not open with the HTTP/2 client preface (HTTP/1.1 for the JSON
//! gateway, for one) passes byte for byte. After the preface, frames are followed by their 9-byte
//! headers: every frame but HEADERS (and its CONTINUATIONs) passes as it was read, straight into
//! h2's buffer (no per-byte work on DATA). Each header block is decoded with an HPACK decoder
//! (`hpack` below) that tracks the client's dynamic table; a block passes verbatim unless its `:authority` holds
//! `://`, in which case the scheme and any path are cut (`host:port` is left; an empty host drops
//! the header) and the block is re-encoded as literals without indexing. h2's dynamic table then
//! no longer matches the client's, so from that block on every block of the connection is
//! re-encoded the same way (literals never touch h2's table). Re-encoded blocks are split into
//! CONTINUATION frames at 16 KiB, the smallest maximum frame size HTTP/2 allows.
//!
//! Errors: a block that cannot be decoded (or is malformed or oversized) before anything was
//! re-encoded is passed on as received, and the rest of the connection passes unfiltered: h2
//! rejects it exactly as it would without the filter. Once a block was re-encoded that is no
//! longer safe (h2 would decode later blocks against the wrong table), so the connection is
//! closed instead: the read fails with an [`AuthorityError`].

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Size of a HEADERS frame's priority fields (stream dependency and weight).
const PRIORITY_LEN: usize = 5;
/// The largest frame payload we emit: HTTP/2's minimum SETTINGS_MAX_FRAME_SIZE, so always
/// within what the server accepts.
const MAX_FRAME: usize = 16_384;
/// The dynamic table size the client's encoder may use: tonic's server never sends
/// SETTINGS_HEADER_TABLE_SIZE, so it stays at HTTP/2's default.
const TABLE_SIZE: usize = 4_096;
/// The most bytes of one header block we collect before giving up on it (far above what h2
/// accepts as a header list, so giving up changes nothing h2 would have allowed).
const MAX_BLOCK: usize = 1 << 20;
/// How much the filter reads from the socket at a time when it must buffer.
const READ_SIZE: usize = 16 * 1024;

/// Why a filtered connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A header block could not be handled after an earlier block of the connection was
    /// re-encoded; passing it on would let h2 decode it against the wrong dynamic table.
    #[error("HTTP/2 header block after a rewritten :authority cannot be decoded: {0}")]
    Undecodable(String),
}

/// An accepted connection whose inbound HTTP/2 header blocks have URL-form `:authority` values
/// reduced to `host:port` (see the module documentation).
#[derive(Debug)]
pub struct AuthorityFilter<S = TcpStream> {
    inner: S,
    inbound: Inbound,
}

impl<S> AuthorityFilter<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFilter {
            inner,
            inbound: Inbound::new(),
        }
    }
}

impl Connected for AuthorityFilter<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting to see whether the connection opens with the HTTP/2 preface.
    Preface,
    /// Following HTTP/2 frames.
    Frames,
    /// Passing everything through untouched (not HTTP/2, or the filter gave up).
    Transparent,
    /// The filter closed the connection.
    Failed,
}

/// A header block being collected: a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    /// The HEADERS frame's END_STREAM flag.
    end_stream: bool,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; PRIORITY_LEN]>,
    /// The frames as read, to pass on verbatim.
    raw: Vec<Bytes>,
    /// The header block fragments, joined.
    fragment: Vec<u8>,
}

/// The inbound (client-to-server) state of one connection.
struct Inbound {
    phase: Phase,
    /// Bytes read from the socket and not yet examined.
    stash: BytesMut,
    /// Examined bytes, ready for h2.
    out: VecDeque<Bytes>,
    /// Payload bytes of the current frame still to pass through verbatim.
    skip: usize,
    block: Option<Block>,
    decoder: hpack::Decoder,
    /// A block of this connection was re-encoded: every later one is too.
    rewriting: bool,
    /// Reused buffer for re-encoded header blocks.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("phase", &self.phase)
            .field("rewriting", &self.rewriting)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    fn new() -> Self {
        Inbound {
            phase: Phase::Preface,
            stash: BytesMut::new(),
            out: VecDeque::new(),
            skip: 0,
            block: None,
            decoder: hpack::Decoder::new(TABLE_SIZE),
            rewriting: false,
            scratch: Vec::new(),
        }
    }

    /// Whether freshly read bytes can go straight into the caller's buffer and be examined
    /// there.
    fn direct(&self) -> bool {
        self.out.is_empty()
            && self.stash.is_empty()
            && self.block.is_none()
            && matches!(self.phase, Phase::Frames | Phase::Transparent)
    }

    /// Examines bytes read straight into the caller's buffer; returns how many of them may pass
    /// as they are. The rest (from a HEADERS frame or an incomplete frame header on) must be
    /// stashed by the caller.
    fn scan(&mut self, data: &[u8]) -> usize {
        if self.phase == Phase::Transparent {
            return data.len();
        }
        let mut pos = 0;
        while pos < data.len() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() - pos);
                pos += n;
                self.skip -= n;
                continue;
            }
            let Some(header) = data.get(pos..pos + FRAME_HEADER) else {
                return pos;
            };
            if header[3] == HEADERS {
                return pos;
            }
            self.skip = frame_len(header);
            pos += FRAME_HEADER;
        }
        pos
    }

    /// Moves what can be decided from `stash` to `out`.
    fn process(&mut self) -> Result<(), AuthorityError> {
        loop {
            match self.phase {
                Phase::Failed => return Ok(()),
                Phase::Transparent => {
                    if !self.stash.is_empty() {
                        self.out.push_back(self.stash.split().freeze());
                    }
                    return Ok(());
                }
                Phase::Preface => {
                    let n = self.stash.len().min(PREFACE.len());
                    if self.stash[..n] != PREFACE[..n] {
                        self.phase = Phase::Transparent;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.out
                        .push_back(self.stash.split_to(PREFACE.len()).freeze());
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.skip > 0 {
                        if self.stash.is_empty() {
                            return Ok(());
                        }
                        let n = self.skip.min(self.stash.len());
                        self.out.push_back(self.stash.split_to(n).freeze());
                        self.skip -= n;
                        continue;
                    }
                    let Some(header) = self.stash.get(..FRAME_HEADER) else {
                        return Ok(());
                    };
                    let len = frame_len(header);
                    if self.block.is_none() && header[3] != HEADERS {
                        self.out
                            .push_back(self.stash.split_to(FRAME_HEADER).freeze());
                        self.skip = len;
                        continue;
                    }
                    if FRAME_HEADER + len > MAX_BLOCK {
                        self.give_up("header frame too large")?;
                        continue;
                    }
                    if self.stash.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame = self.stash.split_to(FRAME_HEADER + len).freeze();
                    self.header_frame(frame)?;
                }
            }
        }
    }

    /// Takes one frame of a header block (a HEADERS frame, or what follows one).
    fn header_frame(&mut self, frame: Bytes) -> Result<(), AuthorityError> {
        let (kind, flags, stream) = (frame[3], frame[4], stream_id(&frame));
        let payload = &frame[FRAME_HEADER..];
        match &mut self.block {
            None => {
                let mut start = 0;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let Some(&p) = payload.first() else {
                        return self.give_up_with(frame, "HEADERS frame too short");
                    };
                    pad = usize::from(p);
                    start = 1;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let Some(fields) = payload.get(start..start + PRIORITY_LEN) else {
                        return self.give_up_with(frame, "HEADERS frame too short");
                    };
                    let mut p = [0; PRIORITY_LEN];
                    p.copy_from_slice(fields);
                    priority = Some(p);
                    start += PRIORITY_LEN;
                }
                let Some(fragment) = payload
                    .len()
                    .checked_sub(pad)
                    .and_then(|end| payload.get(start..end))
                else {
                    return self.give_up_with(frame, "HEADERS padding exceeds the frame");
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: vec![frame],
                });
            }
            Some(block) => {
                if kind != CONTINUATION || stream != block.stream {
                    return self.give_up_with(frame, "header block interrupted");
                }
                block.fragment.extend_from_slice(payload);
                block.raw.push(frame);
                if block.fragment.len() > MAX_BLOCK {
                    return self.give_up("header block too large");
                }
            }
        }
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Decodes a complete header block and passes it on, verbatim or re-encoded.
    fn finish_block(&mut self) -> Result<(), AuthorityError> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut url = false;
        let decoded = self.decoder.decode(&block.fragment, |name, value| {
            if name == b":authority" {
                if let Some(host) = strip_url(value) {
                    url = true;
                    if !host.is_empty() {
                        encode_literal(&mut scratch, name, host);
                    }
                    return;
                }
            }
            encode_literal(&mut scratch, name, value);
        });
        if let Err(e) = decoded {
            self.scratch = scratch;
            self.block = Some(block);
            return self.give_up(&format!("HPACK: {e}"));
        }
        if url && !self.rewriting {
            tracing::debug!(
                stream = block.stream,
                "URL-form :authority reduced to host:port; re-encoding this connection's headers"
            );
            self.rewriting = true;
        }
        if self.rewriting {
            self.emit_block(&block, &scratch);
        } else {
            self.out.extend(block.raw);
        }
        self.scratch = scratch;
        Ok(())
    }

    /// Emits a re-encoded header block as HEADERS (+ CONTINUATION) frames.
    fn emit_block(&mut self, block: &Block, encoded: &[u8]) {
        let prefix = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = encoded.len().min(MAX_FRAME - prefix.len());
        let (head, mut rest) = encoded.split_at(first);
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut frames = BytesMut::with_capacity(
            encoded.len() + prefix.len() + FRAME_HEADER * (1 + encoded.len() / MAX_FRAME + 1),
        );
        put_frame(&mut frames, HEADERS, flags, block.stream, &[prefix, head]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            put_frame(&mut frames, CONTINUATION, flags, block.stream, &[chunk]);
        }
        self.out.push_back(frames.freeze());
    }

    /// Gives up filtering, with `frame` (already out of the stash) to pass on first.
    fn give_up_with(&mut self, frame: Bytes, why: &str) -> Result<(), AuthorityError> {
        match &mut self.block {
            Some(block) => block.raw.push(frame),
            None => {
                self.block = Some(Block {
                    stream: 0,
                    end_stream: false,
                    priority: None,
                    raw: vec![frame],
                    fragment: Vec::new(),
                })
            }
        }
        self.give_up(why)
    }

    /// Stops filtering: before any rewrite, what is held passes on as received and the rest of
    /// the connection passes untouched (h2 then sees exactly what the client sent); after one,
    /// the connection is closed.
    fn give_up(&mut self, why: &str) -> Result<(), AuthorityError> {
        if self.rewriting {
            tracing::warn!(
                reason = why,
                "closing a client connection: its HTTP/2 header block cannot be rewritten"
            );
            self.phase = Phase::Failed;
            self.block = None;
            self.stash.clear();
            return Err(AuthorityError::Undecodable(why.to_string()));
        }
        tracing::debug!(
            reason = why,
            "passing the rest of a client connection through unfiltered"
        );
        if let Some(block) = self.block.take() {
            self.out.extend(block.raw);
        }
        self.phase = Phase::Transparent;
        self.skip = 0;
        Ok(())
    }

    /// The peer closed its side: whatever is held passes on as it is (h2 will see a truncated
    /// stream, as it would have).
    fn eof(&mut self) {
        if let Some(block) = self.block.take() {
            self.out.extend(block.raw);
        }
        if !self.stash.is_empty() {
            self.out.push_back(self.stash.split().freeze());
        }
        if self.phase != Phase::Failed {
            self.phase = Phase::Transparent;
        }
    }

    /// Copies held output into `buf`; whether anything was held.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let mut any = false;
        while buf.remaining() > 0 {
            let Some(chunk) = self.out.front_mut() else {
                break;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.advance(n);
            if chunk.is_empty() {
                self.out.pop_front();
            }
            any = true;
        }
        any
    }
}

/// The payload length in a frame header.
fn frame_len(header: &[u8]) -> usize {
    usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])
}

/// The stream identifier in a frame header.
fn stream_id(header: &[u8]) -> u32 {
    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff
}

/// For a URL-form authority (`scheme://host:port/path`), the `host:port` part.
fn strip_url(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Appends one header as an HPACK literal without indexing, with a literal name and no Huffman
/// coding: it needs no encoder state and leaves the server's dynamic table alone.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        encode_integer(out, s.len(), 7);
        out.extend_from_slice(s);
    }
}

/// Appends an HPACK integer (RFC 7541 §5.1) with a `prefix`-bit prefix and the other bits of
/// the first octet clear.
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends a frame whose payload is the concatenation of `parts`.
fn put_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFilter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let inbound = &mut this.inbound;
        loop {
            if inbound.drain_into(buf) {
                return Poll::Ready(Ok(()));
            }
            if inbound.phase == Phase::Failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    AuthorityError::Undecodable(
                        "connection closed by the :authority filter".into(),
                    ),
                )));
            }
            if inbound.direct() {
                // Fast path: read into h2's buffer and hand back everything before the next
                // HEADERS frame without copying it.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(()));
                }
                let keep = inbound.scan(&buf.filled()[start..end]);
                if start + keep == end {
                    return Poll::Ready(Ok(()));
                }
                inbound
                    .stash
                    .extend_from_slice(&buf.filled()[start + keep..end]);
                buf.set_filled(start + keep);
                if keep > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // Slow path: the stash holds bytes to examine (a preface, a header block, an
                // incomplete frame header); read more only if they decide nothing yet.
                if !inbound.stash.is_empty() {
                    if let Err(e) = inbound.process() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    if !inbound.out.is_empty() || inbound.direct() {
                        continue;
                    }
                }
                let len = inbound.stash.len();
                inbound.stash.resize(len + READ_SIZE, 0);
                let mut read = ReadBuf::new(&mut inbound.stash[len..]);
                let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
                let n = read.filled().len();
                inbound.stash.truncate(len + n);
                ready!(polled)?;
                if n == 0 {
                    inbound.eof();
                    if inbound.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFilter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// HPACK decoding (RFC 7541), as much as the filter needs: the header list of a block, in
/// order, with the dynamic table kept in step with the client's encoder.
///
/// Our own rather than a crate's: the maintained pure-Rust decoder (loona-hpack) rebuilds a
/// HashMap-based Huffman table for every Huffman-coded string (~26 µs each, measured), which
/// doubled the server's CPU per request. This one walks a prebuilt code tree. The tests check
/// it against loona-hpack's encoder and decoder.
mod hpack {
    use std::collections::VecDeque;
    use std::sync::OnceLock;

    /// Why a header block could not be decoded.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub(super) enum HpackError {
        #[error("header block truncated")]
        Truncated,
        #[error("integer too large")]
        IntegerOverflow,
        #[error("index {0} is in neither table")]
        BadIndex(usize),
        #[error("dynamic table size update to {0} above the allowed {1}")]
        TableSize(usize, usize),
        #[error("invalid Huffman code")]
        Huffman,
    }

    /// A decoder: the dynamic table of one direction of one connection.
    pub(super) struct Decoder {
        /// Newest first, as HPACK indexes it.
        table: VecDeque<(Vec<u8>, Vec<u8>)>,
        /// Sum of entry sizes (name + value + 32).
        size: usize,
        max: usize,
        /// What SETTINGS_HEADER_TABLE_SIZE allows the encoder.
        allowed: usize,
        name: Vec<u8>,
        value: Vec<u8>,
    }

    impl Decoder {
        pub(super) fn new(allowed: usize) -> Self {
            Decoder {
                table: VecDeque::new(),
                size: 0,
                max: allowed,
                allowed,
                name: Vec::new(),
                value: Vec::new(),
            }
        }

        /// Decodes one complete header block, calling `field` with each name and value.
        pub(super) fn decode(
            &mut self,
            block: &[u8],
            mut field: impl FnMut(&[u8], &[u8]),
        ) -> Result<(), HpackError> {
            let mut pos = 0;
            while let Some(&first) = block.get(pos) {
                if first & 0x80 != 0 {
                    let index = integer(block, &mut pos, 7)?;
                    let (name, value) = self.get(index)?;
                    field(name, value);
                } else if first & 0xe0 == 0x20 {
                    let size = integer(block, &mut pos, 5)?;
                    if size > self.allowed {
                        return Err(HpackError::TableSize(size, self.allowed));
                    }
                    self.max = size;
                    self.evict(0);
                } else {
                    // 01: with incremental indexing (6-bit index); 0000 / 0001: without
                    // indexing / never indexed (4-bit index).
                    let indexing = first & 0x40 != 0;
                    let index = integer(block, &mut pos, if indexing { 6 } else { 4 })?;
                    let mut name = std::mem::take(&mut self.name);
                    let mut value = std::mem::take(&mut self.value);
                    let done = (|| {
                        name.clear();
                        if index == 0 {
                            string(block, &mut pos, &mut name)?;
                        } else {
                            name.extend_from_slice(self.get(index)?.0);
                        }
                        value.clear();
                        string(block, &mut pos, &mut value)
                    })();
                    if done.is_ok() {
                        field(&name, &value);
                        if indexing {
                            self.insert(&name, &value);
                        }
                    }
                    self.name = name;
                    self.value = value;
                    done?;
                }
            }
            Ok(())
        }

        fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
            if let Some(&(n, v)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
                return Ok((n, v));
            }
            index
                .checked_sub(STATIC.len() + 1)
                .and_then(|i| self.table.get(i))
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::BadIndex(index))
        }

        fn insert(&mut self, name: &[u8], value: &[u8]) {
            let size = name.len() + value.len() + 32;
            self.evict(size);
            if size <= self.max {
                self.table.push_front((name.to_vec(), value.to_vec()));
                self.size += size;
            }
        }

        /// Evicts the oldest entries until `room` more bytes fit (or the table is empty).
        fn evict(&mut self, room: usize) {
            while self.size + room > self.max {
                let Some((n, v)) = self.table.pop_back() else {
                    break;
                };
                self.size -= n.len() + v.len() + 32;
            }
        }
    }

    /// Reads an integer with an `prefix`-bit prefix at `*pos` (RFC 7541 §5.1).
    fn integer(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, HpackError> {
        let max = (1usize << prefix) - 1;
        let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        let mut value = usize::from(first) & max;
        if value < max {
            return Ok(value);
        }
        // Four continuation octets (28 bits) are far beyond any size h2 accepts.
        for shift in [0, 7, 14, 21] {
            let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
            *pos += 1;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// Reads a string literal at `*pos` into `out` (RFC 7541 §5.2).
    fn string(block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
        let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = integer(block, pos, 7)?;
        let raw = pos
            .checked_add(len)
            .and_then(|end| block.get(*pos..end))
            .ok_or(HpackError::Truncated)?;
        *pos += len;
        if huffman {
            huffman_decode(raw, out)
        } else {
            out.extend_from_slice(raw);
            Ok(())
        }
    }

    /// A node's child: another node, or (with this bit) a symbol.
    const LEAF: u16 = 0x8000;
    const EOS: u16 = 256;

    /// The Huffman code as a binary tree: `[child for 0, child for 1]` per node, root first.
    fn tree() -> &'static [[u16; 2]] {
        static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
        TREE.get_or_init(|| {
            let mut nodes = vec![[0u16; 2]];
            for (symbol, &(code, len)) in HUFFMAN.iter().enumerate() {
                let mut node = 0;
                for bit in (0..len).rev() {
                    let b = ((code >> bit) & 1) as usize;
                    if bit == 0 {
                        nodes[node][b] = LEAF | symbol as u16;
                    } else {
                        if nodes[node][b] == 0 {
                            nodes.push([0; 2]);
                            nodes[node][b] = (nodes.len() - 1) as u16;
                        }
                        node = usize::from(nodes[node][b]);
                    }
                }
            }
            nodes
        })
    }

    /// Decodes a Huffman-coded string (RFC 7541 §5.2, Appendix B) into `out`.
    fn huffman_decode(raw: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
        let tree = tree();
        let mut node = 0usize;
        // Bits read since the last symbol, and whether they were all ones (EOS padding).
        let mut pending = 0;
        let mut ones = true;
        for &byte in raw {
            for bit in (0..8).rev() {
                let b = (byte >> bit) & 1;
                let next = tree[node][usize::from(b)];
                pending += 1;
                ones &= b == 1;
                if next & LEAF != 0 {
                    let symbol = next & !LEAF;
                    if symbol == EOS {
                        return Err(HpackError::Huffman);
                    }
                    out.push(symbol as u8);
                    node = 0;
                    pending = 0;
                    ones = true;
                } else if next == 0 {
                    return Err(HpackError::Huffman);
                } else {
                    node = usize::from(next);
                }
            }
        }
        if pending > 7 || !ones {
            return Err(HpackError::Huffman);
        }
        Ok(())
    }

    /// The static table (RFC 7541 Appendix A), index 1 first.
    static STATIC: [(&[u8], &[u8]); 61] = [
        (b":authority", b""),
        (b":method", b"GET"),
        (b":method", b"POST"),
        (b":path", b"/"),
        (b":path", b"/index.html"),
        (b":scheme", b"http"),
        (b":scheme", b"https"),
        (b":status", b"200"),
        (b":status", b"204"),
        (b":status", b"206"),
        (b":status", b"304"),
        (b":status", b"400"),
        (b":status", b"404"),
        (b":status", b"500"),
        (b"accept-charset", b""),
        (b"accept-encoding", b"gzip, deflate"),
        (b"accept-language", b""),
        (b"accept-ranges", b""),
        (b"accept", b""),
        (b"access-control-allow-origin", b""),
        (b"age", b""),
        (b"allow", b""),
        (b"authorization", b""),
        (b"cache-control", b""),
        (b"content-disposition", b""),
        (b"content-encoding", b""),
        (b"content-language", b""),
        (b"content-length", b""),
        (b"content-location", b""),
        (b"content-range", b""),
        (b"content-type", b""),
        (b"cookie", b""),
        (b"date", b""),
        (b"etag", b""),
        (b"expect", b""),
        (b"expires", b""),
        (b"from", b""),
        (b"host", b""),
        (b"if-match", b""),
        (b"if-modified-since", b""),
        (b"if-none-match", b""),
        (b"if-range", b""),
        (b"if-unmodified-since", b""),
        (b"last-modified", b""),
        (b"link", b""),
        (b"location", b""),
        (b"max-forwards", b""),
        (b"proxy-authenticate", b""),
        (b"proxy-authorization", b""),
        (b"range", b""),
        (b"referer", b""),
        (b"refresh", b""),
        (b"retry-after", b""),
        (b"server", b""),
        (b"set-cookie", b""),
        (b"strict-transport-security", b""),
        (b"transfer-encoding", b""),
        (b"user-agent", b""),
        (b"vary", b""),
        (b"via", b""),
        (b"www-authenticate", b""),
    ];

    /// The Huffman code (RFC 7541 Appendix B): `(code, bit length)` by symbol, EOS last.
    pub(super) static HUFFMAN: [(u32, u8); 257] = [
        (0x1ff8, 13),
        (0x7fffd8, 23),
        (0xfffffe2, 28),
        (0xfffffe3, 28),
        (0xfffffe4, 28),
        (0xfffffe5, 28),
        (0xfffffe6, 28),
        (0xfffffe7, 28),
        (0xfffffe8, 28),
        (0xffffea, 24),
        (0x3ffffffc, 30),
        (0xfffffe9, 28),
        (0xfffffea, 28),
        (0x3ffffffd, 30),
        (0xfffffeb, 28),
        (0xfffffec, 28),
        (0xfffffed, 28),
        (0xfffffee, 28),
        (0xfffffef, 28),
        (0xffffff0, 28),
        (0xffffff1, 28),
        (0xffffff2, 28),
        (0x3ffffffe, 30),
        (0xffffff3, 28),
        (0xffffff4, 28),
        (0xffffff5, 28),
        (0xffffff6, 28),
        (0xffffff7, 28),
        (0xffffff8, 28),
        (0xffffff9, 28),
        (0xffffffa, 28),
        (0xffffffb, 28),
        (0x14, 6),
        (0x3f8, 10),
        (0x3f9, 10),
        (0xffa, 12),
        (0x1ff9, 13),
        (0x15, 6),
        (0xf8, 8),
        (0x7fa, 11),
        (0x3fa, 10),
        (0x3fb, 10),
        (0xf9, 8),
        (0x7fb, 11),
        (0xfa, 8),
        (0x16, 6),
        (0x17, 6),
        (0x18, 6),
        (0x0, 5),
        (0x1, 5),
        (0x2, 5),
        (0x19, 6),
        (0x1a, 6),
        (0x1b, 6),
        (0x1c, 6),
        (0x1d, 6),
        (0x1e, 6),
        (0x1f, 6),
        (0x5c, 7),
        (0xfb, 8),
        (0x7ffc, 15),
        (0x20, 6),
        (0xffb, 12),
        (0x3fc, 10),
        (0x1ffa, 13),
        (0x21, 6),
        (0x5d, 7),
        (0x5e, 7),
        (0x5f, 7),
        (0x60, 7),
        (0x61, 7),
        (0x62, 7),
        (0x63, 7),
        (0x64, 7),
        (0x65, 7),
        (0x66, 7),
        (0x67, 7),
        (0x68, 7),
        (0x69, 7),
        (0x6a, 7),
        (0x6b, 7),
        (0x6c, 7),
        (0x6d, 7),
        (0x6e, 7),
        (0x6f, 7),
        (0x70, 7),
        (0x71, 7),
        (0x72, 7),
        (0xfc, 8),
        (0x73, 7),
        (0xfd, 8),
        (0x1ffb, 13),
        (0x7fff0, 19),
        (0x1ffc, 13),
        (0x3ffc, 14),
        (0x22, 6),
        (0x7ffd, 15),
        (0x3, 5),
        (0x23, 6),
        (0x4, 5),
        (0x24, 6),
        (0x5, 5),
        (0x25, 6),
        (0x26, 6),
        (0x27, 6),
        (0x6, 5),
        (0x74, 7),
        (0x75, 7),
        (0x28, 6),
        (0x29, 6),
        (0x2a, 6),
        (0x7, 5),
        (0x2b, 6),
        (0x76, 7),
        (0x2c, 6),
        (0x8, 5),
        (0x9, 5),
        (0x2d, 6),
        (0x77, 7),
        (0x78, 7),
        (0x79, 7),
        (0x7a, 7),
        (0x7b, 7),
        (0x7ffe, 15),
        (0x7fc, 11),
        (0x3ffd, 14),
        (0x1ffd, 13),
        (0xffffffc, 28),
        (0xfffe6, 20),
        (0x3fffd2, 22),
        (0xfffe7, 20),
        (0xfffe8, 20),
        (0x3fffd3, 22),
        (0x3fffd4, 22),
        (0x3fffd5, 22),
        (0x7fffd9, 23),
        (0x3fffd6, 22),
        (0x7fffda, 23),
        (0x7fffdb, 23),
        (0x7fffdc, 23),
        (0x7fffdd, 23),
        (0x7fffde, 23),
        (0xffffeb, 24),
        (0x7fffdf, 23),
        (0xffffec, 24),
        (0xffffed, 24),
        (0x3fffd7, 22),
        (0x7fffe0, 23),
        (0xffffee, 24),
        (0x7fffe1, 23),
        (0x7fffe2, 23),
        (0x7fffe3, 23),
        (0x7fffe4, 23),
        (0x1fffdc, 21),
        (0x3fffd8, 22),
        (0x7fffe5, 23),
        (0x3fffd9, 22),
        (0x7fffe6, 23),
        (0x7fffe7, 23),
        (0xffffef, 24),
        (0x3fffda, 22),
        (0x1fffdd, 21),
        (0xfffe9, 20),
        (0x3fffdb, 22),
        (0x3fffdc, 22),
        (0x7fffe8, 23),
        (0x7fffe9, 23),
        (0x1fffde, 21),
        (0x7fffea, 23),
        (0x3fffdd, 22),
        (0x3fffde, 22),
        (0xfffff0, 24),
        (0x1fffdf, 21),
        (0x3fffdf, 22),
        (0x7fffeb, 23),
        (0x7fffec, 23),
        (0x1fffe0, 21),
        (0x1fffe1, 21),
        (0x3fffe0, 22),
        (0x1fffe2, 21),
        (0x7fffed, 23),
        (0x3fffe1, 22),
        (0x7fffee, 23),
        (0x7fffef, 23),
        (0xfffea, 20),
        (0x3fffe2, 22),
        (0x3fffe3, 22),
        (0x3fffe4, 22),
        (0x7ffff0, 23),
        (0x3fffe5, 22),
        (0x3fffe6, 22),
        (0x7ffff1, 23),
        (0x3ffffe0, 26),
        (0x3ffffe1, 26),
        (0xfffeb, 20),
        (0x7fff1, 19),
        (0x3fffe7, 22),
        (0x7ffff2, 23),
        (0x3fffe8, 22),
        (0x1ffffec, 25),
        (0x3ffffe2, 26),
        (0x3ffffe3, 26),
        (0x3ffffe4, 26),
        (0x7ffffde, 27),
        (0x7ffffdf, 27),
        (0x3ffffe5, 26),
        (0xfffff1, 24),
        (0x1ffffed, 25),
        (0x7fff2, 19),
        (0x1fffe3, 21),
        (0x3ffffe6, 26),
        (0x7ffffe0, 27),
        (0x7ffffe1, 27),
        (0x3ffffe7, 26),
        (0x7ffffe2, 27),
        (0xfffff2, 24),
        (0x1fffe4, 21),
        (0x1fffe5, 21),
        (0x3ffffe8, 26),
        (0x3ffffe9, 26),
        (0xffffffd, 28),
        (0x7ffffe3, 27),
        (0x7ffffe4, 27),
        (0x7ffffe5, 27),
        (0xfffec, 20),
        (0xfffff3, 24),
        (0xfffed, 20),
        (0x1fffe6, 21),
        (0x3fffe9, 22),
        (0x1fffe7, 21),
        (0x1fffe8, 21),
        (0x7ffff3, 23),
        (0x3fffea, 22),
        (0x3fffeb, 22),
        (0x1ffffee, 25),
        (0x1ffffef, 25),
        (0xfffff4, 24),
        (0xfffff5, 24),
        (0x3ffffea, 26),
        (0x7ffff4, 23),
        (0x3ffffeb, 26),
        (0x7ffffe6, 27),
        (0x3ffffec, 26),
        (0x3ffffed, 26),
        (0x7ffffe7, 27),
        (0x7ffffe8, 27),
        (0x7ffffe9, 27),
        (0x7ffffea, 27),
        (0x7ffffeb, 27),
        (0xffffffe, 28),
        (0x7ffffec, 27),
        (0x7ffffed, 27),
        (0x7ffffee, 27),
        (0x7ffffef, 27),
        (0x7fffff0, 27),
        (0x3ffffee, 26),
        (0x3fffffff, 30),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// A reader that hands out its bytes at most `chunk` at a time.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Everything the filter yields for `data` read `chunk` bytes at a time, through reads of
    /// `read` bytes.
    async fn filter(data: &[u8], chunk: usize, read: usize) -> io::Result<Vec<u8>> {
        let mut f = AuthorityFilter::new(Chunked {
            data: data.to_vec(),
            pos: 0,
            chunk,
        });
        let mut out = Vec::new();
        let mut space = vec![0; read];
        loop {
            let mut buf = ReadBuf::new(&mut space);
            std::future::poll_fn(|cx| Pin::new(&mut f).poll_read(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(buf.filled());
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, kind, flags, stream, &[payload]);
        out.to_vec()
    }

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &Headers) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// A parsed frame: type, flags, stream, payload.
    type Frame = (u8, u8, u32, Vec<u8>);

    fn parse(mut data: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !data.is_empty() {
            let len = frame_len(data);
            frames.push((
                data[3],
                data[4],
                stream_id(data),
                data[FRAME_HEADER..FRAME_HEADER + len].to_vec(),
            ));
            data = &data[FRAME_HEADER + len..];
        }
        frames
    }

    /// The header lists in `frames` as a fresh server decoder sees them (by stream), and the
    /// other frames.
    fn decode(frames: &[Frame]) -> (Vec<(u32, Headers)>, Vec<Frame>) {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut others = Vec::new();
        let mut pending: Option<(u32, Vec<u8>)> = None;
        for (kind, flags, stream, payload) in frames {
            match *kind {
                HEADERS => {
                    assert!(pending.is_none(), "HEADERS inside a header block");
                    let mut p = &payload[..];
                    let mut pad = 0;
                    if flags & PADDED != 0 {
                        pad = usize::from(p[0]);
                        p = &p[1..];
                    }
                    if flags & PRIORITY != 0 {
                        p = &p[PRIORITY_LEN..];
                    }
                    pending = Some((*stream, p[..p.len() - pad].to_vec()));
                }
                CONTINUATION => {
                    let (s, block) = pending.as_mut().expect("CONTINUATION after HEADERS");
                    assert_eq!(s, stream);
                    block.extend_from_slice(payload);
                }
                _ => {
                    assert!(pending.is_none(), "frame inside a header block");
                    others.push((*kind, *flags, *stream, payload.clone()));
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                let (s, block) = pending.take().expect("block");
                blocks.push((s, decoder.decode(&block).expect("decodable")));
            }
        }
        assert!(pending.is_none(), "unfinished header block");
        (blocks, others)
    }

    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    #[tokio::test]
    async fn url_authority_is_reduced_in_every_block() {
        let mut enc = loona_hpack::Encoder::new();
        let status = "/etcdserverpb.Maintenance/Status";
        let plain = request("127.0.0.1:2379", "/etcdserverpb.KV/Range");
        let url = request("http://127.0.0.1:2379", status);
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        // Before any URL: passes verbatim; its entries go into both dynamic tables.
        let first = frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &plain));
        input.extend(&first);
        input.extend(frame(DATA, END_STREAM, 1, b"range"));
        // The URL authority, in a block that refers to `te: trailers`, which the encoder
        // indexed (incremental indexing) in the first block...
        let indexed = encode(&mut enc, &url);
        assert!(
            loona_hpack::Decoder::new().decode(&indexed).is_err(),
            "the block depends on the dynamic table"
        );
        input.extend(frame(HEADERS, END_HEADERS, 3, &indexed));
        input.extend(frame(DATA, END_STREAM, 3, &[7; 16_000]));
        // ...and again, after the filter started re-encoding.
        let reused = encode(&mut enc, &url);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &reused));
        // A later block without a URL is re-encoded too (it references the client's table).
        input.extend(frame(HEADERS, END_HEADERS, 7, &encode(&mut enc, &plain)));
        input.extend(frame(DATA, END_STREAM, 7, b"x"));

        let want = request("127.0.0.1:2379", status);
        for (chunk, read) in [
            (usize::MAX, 1 << 20),
            (1, 1 << 20),
            (7, 5),
            (100, 64),
            (9, 9000),
        ] {
            let out = filter(&input, chunk, read).await.expect("filtered");
            assert!(out.starts_with(PREFACE));
            let frames = parse(&out[PREFACE.len()..]);
            let (blocks, others) = decode(&frames);
            assert_eq!(
                blocks,
                vec![
                    (1, plain.clone()),
                    (3, want.clone()),
                    (5, want.clone()),
                    (7, plain.clone())
                ],
                "chunk {chunk}, read {read}"
            );
            // The first block and the non-header frames pass byte for byte.
            assert!(out[PREFACE.len() + 15..].starts_with(&first));
            assert_eq!(
                others,
                vec![
                    (SETTINGS, 0, 0, vec![0, 3, 0, 0, 0, 100]),
                    (DATA, END_STREAM, 1, b"range".to_vec()),
                    (DATA, END_STREAM, 3, vec![7; 16_000]),
                    (DATA, END_STREAM, 7, b"x".to_vec()),
                ]
            );
            // END_STREAM is kept on the re-encoded block of stream 5.
            let s5 = frames.iter().find(|f| f.2 == 5).expect("stream 5");
            assert_eq!(s5.1, END_HEADERS | END_STREAM);
        }
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(&mut out, s.len(), 7);
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[tokio::test]
    async fn url_authority_from_the_dynamic_table() {
        // :method POST, :scheme http, :path /, then :authority (static name 1) with
        // incremental indexing: dynamic index 62.
        let mut first = vec![0x83, 0x86, 0x84, 0x41];
        first.extend(string("http://127.0.0.1:2379"));
        // The next block takes the whole :authority from the dynamic table.
        let second = vec![0x83, 0x86, 0x84, 0x80 | 62];
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let want: Headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "127.0.0.1:2379"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        for chunk in [usize::MAX, 1, 5] {
            let out = filter(&input, chunk, 100).await.expect("filtered");
            let (blocks, others) = decode(&parse(&out[PREFACE.len()..]));
            assert_eq!(blocks, vec![(1, want.clone()), (3, want.clone())]);
            assert!(others.is_empty());
        }
    }

    #[tokio::test]
    async fn connection_without_url_passes_verbatim() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[]));
        for stream in [1, 3] {
            let block = encode(&mut enc, &request("127.0.0.1:2379", "/etcdserverpb.KV/Put"));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(DATA, END_STREAM, stream, b"put"));
        }
        for chunk in [usize::MAX, 1, 10] {
            assert_eq!(filter(&input, chunk, 4096).await.expect("filtered"), input);
        }
    }

    #[tokio::test]
    async fn non_http2_passes_byte_identical() {
        let http1 = b"POST /v3/kv/range HTTP/1.1\r\nHost: http://127.0.0.1:2379\r\n\
            Content-Length: 2\r\n\r\n{}"
            .to_vec();
        // Shares the preface's first bytes, then differs.
        let almost = b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n\x00\x00\x00\x01\x04".to_vec();
        for input in [http1, almost, b"P".to_vec(), Vec::new()] {
            for chunk in [usize::MAX, 1, 3] {
                assert_eq!(filter(&input, chunk, 4096).await.expect("read"), input);
            }
        }
    }

    #[tokio::test]
    async fn block_split_across_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let mut headers = request("https://127.0.0.1:2379/some/path?q", "/etcdserverpb.KV/Txn");
        // Values the client indexes and Huffman would shrink: the re-encoded block (plain
        // literals) is larger than 16 KiB and has to be split again.
        for i in 0..40 {
            headers.push((
                format!("x-meta-{i}").into_bytes(),
                vec![b'a' + (i % 26) as u8; 900],
            ));
        }
        let block = encode(&mut enc, &headers);
        assert!(block.len() > 2 * 10_000);
        // HEADERS (padded, with priority) + two CONTINUATIONs.
        let (a, rest) = block.split_at(10_000);
        let (b, c) = rest.split_at(10_000);
        let mut payload = vec![3];
        payload.extend([0x80, 0, 0, 1, 200]);
        payload.extend(a);
        payload.extend([0; 3]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        input.extend(frame(DATA, END_STREAM, 1, b"txn"));

        let mut want = headers.clone();
        want[3].1 = b"127.0.0.1:2379".to_vec();
        for chunk in [usize::MAX, 1000] {
            let out = filter(&input, chunk, 8192).await.expect("filtered");
            let frames = parse(&out[PREFACE.len()..]);
            let (blocks, others) = decode(&frames);
            assert_eq!(blocks, vec![(1, want.clone())]);
            assert_eq!(others, vec![(DATA, END_STREAM, 1, b"txn".to_vec())]);
            let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
            assert_eq!(
                kinds,
                vec![
                    (HEADERS, PRIORITY),
                    (CONTINUATION, 0),
                    (CONTINUATION, END_HEADERS),
                    (DATA, END_STREAM)
                ]
            );
            assert_eq!(frames[0].3.len(), MAX_FRAME);
            assert_eq!(frames[1].3.len(), MAX_FRAME);
            assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
            assert_eq!(frames[0].3[..PRIORITY_LEN], [0x80, 0, 0, 1, 200]);
        }
    }

    #[tokio::test]
    async fn undecodable_block_passes_before_a_rewrite_and_closes_after() {
        // An index beyond both tables.
        let bad = frame(HEADERS, END_HEADERS, 1, &[0x80 | 100]);
        let mut input = PREFACE.to_vec();
        input.extend(&bad);
        input.extend(frame(DATA, END_STREAM, 1, b"x"));
        assert_eq!(filter(&input, usize::MAX, 4096).await.expect("read"), input);

        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let url = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status");
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &url)));
        input.extend(bad);
        let err = filter(&input, usize::MAX, 4096).await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// Huffman-codes `s` (RFC 7541 Appendix B) as an HPACK string literal.
    fn huffman_string(s: &[u8]) -> Vec<u8> {
        let (mut bits, mut acc, mut coded) = (0u32, 0u64, Vec::new());
        for &c in s {
            let (code, len) = hpack::HUFFMAN[usize::from(c)];
            acc = acc << len | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                coded.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            coded.push((acc << (8 - bits)) as u8 | (0xff >> bits));
        }
        let mut out = Vec::new();
        encode_integer(&mut out, coded.len(), 7);
        out[0] |= 0x80;
        out.extend(coded);
        out
    }

    fn ours(decoder: &mut hpack::Decoder, block: &[u8]) -> Result<Headers, hpack::HpackError> {
        let mut out = Vec::new();
        decoder.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    #[test]
    fn hpack_decoder_matches_the_rfc_and_loona() {
        // RFC 7541 C.4: three requests with Huffman coding sharing one dynamic table.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut mine = hpack::Decoder::new(TABLE_SIZE);
        let mut theirs = loona_hpack::Decoder::new();
        for block in blocks {
            assert_eq!(
                ours(&mut mine, block),
                Ok(theirs.decode(block).expect("loona"))
            );
        }
        let last = ours(&mut hpack::Decoder::new(TABLE_SIZE), blocks[0]).expect("decoded");
        assert_eq!(
            last[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        // Every static entry, and every byte value through the Huffman code.
        for i in 1..=61u8 {
            let block = [0x80 | i];
            assert_eq!(
                ours(&mut hpack::Decoder::new(TABLE_SIZE), &block),
                Ok(loona_hpack::Decoder::new().decode(&block).expect("loona"))
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        let mut block = vec![0x00, 0x01, b'x'];
        block.extend(huffman_string(&all));
        assert_eq!(
            ours(&mut hpack::Decoder::new(TABLE_SIZE), &block),
            Ok(vec![(b"x".to_vec(), all.clone())])
        );
        // Malformed input is an error, never a panic.
        let mut d = hpack::Decoder::new(TABLE_SIZE);
        for bad in [
            &[0x80 | 62][..],
            &[0x00, 0x85, 0xff],
            &[0x3f, 0xe2, 0x1f],
            &[0x00, 0x81, 0xff, 0x81, 0x00],
            &[0x7f, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x41],
        ] {
            assert!(ours(&mut d, bad).is_err(), "{bad:?}");
        }
        // Eviction: an entry larger than the table empties it.
        let mut d = hpack::Decoder::new(64);
        ours(&mut d, &[0x40, 1, b'a', 1, b'b']).expect("insert");
        assert!(ours(&mut d, &[0x80 | 62]).is_ok());
        let mut big = vec![0x40, 1, b'c', 40];
        big.extend([b'v'; 40]);
        ours(&mut d, &big).expect("insert");
        assert_eq!(
            ours(&mut d, &[0x80 | 62]),
            Err(hpack::HpackError::BadIndex(62))
        );
    }

    #[tokio::test]
    async fn huffman_coded_url_authority() {
        let mut block = vec![0x83, 0x86, 0x84, 0x01];
        block.extend(huffman_string(b"http://127.0.0.1:2379"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let out = filter(&input, usize::MAX, 4096).await.expect("filtered");
        let (blocks, _) = decode(&parse(&out[PREFACE.len()..]));
        assert_eq!(
            blocks[0].1[3],
            (b":authority".to_vec(), b"127.0.0.1:2379".to_vec())
        );
    }

    #[test]
    fn url_authorities_are_cut_to_host_and_port() {
        assert_eq!(
            strip_url(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(strip_url(b"https://h:1/p/q"), Some(&b"h:1"[..]));
        assert_eq!(strip_url(b"unix:///tmp/sock"), Some(&b""[..]));
        assert_eq!(strip_url(b"127.0.0.1:2379"), None);
    }
}
