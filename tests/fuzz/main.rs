//! Fuzzing of a real 3-member cluster from outside (issue 4): random requests to the client
//! API (methods, paths built from the real routes with junk segments, query strings, headers,
//! bodies; etcd-shaped ranges, txns, compactions and watches, whole or mutated; of a watch that
//! streams, the head and first answer are read) and random or mutated
//! message batches to the peer port.
//!
//! Every answer must be a status DESIGN.md §4 allows (nothing 5xx but 503 and 504), every
//! client API error the JSON error shape, a rejected request must change nothing, and the
//! members must survive with their acknowledged data. Requests are written by hand on a TCP
//! connection, so that paths reach the server exactly as generated (an HTTP client library
//! would normalise `..` and re-encode). They stay valid HTTP/1.1 (token methods, URI
//! characters, visible header values): hyper refuses malformed messages before any route, with
//! an empty 400 no conforming client can cause. Seeded and bounded: `FUZZ_REQUESTS` (default
//! 1500, and a third of that in peer batches), `FUZZ_SEED` to replay. The same fuzz runs once
//! more against a cluster with TLS on both ports (issue 16), through proxies that carry the
//! hand-written bytes inside TLS.

#[allow(dead_code)]
#[path = "../cluster/harness.rs"]
mod harness;
#[path = "../support/http.rs"]
mod http_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{issued_files, wait_for, Cluster, CLIENT_PORT, PEER_PORT};
use kuberaft::base::base64::encode_base64;
use kuberaft::base::pki::Authority;
use kuberaft::base::rng::Rng;
use kuberaft::base::tls::caller_config;
use kuberaft::base::wire::kv::{DeleteRangeRequest, RequestOp, TxnRequest};
use kuberaft::base::wire::{
    max_txn_request_bytes, parse_id, AddMemberRequest, TransferRequest, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES,
    MAX_MEMBER_REQUEST_BYTES, MAX_TRANSFER_REQUEST_BYTES,
};
use kuberaft::node::transport::{decode_messages, encode_messages, WireFormat, PEER_CONTENT_TYPE};
use kuberaft::raft::{ConfState, Entry, EntryPayload, Message, MessageBody, RejectHint, Snapshot, SnapshotMeta};
use kuberaft::store::command::{encode, Command};
use serde_json::Value;

/// The 127.<NET>.0.0/16 block of this binary's cluster.
const NET: u8 = 47;
/// The block of its cluster with TLS (members at 127.<NET_TLS>.0.x, proxies at .1.x and up).
const NET_TLS: u8 = 48;
const ELECTION: Duration = Duration::from_secs(15);
const DEFAULT_REQUESTS: u64 = 1500;
const DEFAULT_SEED: u64 = 4;
/// Keys written before the fuzz, read back after it; the fuzz never names them.
const PRECIOUS_KEYS: usize = 8;
const PRECIOUS_PREFIX: &str = "precious-";
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

fn requests() -> u64 {
    std::env::var("FUZZ_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_REQUESTS)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED)
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.range(0, items.len() as u64) as usize]
}

fn random_bytes(rng: &mut Rng, max_len: u64) -> Vec<u8> {
    let len = rng.range(0, max_len + 1) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Every byte outside RFC 3986's unreserved set as %XX (what a careful client sends).
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(*b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ----- a raw HTTP/1.1 exchange -----

struct RawRequest {
    method: String,
    /// Path and query, exactly as sent.
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
}

impl RawRequest {
    fn new(method: &str, target: String) -> RawRequest {
        RawRequest { method: method.to_string(), target, headers: Vec::new(), body: Vec::new(), chunked: false }
    }

    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nhost: {host}\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in self.body.chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// One line for failure messages.
    fn describe(&self) -> String {
        let mut target = self.target.clone();
        if target.len() > 200 {
            target = format!("{}...({} bytes)", &target[..200], self.target.len());
        }
        let headers: Vec<String> = self.headers.iter().map(|(n, v)| format!("{n}({} bytes)", v.len())).collect();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(120)]).into_owned();
        format!(
            "{} {target} headers [{}] body {} bytes{} {body:?}",
            self.method,
            headers.join(", "),
            self.body.len(),
            if self.chunked { " (chunked)" } else { "" }
        )
    }
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("a chunk size line is cut off")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("a chunk is cut off")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("a chunk's end is cut off")?;
    }
}

/// Sends one request on a fresh connection and reads one response, framed by its
/// content-length or chunked encoding, as a keep-alive client does. The request is written by
/// another thread: a server may answer before it read the body (a body over a limit, or one a
/// route ignores), and neither side must wait for the other.
fn exchange(addr: SocketAddr, request: &RawRequest) -> Result<RawResponse, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(RESPONSE_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let bytes = request.bytes(&addr.to_string());
    let write = std::thread::spawn(move || writer.write_all(&bytes));
    let response = read_response(&stream, request.method == "HEAD");
    let _ = stream.shutdown(Shutdown::Both);
    let write_result = write.join().map_err(|_| "the writer panicked".to_string())?;
    response.map_err(|e| format!("{e} (write: {write_result:?})"))
}

/// Where the fuzz sends its bytes.
struct Targets {
    /// Each member's client port (or the proxy in front of it).
    client: Vec<SocketAddr>,
    /// `peer[member][sender]`: member's peer port, reached as member `sender` (with TLS, a proxy
    /// that presents that member's certificate; without, the port itself for every sender).
    peer: Vec<Vec<SocketAddr>>,
    tls: bool,
}

impl Targets {
    fn plain(c: &Cluster) -> Targets {
        let port = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().expect("address") };
        let n = c.members.len();
        Targets {
            client: c.members.iter().map(|m| port(&m.ip, CLIENT_PORT)).collect(),
            peer: c.members.iter().map(|m| vec![port(&m.ip, PEER_PORT); n]).collect(),
            tls: false,
        }
    }

    fn label(&self) -> &'static str {
        if self.tls {
            " with TLS"
        } else {
            ""
        }
    }
}

/// Plain TCP listeners, each in front of one member's port: every connection is carried to the
/// member inside TLS, with a client certificate. The listeners live on the proxy's own runtime,
/// and end with it (when the test drops the proxies).
struct TlsProxies {
    targets: Targets,
    _runtime: tokio::runtime::Runtime,
}

impl TlsProxies {
    /// Listens on 127.<NET_TLS>.<1 + k>.<member + 1>: k = 0 for the client ports (as `client`);
    /// k = 1 + s for the peer ports, presenting `peers[s]`, member s's certificate and key.
    fn start(c: &Cluster, ca: &Path, client: rustls::ClientConfig, peers: &[(PathBuf, PathBuf)]) -> TlsProxies {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("proxy runtime");
        let listen = |block: usize, member: usize| -> SocketAddr {
            format!("127.{NET_TLS}.{}.{}:10000", block + 1, member + 1).parse().expect("address")
        };
        let member_port = |member: usize, port: u16| -> SocketAddr {
            format!("{}:{port}", c.members[member].ip).parse().expect("address")
        };
        let client = Arc::new(client);
        let mut targets = Targets { client: Vec::new(), peer: Vec::new(), tls: true };
        for member in 0..c.members.len() {
            let at = listen(0, member);
            proxy(&runtime, at, member_port(member, CLIENT_PORT), client.clone());
            targets.client.push(at);
            let mut as_senders = Vec::new();
            for (sender, (cert, key)) in peers.iter().enumerate() {
                let config = caller_config(ca, Some((cert, key)), &[b"http/1.1"]).expect("peer TLS");
                let at = listen(1 + sender, member);
                proxy(&runtime, at, member_port(member, PEER_PORT), Arc::new(config));
                as_senders.push(at);
            }
            targets.peer.push(as_senders);
        }
        TlsProxies { targets, _runtime: runtime }
    }
}

