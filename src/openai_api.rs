//! An OpenAI-compatible HTTP face for the same chat machinery as `/ws`
//! (PROTOCOL.md §7): `POST /v1/chat/completions` (streamed as Server-Sent
//! Events or whole) and `GET /v1/models`, so any OpenAI client can use the
//! gateway.
//!
//! It is a faithful proxy: netfly checks what it owns (the model, limits,
//! tokens — [`protocol::parse_api_request`]) and forwards every other
//! request field unchanged (tools, response formats, logprobs, `n`, tool
//! messages, content parts, …); streamed chunks reach the client with
//! everything the upstream put in them, only `model` mapped back to the
//! client's name (spliced in place, no decode/encode per chunk). The chat
//! runs on this worker's [`Upstream`] actor like any WebSocket chat:
//! admission, retries, fallback, timeouts, the commit point and metrics are
//! shared. A tiny [`Collector`] actor is the chat's recipient; it forwards
//! events into a bounded channel that the HTTP response reads, so a client
//! that does not read makes the chat's send wait, which pauses the upstream
//! read. Dropping the response (the client went away) cancels the upstream
//! call.
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
//! The status is chosen when the first chunk that carries anything (or the
//! end of the chat) is known, so a failure the gateway retried away never
//! shows. An error after streaming began is one `data: {"error":{…}}` event,
//! and the stream ends without `[DONE]` (the official clients raise it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::admission::{self, ChatSlot};
use crate::chats::{next_chat_key, EventKind};
use crate::error::{ChatError, Fault, Outcome};
use crate::protocol;
use crate::shared::Shared;
use crate::upstream::{CancelChat, ChatCall, ChatEvent, ChatSink, StartChat, Upstream};

/// Chat events buffered between the chat task and the HTTP body; beyond
/// this the chat's send waits for the client to read.
const EVENT_BUFFER: usize = 16;

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
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
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

/// Reads the body, refusing one larger than `max` bytes or not complete
/// within `deadline` (408, and the connection is closed: issue 10 item 2).
async fn read_body(
    payload: web::Payload,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, HttpResponse> {
    match tokio::time::timeout(deadline, read_body_whole(payload, max)).await {
        Ok(read) => read,
        Err(_) => {
            let ms = deadline.as_millis();
            crate::logsafe::refusal(
                "body_timeout",
                format_args!("request body not complete within {ms} ms: 408"),
            );
            let mut resp = error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!("the request body did not arrive within {ms} ms"),
            );
            resp.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            Err(resp)
        }
    }
}

