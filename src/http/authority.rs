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
//! Only connections that need it pay for this: the first header block decides. When its
//! authority is acceptable as it is, that block and everything after it pass through untouched
//! (gRPC clients send one authority on a connection); decoding and re-encoding every block cost
//! the leader about a tenth of its CPU under etcd-client's load (perf, issue 15).
//!
//! Bounds: a header block is at most [`MAX_BLOCK_BYTES`] as sent and [`MAX_DECODED_BYTES`]
//! decoded; anything malformed (a bad frame sequence, HPACK that does not decode) ends the
//! connection with an error, as h2 would end it. DATA and all other frames are streamed
//! through without being held.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
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
    /// The frames as they came, for a block passed on unchanged.
    raw: Vec<u8>,
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
    /// A header block needed its authority changed: every block is re-encoded from then on.
    rewriting: bool,
    eof: bool,
}

/// A header block re-encoded, and whether its authority changed (fixed or dropped).
struct Rewritten {
    block: Vec<u8>,
    changed: bool,
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
fn rewrite(decoder: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> io::Result<Rewritten> {
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut decoded = 0usize;
    let mut too_large = false;
    let mut changed = false;
    decoder
        .decode_with_cb(block, |name, value| {
            decoded = decoded.saturating_add(name.len() + value.len());
            if decoded > MAX_DECODED_BYTES {
                too_large = true;
                return;
            }
            let value = if name.as_ref() == b":authority" {
                let fixed = fixed_authority(&value).map(Cow::into_owned);
                changed |= fixed.as_deref() != Some(value.as_ref());
                match fixed {
                    Some(v) => v,
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
    Ok(Rewritten { block: out, changed })
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
            rewriting: false,
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
                    let frame = self.input.split_to(FRAME_HEADER_BYTES + len);
                    self.header_frame(kind, flags, stream, &frame)?;
                }
            }
        }
    }

    /// One HEADERS or CONTINUATION frame (its header, then its payload).
    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, frame: &[u8]) -> io::Result<()> {
        let payload = &frame[FRAME_HEADER_BYTES..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                if flags & PADDED != 0 {
                    let (&pad, rest) =
                        body.split_first().ok_or_else(|| malformed("a padded HEADERS without length"))?;
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
                self.block = Some(Block {
                    raw: frame.to_vec(),
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: body.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.raw.extend_from_slice(frame);
                block.fragment.extend_from_slice(payload);
            }
            _ => return Err(malformed("a header block's frames out of order")),
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                let rewritten = rewrite(&mut self.decoder, &block.fragment)?;
                if rewritten.changed || self.rewriting {
                    // From the first change on, every block: hyper's HPACK table stays empty.
                    self.rewriting = true;
                    self.emit(&block, &rewritten.block);
                } else {
                    // The client's authorities need nothing: its bytes go on untouched, this
                    // block's and every later one's (hyper's HPACK table is the client's).
                    self.output.put_slice(&block.raw);
                    self.mode = Mode::Plain;
                }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// What came out of the layer: its frames (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= FRAME_HEADER_BYTES {
            let len = (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len].to_vec()));
            bytes = &bytes[FRAME_HEADER_BYTES + len..];
        }
        assert!(bytes.is_empty(), "whole frames only");
        out
    }

    fn through(input: &[u8]) -> io::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let mut out = Vec::new();
            AuthorityFix::new(input).read_to_end(&mut out).await?;
            Ok(out)
        })
    }

    fn headers<'a>(authority: &'a str, path: &'a str) -> Vec<(&'a [u8], &'a [u8])> {
        vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    }

    #[test]
    fn a_url_authority_becomes_its_host_and_port_and_no_authority_is_left_out() {
        let fixed = |v: &str| fixed_authority(v.as_bytes()).map(|a| String::from_utf8(a.into_owned()).unwrap());
        assert_eq!(fixed("127.0.0.1:2379").as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(fixed("etcd-0.etcd.default.svc:2379").as_deref(), Some("etcd-0.etcd.default.svc:2379"));
        assert_eq!(fixed("http://127.0.0.1:2379").as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(fixed("https://etcd-0:2379/").as_deref(), Some("etcd-0:2379"));
        assert_eq!(fixed("unix:///var/run/etcd.sock"), None);
        assert_eq!(fixed("/var/tmp/csi.sock"), None);
        assert_eq!(fixed(""), None);
    }

    /// An HTTP/2 connection as etcd's Go client opens it: the preface, SETTINGS, then requests
    /// whose header blocks name `http://host:port`, one split over HEADERS (padded, with a
    /// priority) and a CONTINUATION, the next encoded against the HPACK table the first filled.
    /// Out come the same frames, the same headers in the same order, the authority fixed, the
    /// DATA untouched, END_STREAM and the priority kept, and HPACK that a fresh decoder reads.
    #[test]
    fn header_blocks_come_out_with_the_authority_fixed_and_all_else_kept() {
        let mut encoder = loona_hpack::Encoder::new();
        let first = encoder.encode(headers("http://127.0.0.1:2379", "/etcdserverpb.KV/Range"));
        let second = encoder.encode(headers("http://127.0.0.1:2379", "/etcdserverpb.KV/Put"));
        assert!(second.len() < first.len(), "the second block refers to the table the first filled");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let (a, b) = first.split_at(first.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0x80, 0, 0, 0, 15]); // priority: exclusive, on 0, weight 15
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, b"\x00\x00\x00\x00\x02hi")); // DATA
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let out = through(&input).expect("passes");
        assert!(out.starts_with(PREFACE));
        let got = frames(&out[PREFACE.len()..]);
        assert_eq!(
            got.iter().map(|f| (f.0, f.1, f.2)).collect::<Vec<_>>(),
            [
                (0x4, 0, 0),
                (HEADERS, PRIORITY | END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_HEADERS | END_STREAM, 3)
            ]
        );
        assert_eq!(got[0].3, [0, 3, 0, 0, 0, 100]);
        assert_eq!(&got[1].3[..5], &[0x80, 0, 0, 0, 15]);
        assert_eq!(got[2].3, b"\x00\x00\x00\x00\x02hi");
        let mut decoder = loona_hpack::Decoder::new();
        for (block, path) in [(&got[1].3[5..], "/etcdserverpb.KV/Range"), (&got[3].3[..], "/etcdserverpb.KV/Put")] {
            let decoded = decoder.decode(block).expect("valid HPACK");
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                headers("127.0.0.1:2379", path).into_iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            assert_eq!(decoded, expected);
        }
    }

    /// A connection whose first request names a proper authority passes through byte for byte,
    /// that block and every later one (which then is not looked at).
    #[test]
    fn a_connection_that_needs_nothing_passes_through_untouched() {
        let mut encoder = loona_hpack::Encoder::new();
        let first = encoder.encode(headers("127.0.0.1:2379", "/etcdserverpb.KV/Range"));
        let second = encoder.encode(headers("127.0.0.1:2379", "/etcdserverpb.KV/Put"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(HEADERS, 0, 1, &first[..4]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &first[4..]));
        input.extend(frame(0x0, END_STREAM, 1, b"\x00\x00\x00\x00\x00"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        assert_eq!(through(&input).expect("passes"), input);
    }

    /// Anything that does not open with HTTP/2's preface (HTTP/1.1, which the JSON API and the
    /// peer port speak) passes through byte for byte.
    #[test]
    fn http1_passes_through_untouched() {
        for request in [
            &b"POST /raft/v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"[..],
            b"GET /v1/status HTTP/1.1\r\n\r\n",
            b"PRX",
            b"",
        ] {
            assert_eq!(through(request).expect("passes"), request);
        }
    }

    /// A long header block is written back in frames of at most 16 KiB; one over the limit, or
    /// HPACK that does not decode, or frames out of order, end the connection with an error.
    #[test]
    fn long_blocks_are_split_and_malformed_ones_end_the_connection() {
        let long = "v".repeat(40 << 10);
        let mut encoder = loona_hpack::Encoder::new();
        let mut list = headers("http://a:1", "/p");
        list.push((b"x-long", long.as_bytes()));
        let block = encoder.encode(list);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block[..16_000]));
        input.extend(frame(CONTINUATION, 0, 1, &block[16_000..32_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[32_000..]));
        let got = frames(&through(&input).expect("passes")[PREFACE.len()..]);
        assert!(got.len() >= 3 && got.iter().all(|f| f.3.len() <= OUT_FRAME_BYTES), "{}", got.len());
        assert_eq!(got.last().map(|f| f.1 & END_HEADERS), Some(END_HEADERS));

        let malformed = [
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // no such index
            frame(CONTINUATION, END_HEADERS, 1, b"x"),                             // no HEADERS before
            [frame(HEADERS, 0, 1, b"\x82"), frame(0x0, 0, 1, b"")].concat(),       // DATA inside a block
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),                   // padding too long
            [frame(HEADERS, 0, 1, &vec![0x82; 40_000]), frame(CONTINUATION, 0, 1, &vec![0x82; 40_000])].concat(),
        ];
        for bad in malformed {
            let mut input = PREFACE.to_vec();
            input.extend(bad);
            assert_eq!(through(&input).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        }
    }

    /// Random bytes after the preface never panic the layer, and never make it hold more than
    /// its bounds (every run ends, with an answer or an error).
    #[test]
    fn random_input_never_panics() {
        let mut rng = crate::base::rng::Rng::new(15);
        for _ in 0..2000 {
            let mut input = PREFACE.to_vec();
            let len = rng.range(0, 300) as usize;
            for _ in 0..len {
                input.push(rng.range(0, 256) as u8);
            }
            // A well-formed frame header with a random block, sometimes.
            if rng.chance(0.5) {
                let block: Vec<u8> = (0..rng.range(0, 64)).map(|_| rng.range(0, 256) as u8).collect();
                input.extend(frame(HEADERS, END_HEADERS, 1, &block));
            }
            let _ = through(&input);
        }
    }
}
