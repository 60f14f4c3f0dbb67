//! A scripted fake OpenAI-compatible chat-completions upstream.
//!
//! It is a raw `tokio` TCP server on `127.0.0.1:0`, so the bytes on the wire
//! and their timing are exactly what a test asks for: every [`Part::Bytes`]
//! is its own TCP write (with `TCP_NODELAY`), [`Part::Delay`] pauses between
//! them, and the end of a stream can be a clean finish, a clean close, a cut
//! or a stall.
//!
//! ```ignore
//! let fake = FakeUpstream::start(vec![Reply::status(503), Reply::sse_words(&["Hel", "lo"])]);
//! // gateway: --upstream <fake.url()>
//! assert_eq!(fake.attempts(), 2);
//! ```
//!
//! * Request number `i` (counted per HTTP request, not per TCP connection:
//!   keep-alive connections serve several) is answered with
//!   `script[min(i, len - 1)]`, so the last reply repeats forever.
//! * Every request is recorded ([`FakeUpstream::requests`]).
//! * While a reply is being written (or stalled), the connection is also
//!   read; if the client closes or resets it before the reply is complete,
//!   that counts as a *client disconnect* ([`FakeUpstream::disconnects`],
//!   [`FakeUpstream::wait_client_disconnect`]). This is how tests prove that a
//!   cancel, a closed socket or a timeout really dropped the upstream request.
//! * The body bytes written for each request are counted as they go
//!   ([`FakeUpstream::body_written`]); with [`Part::Repeat`] (e.g.
//!   [`Reply::flood`]) a body of hundreds of megabytes is generated while it
//!   is written, never held, so a test can see where a reader stops reading.
//! * A reply with a `connection: close` header closes the connection once it
//!   is complete (otherwise connections are kept alive).
//! * Dropping the `FakeUpstream` aborts every task it spawned.

use std::fmt;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The path the fake answers on (it answers every path the same way, but
/// this is the one [`FakeUpstream::url`] names).
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// One step of a streamed body.
#[derive(Clone, Debug)]
pub enum Part {
    /// Written as one TCP write (one HTTP chunk when the body is chunked).
    Bytes(Vec<u8>),
    /// Sleep before the next part.
    Delay(Duration),
    /// `piece` written again and again, one write (one HTTP chunk) each,
    /// until at least `total` bytes of it are written: a body far larger than
    /// anything a test holds in memory.
    Repeat { piece: Vec<u8>, total: u64 },
}

impl Part {
    /// A `Bytes` part from anything byte-like.
    pub fn bytes(b: impl AsRef<[u8]>) -> Part {
        Part::Bytes(b.as_ref().to_vec())
    }
}

/// How a streamed ([`Reply::Sse`]) body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `Transfer-Encoding: chunked`, properly terminated: the body is
    /// complete and the connection stays usable for the next request.
    Finish,
    /// A close-delimited body (no length, no chunking) ended by closing the
    /// connection: a *legitimate* end of the body. The status line is
    /// `HTTP/1.0` because awc (like RFC 9112 allows) only reads a
    /// close-delimited body to EOF for HTTP/1.0 responses.
    Close,
    /// Chunked body, but the connection is reset (RST: `SO_LINGER` 0)
    /// before the terminating chunk: a transport failure in the middle of the
    /// body. (A plain FIN is [`End::FinAfterChunk`] / [`End::FinMidChunk`].)
    /// Put a short `Delay` before the cut when the client must have read
    /// the last part first: an RST can discard unread bytes.
    Cut,
    /// Chunked body that never ends: after the parts, silence until the
    /// client goes away.
    Stall,
    /// HTTP/1.1 with neither `Content-Length` nor chunked coding (and no
    /// `Connection` header): the body runs until the connection closes
    /// (FIN), a *legitimate* end (RFC 9112 §6.3). awc alone reads such a
    /// body as empty; the gateway's framing guard reads it to the close.
    CloseDelimited,
    /// Chunked body whose last part is announced one byte longer than it
    /// is, then FIN: the connection ends in the middle of a chunk.
    FinMidChunk,
    /// Chunked body of complete chunks, then FIN without the last
    /// (zero-size) chunk: an upstream process that died between two writes.
    FinAfterChunk,
    /// `Content-Length` announcing this many bytes more than the parts
    /// hold, then FIN: a sized body cut short.
    ShortLength(usize),
}