async fn read_body_whole(mut payload: web::Payload, max: usize) -> Result<Bytes, HttpResponse> {
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

    /// Ends the chat from this side: its upstream request is dropped.
    fn abort(&mut self, outcome: Outcome) {
        self.end(outcome);
        self.upstream.do_send(CancelChat { key: self.key });
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

fn sse_data(out: &mut BytesMut, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// An SSE error event (after streaming began).
fn sse_error(out: &mut BytesMut, err: &ChatError) {
    let body = error_body("server_error", err.code().as_str(), &err.message());
    sse_data(out, &body.to_string());
}

/// The streamed response body: each upstream chunk as it came (model mapped
/// back), `[DONE]` at the end, or an error event.
struct SseBody {
    rx: mpsc::Receiver<ChatEvent>,
    guard: ChatGuard,
    first: Option<Bytes>,
    finished: bool,
}

impl SseBody {
    /// Appends the bytes for one event to `out`; returns whether it ended
    /// the stream.
    fn render(&mut self, kind: EventKind, out: &mut BytesMut) -> bool {
        match kind {
            EventKind::Chunk {
                data,
                content,
                read_at,
            } => {
                sse_data(out, &data);
                if content.is_some() {
                    self.guard.delta(read_at);
                }
                false
            }
            EventKind::Done { .. } => {
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.guard.end(Outcome::Done);
                true
            }
            EventKind::Failed(err) => {
                sse_error(out, &err);
                self.guard.end(Outcome::Failed(err.code()));
                true
            }
            // Not sent for a streamed `/v1` chat (or not shown to its client).
            EventKind::Start { .. }
            | EventKind::Retry { .. }
            | EventKind::Reasoning { .. }
            | EventKind::Delta { .. }
            | EventKind::Whole { .. } => false,
        }
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let mut out = BytesMut::new();
        // Everything already waiting goes out as one write.
        while !self.finished {
            let event = match self.rx.poll_recv(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => {
                    // The chat ended without a terminal event: say so.
                    let err = ChatError::UpstreamBroken(Fault::EndedUnexpectedly);
                    self.finished = true;
                    self.guard.end(Outcome::Failed(err.code()));
                    sse_error(&mut out, &err);
                    break;
                }
            };
            self.finished = self.render(event.kind, &mut out);
        }
        if !out.is_empty() {
            Poll::Ready(Some(Ok(out.freeze())))
        } else if self.finished {
            Poll::Ready(None)
        } else {
            Poll::Pending
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
    // Origin policy, JSON only, declared size (issue 10 item 7, admission.rs).
    if let Err(refused) = admission::admit_api_call(&req, &shared.config) {
        return error_response(refused.status(), refused.code(), &refused.to_string());
    }
    if !authorized(&req, shared) {
        return unauthorized();
    }
    if shared.draining() {
        let err = ChatError::UpstreamUnavailable(Fault::ShuttingDown);
        return chat_error_response(&err);
    }
    let config = &shared.config;
    let body = match read_body(payload, config.max_frame_bytes, config.client_body_timeout).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request = match protocol::parse_api_request(&body, &shared.config.frame_rules()) {
        Ok(r) => r,
        Err(err) => {
            shared.metrics.chat_ended(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        }
    };
    let client = admission::api_client(&req, &shared.config);
    let slot = match shared.admission.admit_chat(&client).await {
        Ok(slot) => slot,
        Err(err) => return chat_error_response(&err),
    };
    let id = format!(
        "chatcmpl-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    );
    let key = next_chat_key();
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let collector = Collector { tx }.start();
    let mut guard = ChatGuard {
        key,
        upstream: state.upstream.clone(),
        slot,
        ended: false,
    };
    let stream = request.stream;
    let model = request.model.clone();
    state.upstream.do_send(StartChat {
        key,
        call: ChatCall::Api {
            id: id.clone(),
            request,
        },
        sink: ChatSink::Events {
            key,
            to: collector.recipient(),
        },
    });

    if !stream {
        let max = shared.config.max_upstream_body_bytes;
        return whole(&mut rx, &mut guard, &id, &model, max).await;
    }

    // Hold the status until the first chunk (or the end): a failure the
    // gateway retried away never shows, and one it could not gets its status.
    let mut body = SseBody {
        rx,
        guard,
        first: None,
        finished: false,
    };
    let mut head = BytesMut::new();
    loop {
        let Some(event) = body.rx.recv().await else {
            let err = ChatError::UpstreamBroken(Fault::EndedUnexpectedly);
            body.guard.end(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        };
        match event.kind {
            EventKind::Failed(err) => {
                body.guard.end(Outcome::Failed(err.code()));
                return chat_error_response(&err);
            }
            kind => {
                body.finished = body.render(kind, &mut head);
                if !head.is_empty() {
                    break;
                }
            }
        }
    }
    body.first = Some(head.freeze());
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells nginx not to buffer this response.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// A non-streamed answer: the upstream's completion, `model` mapped back —
/// or, when the upstream streamed anyway, one assembled from its chunks (at
/// most `max` bytes of text, `--max-upstream-body-bytes`, like a whole body).
async fn whole(
    rx: &mut mpsc::Receiver<ChatEvent>,
    guard: &mut ChatGuard,
    id: &str,
    model: &str,
    max: usize,
) -> HttpResponse {
    let mut text = String::new();
    let mut completion: Option<String> = None;
    loop {
        let Some(event) = rx.recv().await else {
            let err = ChatError::UpstreamBroken(Fault::EndedUnexpectedly);
            guard.end(Outcome::Failed(err.code()));
            return chat_error_response(&err);
        };
        match event.kind {
            EventKind::Whole { body } => completion = Some(body),
            EventKind::Chunk {
                content, read_at, ..
            } => {
                if let Some(c) = content {
                    if text.len() + c.len() > max {
                        let err = ChatError::UpstreamBroken(Fault::AnswerTooLarge { max });
                        guard.abort(Outcome::Failed(err.code()));
                        return chat_error_response(&err);
                    }
                    guard.delta(read_at);
                    text.push_str(&c);
                }
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
                let body = completion.unwrap_or_else(|| {
                    json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": now_secs(),
                        "model": model,
                        "choices": [{
                            "index": 0,
                            "message": { "role": "assistant", "content": text },
                            "finish_reason": finish_reason,
                        }],
                        "usage": usage,
                    })
                    .to_string()
                });
                return HttpResponse::Ok()
                    .content_type("application/json")
                    .body(body);
            }
            EventKind::Start { .. }
            | EventKind::Retry { .. }
            | EventKind::Reasoning { .. }
            | EventKind::Delta { .. } => {}
        }
    }
}
