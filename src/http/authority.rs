//! Accepting the `:authority` that etcd's clients send.
//!
//! etcd's Go client (etcdctl 3.4, clientv3) dials some endpoints as `passthrough:///<endpoint>`,
//! and with an endpoint written `http://host:port` it sends that whole URL as the HTTP/2
//! `:authority` of every request (etcdctl's `endpoint status --cluster`, with the members' client
//! URLs, always does). That is not an authority (RFC 3986 §3.2), and the `h2` crate under hyper
//! refuses the request (a stream reset, PROTOCOL_ERROR) before any handler sees it; etcd's Go
//! server does not look at the authority at all. Nothing in hyper or h2 can be told to accept it.
//!
//! So [`AuthorityFix`] sits between the client's connection and hyper, on the bytes. A
//! connection that does not open with HTTP/2's preface (HTTP/1.1: the JSON API, the peer port)
//! passes through untouched. On an HTTP/2 connection every frame passes through as it is, except
//! the header blocks the client sends (HEADERS and its CONTINUATIONs): each is decoded with the
//! connection's HPACK state, its `:authority` made `host:port` when it is a URL (and left out
//! when it is no authority at all), and encoded again as literals that index nothing, so hyper's
//! HPACK table stays empty and never disagrees with the client's. Everything else in the block
//! (names, values, order, END_STREAM, priority) is kept; padding is dropped.
//!
//! Bounds: a header block is at most [`MAX_BLOCK_BYTES`] as sent and [`MAX_DECODED_BYTES`]
//! decoded; anything malformed (a bad frame sequence, HPACK that does not decode) ends the
//! connection with an error, as h2 would end it. DATA and all other frames are streamed
//! through without being held.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest header block (all its frames' fragments) held while it arrives.
pub const MAX_BLOCK_BYTES: usize = 64 << 10;
/// The most bytes a header block may decode to (names and values).
pub const MAX_DECODED_BYTES: usize = 256 << 10;
/// Frames written out are at most this long: SETTINGS_MAX_FRAME_SIZE's initial value, which
/// every HTTP/2 endpoint accepts.
const OUT_FRAME_BYTES: usize = 16_384;
/// The server's SETTINGS_HEADER_TABLE_SIZE (h2's default, which hyper keeps): the most the
/// client may size its HPACK table to.
const HEADER_TABLE_BYTES: usize = 4096;
/// How much is read from the connection at a time.
const READ_BYTES: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Not yet known whether the client speaks HTTP/2.
    Sniff,
    /// Not HTTP/2: every byte passes through.
    Plain,
    Http2,
}