/// A recorded request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `POST`, ...
    pub method: String,
    /// Request target, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The raw (de-chunked) body.
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// Which accepted TCP connection (0-based) carried it.
    pub connection: usize,
}

impl Request {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The parsed JSON body; panics when the body was not JSON.
    pub fn json(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "upstream request body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Content of the last message of the request body (empty if absent).
    pub fn last_message(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j["messages"].as_array())
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

type ReplyFn = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// What the fake answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// A streamed body (normally `text/event-stream`). `content-type:
    /// text/event-stream` is added unless `headers` sets a content type.
    Sse {
        status: u16,
        headers: Vec<(String, String)>,
        parts: Vec<Part>,
        end: End,
    },
    /// A complete `content-length` reply on a keep-alive connection (error
    /// statuses, JSON bodies, ...). No content type is added.
    Plain {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Read the request and never answer (until the client goes away).
    StallHeaders,
    /// Read the request, then close the connection without a byte.
    CloseImmediately,
    /// Build the reply from the request (e.g. echo its last message).
    Dynamic(ReplyFn),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Sse {
                status,
                headers,
                parts,
                end,
            } => f
                .debug_struct("Sse")
                .field("status", status)
                .field("headers", headers)
                .field("parts", &parts.len())
                .field("end", end)
                .finish(),
            Reply::Plain {
                status,
                headers,
                body,
            } => f
                .debug_struct("Plain")
                .field("status", status)
                .field("headers", headers)
                .field("body", &String::from_utf8_lossy(body))
                .finish(),
            Reply::StallHeaders => f.write_str("StallHeaders"),
            Reply::CloseImmediately => f.write_str("CloseImmediately"),
            Reply::Dynamic(_) => f.write_str("Dynamic(..)"),
        }
    }
}

impl Reply {
    /// `200 text/event-stream` with these parts, ending with [`End::Finish`].
    pub fn sse(parts: Vec<Part>) -> Reply {
        Reply::Sse {
            status: 200,
            headers: Vec::new(),
            parts,
            end: End::Finish,
        }
    }

    /// A proper OpenAI stream: a role chunk, one chunk per word, a final
    /// chunk with `finish_reason: "stop"`, then `data: [DONE]`; one TCP write
    /// per event.
    pub fn sse_words(words: &[&str]) -> Reply {
        Reply::sse(sse_events(words).into_iter().map(Part::Bytes).collect())
    }

    /// Like [`Reply::sse_words`] with `gap` between consecutive events.
    pub fn sse_words_slow(words: &[&str], gap: Duration) -> Reply {
        Reply::sse(with_gaps(sse_events(words), gap))
    }

    /// The whole body in one write.
    pub fn sse_bytes(body: impl AsRef<[u8]>) -> Reply {
        Reply::sse(vec![Part::bytes(body)])
    }

    /// `body` cut at the byte offsets `cuts` (any order, duplicates and
    /// out-of-range offsets ignored), one write per piece, `gap` between.
    pub fn sse_split(body: &[u8], cuts: &[usize], gap: Duration) -> Reply {
        Reply::sse(with_gaps(split_at(body, cuts), gap))
    }

    /// A stream of at least `total` body bytes: 64 KiB writes of deltas of
    /// 1,000 `x` each, generated as they are written ([`Part::Repeat`]),
    /// then `data: [DONE]`. No role chunk and no finish chunk.
    pub fn flood(total: u64) -> Reply {
        let one = event(&chunk(&"x".repeat(1000)));
        let piece = one.repeat((64 * 1024) / one.len());
        Reply::sse(vec![
            Part::Repeat { piece, total },
            Part::Bytes(done_event()),
        ])
    }

    /// A plain reply with `status` and a small OpenAI-style JSON error body.
    pub fn status(status: u16) -> Reply {
        Reply::error_json(status, &format!("fake upstream status {status}"))
    }

