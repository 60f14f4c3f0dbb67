//! An OpenAI-compatible HTTP face for the same chat machinery as `/ws`:
//! `POST /v1/chat/completions` (streamed as Server-Sent Events or whole)
//! and `GET /v1/models`, so the official OpenAI clients can use the gateway.
//!
//! A request body is turned into a `chat` frame and validated by
//! [`protocol::parse_client_frame`] (the very rules of the WebSocket), then
//! run by this worker's [`Upstream`] actor like any WebSocket chat: retries,
//! fallback, timeouts and metrics are shared. A tiny [`Collector`] actor is
//! the chat's `Recipient<ChatEvent>`; it forwards events into a bounded
//! channel that the HTTP response reads, so a client that does not read
//! makes the chat's bounded send wait, which pauses the upstream read.
//! Dropping the response (the client went away) cancels the upstream call.
//!
//! Errors found before any content answer with an HTTP status and an
//! OpenAI-style body `{"error":{"message","type","code"}}` (`code` is the
//! PROTOCOL.md §3 code):
//!
//! | code | status |
//! |---|---|
//! | `bad_request`, `unknown_model` | 400 |
//! | (missing or wrong bearer token) `invalid_api_key` | 401 |
//! | (body over `--max-frame-bytes`) `bad_request` | 413 |
//! | `busy` | 429 |
//! | `upstream_rejected`, `upstream_broken` | 502 |
//! | `upstream_unavailable` (also: draining) | 503 |
//! | `upstream_timeout` | 504 |
//!
//! The status is chosen when the first content fragment (or the end of the
//! chat) is known, so a failure the gateway retried away never shows. An
//! error after streaming began is one `data: {"error":{…}}` event, and the
//! stream ends without `[DONE]` (the official clients raise it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::admission::{self, ChatSlot, Client};
use crate::chats::EventKind;
use crate::error::{ChatError, Outcome};
use crate::protocol::{self, ChatRequest, ClientFrame, FrameRules};
use crate::shared::Shared;
use crate::upstream::{next_chat_key, CancelChat, ChatEvent, ChatSink, StartChat, Upstream};

/// Chat events buffered between the chat task and the HTTP body; beyond
/// this the chat's send waits for the client to read.
const EVENT_BUFFER: usize = 16;

/// Sampling parameters OpenAI clients send at the top level; they go into
/// the chat frame's `params` (where the WebSocket rules check them).
/// Any other unknown field goes there too, and is refused as on `/ws`.
const ACCEPTED_ELSEWHERE: &[&str] = &["model", "messages", "stream", "stream_options", "n", "user"];

/// What the two routes need.
struct ApiState {
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
}

/// Registers `/v1/chat/completions` and `/v1/models` on one worker's app.
pub fn configure(cfg: &mut web::ServiceConfig, shared: &Arc<Shared>, upstream: &Addr<Upstream>) {
    let state = web::Data::new(ApiState {
        shared: shared.clone(),
        upstream: upstream.clone(),
    });
    cfg.service(
        web::resource("/v1/chat/completions")
            .app_data(state.clone())
            .route(web::post().to(chat_completions)),
    )
    .service(
        web::resource("/v1/models")
            .app_data(state)
            .route(web::get().to(models)),
    );
}

// ---------------------------------------------------------------- errors

/// An OpenAI-style error answer.
fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    HttpResponse::build(status).json(error_body(kind, code, message))
}

fn error_body(kind: &str, code: &str, message: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": code } })
}

