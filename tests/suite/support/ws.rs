//! A WebSocket test client for the gateway, on awc.
//!
//! Every wait is bounded by a timeout. Frames that a call is not looking for
//! (another chat's, say) are kept in a backlog and handed out by later calls,
//! so several chats on one socket can be followed one id at a time.
//!
//! Pings from the gateway are answered with pongs unless
//! [`WsClient::set_auto_pong`] turned that off (awc itself never answers
//! them: its WebSocket is a raw codec, so a client with auto-pong off is
//! silent for real).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;

/// How long `connect` waits for the `hello` frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The awc framed WebSocket, boxed so its (unnameable) type stays private.
trait WsIo:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin
{
}

impl<T> WsIo for T where
    T: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin
{
}

/// What one bounded receive produced.
enum Recv {
    Json(Value),
    Timeout,
    Closed,
}

/// A connected WebSocket client.
pub struct WsClient {
    io: Box<dyn WsIo>,
    backlog: VecDeque<Value>,
    hello: Option<Value>,
    closed: bool,
    close_reason: Option<CloseReason>,
    auto_pong: bool,
}

/// The types of frame that end a chat.
pub fn is_terminal(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("done" | "error"))
}

impl WsClient {
    /// Connects to `ws://addr/ws`, reads the first frame and checks that it
    /// is `hello` (available as [`WsClient::hello`]). Panics on failure.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        Self::connect_with(addr, "/ws", &[]).await
    }

    /// Like [`WsClient::connect`] with another path (and query) and extra
    /// request headers.
    pub async fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> WsClient {
        let client = Self::try_connect(addr, path_and_query, headers)
            .await
            .unwrap_or_else(|status| {
                panic!("WebSocket upgrade of {path_and_query} refused (HTTP {status}; 0 = no HTTP answer)")
            });
        client.with_hello().await
    }

    /// Reads the first frame and checks that it is `hello`.
    async fn with_hello(mut self) -> WsClient {
        let hello = self
            .next_json(HELLO_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no hello frame within {HELLO_TIMEOUT:?}"));
        assert_eq!(
            hello["type"], "hello",
            "the first frame must be hello, got {hello}"
        );
        self.hello = Some(hello);
        self
    }

    /// Performs the upgrade only (the `hello` frame is left unread). `Err`
    /// carries the HTTP status when the gateway refused the upgrade, or 0
    /// when there was no HTTP answer at all (connection refused or reset,
    /// timeout).
    pub async fn try_connect(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        super::init();
        let url = format!("ws://{addr}{path_and_query}");
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        // Frames as large as the gateway may send (a whole completion can be
        // one delta of many MB), not awc's 64 KiB default.
        let mut req = client.ws(url.as_str()).max_frame_size(64 * 1024 * 1024);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.connect().await {
            Ok((_resp, framed)) => Ok(WsClient {
                io: Box::new(framed),
                backlog: VecDeque::new(),
                hello: None,
                closed: false,
                close_reason: None,
                auto_pong: true,
            }),
            Err(WsClientError::InvalidResponseStatus(status)) => Err(status.as_u16()),
            Err(WsClientError::SendRequest(e)) => {
                eprintln!("WebSocket connect to {url} failed: {e}");
                Err(0)
            }
            Err(e) => panic!("WebSocket connect to {url} failed: {e:?}"),
        }
    }

    /// The HTTP status that refused an upgrade, `None` when it was accepted
    /// (shorthand for `try_connect(..).await.err()`).
    pub async fn refusal(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Option<u16> {
        Self::try_connect(addr, path_and_query, headers).await.err()
    }

    /// Retries an upgrade (bounded: 3 s) until it is accepted, then checks
    /// the `hello` frame like [`WsClient::connect_with`]; panics with the
    /// last status otherwise.
    pub async fn connect_eventually(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> WsClient {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match Self::try_connect(addr, path_and_query, headers).await {
                Ok(client) => return client.with_hello().await,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("upgrade of {path_and_query} still refused after 3 s: HTTP {s}"),
            }
        }
    }

    /// The `hello` frame read by `connect` (panics after `try_connect`).
    pub fn hello(&self) -> &Value {
        self.hello
            .as_ref()
            .expect("hello is only read by connect/connect_with")
    }

    /// Answer the gateway's pings (default) or stay silent.
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Sends a frame, panicking if the socket is unusable.
    async fn send(&mut self, msg: Message) {
        if let Err(e) = self.io.send(msg).await {
            panic!("WebSocket send failed: {e}");
        }
    }

    /// Sends a value as one text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    /// Sends raw text as one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.to_string().into())).await;
    }

    /// Sends raw text, reporting (instead of panicking) when the socket is
    /// already unusable.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.io
            .send(Message::Text(text.to_string().into()))
            .await
            .is_ok()
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.send(Message::Binary(Bytes::copy_from_slice(data)))
            .await;
    }

    /// Sends a ping.
    pub async fn send_ping(&mut self) {
        self.send(Message::Ping(Bytes::from_static(b"p"))).await;
    }

    /// Sends a `chat` frame with one user message.
    pub async fn send_chat(&mut self, id: &str, content: &str) {
        self.send_json(&super::chat_frame(id, content)).await;
    }

    /// Sends a `cancel` frame.
    pub async fn send_cancel(&mut self, id: &str) {
        self.send_json(&serde_json::json!({ "type": "cancel", "id": id }))
            .await;
    }

    /// Sends a `resume` frame: chat `id` of `session`, frames after `after`.
    pub async fn send_resume(&mut self, session: &str, id: &str, after: u64) {
        self.send_json(&serde_json::json!({
            "type": "resume", "session": session, "id": id, "after": after
        }))
        .await;
    }

    /// Sends a close frame (normal closure) and stops using the socket.
    pub async fn close(&mut self) {
        let _ = self
            .io
            .send(Message::Close(Some(CloseReason {
                code: CloseCode::Normal,
                description: None,
            })))
            .await;
        self.closed = true;
    }

    /// Reads one frame from the wire, answering pings, until a JSON text
    /// frame, close/EOF, or `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Recv {
        loop {
            if self.closed {
                return Recv::Closed;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let frame = match tokio::time::timeout(remaining, self.io.next()).await {
                Err(_) => return Recv::Timeout,
                Ok(None) => {
                    self.closed = true;
                    return Recv::Closed;
                }
                Ok(Some(Err(e))) => panic!("WebSocket protocol error from the gateway: {e:?}"),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Frame::Text(bytes) => {
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "gateway sent a text frame that is not JSON ({e}): {:?}",
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    assert!(
                        value.is_object() && value["type"].is_string(),
                        "every gateway frame must be a JSON object with a string \"type\": {value}"
                    );
                    return Recv::Json(value);
                }
                Frame::Binary(bytes) => {
                    panic!("gateway sent a binary frame ({} bytes)", bytes.len())
                }
                Frame::Continuation(_) => panic!("gateway sent a fragmented frame"),
                Frame::Ping(payload) => {
                    if self.auto_pong {
                        // The socket may be closing; a failed pong shows up
                        // as close/EOF on the next read.
                        let _ = self.io.send(Message::Pong(payload)).await;
                    }
                }
                Frame::Pong(_) => {}
                Frame::Close(reason) => {
                    self.close_reason = reason;
                    let _ = self.io.send(Message::Close(None)).await;
                    self.closed = true;
                    return Recv::Closed;
                }
            }
        }
    }

    /// The next frame (backlog first), or `None` on timeout or close.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        match self.recv(Instant::now() + timeout).await {
            Recv::Json(v) => Some(v),
            Recv::Timeout | Recv::Closed => None,
        }
    }

    /// The next frame matching `pred` (backlog first); frames that do not
    /// match are kept for later. `None` on timeout or close.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline).await {
                Recv::Json(v) if pred(&v) => return Some(v),
                Recv::Json(v) => self.backlog.push_back(v),
                Recv::Timeout | Recv::Closed => return None,
            }
        }
    }

    /// The next frame whose `id` is `id`.
    pub async fn next_for(&mut self, id: &str, timeout: Duration) -> Option<Value> {
        self.next_matching(timeout, |v| v["id"] == id).await
    }

    /// The next frame with `"id": null` (answers to unattributable frames).
    pub async fn next_unattributed(&mut self, timeout: Duration) -> Option<Value> {
        self.next_matching(timeout, |v| v["id"].is_null()).await
    }

    /// Waits for the next frame of `type` for `id`, keeping everything else
    /// (including other frames of `id`) for later. Panics on timeout.
    pub async fn expect_type(&mut self, id: &str, ty: &str, timeout: Duration) -> Value {
        self.next_matching(timeout, |v| v["id"] == id && v["type"] == ty)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no {ty:?} frame for {id:?} within {timeout:?}; backlog: {:?}",
                    self.backlog
                )
            })
    }

    /// Collects every frame for `id` up to and including its terminal frame
    /// (`done`/`error`), and checks the per-chat invariants of PROTOCOL §3
    /// on them (so call it before taking any of the chat's frames out with
    /// other calls, except deltas). Panics (showing what arrived) on timeout
    /// or close.
    pub async fn chat_until_terminal(&mut self, id: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_for(id, remaining).await {
                Some(v) => {
                    let terminal = is_terminal(&v);
                    frames.push(v);
                    if terminal {
                        super::check_chat_frames(id, &frames);
                        return frames;
                    }
                }
                None => panic!(
                    "no terminal frame for chat {id:?} within {timeout:?} (socket closed: {}); \
                     frames so far: {frames:#?}",
                    self.closed
                ),
            }
        }
    }

    /// Sends a one-message chat and collects it to its terminal frame.
    pub async fn chat(&mut self, id: &str, content: &str, timeout: Duration) -> Vec<Value> {
        self.send_chat(id, content).await;
        self.chat_until_terminal(id, timeout).await
    }

    /// Reads for `dur` and panics if any frame for `id` arrives (other frames
    /// are kept for later).
    pub async fn expect_silence_for(&mut self, id: &str, dur: Duration) {
        if let Some(v) = self.next_for(id, dur).await {
            panic!("expected nothing more for {id:?}, got {v}");
        }
    }

    /// Reads for `dur` and panics if any frame at all arrives (or is waiting
    /// in the backlog).
    pub async fn expect_no_frame(&mut self, dur: Duration) {
        if let Some(v) = self.next_json(dur).await {
            panic!("expected no frame, got {v}");
        }
    }

    /// Reads (keeping frames) until the gateway closes the socket; returns
    /// whether it did within `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline).await {
                Recv::Json(v) => self.backlog.push_back(v),
                Recv::Closed => return true,
                Recv::Timeout => return false,
            }
        }
    }

    /// Whether the socket has been closed (by either side) or hit EOF.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The close code the gateway sent in its close frame, if any.
    pub fn close_code(&self) -> Option<u16> {
        self.close_reason.as_ref().map(|r| u16::from(r.code))
    }

    /// Frames received but not yet handed out.
    pub fn backlog(&self) -> &VecDeque<Value> {
        &self.backlog
    }
}