/// Carries every connection to `listen` to `target` inside TLS (the target's IP as its name).
fn proxy(runtime: &tokio::runtime::Runtime, listen: SocketAddr, target: SocketAddr, config: Arc<rustls::ClientConfig>) {
    use tokio::io::AsyncWriteExt;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen)).expect("bind a proxy");
    runtime.spawn(async move {
        let connector = tokio_rustls::TlsConnector::from(config);
        while let Ok((mut inbound, _)) = listener.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
                let Ok(outbound) = connector.connect(name, outbound).await else { return };
                let (mut from_client, mut to_client) = inbound.split();
                let (mut from_member, mut to_member) = tokio::io::split(outbound);
                let up = async {
                    if tokio::io::copy(&mut from_client, &mut to_member).await.is_err() {
                        // The member answered and closed before it read the whole request (a
                        // 413): read the rest, as the member's own socket would have, so that
                        // closing does not reset the connection before the answer is read.
                        let mut sink = tokio::io::sink();
                        let rest = tokio::io::copy(&mut from_client, &mut sink);
                        let _ = tokio::time::timeout(RESPONSE_TIMEOUT, rest).await;
                    }
                    let _ = to_member.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut from_member, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
}

/// `exchange` for a watch: a stream that answers 200 goes on for as long as it is read, so
/// only its head and first answer are read (each line must be a JSON object), then the
/// connection is closed; anything else is read whole.
fn exchange_first_answer(addr: SocketAddr, request: &RawRequest) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(|e| e.to_string())?;
    if let Err(e) = stream.write_all(&request.bytes(&addr.to_string())) {
        // A member may answer (413, 400) and close before it read a large body; `exchange`
        // reads while it writes. A watch request changes nothing, so asking again is harmless.
        drop(stream);
        return exchange(addr, request).map_err(|again| format!("write: {e}; asked again: {again}"));
    }
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Bounded: every read waits at most RESPONSE_TIMEOUT, and an answer is a few KiB.
    let mut head_seen = false;
    let response = loop {
        let n = match stream.read(&mut buffer) {
            Ok(n) => n,
            // A stream whose requests ask for no answer (a cancel of an unknown watch, say).
            Err(_) if head_seen => break RawResponse { status: 200, headers: Vec::new(), body: Vec::new() },
            Err(e) => return Err(format!("read after {} bytes: {e}", raw.len())),
        };
        raw.extend_from_slice(&buffer[..n]);
        let Some(head_end) = find(&raw, b"\r\n\r\n") else {
            if n == 0 {
                return Err(format!("no complete response head ({} bytes)", raw.len()));
            }
            continue;
        };
        if !raw.starts_with(b"HTTP/1.1 200") {
            drop(stream);
            return exchange(addr, request);
        }
        if !head_seen {
            head_seen = true;
            stream.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
        }
        let body = &raw[head_end + 4..];
        if let Some(line_end) = find(body, b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap_or("x").trim(), 16)
                .map_err(|e| format!("chunk size: {e}"))?;
            if let Some(chunk) = body.get(line_end + 2..line_end + 2 + size) {
                break RawResponse { status: 200, headers: Vec::new(), body: chunk.to_vec() };
            }
        }
        if n == 0 {
            return Err("the stream ended before its first answer".into());
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    for line in response.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let answer: Value =
            serde_json::from_slice(line).map_err(|e| format!("a watch answer that is not JSON ({e})"))?;
        if !answer["header"].is_object() {
            return Err(format!("a watch answer without a header: {answer}"));
        }
    }
    Ok(response)
}

fn read_response(mut stream: &TcpStream, head_only: bool) -> Result<RawResponse, String> {
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Reads more; false at the end of the stream.
    let mut fill = |raw: &mut Vec<u8>| -> Result<bool, String> {
        let n = stream.read(&mut buffer).map_err(|e| format!("read after {} bytes: {e}", raw.len()))?;
        raw.extend_from_slice(&buffer[..n]);
        Ok(n > 0)
    };
    let head_end = loop {
        if let Some(at) = find(&raw, b"\r\n\r\n") {
            break at;
        }
        if !fill(&mut raw)? {
            return Err(format!("no complete response head ({} bytes)", raw.len()));
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = RawResponse { status, headers, body: Vec::new() };
    let start = head_end + 4;
    if head_only || status == 204 || status == 304 {
        return Ok(response);
    }
    if response.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        response.body = loop {
            if let Ok(body) = dechunk(&raw[start..]) {
                break body;
            }
            if !fill(&mut raw)? {
                return Err(format!("chunked body cut off: {}", dechunk(&raw[start..]).err().unwrap_or_default()));
            }
        };
    } else if let Some(len) = response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while raw.len() < start + len {
            if !fill(&mut raw)? {
                return Err(format!("body cut off at {} of {len} bytes", raw.len() - start));
            }
        }
        response.body = raw[start..start + len].to_vec();
    } else {
        while fill(&mut raw)? {}
        response.body = raw[start..].to_vec();
    }
    Ok(response)
}

// ----- what the cluster looks like -----

/// What a rejected request must not change, as the leader sees it once it applied everything.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    revision: u64,
    membership_hash: String,
    /// (id, name, peerURL, voter)
    members: Vec<(String, String, String, bool)>,
}

/// The cluster as its leader sees it, once the leader applied what it committed and what any
/// member applied: a follower answers a write it placed from its own apply, which may come
/// before the leader's (`node::forward`).
fn observe(c: &Cluster) -> Observed {
    wait_for("a leader that applied what it committed and what any member applied", ELECTION, || {
        let statuses: Vec<Value> = (0..c.members.len()).filter_map(|i| c.status(i)).collect();
        let applied_anywhere = statuses.iter().filter_map(|s| s["appliedIndex"].as_u64()).max()?;
        statuses.iter().find_map(|s| {
            if s["role"] != "leader"
                || s["appliedIndex"] != s["commitIndex"]
                || s["appliedIndex"].as_u64()? < applied_anywhere
            {
                return None;
            }
            let members = s["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    Some((
                        m["id"].as_str()?.to_string(),
                        m["name"].as_str()?.to_string(),
                        m["peerURL"].as_str()?.to_string(),
                        m["voter"].as_bool()?,
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Observed {
                revision: s["revision"].as_u64()?,
                membership_hash: s["membershipHash"].as_str()?.to_string(),
                members,
            })
        })
    })
}

/// Every member answers /healthz (and /readyz within the contract, ready or not), agrees on
/// one leader, and serves every precious key with its value, linearizably.
fn check_survivors(c: &Cluster, to: &Targets, phase: &str) -> (usize, u64) {
    for (i, m) in c.members.iter().enumerate() {
        let health = c.http.get(format!("{}/healthz", m.client_url())).send().map(|r| r.status().as_u16());
        assert_eq!(health.ok(), Some(200), "{} answers /healthz after the {phase}\n{}", m.name, c.log_tail(i));
        let request = RawRequest::new("GET", "/readyz".to_string());
        let ready = exchange(to.client[i], &request).unwrap_or_else(|e| panic!("/readyz of {}: {e}", m.name));
        check_response(&request, &ready).unwrap_or_else(|e| panic!("/readyz of {} after the {phase}: {e}", m.name));
    }
    let (leader, term) = c.wait_leader(ELECTION);
    for reader in 0..c.members.len() {
        for k in 0..PRECIOUS_KEYS {
            let key = format!("{PRECIOUS_PREFIX}{k}");
            let read = wait_for(&format!("a linearizable read of {key} after the {phase}"), ELECTION, || {
                let (code, body) = c.get(reader, &key, "linearizable");
                (code != 503).then_some((code, body))
            });
            assert_eq!(read, (200, format!("value-{k}")), "{key} through {} after the {phase}", c.members[reader].name);
        }
    }
    (leader, term)
}