    /// `status` with an OpenAI-style error body carrying `message`.
    pub fn error_json(status: u16, message: &str) -> Reply {
        Reply::json(status, &openai_error(message))
    }

    /// `status` with a JSON body (`content-type: application/json`).
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::Plain {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).expect("serialize json body"),
        }
    }

    /// `status` with a body of any content type.
    pub fn body(status: u16, content_type: &str, body: impl AsRef<[u8]>) -> Reply {
        Reply::Plain {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.as_ref().to_vec(),
        }
    }

    /// A reply computed from the request.
    pub fn dynamic(f: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Reply {
        Reply::Dynamic(Arc::new(f))
    }

    /// Streams the request's last message back, cut after every space (so
    /// the concatenation of the deltas is exactly that message), `gap`
    /// between events.
    pub fn echo(gap: Duration) -> Reply {
        Reply::dynamic(move |req| {
            let text = req.last_message();
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            Reply::sse(with_gaps(sse_events(&words), gap))
        })
    }

    /// Adds a response header (to `Sse` and `Plain`; ignored otherwise).
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Sse { headers, .. } | Reply::Plain { headers, .. } => {
                headers.push((name.into(), value.into()))
            }
            _ => {}
        }
        self
    }

    /// Sets the status (of `Sse` and `Plain`; ignored otherwise).
    pub fn with_status(mut self, code: u16) -> Reply {
        match &mut self {
            Reply::Sse { status, .. } | Reply::Plain { status, .. } => *status = code,
            _ => {}
        }
        self
    }

    /// Sets how an `Sse` reply ends (ignored for other replies).
    pub fn with_end(mut self, new_end: End) -> Reply {
        if let Reply::Sse { end, .. } = &mut self {
            *end = new_end;
        }
        self
    }
}

// ---------------------------------------------------------------------------
// SSE / OpenAI body helpers
// ---------------------------------------------------------------------------

/// An OpenAI `chat.completion.chunk` whose delta carries `content`.
pub fn chunk(content: &str) -> Value {
    chunk_with_delta(json!({ "content": content }), Value::Null)
}

/// An OpenAI chunk with an arbitrary `delta` and `finish_reason`.
pub fn chunk_with_delta(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }]
    })
}

/// The last chunk: empty delta, `finish_reason`.
pub fn finish_chunk(reason: &str) -> Value {
    chunk_with_delta(json!({}), json!(reason))
}

/// A usage-only chunk (`choices: []`), as OpenAI sends with `include_usage`.
pub fn usage_chunk(usage: &Value) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [],
        "usage": usage
    })
}

/// An OpenAI-style error object `{"error":{"message":…}}`.
pub fn openai_error(message: &str) -> Value {
    json!({
        "error": { "message": message, "type": "invalid_request_error", "param": null, "code": null }
    })
}

/// A whole (non-streamed) chat completion.
pub fn completion(content: &str, finish_reason: &str, usage: &Value) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": finish_reason
        }],
        "usage": usage
    })
}