/// The HTTP status a chat error answers with (see the module table).
pub fn status_for(err: &ChatError) -> StatusCode {
    match err {
        ChatError::BadRequest(_)
        | ChatError::UnknownModel { .. }
        | ChatError::ResumeUnavailable(_) => StatusCode::BAD_REQUEST,
        ChatError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        ChatError::UpstreamRejected(_) | ChatError::UpstreamBroken(_) => StatusCode::BAD_GATEWAY,
        ChatError::UpstreamUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ChatError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

fn chat_error_response(err: &ChatError) -> HttpResponse {
    let mut resp = error_response(status_for(err), err.code().as_str(), &err.message());
    if err.retryable() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

// ---------------------------------------------------------------- admission

/// Same tokens as `/ws` (`--auth-tokens`), presented as `Authorization:
/// Bearer` (what every OpenAI client sends as its API key).
fn authorized(req: &HttpRequest, shared: &Shared) -> bool {
    crate::admission::bearer_authorized(req, &shared.config.auth_tokens)
}

fn unauthorized() -> HttpResponse {
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "a valid token is required as Authorization: Bearer <token>",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

// ---------------------------------------------------------------- /v1/models

async fn models(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    if !authorized(&req, &state.shared) {
        return unauthorized();
    }
    let data: Vec<Value> = state
        .shared
        .config
        .models
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "created": 0, "owned_by": "netfly" }))
        .collect();
    HttpResponse::Ok().json(json!({ "object": "list", "data": data }))
}

// ---------------------------------------------------------------- request

/// A chat-completions body turned into a validated chat.
#[derive(Debug)]
struct Parsed {
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
}

/// Builds the `chat` frame of an OpenAI request body and validates it with
/// the WebSocket rules.
fn parse_request(body: &[u8], id: &str, rules: &FrameRules<'_>) -> Result<Parsed, ChatError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ChatError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ChatError::BadRequest("body must be a JSON object".into()));
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ChatError::BadRequest("\"stream\" must be a boolean".into())),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ChatError::BadRequest(
                    "\"stream_options.include_usage\" must be a boolean".into(),
                ))
            }
        },
        Some(_) => {
            return Err(ChatError::BadRequest(
                "\"stream_options\" must be an object".into(),
            ))
        }
    };
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ChatError::BadRequest(
                "only \"n\": 1 is supported (one choice per request)".into(),
            ))
        }
    }
    // Newer clients name it max_completion_tokens.
    if let Some(v) = obj.remove("max_completion_tokens") {
        if !v.is_null() {
            obj.entry("max_tokens").or_insert(v);
        }
    }
    let mut frame = Map::new();
    frame.insert("type".into(), Value::from("chat"));
    frame.insert("id".into(), Value::from(id));
    if let Some(model) = obj.remove("model") {
        frame.insert("model".into(), model);
    }
    if let Some(messages) = obj.remove("messages") {
        frame.insert("messages".into(), messages);
    }
    let params: Map<String, Value> = obj
        .into_iter()
        .filter(|(k, v)| !ACCEPTED_ELSEWHERE.contains(&k.as_str()) && !v.is_null())
        .collect();
    if !params.is_empty() {
        frame.insert("params".into(), Value::Object(params));
    }
    let text = Value::Object(frame).to_string();
    match protocol::parse_client_frame(&text, rules) {
        Ok(ClientFrame::Chat(request)) => Ok(Parsed {
            request,
            stream,
            include_usage,
        }),
        Ok(ClientFrame::Cancel { .. } | ClientFrame::Resume { .. }) => {
            Err(ChatError::BadRequest("not a chat".into()))
        }
        Err(e) => Err(e.error),
    }
}

/// Reads the body, refusing one larger than `max` bytes.
async fn read_body(mut payload: web::Payload, max: usize) -> Result<Bytes, HttpResponse> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("cannot read the request body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > max {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                &format!("request body larger than {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

// ---------------------------------------------------------------- the chat

/// The chat's `Recipient<ChatEvent>`: forwards events into a bounded
/// channel. It lives as long as the chat task holds its address.
struct Collector {
    tx: mpsc::Sender<ChatEvent>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<ChatEvent> for Collector {
    /// Resolves once the event is in the channel: while the HTTP body is
    /// not being read, the chat's bounded send (and its upstream read) waits.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ChatEvent, _: &mut Self::Context) -> Self::Result {
        let tx = self.tx.clone();
        Box::pin(async move {
            // A closed channel means the response is gone; its drop has
            // already cancelled the chat.
            let _ = tx.send(msg).await;
        })
    }
}

/// One HTTP chat in flight: its slot (limits and metrics) and, if dropped
/// before its end (the client went away), the cancel of its upstream call.
struct ChatGuard {
    key: u64,
    upstream: Addr<Upstream>,
    slot: ChatSlot,
    ended: bool,
}

impl ChatGuard {
    /// Counts one delta handed to the HTTP layer.
    fn delta(&mut self, read_at: Instant) {
        self.slot.delta_sent(read_at);
    }

    /// Records how the chat ended.
    fn end(&mut self, outcome: Outcome) {
        self.ended = true;
        self.slot.set_outcome(outcome);
    }
}

impl Drop for ChatGuard {
    fn drop(&mut self) {
        if !self.ended {
            // The slot counts the chat as disconnected.
            self.upstream.do_send(CancelChat { key: self.key });
        }
    }
}

/// The fields every response chunk shares.
struct Meta {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl Meta {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, usage: Option<&Value>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        })
    }
}