// ----- the client API fuzz -----

struct Ids {
    /// Real member ids (hex).
    members: Vec<String>,
    names: Vec<String>,
}

fn random_id(rng: &mut Rng, ids: &Ids) -> String {
    match rng.range(0, 8) {
        0 | 1 => pick(rng, &ids.members).clone(),
        2 => format!("{:x}", rng.next_u64()),
        3 => pick(rng, &["0", "", "zz", "-1", "1ffffffffffffffff", "%00", "%FF", "0x12", "%201"]).to_string(),
        4 => percent_encode(&random_bytes(rng, 20)),
        _ => format!("{:x}", rng.range(1, 1 << 20)),
    }
}

/// A key segment: ordinary, long, dot segments, empty, unicode, encoded slashes, raw
/// sub-delimiters, broken or invalid-UTF-8 percent escapes, several segments.
fn random_key(rng: &mut Rng) -> String {
    let key = match rng.range(0, 14) {
        0..=2 => format!("fuzz-{}", rng.range(0, 40)),
        3 => percent_encode(&random_bytes(rng, 40)),
        4 => "k".repeat(*pick(rng, &[MAX_KEY_BYTES, MAX_KEY_BYTES + 1, 4 * MAX_KEY_BYTES])),
        5 => pick(rng, &["..", ".", "%2e%2e", "%2E", ".%2E"]).to_string(),
        6 => String::new(),
        7 => percent_encode(pick(rng, &["ключ", "🔑", "日本語", "a\0b", "\u{feff}", "e\u{301}", " "]).as_bytes()),
        8 => pick(rng, &["a%2Fb", "%2F", "%2F%2F..%2F", "a/b", "a/b/c", "a//b", "a/"]).to_string(),
        9 => pick(rng, &["!$&'()*+,;=:@~", "a:b", "@", "a;b=c", "(x)"]).to_string(),
        10 => pick(rng, &["%zz", "%", "%F", "%C3%28", "%FF%FE", "%ED%A0%80", "%C0%AF", "a%00"]).to_string(),
        11 => percent_encode(&random_bytes(rng, 8)).repeat(rng.range(1, 200) as usize),
        _ => format!("fuzz-{}", percent_encode(&random_bytes(rng, 6))),
    };
    // The fuzz never touches the keys it checks afterwards.
    if key.starts_with(PRECIOUS_PREFIX) {
        format!("x{key}")
    } else {
        key
    }
}