/// `data: <json>\n\n`.
pub fn event(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// One SSE `data:` event as one part (one TCP write).
pub fn ev(data: &Value) -> Part {
    Part::Bytes(event(data))
}

/// `data: [DONE]` as one part.
pub fn done_part() -> Part {
    Part::Bytes(done_event())
}

/// A sample `usage` object.
pub fn usage() -> Value {
    json!({ "prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21 })
}

/// "Hel", "lo" and a `stop` finish chunk, with no `[DONE]` after them.
pub fn events_without_done() -> Vec<Part> {
    vec![
        ev(&chunk("Hel")),
        ev(&chunk("lo")),
        ev(&finish_chunk("stop")),
    ]
}

/// A stream that sends the delta "Hel" and then stalls ([`End::Stall`]).
pub fn stalled_after_hel() -> Reply {
    Reply::sse(vec![ev(&chunk("Hel"))]).with_end(End::Stall)
}

/// `data: [DONE]\n\n`.
pub fn done_event() -> Vec<u8> {
    b"data: [DONE]\n\n".to_vec()
}

/// The events of a proper stream of `words`: role chunk, one chunk per word,
/// finish chunk (`stop`), `[DONE]`.
pub fn sse_events(words: &[&str]) -> Vec<Vec<u8>> {
    let mut out = vec![event(&chunk_with_delta(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    ))];
    out.extend(words.iter().map(|w| event(&chunk(w))));
    out.push(event(&finish_chunk("stop")));
    out.push(done_event());
    out
}

/// The events of [`sse_events`] joined into one body.
pub fn sse_body(words: &[&str]) -> Vec<u8> {
    sse_events(words).concat()
}

/// One `Bytes` part per piece, `gap` between them (none when zero).
pub fn with_gaps(pieces: Vec<Vec<u8>>, gap: Duration) -> Vec<Part> {
    let mut parts = Vec::with_capacity(pieces.len() * 2);
    for (i, p) in pieces.into_iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            parts.push(Part::Delay(gap));
        }
        parts.push(Part::Bytes(p));
    }
    parts
}

/// `body` cut at the given byte offsets.
pub fn split_at(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < body.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for c in cuts {
        pieces.push(body[from..c].to_vec());
        from = c;
    }
    pieces.push(body[from..].to_vec());
    pieces
}

/// A URL on 127.0.0.1 where nothing listens (connection refused).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe port");
    let port = listener.local_addr().expect("probe addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}{CHAT_PATH}")
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct Shared {
    script: Vec<Reply>,
    requests: Mutex<Vec<Request>>,
    /// Body bytes written for each request (same index as `requests`).
    written: Mutex<Vec<Arc<AtomicU64>>>,
    connections: AtomicUsize,
    disconnects: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A running fake upstream; see the module docs.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FakeUpstream {
    /// Binds `127.0.0.1:0` and serves `script` (must not be empty). Must be
    /// called inside a tokio runtime (e.g. in an `#[actix_web::test]`).
    pub fn start(script: Vec<Reply>) -> FakeUpstream {
        assert!(!script.is_empty(), "FakeUpstream needs at least one reply");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("fake upstream addr");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let shared = Arc::new(Shared {
            script,
            requests: Mutex::new(Vec::new()),
            written: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeUpstream {
            addr,
            shared,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn url(&self) -> String {
        format!("http://{}{CHAT_PATH}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP requests received so far (each one is an attempt).
    pub fn attempts(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `i`-th request (panics if it has not arrived).
    pub fn request(&self, i: usize) -> Request {
        let reqs = self.shared.requests.lock().unwrap();
        reqs.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("upstream request #{i} never arrived ({} did)", reqs.len()))
    }

    /// Body bytes (without the chunked framing) written so far in the reply
    /// to the `i`-th request; 0 until that request has arrived.
    pub fn body_written(&self, i: usize) -> u64 {
        self.shared
            .written
            .lock()
            .unwrap()
            .get(i)
            .map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// How many times the client closed a connection while a reply was in
    /// progress (streaming, stalling or not yet started).
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least one client disconnect was seen.
    pub async fn wait_client_disconnect(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.disconnects() > 0).await
    }

    /// Asserts that a client disconnect is seen within 1 s; `what` says
    /// after what (it is in the failure message).
    pub async fn expect_client_disconnect(&self, what: &str) {
        assert!(
            self.wait_client_disconnect(Duration::from_secs(1)).await,
            "{what}: no upstream request was dropped within 1 s"
        );
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub async fn wait_attempts(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.attempts() >= n).await
    }

    /// Waits (bounded) until at least `n` client disconnects were seen.
    pub async fn wait_until_disconnects(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.disconnects() >= n).await
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn() -> bool) -> bool {
        super::poll_until(timeout, Duration::from_millis(5), cond).await
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("addr", &self.addr)
            .field("attempts", &self.attempts())
            .field("disconnects", &self.disconnects())
            .finish()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off briefly instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let index = shared.connections.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(serve_connection(stream, index, shared.clone()));
        let mut tasks = shared.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// How the writing of one reply ended.
enum Outcome {
    /// Complete; the connection can carry the next request.
    KeepAlive,
    /// Complete; close the connection (FIN).
    Close,
    /// Abort the connection (RST).
    Reset,
    /// The client went away before the reply was complete.
    PeerGone,
}

async fn serve_connection(mut stream: TcpStream, connection: usize, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let outcome = {
            let (mut rd, mut wr) = stream.split();
            let Some(mut req) = read_request(&mut rd, &mut buf).await else {
                return;
            };
            req.connection = connection;
            let written = Arc::new(AtomicU64::new(0));
            let index = {
                // Both locks in this order, so that `written` and `requests`
                // always have the same length for other readers.
                let mut reqs = shared.requests.lock().unwrap();
                shared.written.lock().unwrap().push(written.clone());
                reqs.push(req.clone());
                reqs.len() - 1
            };
            let mut reply = shared.script[index.min(shared.script.len() - 1)].clone();
            while let Reply::Dynamic(f) = reply {
                reply = f(&req);
            }
            let outcome = tokio::select! {
                outcome = write_reply(&mut wr, &reply, &written) => outcome,
                () = watch_peer(&mut rd, &mut buf) => Outcome::PeerGone,
            };
            match outcome {
                Outcome::KeepAlive if asks_to_close(&reply) => Outcome::Close,
                other => other,
            }
        };
        match outcome {
            Outcome::KeepAlive => {}
            Outcome::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Outcome::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Outcome::PeerGone => {
                shared.disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Resolves when the peer closes or resets the connection; any bytes it
/// sends meanwhile are kept for the next request.
async fn watch_peer<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) {
    let mut tmp = [0u8; 4096];
    loop {
        match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Whether the reply carries a `connection: close` header.
fn asks_to_close(reply: &Reply) -> bool {
    let headers = match reply {
        Reply::Sse { headers, .. } | Reply::Plain { headers, .. } => headers,
        _ => return false,
    };
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn head(version: &str, status: u16, headers: &[(String, String)], framing: &str) -> Vec<u8> {
    let mut h = format!("{version} {status} {}\r\n", reason_phrase(status));
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(framing);
    h.push_str("\r\n");
    h.into_bytes()
}

async fn write_reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    reply: &Reply,
    written: &AtomicU64,
) -> Outcome {
    match reply {
        Reply::Sse {
            status,
            headers,
            parts,
            end,
        } => write_stream(wr, *status, headers, parts, *end, written).await,
        Reply::Plain {
            status,
            headers,
            body,
        } => {
            let framing = format!("content-length: {}\r\n", body.len());
            let mut bytes = head("HTTP/1.1", *status, headers, &framing);
            bytes.extend_from_slice(body);
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return Outcome::PeerGone;
            }
            written.fetch_add(body.len() as u64, Ordering::SeqCst);
            Outcome::KeepAlive
        }
        Reply::StallHeaders => pending().await,
        Reply::CloseImmediately => Outcome::Close,
        Reply::Dynamic(_) => unreachable!("dynamic replies are resolved before writing"),
    }
}

async fn write_stream<W: AsyncWrite + Unpin>(
    wr: &mut W,
    status: u16,
    headers: &[(String, String)],
    parts: &[Part],
    end: End,
    written: &AtomicU64,
) -> Outcome {
    let mut all_headers: Vec<(String, String)> = Vec::new();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        all_headers.push(("content-type".into(), "text/event-stream".into()));
    }
    all_headers.push(("cache-control".into(), "no-cache".into()));
    all_headers.extend(headers.iter().cloned());
    let chunked = matches!(
        end,
        End::Finish | End::Cut | End::Stall | End::FinMidChunk | End::FinAfterChunk
    );
    let bytes = match end {
        End::Close => head("HTTP/1.0", status, &all_headers, "connection: close\r\n"),
        End::CloseDelimited => head("HTTP/1.1", status, &all_headers, ""),
        End::ShortLength(missing) => {
            let total: u64 = parts
                .iter()
                .map(|p| match p {
                    Part::Bytes(b) => b.len() as u64,
                    Part::Repeat { piece, total } => {
                        total.div_ceil(piece.len().max(1) as u64) * piece.len() as u64
                    }
                    Part::Delay(_) => 0,
                })
                .sum();
            let framing = format!("content-length: {}\r\n", total + missing as u64);
            head("HTTP/1.1", status, &all_headers, &framing)
        }
        _ => head(
            "HTTP/1.1",
            status,
            &all_headers,
            "transfer-encoding: chunked\r\n",
        ),
    };
    let last_bytes = parts
        .iter()
        .rposition(|p| matches!(p, Part::Bytes(b) if !b.is_empty()));
    if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
        return Outcome::PeerGone;
    }
    for (i, part) in parts.iter().enumerate() {
        match part {
            Part::Delay(d) => tokio::time::sleep(*d).await,
            // A zero-length chunk would end a chunked body: skip it.
            Part::Bytes(b) | Part::Repeat { piece: b, .. } if b.is_empty() => {}
            Part::Bytes(b) if end == End::FinMidChunk && Some(i) == last_bytes => {
                // Announced one byte longer than it is: the FIN cuts it.
                let mut c = format!("{:x}\r\n", b.len() + 1).into_bytes();
                c.extend_from_slice(b);
                if wr.write_all(&c).await.is_err() || wr.flush().await.is_err() {
                    return Outcome::PeerGone;
                }
                written.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
            Part::Bytes(b) => {
                if !write_body_piece(wr, b, chunked, written).await {
                    return Outcome::PeerGone;
                }
            }
            Part::Repeat { piece, total } => {
                // Framed once, written as often as needed.
                let framed = frame_piece(piece, chunked);
                let mut sent = 0u64;
                while sent < *total {
                    if wr.write_all(&framed).await.is_err() || wr.flush().await.is_err() {
                        return Outcome::PeerGone;
                    }
                    sent += piece.len() as u64;
                    written.fetch_add(piece.len() as u64, Ordering::SeqCst);
                }
            }
        }
    }
    match end {
        End::Finish => {
            if wr.write_all(b"0\r\n\r\n").await.is_err() || wr.flush().await.is_err() {
                return Outcome::PeerGone;
            }
            Outcome::KeepAlive
        }
        End::Close
        | End::CloseDelimited
        | End::FinMidChunk
        | End::FinAfterChunk
        | End::ShortLength(_) => Outcome::Close,
        End::Cut => Outcome::Reset,
        End::Stall => pending().await,
    }
}

/// `piece` as it goes on the wire: one HTTP chunk when `chunked`.
fn frame_piece(piece: &[u8], chunked: bool) -> Vec<u8> {
    if !chunked {
        return piece.to_vec();
    }
    let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
    c.extend_from_slice(piece);
    c.extend_from_slice(b"\r\n");
    c
}

/// Writes one body piece (framed) and counts it; `false` when the peer is
/// gone.
async fn write_body_piece<W: AsyncWrite + Unpin>(
    wr: &mut W,
    piece: &[u8],
    chunked: bool,
    written: &AtomicU64,
) -> bool {
    let data = frame_piece(piece, chunked);
    if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
        return false;
    }
    written.fetch_add(piece.len() as u64, Ordering::SeqCst);
    true
}

/// Reads one request (head + body) from the connection; `None` on EOF or
/// garbage before a complete request. `buf` holds bytes read past it.
pub async fn read_request<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = read_until(rd, buf, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(rd, buf).await?
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            fill(rd, buf).await?;
        }
        buf.drain(..len).collect()
    };
    let json = serde_json::from_slice(&body).ok();
    Some(Request {
        method,
        path,
        headers,
        body,
        json,
        connection: 0,
    })
}

async fn read_chunked<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = read_until(rd, buf, b"\r\n").await?;
        let size_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let pos = read_until(rd, buf, b"\r\n").await?;
                buf.drain(..pos + 2);
                if pos == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            fill(rd, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads into `buf` until it holds `needle`; its offset, or `None` on EOF
/// or error first.
async fn read_until<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    needle: &[u8],
) -> Option<usize> {
    loop {
        if let Some(pos) = find(buf, needle) {
            return Some(pos);
        }
        fill(rd, buf).await?;
    }
}

/// Reads more bytes into `buf`; `None` on EOF or error.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = [0u8; 8192];
    match rd.read(&mut tmp).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