/// A header block being gathered (HEADERS, then CONTINUATIONs until END_HEADERS).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A client connection whose HTTP/2 header blocks have their `:authority` made acceptable.
pub struct AuthorityFix<IO> {
    io: IO,
    mode: Mode,
    /// Read from the connection, not yet handled.
    input: BytesMut,
    /// Handled, for hyper to read.
    output: BytesMut,
    /// Bytes of the current frame's payload that pass through as they are.
    passing: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

fn malformed(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed HTTP/2 from the client: {}", what.into()))
}

/// The `:authority` to pass on for `value`: itself when it is one, the `host:port` of a URL,
/// `None` (left out) otherwise.
pub fn fixed_authority(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let valid = |v: &[u8]| !v.is_empty() && axum::http::uri::Authority::try_from(v).is_ok();
    if valid(value) {
        return Some(Cow::Borrowed(value));
    }
    let text = std::str::from_utf8(value).ok()?;
    let (_, rest) = text.split_once("://")?;
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or_default();
    valid(host_port.as_bytes()).then(|| Cow::Owned(host_port.as_bytes().to_vec()))
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2), with its 7-bit length prefix.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_integer(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn put_integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Decodes a header block and encodes it again with its `:authority` fixed, every field a
/// literal without indexing and with a new name (RFC 7541 §6.2.2), so nothing enters the
/// receiver's table.
fn rewrite(decoder: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut decoded = 0usize;
    let mut too_large = false;
    decoder
        .decode_with_cb(block, |name, value| {
            decoded = decoded.saturating_add(name.len() + value.len());
            if decoded > MAX_DECODED_BYTES {
                too_large = true;
                return;
            }
            let value = if name.as_ref() == b":authority" {
                match fixed_authority(&value) {
                    Some(v) => v.into_owned(),
                    None => return,
                }
            } else {
                value.into_owned()
            };
            out.push(0x00);
            put_string(&mut out, &name);
            put_string(&mut out, &value);
        })
        .map_err(|e| malformed(format!("a header block does not decode: {e:?}")))?;
    if too_large {
        return Err(malformed(format!("a header block decodes to more than {MAX_DECODED_BYTES} bytes")));
    }
    Ok(out)
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> AuthorityFix<IO> {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES);
        AuthorityFix {
            io,
            mode: Mode::Sniff,
            input: BytesMut::new(),
            output: BytesMut::new(),
            passing: 0,
            block: None,
            decoder,
            eof: false,
        }
    }

    /// Handles what `input` holds, moving what is ready to `output`.
    fn process(&mut self) -> io::Result<()> {
        // Bounded: each round consumes input or returns.
        loop {
            match self.mode {
                Mode::Sniff => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Plain;
                    } else if n == PREFACE.len() {
                        self.output.put(self.input.split_to(n));
                        self.mode = Mode::Http2;
                    } else {
                        return Ok(());
                    }
                }
                Mode::Plain => {
                    let all = self.input.split();
                    self.output.put(all);
                    return Ok(());
                }
                Mode::Http2 => {
                    if self.passing > 0 {
                        let n = self.passing.min(self.input.len());
                        self.output.put(self.input.split_to(n));
                        self.passing -= n;
                        if self.passing > 0 {
                            return Ok(());
                        }
                    }
                    if self.input.len() < FRAME_HEADER_BYTES {
                        return Ok(());
                    }
                    let h = &self.input[..FRAME_HEADER_BYTES];
                    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.is_some() {
                            return Err(malformed("a frame interrupts a header block"));
                        }
                        self.output.put(self.input.split_to(FRAME_HEADER_BYTES));
                        self.passing = len;
                        continue;
                    }
                    let gathered = self.block.as_ref().map_or(0, |b| b.fragment.len());
                    if gathered + len > MAX_BLOCK_BYTES {
                        return Err(malformed(format!("a header block of more than {MAX_BLOCK_BYTES} bytes")));
                    }
                    if self.input.len() < FRAME_HEADER_BYTES + len {
                        return Ok(());
                    }
                    let mut frame = self.input.split_to(FRAME_HEADER_BYTES + len);
                    frame.advance(FRAME_HEADER_BYTES);
                    self.header_frame(kind, flags, stream, &frame)?;
                }
            }
        }
    }

    /// One HEADERS or CONTINUATION frame's payload.
    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                if flags & PADDED != 0 {
                    let (&pad, rest) = body.split_first().ok_or_else(|| malformed("a padded HEADERS without length"))?;
                    let keep = rest.len().checked_sub(usize::from(pad)).ok_or_else(|| malformed("padding too long"))?;
                    body = &rest[..keep];
                }
                let priority = if flags & PRIORITY != 0 {
                    let fields: [u8; 5] = body
                        .get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| malformed("a HEADERS too short for its priority"))?;
                    body = &body[5..];
                    Some(fields)
                } else {
                    None
                };
                self.block =
                    Some(Block { stream, end_stream: flags & END_STREAM != 0, priority, fragment: body.to_vec() });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => block.fragment.extend_from_slice(payload),
            _ => return Err(malformed("a header block's frames out of order")),
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                let encoded = rewrite(&mut self.decoder, &block.fragment)?;
                self.emit(&block, &encoded);
            }
        }
        Ok(())
    }

    /// Writes a header block as HEADERS and CONTINUATION frames of at most `OUT_FRAME_BYTES`.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let first_room = OUT_FRAME_BYTES - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.frame_header(priority.len() + first.len(), HEADERS, flags, block.stream);
        self.output.put_slice(priority);
        self.output.put_slice(first);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(OUT_FRAME_BYTES));
            let flags = if after.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), CONTINUATION, flags, block.stream);
            self.output.put_slice(chunk);
            rest = after;
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        let len = len as u32;
        self.output.put_slice(&len.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bounded: each round hands bytes over, reads more, or returns.
        loop {
            if !this.output.is_empty() {
                let n = buf.remaining().min(this.output.len());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let direct = this.input.is_empty() && !this.eof;
            if direct && this.mode == Mode::Plain {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if direct && this.mode == Mode::Http2 && this.passing > 0 {
                // A frame's payload goes from the connection to hyper without a copy here.
                let room = buf.remaining().min(this.passing);
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
                let polled = Pin::new(&mut this.io).poll_read(cx, &mut limited);
                let n = limited.filled().len();
                if let Poll::Ready(Ok(())) = polled {
                    buf.advance(n);
                    this.passing -= n;
                }
                return polled;
            }
            if this.eof {
                // A cut frame goes on as it is: hyper reports the broken connection.
                let rest = this.input.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.output.put(rest);
                continue;
            }
            let mut chunk = [0u8; READ_BYTES];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(read.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