fn random_query(rng: &mut Rng) -> String {
    let mut params: Vec<String> = Vec::new();
    for _ in 0..rng.range(0, 5) {
        let param = match rng.range(0, 8) {
            0 => format!(
                "prevRevision={}",
                pick(
                    rng,
                    &[
                        "",
                        "abc",
                        "-1",
                        "0",
                        "1",
                        "2",
                        "18446744073709551615",
                        "18446744073709551616",
                        "1e3",
                        "%00",
                        "+5"
                    ]
                )
            ),
            1 => format!(
                "consistency={}",
                pick(rng, &["linearizable", "serializable", "", "LINEARIZABLE", "stale", "%FF", "serializable%00"])
            ),
            2 => format!(
                "limit={}",
                pick(rng, &["0", "1", "3", "10000", "10001", "-5", "abc", "99999999999999999999999", "", "1.5"])
            ),
            3 => format!("prefix={}", percent_encode(&random_bytes(rng, 12))),
            4 => format!("prefix={}", pick(rng, &["fuzz-", "", "%FF", "precious", "%00", "a%2Fb"])),
            5 => pick(rng, &["=", "&&", "x", "%zz=%zz", "a=b=c", "limit", "prevRevision", "%FF=1"]).to_string(),
            6 => format!("{}={}", percent_encode(&random_bytes(rng, 6)), percent_encode(&random_bytes(rng, 6))),
            _ => format!("junk{}=1", rng.range(0, 3)),
        };
        params.push(param);
    }
    if params.is_empty() && rng.chance(0.5) {
        return "?".to_string();
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// Which route a request aims at, for the body it gets and for deciding what it may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aim {
    KvList,
    Key,
    Status,
    Members,
    Member,
    Promote,
    Transfer,
    Probe,
    /// `POST /v1/range`, `/v1/txn`, `/v1/compact`.
    Range,
    Txn,
    Compact,
    /// `POST /v1/watch`: a stream, of which the head and first answer are read.
    Watch,
    Nowhere,
}

fn random_path(rng: &mut Rng, ids: &Ids) -> (Aim, String) {
    match rng.range(0, 25) {
        0 | 1 => (Aim::KvList, "/v1/kv".to_string()),
        2..=7 => (Aim::Key, format!("/v1/kv/{}", random_key(rng))),
        8 => (Aim::Status, "/v1/status".to_string()),
        9 | 10 => (Aim::Members, "/v1/members".to_string()),
        11 | 12 => (Aim::Member, format!("/v1/members/{}", random_id(rng, ids))),
        13 => (Aim::Promote, format!("/v1/members/{}/promote", random_id(rng, ids))),
        14 | 15 => (Aim::Transfer, "/v1/leader/transfer".to_string()),
        16 => (Aim::Probe, pick(rng, &["/healthz", "/readyz", "/metrics"]).to_string()),
        17 => (Aim::Range, "/v1/range".to_string()),
        18 | 19 => (Aim::Txn, "/v1/txn".to_string()),
        20 => (Aim::Compact, "/v1/compact".to_string()),
        21 => (Aim::Watch, "/v1/watch".to_string()),
        _ => {
            let junk = [
                "/".to_string(),
                "/v1".to_string(),
                "/v1/".to_string(),
                "/v1/kv/".to_string(),
                "/v2/kv/a".to_string(),
                "/raft/v1/messages".to_string(),
                "//v1/kv/a".to_string(),
                "/V1/KV/a".to_string(),
                format!("/v1/kv/{}/{}", random_key(rng), random_key(rng)),
                format!("/v1/members/{}/demote", random_id(rng, ids)),
                "/v1/leader".to_string(),
                "/v1/status/".to_string(),
                "/v1/kv/../status".to_string(),
                "/healthz/..".to_string(),
                format!("/{}", percent_encode(&random_bytes(rng, 30))),
            ];
            (Aim::Nowhere, pick(rng, &junk).clone())
        }
    }
}

/// Mostly a method the route serves (to get past routing), otherwise anything, garbage included.
fn random_method(rng: &mut Rng, aim: Aim) -> String {
    let served: &[&str] = match aim {
        Aim::KvList | Aim::Status | Aim::Probe => &["GET", "HEAD"],
        Aim::Key => &["GET", "PUT", "DELETE", "HEAD"],
        Aim::Members => &["GET", "POST"],
        Aim::Member => &["DELETE"],
        Aim::Promote | Aim::Transfer | Aim::Range | Aim::Txn | Aim::Compact | Aim::Watch => &["POST"],
        Aim::Nowhere => &["GET", "PUT"],
    };
    if rng.chance(0.6) {
        return pick(rng, served).to_string();
    }
    let method = match rng.range(0, 20) {
        0..=5 => "GET",
        6..=9 => "PUT",
        10 | 11 => "DELETE",
        12..=14 => "POST",
        15 => "HEAD",
        16 => "PATCH",
        17 => "OPTIONS",
        _ => pick(rng, &["get", "FOO", "PROPFIND", "TRACE", "G3T", "X-Y~Z!", "BREW", "M-SEARCH", "LINK"]),
    };
    method.to_string()
}

fn member_body(rng: &mut Rng, ids: &Ids) -> Vec<u8> {
    let name = match rng.range(0, 4) {
        0 => pick(rng, &ids.names).clone(),
        1 => String::new(),
        2 => " ".to_string(),
        _ => format!("fuzz-member-{}", rng.range(0, 100)),
    };
    let url = |rng: &mut Rng| -> Value {
        match rng.range(0, 6) {
            0 => Value::from(format!("http://127.{NET}.9.{}:{}", rng.range(1, 255), rng.range(1, 70000))),
            1 => Value::from(
                pick(rng, &["", "https://x:1", "http://", "http://:80", "http://a/b:1", "ftp://x"]).to_string(),
            ),
            2 => Value::from(rng.next_u64()),
            3 => Value::Null,
            _ => Value::from(format!("http://fuzz{}.example:2380", rng.range(0, 9))),
        }
    };
    let mut body =
        serde_json::json!({ "name": name, "peerURL": url(rng), "clientURL": url(rng), "learner": rng.chance(0.5) });
    if rng.chance(0.3) {
        if let Some(obj) = body.as_object_mut() {
            let field = pick(rng, &["name", "peerURL", "clientURL", "learner"]).to_string();
            match rng.range(0, 3) {
                0 => drop(obj.remove(&field)),
                1 => drop(obj.insert(field, Value::from(vec![1, 2]))),
                _ => drop(obj.insert("extra".into(), Value::from("x"))),
            }
        }
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

// ----- etcd-shaped bodies -----

/// A key field (`key` or `keyBase64`, or another byte field): mostly a fuzz key, sometimes
/// empty, too long, non-UTF-8 base64, invalid base64 or absent.
fn etcd_bytes(rng: &mut Rng, obj: &mut serde_json::Map<String, Value>, name: &str) {
    match rng.range(0, 10) {
        0..=5 => drop(obj.insert(name.into(), Value::from(format!("fuzz-{}", rng.range(0, 40))))),
        6 => {
            let mut bytes = b"fuzz-".to_vec();
            bytes.extend(random_bytes(rng, 8));
            obj.insert(format!("{name}Base64"), Value::from(encode_base64(&bytes)));
        }
        7 => drop(obj.insert(name.into(), Value::from(pick(rng, &["", "fuzz-\u{0}", "ключ", "%%%"]).to_string()))),
        8 => drop(obj.insert(name.into(), Value::from(format!("fuzz-{}", "k".repeat(MAX_KEY_BYTES))))),
        _ => {}
    }
}

fn etcd_number(rng: &mut Rng) -> Value {
    Value::from(*pick(rng, &[-1i64, 0, 1, 2, 3, 5, 40, 1_000_000, i64::MAX, i64::MIN]))
}

/// Where a range, delete or compare ends: one key, up to another fuzz key, a prefix, from a key.
fn etcd_span(rng: &mut Rng, obj: &mut serde_json::Map<String, Value>) {
    etcd_bytes(rng, obj, "key");
    match rng.range(0, 5) {
        0 => drop(obj.insert("rangeEnd".into(), Value::from(format!("fuzz-{}", rng.range(0, 40))))),
        1 => drop(obj.insert("prefix".into(), Value::from(true))),
        2 => drop(obj.insert("fromKey".into(), Value::from(true))),
        _ => {}
    }
}

fn etcd_range(rng: &mut Rng) -> Value {
    let mut obj = serde_json::Map::new();
    etcd_span(rng, &mut obj);
    let fields = ["limit", "revision", "minModRevision", "maxModRevision", "minCreateRevision", "maxCreateRevision"];
    for _ in 0..rng.range(0, 4) {
        obj.insert(pick(rng, &fields).to_string(), etcd_number(rng));
    }
    for flag in ["keysOnly", "countOnly", "serializable"] {
        if rng.chance(0.2) {
            obj.insert(flag.into(), Value::from(true));
        }
    }
    if rng.chance(0.4) {
        obj.insert("sortOrder".into(), Value::from(*pick(rng, &["NONE", "ASCEND", "DESCEND", "UP"])));
    }
    if rng.chance(0.4) {
        obj.insert("sortTarget".into(), Value::from(*pick(rng, &["KEY", "VERSION", "CREATE", "MOD", "VALUE", "key"])));
    }
    Value::Object(obj)
}

fn etcd_op(rng: &mut Rng, depth: u32) -> Value {
    match rng.range(0, if depth < 2 { 7 } else { 6 }) {
        0 | 1 => serde_json::json!({ "requestRange": etcd_range(rng) }),
        2..=4 => {
            let mut put = serde_json::Map::new();
            etcd_bytes(rng, &mut put, "key");
            etcd_bytes(rng, &mut put, "value");
            for flag in ["prevKv", "ignoreValue", "ignoreLease"] {
                if rng.chance(0.15) {
                    put.insert(flag.into(), Value::from(true));
                }
            }
            if rng.chance(0.1) {
                put.insert("lease".into(), etcd_number(rng));
            }
            serde_json::json!({ "requestPut": put })
        }
        5 => {
            let mut delete = serde_json::Map::new();
            etcd_span(rng, &mut delete);
            if rng.chance(0.5) {
                delete.insert("prevKv".into(), Value::from(true));
            }
            serde_json::json!({ "requestDeleteRange": delete })
        }
        _ => serde_json::json!({ "requestTxn": etcd_txn(rng, depth + 1) }),
    }
}

fn etcd_txn(rng: &mut Rng, depth: u32) -> Value {
    let targets = [("VERSION", "version"), ("CREATE", "createRevision"), ("MOD", "modRevision"), ("LEASE", "lease")];
    let compare: Vec<Value> = (0..rng.range(0, 3))
        .map(|_| {
            let mut c = serde_json::Map::new();
            etcd_span(rng, &mut c);
            c.insert("result".into(), Value::from(*pick(rng, &["EQUAL", "GREATER", "LESS", "NOT_EQUAL", "SAME"])));
            if rng.chance(0.3) {
                c.insert("target".into(), Value::from("VALUE"));
                etcd_bytes(rng, &mut c, "value");
            } else {
                let (target, operand) = *pick(rng, &targets);
                c.insert("target".into(), Value::from(target));
                // Mostly the operand the target names, sometimes another one.
                let (_, operand) = if rng.chance(0.85) { (target, operand) } else { *pick(rng, &targets) };
                c.insert(operand.into(), etcd_number(rng));
            }
            Value::Object(c)
        })
        .collect();
    let ops = |rng: &mut Rng| -> Vec<Value> {
        let count = if rng.chance(0.02) { 130 } else { rng.range(0, 5) };
        (0..count).map(|_| etcd_op(rng, depth)).collect()
    };
    serde_json::json!({ "compare": compare, "success": ops(rng), "failure": ops(rng) })
}

/// A watch request (mostly a create: every field, some wrong), or one of the others.
fn etcd_watch(rng: &mut Rng) -> Value {
    match rng.range(0, 10) {
        0 => serde_json::json!({"cancelRequest": {"watchId": etcd_number(rng)}}),
        1 => serde_json::json!({"progressRequest": {}}),
        _ => {
            let mut c = serde_json::Map::new();
            etcd_span(rng, &mut c);
            for (field, value) in [
                ("startRevision", etcd_number(rng)),
                ("watchId", etcd_number(rng)),
                ("prevKv", Value::from(true)),
                ("progressNotify", Value::from(true)),
                ("fragment", Value::from(true)),
                ("filters", Value::from(vec![*pick(rng, &["NOPUT", "NODELETE", "NOTHING"])])),
            ] {
                if rng.chance(0.3) {
                    c.insert(field.into(), value);
                }
            }
            serde_json::json!({"createRequest": c})
        }
    }
}

/// An etcd-shaped body for `aim`, well-formed or mutated: a field dropped, an unknown field
/// added, a field of the wrong type, or the text cut short.
fn etcd_body(rng: &mut Rng, aim: Aim) -> Vec<u8> {
    let mut value = match aim {
        Aim::Range => etcd_range(rng),
        Aim::Txn => etcd_txn(rng, 0),
        Aim::Watch => etcd_watch(rng),
        _ => {
            let mut obj = serde_json::Map::new();
            if rng.chance(0.9) {
                obj.insert("revision".into(), etcd_number(rng));
            }
            if rng.chance(0.2) {
                obj.insert("physical".into(), Value::from(true));
            }
            Value::Object(obj)
        }
    };
    if rng.chance(0.25) {
        if let Some(obj) = value.as_object_mut() {
            let fields: Vec<String> = obj.keys().cloned().collect();
            match rng.range(0, 3) {
                0 if !fields.is_empty() => drop(obj.remove(pick(rng, &fields))),
                1 if !fields.is_empty() => {
                    let field = pick(rng, &fields).clone();
                    obj.insert(
                        field,
                        pick(rng, &[Value::Null, Value::from(5), Value::from("x"), Value::from(vec![1])]).clone(),
                    );
                }
                _ => drop(obj.insert("bogus".into(), Value::from(1))),
            }
        }
    }
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    if rng.chance(0.05) {
        bytes.truncate(rng.range(0, bytes.len() as u64) as usize);
    }
    bytes
}

/// A txn's delete that could reach past the fuzz keys (the checked precious keys among them):
/// anything but a text `fuzz-` key up to another text `fuzz` key or as a prefix.
fn unsafe_delete(delete: &DeleteRangeRequest) -> bool {
    let fuzz = |text: &Option<String>| text.as_deref().is_some_and(|t| t.starts_with("fuzz"));
    let key_ok = fuzz(&delete.key) && delete.key_base64.is_none();
    let end_ok = delete.range_end_base64.is_none() && (delete.range_end.is_none() || fuzz(&delete.range_end));
    !(key_ok && end_ok && !delete.from_key)
}

/// Replaces every unsafe delete in `txn` (nested ones too) with a delete of one fuzz key.
fn defuse_txn(txn: &mut TxnRequest) -> bool {
    let mut changed = false;
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match op {
            RequestOp::RequestDeleteRange(delete) if unsafe_delete(delete) => {
                *delete = DeleteRangeRequest { key: Some("fuzz-0".into()), ..Default::default() };
                changed = true;
            }
            RequestOp::RequestTxn(inner) => changed |= defuse_txn(inner),
            _ => {}
        }
    }
    changed
}

fn random_body(rng: &mut Rng, aim: Aim, ids: &Ids) -> Vec<u8> {
    if matches!(aim, Aim::Range | Aim::Txn | Aim::Compact | Aim::Watch) && rng.chance(0.75) {
        return etcd_body(rng, aim);
    }
    match rng.range(0, 12) {
        0 | 1 => Vec::new(),
        2 => random_bytes(rng, 2048),
        3 => pick(
            rng,
            &[
                "{",
                "{\"name\":",
                "[]",
                "null",
                "{\"to\":5}",
                "{\"to\":\"\"}",
                "\"x\"",
                "{\"to\":null}",
                "  ",
                "{}",
                "\u{feff}{}",
            ],
        )
        .as_bytes()
        .to_vec(),
        4 | 5 => member_body(rng, ids),
        6 | 7 => format!("{{\"to\":\"{}\"}}", random_id(rng, ids)).into_bytes(),
        8 => {
            // At or just over a limit: the route's own, or for the others the value limit (1 MiB,
            // sparingly) or a small one.
            let limit = match aim {
                Aim::Members => MAX_MEMBER_REQUEST_BYTES,
                Aim::Transfer => MAX_TRANSFER_REQUEST_BYTES,
                Aim::Txn if rng.chance(0.3) => max_txn_request_bytes(DEFAULT_MAX_VALUE_BYTES),
                _ if rng.chance(0.3) => DEFAULT_MAX_VALUE_BYTES,
                _ => MAX_TRANSFER_REQUEST_BYTES,
            };
            vec![b'v'; limit + usize::from(rng.chance(0.7))]
        }
        _ => format!("value-{}", rng.range(0, 1000)).into_bytes(),
    }
}

fn random_headers(rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut headers = Vec::new();
    for _ in 0..rng.range(0, 5) {
        let header = match rng.range(0, 7) {
            0 => (
                "content-type".to_string(),
                pick(
                    rng,
                    &["application/json", "text/plain", "application/octet-stream", "a/b/c", "", "json; charset=utf-8"],
                )
                .as_bytes()
                .to_vec(),
            ),
            1 => ("x-kuberaft-forwarded".to_string(), pick(rng, &["1", "0", "", "yes"]).as_bytes().to_vec()),
            2 => {
                // Large, but within what the HTTP server accepts for a header block.
                let len = rng.range(0, 8 * 1024) as usize;
                (format!("x-fuzz-{}", rng.range(0, 100)), vec![b'a' + (rng.range(0, 26) as u8); len])
            }
            3 => (
                "accept".to_string(),
                pick(rng, &["*/*", "application/json", "text/html", "*/*;q=0.1, junk"]).as_bytes().to_vec(),
            ),
            4 => ("x-kuberaft-mod-revision".to_string(), rng.next_u64().to_string().into_bytes()),
            5 => ("user-agent".to_string(), (0..rng.range(0, 40)).map(|_| rng.range(0x20, 0x7f) as u8).collect()),
            _ => ("x-kuberaft-cluster-id".to_string(), format!("{:x}", rng.next_u64()).into_bytes()),
        };
        headers.push(header);
    }
    headers
}

/// A request that could legitimately change the cluster (writes and membership changes).
fn may_change(method: &str, aim: Aim) -> bool {
    matches!(
        (method, aim),
        ("PUT" | "DELETE", Aim::Key)
            | ("POST", Aim::Members | Aim::Promote | Aim::Transfer | Aim::Txn | Aim::Compact)
            | ("DELETE", Aim::Member)
    )
}

/// Keeps the cluster able to answer: a well-formed membership change or leader transfer would
/// be accepted and change who serves (an added voter that never starts, a removed member),
/// so those are turned into requests that must be refused. Writes to keys stay as they are,
/// but a txn's deletes are kept to fuzz keys.
fn defuse(request: &mut RawRequest, aim: Aim, ids: &Ids, rng: &mut Rng) {
    let fake_id = format!("{:x}", rng.range(1 << 40, 1 << 41));
    match (request.method.as_str(), aim) {
        ("POST", Aim::Txn) => {
            if let Ok(mut txn) = serde_json::from_slice::<TxnRequest>(&request.body) {
                if defuse_txn(&mut txn) {
                    request.body = serde_json::to_vec(&txn).unwrap_or_default();
                }
            }
        }
        ("POST", Aim::Members) => {
            if let Ok(mut add) = serde_json::from_slice::<AddMemberRequest>(&request.body) {
                // A name already taken: refused with 409 (or 400 for a bad URL) on the leader.
                add.name = ids.names[0].clone();
                request.body = serde_json::to_vec(&add).unwrap_or_default();
            }
        }
        ("DELETE", Aim::Member) => {
            let id = request.target.trim_start_matches("/v1/members/").split('?').next().unwrap_or_default();
            if parse_id(id).is_some_and(|id| ids.members.contains(&format!("{id:x}"))) {
                request.target = format!("/v1/members/{fake_id}");
            }
        }
        ("POST", Aim::Transfer) => {
            let parsed = if request.body.iter().all(|b| b.is_ascii_whitespace()) {
                Some(TransferRequest::default())
            } else {
                serde_json::from_slice::<TransferRequest>(&request.body).ok()
            };
            if let Some(transfer) = parsed {
                let real = transfer
                    .to
                    .as_deref()
                    .and_then(parse_id)
                    .is_some_and(|id| ids.members.contains(&format!("{id:x}")));
                if transfer.to.is_none() || real {
                    request.body = format!("{{\"to\":\"{fake_id}\"}}").into_bytes();
                }
            }
        }
        _ => {}
    }
}

/// DESIGN.md §4: 5xx only as 503 (with Retry-After) and 504; every client API error is JSON
/// `{"error": {"code", "message"}}`.
fn check_response(request: &RawRequest, response: &RawResponse) -> Result<(), String> {
    let status = response.status;
    if status >= 500 && status != 503 && status != 504 {
        return Err(format!("status {status}"));
    }
    if status == 503 && response.header("retry-after").is_none() {
        return Err("503 without Retry-After".into());
    }
    if status >= 400 && request.method != "HEAD" {
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            format!("status {status} with a body that is not JSON ({e}): {:?}", String::from_utf8_lossy(&response.body))
        })?;
        let shaped =
            body["error"]["code"].as_str().is_some_and(|c| !c.is_empty()) && body["error"]["message"].is_string();
        if !shaped {
            return Err(format!(
                "status {status} with a body not shaped {{\"error\":{{\"code\",\"message\"}}}}: {body}"
            ));
        }
    }
    Ok(())
}