fn sse_event(out: &mut BytesMut, data: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// An SSE error event (after streaming began).
fn sse_error(out: &mut BytesMut, err: &ChatError) {
    sse_event(
        out,
        &error_body("server_error", err.code().as_str(), &err.message()),
    );
}

/// The streamed response body: one SSE event per chat event.
struct SseBody {
    rx: mpsc::Receiver<ChatEvent>,
    guard: ChatGuard,
    meta: Meta,
    first: Option<Bytes>,
    finished: bool,
}

impl SseBody {
    /// The bytes for one event, and whether it ended the stream.
    fn render(&mut self, kind: EventKind) -> (Option<Bytes>, bool) {
        let mut out = BytesMut::new();
        match kind {
            EventKind::Start { .. } | EventKind::Retry { .. } | EventKind::Reasoning { .. } => {
                (None, false)
            }
            EventKind::Delta { text, read_at } => {
                sse_event(&mut out, &self.meta.chunk(json!({ "content": text }), None));
                self.guard.delta(read_at);
                (Some(out.freeze()), false)
            }
            EventKind::Done {
                finish_reason,
                usage,
            } => {
                sse_event(&mut out, &self.meta.chunk(json!({}), Some(&finish_reason)));
                if self.meta.include_usage {
                    sse_event(&mut out, &self.meta.usage_chunk(usage.as_ref()));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.guard.end(Outcome::Done);
                (Some(out.freeze()), true)
            }
            EventKind::Failed(err) => {
                sse_error(&mut out, &err);
                self.guard.end(Outcome::Failed(err.code()));
                (Some(out.freeze()), true)
            }
        }
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let event = match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => {
                    // The chat ended without a terminal event: say so.
                    let err = ChatError::UpstreamBroken("the chat ended unexpectedly".into());
                    self.finished = true;
                    self.guard.end(Outcome::Failed(err.code()));
                    let mut out = BytesMut::new();
                    sse_error(&mut out, &err);
                    return Poll::Ready(Some(Ok(out.freeze())));
                }
            };
            let (bytes, last) = self.render(event.kind);
            self.finished = last;
            if let Some(bytes) = bytes {
                return Poll::Ready(Some(Ok(bytes)));
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let shared = &state.shared;
    if !authorized(&req, shared) {
        return unauthorized();
    }
    if shared.draining() {
        let err =
            ChatError::UpstreamUnavailable("the server is shutting down; retry shortly".into());
        return chat_error_response(&err);
    }
    let body = match read_body(payload, shared.config.max_frame_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let id = format!(
        "chatcmpl-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    );
    let parsed = match parse_request(&body, &id, &shared.config.frame_rules()) {
        Ok(p) => p,
        Err(err) => {
            shared.metrics.chat_ended(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        }
    };
    let client = Client {
        ip: admission::client_ip(&req, &shared.config.trusted_proxies),
    };
    let slot = match shared.admission.admit_chat(&client) {
        Ok(slot) => slot,
        Err(err) => return chat_error_response(&err),
    };
    let meta = Meta {
        id,
        model: parsed.request.model.clone(),
        created: now_secs(),
        include_usage: parsed.include_usage,
    };
    let key = next_chat_key();
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let collector = Collector { tx }.start();
    let mut guard = ChatGuard {
        key,
        upstream: state.upstream.clone(),
        slot,
        ended: false,
    };
    state.upstream.do_send(StartChat {
        key,
        request: parsed.request,
        sink: ChatSink::Events {
            key,
            to: collector.recipient(),
        },
    });

    if !parsed.stream {
        return whole(&mut rx, &mut guard, &meta).await;
    }

    // Hold the status until the first fragment (or the end): a failure the
    // gateway retried away never shows, and one it could not gets its status.
    let first = loop {
        let Some(event) = rx.recv().await else {
            let err = ChatError::UpstreamBroken("the chat ended unexpectedly".into());
            guard.end(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        };
        match event.kind {
            EventKind::Start { .. } | EventKind::Retry { .. } => continue,
            EventKind::Failed(err) => {
                guard.end(Outcome::Failed(err.code()));
                return chat_error_response(&err);
            }
            other => break other,
        }
    };
    let mut body = SseBody {
        rx,
        guard,
        meta,
        first: None,
        finished: false,
    };
    let mut head = BytesMut::new();
    sse_event(
        &mut head,
        &body
            .meta
            .chunk(json!({ "role": "assistant", "content": "" }), None),
    );
    let (rest, last) = body.render(first);
    if let Some(rest) = rest {
        head.extend_from_slice(&rest);
    }
    body.finished = last;
    body.first = Some(head.freeze());
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells nginx not to buffer this response.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// A non-streamed answer: the whole text in one `chat.completion`.
async fn whole(
    rx: &mut mpsc::Receiver<ChatEvent>,
    guard: &mut ChatGuard,
    meta: &Meta,
) -> HttpResponse {
    let mut text = String::new();
    loop {
        let Some(event) = rx.recv().await else {
            let err = ChatError::UpstreamBroken("the chat ended unexpectedly".into());
            guard.end(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        };
        match event.kind {
            EventKind::Start { .. } | EventKind::Retry { .. } | EventKind::Reasoning { .. } => {}
            EventKind::Delta { text: t, read_at } => {
                guard.delta(read_at);
                text.push_str(&t);
            }
            EventKind::Failed(err) => {
                guard.end(Outcome::Failed(err.code()));
                return chat_error_response(&err);
            }
            EventKind::Done {
                finish_reason,
                usage,
            } => {
                guard.end(Outcome::Done);
                return HttpResponse::Ok().json(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "finish_reason": finish_reason,
                    }],
                    "usage": usage,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn rules(models: &[String]) -> FrameRules<'_> {
        FrameRules {
            models,
            max_image_bytes: 1 << 20,
        }
    }

    fn models() -> Vec<String> {
        vec!["gpt-3.5-turbo".into(), "gpt-4".into()]
    }

    #[test]
    fn maps_top_level_params_into_the_chat_frame() {
        let body = br#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"temperature":0.5,
            "max_completion_tokens":7,"n":1,"user":"u1"}"#;
        let p = parse_request(body, "x1", &rules(&models())).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.request.model, "gpt-4");
        assert_eq!(p.request.params.temperature, Some(0.5));
        assert_eq!(p.request.params.max_tokens, Some(7));
    }

    #[test]
    fn refuses_what_the_websocket_refuses() {
        let bad = |b: &str| parse_request(b.as_bytes(), "x1", &rules(&models())).unwrap_err();
        assert_eq!(bad("nope").code(), ErrorCode::BadRequest);
        assert_eq!(bad(r#"{"messages":[]}"#).code(), ErrorCode::BadRequest);
        assert_eq!(
            bad(r#"{"model":"gpt-9","messages":[{"role":"user","content":"a"}]}"#).code(),
            ErrorCode::UnknownModel
        );
        assert_eq!(
            bad(r#"{"messages":[{"role":"user","content":"a"}],"temperature":3}"#).code(),
            ErrorCode::BadRequest
        );
        assert_eq!(
            bad(r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":{}}"#).code(),
            ErrorCode::BadRequest
        );
        assert_eq!(
            bad(r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#).code(),
            ErrorCode::BadRequest
        );
    }
}