/// Requests that once broke the contract, sent to every member before the random ones, and
/// the status every member must give.
/// - A path segment that does not percent-decode to UTF-8 was answered by axum's own
///   plain-text 400 instead of the JSON error shape.
/// - The keys `.` and `..` were written by the leader but sent elsewhere by a follower's
///   forwarding (URLs resolve `/v1/kv/..` to `/v1/`): 200 on one member, 404 on the others.
const REGRESSIONS: &[(&str, &str, u16)] = &[
    ("GET", "/v1/kv/fuzz-%B9?consistency=serializable", 400),
    ("GET", "/v1/kv/%FF", 400),
    ("PUT", "/v1/kv/%C3%28", 400),
    ("DELETE", "/v1/kv/a%ED%A0%80", 400),
    ("POST", "/v1/members/%FF/promote", 400),
    ("DELETE", "/v1/members/%C0%AF", 400),
    ("PUT", "/v1/kv/..", 400),
    ("PUT", "/v1/kv/.", 400),
    ("PUT", "/v1/kv/%2e%2E", 400),
    ("GET", "/v1/kv/..", 400),
    ("DELETE", "/v1/kv/%2E", 400),
];

fn regressions(c: &Cluster, to: &Targets) {
    for (method, target, expected) in REGRESSIONS {
        for (i, m) in c.members.iter().enumerate() {
            let mut request = RawRequest::new(method, target.to_string());
            if *method == "PUT" {
                request.body = b"value".to_vec();
            }
            let response = exchange(to.client[i], &request).unwrap_or_else(|e| panic!("{method} {target}: {e}"));
            assert_eq!(response.status, *expected, "{method} {target} via {}\n{}", m.name, c.log_tail(i));
            check_response(&request, &response).unwrap_or_else(|e| panic!("{method} {target} via {}: {e}", m.name));
        }
    }
    large_answers_to_requests_with_ignored_bodies_arrive_whole(c, to);
}

/// A body the route does not read (a GET with 1 MiB attached) used to be still unread when the
/// answer went out; hyper then closed the connection, the kernel reset it, and an answer larger
/// than the socket buffers was cut off. Every member now reads bodies to their end first.
fn large_answers_to_requests_with_ignored_bodies_arrive_whole(c: &Cluster, to: &Targets) {
    let value = "b".repeat(700 * 1024);
    for k in 0..3 {
        c.put_ok(k, &format!("big-{k}"), &value);
    }
    for (i, m) in c.members.iter().enumerate() {
        let mut request = RawRequest::new("GET", "/v1/kv?prefix=big-&consistency=serializable".to_string());
        request.body = vec![b'x'; DEFAULT_MAX_VALUE_BYTES];
        let addr = to.client[i];
        let response = wait_for(&format!("the three big keys applied on {}", m.name), ELECTION, || {
            let response = exchange(addr, &request).unwrap_or_else(|e| panic!("a large list via {}: {e}", m.name));
            let list: Value = serde_json::from_slice(&response.body).ok()?;
            (list["kvs"].as_array().map(Vec::len) == Some(3)).then_some(response)
        });
        assert_eq!(response.status, 200, "{}", c.log_tail(i));
    }
    for k in 0..3 {
        let url = format!("{}/v1/kv/big-{k}", c.members[0].client_url());
        wait_for("delete a big key", ELECTION, || c.http.delete(&url).send().ok()?.status().is_success().then_some(()));
    }
}

#[derive(Default)]
struct ApiFuzzOutcome {
    statuses: BTreeMap<u16, u64>,
    /// "status code", e.g. "404 not_found".
    errors: BTreeMap<String, u64>,
}

impl ApiFuzzOutcome {
    fn count(&mut self, response: &RawResponse) {
        *self.statuses.entry(response.status).or_insert(0) += 1;
        if response.status >= 400 {
            let code = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|b| b["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "(no JSON body: HEAD)".to_string());
            *self.errors.entry(format!("{} {code}", response.status)).or_insert(0) += 1;
        }
    }
}

fn client_api_fuzz(c: &Cluster, to: &Targets, seed: u64, count: u64) -> ApiFuzzOutcome {
    let mut rng = Rng::new(seed);
    let statuses: Vec<Value> = (0..c.members.len()).map(|i| c.status(i).expect("status")).collect();
    let ids = Ids {
        members: statuses.iter().map(|s| s["id"].as_str().unwrap_or_default().to_string()).collect(),
        names: c.members.iter().map(|m| m.name.clone()).collect(),
    };
    let address = |member: usize| to.client[member];
    regressions(c, to);
    let mut outcome = ApiFuzzOutcome::default();
    let mut before = observe(c);
    for n in 0..count {
        let member = rng.range(0, c.members.len() as u64) as usize;
        let (aim, path) = random_path(&mut rng, &ids);
        let method = random_method(&mut rng, aim);
        let mut request = RawRequest::new(&method, format!("{path}{}", random_query(&mut rng)));
        request.headers = random_headers(&mut rng);
        request.body = random_body(&mut rng, aim, &ids);
        request.chunked = rng.chance(0.1);
        defuse(&mut request, aim, &ids, &mut rng);
        let context =
            || format!("request {n} (FUZZ_SEED={seed}) to {}: {}", c.members[member].name, request.describe());
        let response = if aim == Aim::Watch {
            exchange_first_answer(address(member), &request)
        } else {
            exchange(address(member), &request)
        };
        let response = response.unwrap_or_else(|e| panic!("{}: {e}", context()));
        outcome.count(&response);
        if let Err(e) = check_response(&request, &response) {
            panic!("{}: {e}", context());
        }
        // Rejected (4xx; 503 = not proposed), or a request that cannot change anything: the
        // cluster must look exactly as before. Checked serially, on the leader.
        let rejected = (400..500).contains(&response.status) || response.status == 503;
        let after = observe(c);
        if rejected || !may_change(&method, aim) {
            assert_eq!(after, before, "{}: answered {}, yet the cluster changed", context(), response.status);
        }
        before = after;
    }
    outcome
}

// ----- the peer port fuzz -----

/// Real-looking messages to member `to`: every kind, from real members (or strangers), in a
/// stale term mostly, which a member ignores unless a mutation makes the message current.
/// Entries carry only commands on fuzz keys and no membership changes.
fn base_batch(rng: &mut Rng, ids: &[u64], to: u64, leader: u64, term: u64, newer_terms: bool) -> Vec<Message> {
    let mut batch = Vec::new();
    for _ in 0..rng.range(1, 6) {
        let from = if rng.chance(0.85) { *pick(rng, ids) } else { rng.range(1, 1 << 50) };
        let stale = term.saturating_sub(rng.range(1, 3));
        let put = |i: u64| {
            encode(&Command::Put {
                key: format!("fuzz-peer-{i}"),
                value: Bytes::from(vec![b'p'; 24]),
                prev_revision: None,
            })
        };
        let (term, body) = match rng.range(0, 12) {
            0 => (stale, MessageBody::Heartbeat { commit: rng.range(0, 100), read_seq: rng.range(0, 10) }),
            1 => (
                stale,
                MessageBody::Append {
                    prev_index: rng.range(0, 50),
                    prev_term: stale,
                    entries: (0..rng.range(0, 4))
                        .map(|i| Entry {
                            index: 51 + i,
                            term: stale,
                            payload: if i == 0 { EntryPayload::Noop } else { EntryPayload::Command(put(i)) },
                        })
                        .collect(),
                    commit: rng.range(0, 60),
                },
            ),
            2 => (
                stale,
                MessageBody::InstallSnapshot {
                    snapshot: Snapshot {
                        meta: SnapshotMeta {
                            index: rng.range(1, 1000),
                            term: stale,
                            conf: ConfState { voters: ids.iter().copied().collect(), learners: Default::default() },
                        },
                        data: Bytes::from(random_bytes(rng, 64)),
                    },
                },
            ),
            3 => (term, MessageBody::AppendResp { index: rng.range(0, 5), reject: None }),
            4 => (
                term,
                MessageBody::AppendResp {
                    index: rng.range(0, 50),
                    reject: Some(RejectHint { index: rng.range(0, 50), term: rng.range(0, term + 1) }),
                },
            ),
            5 => (term, MessageBody::HeartbeatResp { read_seq: 0 }),
            6 => (term, MessageBody::PreVote { last_index: rng.range(0, 10), last_term: stale }),
            7 => (term, MessageBody::Vote { last_index: rng.range(0, 10), last_term: stale, transfer: false }),
            8 => (term, MessageBody::PreVoteResp { granted: rng.chance(0.5) }),
            9 => (term, MessageBody::VoteResp { granted: rng.chance(0.5) }),
            // Rare and legitimate disruptions: the leader hands over, or announces a new term.
            10 if newer_terms && rng.chance(0.1) => {
                batch.push(Message { from: leader, to, term, body: MessageBody::TimeoutNow });
                continue;
            }
            11 if newer_terms && rng.chance(0.1) => {
                let body = MessageBody::Heartbeat { commit: 0, read_seq: 0 };
                batch.push(Message { from: leader, to, term: term + 1, body });
                continue;
            }
            _ => (stale, MessageBody::TimeoutNow),
        };
        batch.push(Message { from, to, term, body });
    }
    batch
}

fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    let len = bytes.len() as u64;
    match rng.range(0, 5) {
        0 => {
            for _ in 0..rng.range(1, 6) {
                if !bytes.is_empty() {
                    let at = rng.range(0, len) as usize;
                    bytes[at] ^= 1 << rng.range(0, 8);
                }
            }
        }
        1 => bytes.truncate(rng.range(0, len + 1) as usize),
        2 | 3 => {
            let value = *pick(rng, &[0u64, 1, 255, 1 << 31, u32::MAX as u64, 1 << 40, u64::MAX / 2, u64::MAX]);
            let width = if rng.chance(0.7) { 8 } else { 4 };
            if len >= width {
                let at = rng.range(0, len - width + 1) as usize;
                bytes[at..at + width as usize].copy_from_slice(&value.to_le_bytes()[..width as usize]);
            }
        }
        _ => {
            let at = rng.range(0, len + 1) as usize;
            let junk = random_bytes(rng, 16);
            bytes.splice(at..at, junk);
        }
    }
    bytes
}

/// Whether a member would act on `m` in a way that may change its term or leader: a message
/// the transport accepts, in a newer term, or a TimeoutNow.
fn disruptive(m: &Message, to: u64, from_header: u64, term: u64) -> bool {
    let accepted = m.to == to && m.from == from_header && m.from != 0 && m.is_well_formed();
    accepted && (m.term > term || matches!(m.body, MessageBody::TimeoutNow))
}

/// Whether `m` tells member `to` that it lost entries it acknowledged: a heartbeat it accepts,
/// of its term or a newer one, whose commit index is past the member's log (here: past
/// `commit`, its commit index before the fuzz, which its log never ends before). A member must
/// stop on that word of its leader (exit 3, as etcd panics), so a forged one stops it; only
/// peer TLS keeps forgers out (tests/cluster `tls::`).
fn claims_data_loss(m: &Message, to: u64, from_header: u64, term: u64, commit: u64) -> bool {
    let accepted = m.to == to && m.from == from_header && m.from != 0 && m.is_well_formed();
    accepted && m.term >= term && matches!(m.body, MessageBody::Heartbeat { commit: c, .. } if c > commit)
}

#[derive(Default)]
struct PeerFuzzOutcome {
    statuses: BTreeMap<u16, u64>,
    decodable: u64,
    /// Batches not sent because a member would have acted on a newer term in them.
    withheld: u64,
}

impl std::fmt::Display for PeerFuzzOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "statuses {:?}, {} decodable, {} withheld", self.statuses, self.decodable, self.withheld)
    }
}

/// Posts `count` batches to the peer ports: random bytes, real batches and mutations of them,
/// with right, wrong and missing cluster ids. With `newer_terms` false, a batch a member would
/// accept with a newer term (or a TimeoutNow) in it is withheld, so the leader and the term
/// must stay as they are; always, one that tells a member it lost data (`claims_data_loss`).
fn peer_port_fuzz(c: &Cluster, to_reach: &Targets, seed: u64, count: u64, newer_terms: bool) -> PeerFuzzOutcome {
    let mut rng = Rng::new(seed ^ 0x7065_6572);
    let statuses: Vec<Value> = (0..c.members.len()).map(|i| c.status(i).expect("status")).collect();
    let ids: Vec<u64> = statuses.iter().filter_map(|s| parse_id(s["id"].as_str()?)).collect();
    let leader_id = statuses.iter().find_map(|s| parse_id(s["leaderId"].as_str()?)).expect("a leader id");
    let term = statuses.iter().filter_map(|s| s["term"].as_u64()).max().expect("a term");
    let cluster_id = statuses[0]["clusterId"].as_str().expect("cluster id").to_string();
    let commits: Vec<u64> = statuses.iter().map(|s| s["commitIndex"].as_u64().expect("a commit index")).collect();
    let mut outcome = PeerFuzzOutcome::default();
    for n in 0..count {
        let member = rng.range(0, c.members.len() as u64) as usize;
        let to = ids[member];
        let valid = encode_messages(&base_batch(&mut rng, &ids, to, leader_id, term, newer_terms)).expect("encode");
        // Mostly the current format; sometimes the same bytes labelled as 0.1.0's (bincode 1),
        // which members still read.
        let (content_type, format) = if rng.chance(0.85) {
            (PEER_CONTENT_TYPE, WireFormat::Versioned)
        } else {
            ("application/octet-stream", WireFormat::Legacy)
        };
        let body = match rng.range(0, 10) {
            0 | 1 => random_bytes(&mut rng, 1024),
            2 => valid,
            _ => mutate(&mut rng, &valid),
        };
        let from_header = if rng.chance(0.9) {
            decode_messages(format, &body).ok().and_then(|b| b.first().map(|m| m.from)).unwrap_or(ids[0])
        } else {
            rng.next_u64()
        };
        let mut request = RawRequest::new("POST", "/raft/v1/messages".to_string());
        request.body = body;
        request.headers.push(("content-type".into(), content_type.as_bytes().to_vec()));
        match rng.range(0, 20) {
            0 => {}
            1 => request.headers.push(("x-kuberaft-cluster-id".into(), format!("{:x}", rng.next_u64()).into_bytes())),
            2 => request.headers.push(("x-kuberaft-cluster-id".into(), b"\xff\xfe".to_vec())),
            _ => request.headers.push(("x-kuberaft-cluster-id".into(), cluster_id.clone().into_bytes())),
        }
        request.headers.push(("x-kuberaft-from".into(), format!("{from_header:x}").into_bytes()));
        if rng.chance(0.2) {
            // Invalid client URLs, which a member must ignore.
            let junk = pick(&mut rng, &["", "not a url", "http://", "ftp://x:1", "http://x"]).as_bytes().to_vec();
            request.headers.push(("x-kuberaft-client-url".into(), junk));
        }
        let has_cluster_id =
            request.headers.iter().any(|(n, v)| n == "x-kuberaft-cluster-id" && v == cluster_id.as_bytes());
        if let Ok(batch) = decode_messages(format, &request.body) {
            let withhold = |m: &Message| {
                (!newer_terms && disruptive(m, to, from_header, term))
                    || claims_data_loss(m, to, from_header, term, commits[member])
            };
            if has_cluster_id && batch.iter().any(withhold) {
                outcome.withheld += 1;
                continue;
            }
            outcome.decodable += 1;
        }
        // With TLS, through the proxy that presents the certificate of the member the batch says
        // it comes from (etcd-0's for a stranger's), which the member checks against the sender.
        let sender = ids.iter().position(|id| *id == from_header).unwrap_or(0);
        let addr = to_reach.peer[member][sender];
        let context =
            || format!("peer request {n} (FUZZ_SEED={seed}) to {}: {}", c.members[member].name, request.describe());
        let response = exchange(addr, &request).unwrap_or_else(|e| panic!("{}: {e}", context()));
        *outcome.statuses.entry(response.status).or_insert(0) += 1;
        let foreign = to_reach.tls && from_header != ids[sender];
        assert!(
            matches!(response.status, 204 | 400 | 412) || (response.status == 403 && foreign),
            "{}: status {} {:?}",
            context(),
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    outcome
}

#[test]
fn client_api_and_peer_port_answer_random_requests_within_the_contract() {
    let mut c = Cluster::new(NET, 3);
    c.bootstrap();
    let to = Targets::plain(&c);
    fuzz(&c, &to);
}

/// Issue 16, must-show 2: the same fuzz of a cluster with TLS on both ports and certificates
/// required on both. The fuzz still writes its requests byte by byte; a proxy in front of each
/// port speaks TLS to the member with a client certificate of the cluster's CA (on the peer port,
/// the certificate of the member the batch says it comes from, so that the member's identity
/// check lets real senders through and refuses the others with 403).
#[test]
fn client_api_and_peer_port_answer_random_requests_within_the_contract_with_tls() {
    let ca = Authority::new("fuzz-ca").expect("ca");
    let mut c = Cluster::new(NET_TLS, 3);
    let ca_file = c.with_tls(&ca, true);
    let (cert, key) = c.issue_client(&ca);
    let config = c.client_tls(&ca_file, &cert, &key);
    c.bootstrap();
    let peers: Vec<(PathBuf, PathBuf)> = c.members.iter().map(|m| issued_files(&c.pki(), &m.name)).collect();
    let proxies = TlsProxies::start(&c, &ca_file, config, &peers);
    fuzz(&c, &proxies.targets);
}

/// The fuzz of a started cluster, reached at `to`.
fn fuzz(c: &Cluster, to: &Targets) {
    let (seed, count) = (seed(), requests());
    c.wait_leader(ELECTION);
    for k in 0..PRECIOUS_KEYS {
        c.put_ok(k % 3, &format!("{PRECIOUS_PREFIX}{k}"), &format!("value-{k}"));
    }
    // A new leader publishes the members' client URLs through the log, each once it hears from
    // the member, checking every 200 ms (DESIGN §3): the fuzz compares the membership hash
    // before and after each request, so it starts once that is done (the same hash on every
    // member for a second).
    let mut settled = (String::new(), 0);
    wait_for("the members' client URLs published", ELECTION, || {
        std::thread::sleep(Duration::from_millis(100));
        let hashes: Vec<String> =
            (0..3).filter_map(|i| Some(c.status(i)?["membershipHash"].as_str()?.to_string())).collect();
        let agreed = hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]);
        settled = match hashes.first().filter(|_| agreed) {
            Some(hash) if *hash == settled.0 => (settled.0.clone(), settled.1 + 1),
            Some(hash) => (hash.clone(), 1),
            None => (String::new(), 0),
        };
        (settled.1 >= 10).then_some(())
    });

    let started = Instant::now();
    let api = client_api_fuzz(c, to, seed, count);
    let api_time = started.elapsed();
    check_survivors(c, to, "client API fuzz");
    println!(
        "fuzz client API{}: seed {seed}, {count} requests in {:.1}s, statuses {:?}, errors {:?}",
        to.label(),
        api_time.as_secs_f64(),
        api.statuses,
        api.errors
    );

    // The peer port: first nothing a member would act on with a newer term, then anything.
    let (leader, term) = c.wait_leader(ELECTION);
    let peer_count = (count / 3).max(2);
    let started = Instant::now();
    let calm = peer_port_fuzz(c, to, seed, peer_count / 2, false);
    let calm_time = started.elapsed();
    let kept = check_survivors(c, to, "peer port fuzz in one term");
    assert_eq!(kept, (leader, term), "no batch with a newer term was sent: the leader and the term stay");
    println!(
        "fuzz peer port{}, current and older terms: seed {seed}, {} batches in {:.1}s, {calm}; leader and term kept",
        to.label(),
        peer_count / 2,
        calm_time.as_secs_f64()
    );
    let started = Instant::now();
    let stormy = peer_port_fuzz(c, to, seed ^ 1, peer_count - peer_count / 2, true);
    let stormy_time = started.elapsed();
    let (_, term_after) = check_survivors(c, to, "peer port fuzz with newer terms");
    println!(
        "fuzz peer port{}, newer terms allowed: seed {seed}, {} batches in {:.1}s, {stormy}; term {term} -> {term_after}",
        to.label(),
        peer_count - peer_count / 2,
        stormy_time.as_secs_f64()
    );
}
