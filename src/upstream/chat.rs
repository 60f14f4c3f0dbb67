//! One chat, from its first attempt to its terminal event: POSTs to the
//! upstreams of its route in order, retries transient failures with backoff
//! until the commit point, reads the SSE body incrementally and hands every
//! fragment to its recipient with a bounded, awaited send.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::header;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::Value;

use super::completion::{self, Decoded, WholeBody};
use super::framing;
use super::redact::{clip, redact, redact_owned, StreamRedactor, UpstreamMessage};
use super::retry::{self, AttemptError, Verdict};
use super::sse;
use super::target::{Target, Targets};
use super::{ChatCall, ChatSink};
use crate::chats::EventKind;
use crate::error::{ChatError, Outcome};
use crate::protocol::{StreamOptions, UpstreamMessages, UpstreamRequest};
use crate::shared::Shared;

/// Largest error body read from a failed upstream answer.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// After `[DONE]`, how long the rest of the body may take to arrive so that
/// the connection can go back to the pool instead of being closed.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(500);

/// How one attempt ended.
enum AttemptEnd {
    Finished {
        finish_reason: String,
        usage: Option<Value>,
        /// The rest of the body, to be drained for connection reuse.
        rest: Option<Resp>,
    },
    Failed(AttemptError),
    /// The client is gone: stop without a terminal event.
    ClientGone,
}

/// How a chat's attempts ended.
enum Terminal {
    Done {
        finish_reason: String,
        usage: Option<Value>,
    },
    Failed(ChatError),
}

/// Progress of one chat across attempts.
struct Progress {
    started: bool,
    /// The commit point: a delta has gone to the client.
    committed: bool,
    attempts: u32,
    deltas: u64,
    host: String,
    /// How the chat ended; `None` while it runs (and when it was aborted:
    /// cancelled).
    outcome: Option<Outcome>,
}

/// One chat, from its first attempt to its terminal event.
pub(super) struct ChatTask {
    pub(super) shared: Arc<Shared>,
    pub(super) targets: Arc<Targets>,
    pub(super) clients: Rc<[awc::Client]>,
    pub(super) sink: ChatSink,
    pub(super) call: ChatCall,
}

/// Logs the chat's outcome once, however the task ends (even when aborted).
struct OutcomeLine {
    id: String,
    model: String,
    sink: ChatSink,
    began: Instant,
    progress: Progress,
}

impl Drop for OutcomeLine {
    fn drop(&mut self) {
        let p = &self.progress;
        // Not set by the task: it was stopped (cancel, close, shutdown);
        // the chat's log knows how it ended.
        let outcome = p
            .outcome
            .or_else(|| self.sink.outcome())
            .unwrap_or(Outcome::Cancelled);
        log::info!(
            "chat id={:?} model={} upstream={} attempts={} deltas={} duration_ms={} outcome={}",
            self.id,
            self.model,
            if p.host.is_empty() { "-" } else { &p.host },
            p.attempts,
            p.deltas,
            self.began.elapsed().as_millis(),
            outcome
        );
    }
}

/// What awc's `send` resolves to: the body decoded per its
/// `Content-Encoding` (gzip, deflate, br, zstd).
type Resp = awc::ClientResponse<actix_http::encoding::Decoder<actix_http::Payload>>;

/// Most events parsed from already-received chunks before they are forwarded.
const MAX_BATCH: usize = 256;

impl ChatTask {
    /// Hands one event on (see [`ChatSink::emit`]).
    async fn emit(&self, kind: EventKind) -> bool {
        self.sink.emit(&mut vec![kind]).await
    }

    pub(super) async fn run(self) {
        if self.shared.config.fault_injection {
            if let ChatCall::Frame(r) = &self.call {
                if r.messages
                    .iter()
                    .any(|m| m.content.text().contains("netfly-fault:panic-chat"))
                {
                    panic!("fault injection: chat task panic");
                }
            }
        }
        let mut log = OutcomeLine {
            sink: self.sink.clone(),
            id: self.call.id().to_owned(),
            model: self.call.model().to_owned(),
            began: Instant::now(),
            progress: Progress {
                started: false,
                committed: false,
                attempts: 0,
                deltas: 0,
                host: String::new(),
                outcome: None,
            },
        };
        let end = self.attempts(&mut log.progress).await;
        let p = &mut log.progress;
        let last = match end {
            None => {
                p.outcome = Some(Outcome::Disconnected);
                return;
            }
            Some(Terminal::Done {
                finish_reason,
                usage,
            }) => {
                p.outcome = Some(Outcome::Done);
                EventKind::Done {
                    finish_reason,
                    usage,
                }
            }
            Some(Terminal::Failed(err)) => {
                p.outcome = Some(Outcome::Failed(err.code()));
                EventKind::Failed(err)
            }
        };
        let _ = self.emit(last).await;
    }

    /// Runs attempts until one finishes, a failure is terminal or every
    /// upstream is exhausted. Returns the terminal event, or `None` when the
    /// client went away.
    async fn attempts(&self, p: &mut Progress) -> Option<Terminal> {
        let targets = &self.targets;
        let mut last: Option<AttemptError> = None;
        for &ti in targets.route(self.call.model()) {
            let target = targets.get(ti);
            let client = &self.clients[ti];
            p.host.clone_from(&target.host);
            let body = match self.body_for(target) {
                Ok(b) => b,
                Err(e) => return Some(Terminal::Failed(e)),
            };
            let policy = &target.policy;
            for k in 1..=policy.max_attempts {
                if let Some(err) = &last {
                    // Retry k−1 on this upstream, or the first try of the next one.
                    let delay = if k > 1 {
                        policy
                            .backoff
                            .delay_for(k - 1, fastrand::f64(), err.retry_after())
                    } else {
                        Duration::ZERO
                    };
                    let reason = if k > 1 {
                        err.to_string()
                    } else {
                        format!("falling back to {} after: {err}", target.host)
                    };
                    let retry = EventKind::Retry {
                        attempt: p.attempts + 1,
                        delay,
                        reason,
                    };
                    if !self.emit(retry).await {
                        return None;
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                p.attempts += 1;
                // Every upstream-supplied message is already an
                // `UpstreamMessage` (redacted, clipped) in `end`.
                let end = self.attempt(target, client, body.clone(), p).await;
                self.shared.metrics.attempt(attempt_result(&end));
                match end {
                    AttemptEnd::Finished {
                        finish_reason,
                        usage,
                        rest,
                    } => {
                        if let Some(rest) = rest {
                            // Let the connection go back to the pool once the
                            // upstream has closed the body; never delay the client.
                            actix_rt::spawn(drain(rest));
                        }
                        return Some(Terminal::Done {
                            finish_reason,
                            usage,
                        });
                    }
                    AttemptEnd::ClientGone => return None,
                    AttemptEnd::Failed(err) => {
                        log::debug!(
                            "chat {:?} attempt {} on {} failed: {}",
                            self.call.id(),
                            p.attempts,
                            target.host,
                            err
                        );
                        match retry::classify(&err, p.committed) {
                            Verdict::Fail(e) => return Some(Terminal::Failed(e)),
                            Verdict::Retry => last = Some(err),
                        }
                    }
                }
            }
        }
        let err = last.unwrap_or_else(|| {
            AttemptError::Connect(format!("no upstream serves model {:?}", self.call.model()))
        });
        Some(Terminal::Failed(retry::exhausted(&err, p.attempts)))
    }

    /// The request body for `target`: its model name, the client's params
    /// over the target's defaults; a `/v1` body as the client sent it
    /// otherwise.
    fn body_for(&self, target: &Target) -> Result<Bytes, ChatError> {
        let client_model = self.call.model();
        let model = target
            .models
            .upstream_model(client_model)
            .unwrap_or(client_model);
        let encoded = match &self.call {
            ChatCall::Frame(request) => {
                let params = request.params.merged_over(&target.defaults);
                serde_json::to_vec(&UpstreamRequest {
                    model,
                    messages: UpstreamMessages {
                        messages: &request.messages,
                        developer_as_system: target.developer_as_system,
                    },
                    stream: true,
                    stream_options: target.include_usage.then_some(StreamOptions {
                        include_usage: true,
                    }),
                    params: &params,
                })
            }
            ChatCall::Api { request, .. } => {
                let mut fields = request.fields.clone();
                fields.insert("model".into(), Value::from(model));
                if let Ok(Value::Object(defaults)) = serde_json::to_value(&target.defaults) {
                    for (k, v) in defaults {
                        fields.entry(k).or_insert(v);
                    }
                }
                if target.developer_as_system {
                    if let Some(Value::Array(messages)) = fields.get_mut("messages") {
                        for m in messages {
                            if m.get("role").and_then(Value::as_str) == Some("developer") {
                                m["role"] = Value::from("system");
                            }
                        }
                    }
                }
                serde_json::to_vec(&fields)
            }
        };
        encoded
            .map(Bytes::from)
            .map_err(|e| ChatError::BadRequest(format!("request could not be encoded: {e}")))
    }

    /// One POST to `target` and, on 2xx, the whole stream.
    async fn attempt(
        &self,
        target: &Target,
        client: &awc::Client,
        body: Bytes,
        p: &mut Progress,
    ) -> AttemptEnd {
        let mut req = client
            .post(&target.url)
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::ACCEPT, "text/event-stream"))
            .insert_header((header::ACCEPT_ENCODING, "identity"))
            .insert_header((
                header::USER_AGENT,
                concat!("netfly/", env!("CARGO_PKG_VERSION")),
            ))
            .timeout(target.policy.first_byte_timeout);
        for (name, value) in &target.headers {
            req = req.insert_header((name.clone(), value.clone()));
        }
        if let Some(key) = &target.api_key {
            req = req.bearer_auth(key);
        }
        let sent = Instant::now();
        let mut resp: Resp = match req.send_body(body).await {
            Ok(r) => r,
            Err(e) => return AttemptEnd::Failed(send_error(target, e)),
        };
        self.shared
            .metrics
            .upstream_first_byte_seconds
            .observe(sent.elapsed().as_secs_f64());
        let status = resp.status();
        if !status.is_success() {
            return AttemptEnd::Failed(status_error(target, &mut resp).await);
        }
        if let Some(problem) = unreadable_body(&resp) {
            return AttemptEnd::Failed(AttemptError::UnusableBody(problem));
        }
        let is_sse = match resp.headers().get(header::CONTENT_TYPE) {
            None => true,
            Some(v) => v
                .to_str()
                .map(|s| s.to_ascii_lowercase().contains("text/event-stream"))
                .unwrap_or(false),
        };
        if !is_sse {
            return self.whole_body(target, resp, p).await;
        }
        if !self.started(target, p).await {
            return AttemptEnd::ClientGone;
        }
        self.stream(target, resp, p).await
    }

    /// Sends `start` (an upstream answered 2xx), once per chat; false when
    /// nobody takes the chat's events any more.
    async fn started(&self, target: &Target, p: &mut Progress) -> bool {
        if p.started {
            return true;
        }
        p.started = true;
        self.emit(EventKind::Start {
            upstream: target.host.clone(),
            attempt: p.attempts,
        })
        .await
    }

    /// Reads the SSE body, forwarding every content fragment.
    async fn stream(&self, target: &Target, mut resp: Resp, p: &mut Progress) -> AttemptEnd {
        let idle = target.policy.idle_timeout;
        let mut parser = sse::Parser::with_limit(self.shared.config.max_upstream_event_bytes);
        // The key is redacted in the answer and in the reasoning, each a
        // text of its own.
        let secret = target.api_key.as_deref();
        let mut redactor = StreamRedactor::new(secret);
        let mut thinking = StreamRedactor::new(secret);
        let mut events = Vec::new();
        let mut finish_reason: Option<String> = None;
        let mut usage: Option<Value> = None;
        let mut saw_chunk = false;
        let mut batch: Vec<EventKind> = Vec::new();
        let passthrough = self.call.passthrough();
        // `/v1` chunks before the first that carries anything.
        let mut held: Vec<EventKind> = Vec::new();
        loop {
            let bytes = match tokio::time::timeout(idle, resp.next()).await {
                Err(_) => return AttemptEnd::Failed(AttemptError::IdleTimeout(idle)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return AttemptEnd::Failed(payload_error(&e)),
                Ok(Some(Ok(b))) => b,
            };
            let read_at = Instant::now();
            parser.push(&bytes, &mut events);
            // Upstreams send one HTTP chunk per event, and awc yields one
            // chunk per `next()`: take every chunk already received too, so
            // that a burst is forwarded as one batch (and one socket write).
            let mut ended: Option<Result<(), AttemptError>> = None;
            while events.len() < MAX_BATCH && parser.overflow().is_none() {
                match resp.next().now_or_never() {
                    Some(Some(Ok(more))) => parser.push(&more, &mut events),
                    Some(Some(Err(e))) => {
                        ended = Some(Err(payload_error(&e)));
                        break;
                    }
                    Some(None) => {
                        ended = Some(Ok(()));
                        break;
                    }
                    None => break,
                }
            }
            // The fragments of one read are handed on together (one socket
            // write, not one per delta); the sink's wait applies to the batch.
            for ev in events.drain(..) {
                match completion::decode_event(&ev) {
                    Ok(Decoded::Heartbeat) => {}
                    Ok(Decoded::Done) => {
                        batch.append(&mut held);
                        // What the redactors still hold is the end of the
                        // text: it goes out with the batch.
                        flush_redacted(&mut thinking, &mut redactor, &mut batch, read_at, p);
                        if !self.sink.emit(&mut batch).await {
                            return AttemptEnd::ClientGone;
                        }
                        return AttemptEnd::Finished {
                            finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
                            usage,
                            // Already read to its end: nothing left to drain
                            // (awc panics when a finished payload is polled).
                            rest: if ended.is_some() { None } else { Some(resp) },
                        };
                    }
                    Ok(Decoded::Chunk {
                        content,
                        reasoning,
                        payload,
                        finish_reason: fr,
                        usage: u,
                        model,
                    }) => {
                        saw_chunk = true;
                        if fr.is_some() {
                            finish_reason = fr;
                        }
                        if u.is_some() {
                            usage = u;
                        }
                        if passthrough {
                            p.deltas += u64::from(content.is_some());
                            // The chunk as the client gets it; held until one
                            // carries something (the commit point), so that a
                            // failed attempt shows nothing. The key is
                            // redacted where a chunk holds it whole (the raw
                            // chunk is not re-encoded, so a key split across
                            // chunks is not seen here).
                            let data = model.replace(ev.data.trim(), self.call.model());
                            let data = redact_owned(data, secret);
                            let content = content.map(|c| redact_owned(c, secret));
                            held.push(EventKind::Chunk {
                                data,
                                content,
                                read_at,
                            });
                            if payload {
                                p.committed = true;
                                batch.append(&mut held);
                            }
                            continue;
                        }
                        // Only what the redactors let through is sent (and
                        // counts for the commit point).
                        let metrics = &self.shared.metrics;
                        for text in reasoning {
                            let text = thinking.push(text);
                            if !text.is_empty() {
                                p.committed = true;
                                metrics.reasoning_deltas_total.inc();
                                batch.push(EventKind::Reasoning { text, read_at });
                            }
                        }
                        let text = content.map(|c| redactor.push(c)).unwrap_or_default();
                        if !text.is_empty() {
                            p.committed = true;
                            p.deltas += 1;
                            batch.push(EventKind::Delta { text, read_at });
                        }
                    }
                    Err(e) => {
                        if !self.sink.emit(&mut batch).await {
                            return AttemptEnd::ClientGone;
                        }
                        let message = e.message(target.api_key.as_deref());
                        return AttemptEnd::Failed(AttemptError::StreamError(message));
                    }
                }
            }
            if !self.sink.emit(&mut batch).await {
                return AttemptEnd::ClientGone;
            }
            if let Some(over) = parser.overflow() {
                return AttemptEnd::Failed(AttemptError::TooLarge(format!(
                    "{over} (--max-upstream-event-bytes)"
                )));
            }
            match ended {
                None => {}
                Some(Ok(())) => break,
                Some(Err(e)) => return AttemptEnd::Failed(e),
            }
        }
        // An unterminated last event is dropped, as browsers do.
        parser.finish();
        flush_redacted(&mut thinking, &mut redactor, &mut batch, Instant::now(), p);
        if !batch.is_empty() && !self.sink.emit(&mut batch).await {
            return AttemptEnd::ClientGone;
        }
        if saw_chunk {
            if !held.is_empty() && !self.sink.emit(&mut held).await {
                return AttemptEnd::ClientGone;
            }
            AttemptEnd::Finished {
                finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
                usage,
                rest: None,
            }
        } else {
            AttemptEnd::Failed(AttemptError::Broken(
                "the upstream closed the stream before sending any chunk".into(),
            ))
        }
    }

    /// A 2xx answer that is not an event stream.
    async fn whole_body(&self, target: &Target, mut resp: Resp, p: &mut Progress) -> AttemptEnd {
        let idle = target.policy.idle_timeout;
        let limit = self.shared.config.max_upstream_body_bytes;
        let secret = target.api_key.as_deref();
        let body = match tokio::time::timeout(idle, resp.body().limit(limit)).await {
            Err(_) => return AttemptEnd::Failed(AttemptError::IdleTimeout(idle)),
            Ok(Err(awc::error::PayloadError::Overflow)) => {
                return AttemptEnd::Failed(AttemptError::TooLarge(format!(
                    "a body over {limit} bytes (--max-upstream-body-bytes)"
                )))
            }
            Ok(Err(e)) => return AttemptEnd::Failed(payload_error(&e)),
            Ok(Ok(b)) => b,
        };
        match completion::decode_whole_body(&body) {
            WholeBody::Error { message } => AttemptEnd::Failed(AttemptError::RejectedBody(
                UpstreamMessage::new(&message, secret),
            )),
            WholeBody::Other(what) => AttemptEnd::Failed(AttemptError::UnusableBody(what)),
            WholeBody::Completion {
                content,
                finish_reason,
                usage,
            } => {
                if !self.started(target, p).await {
                    return AttemptEnd::ClientGone;
                }
                if self.call.passthrough() {
                    // The completion as the client gets it, `model` mapped
                    // back (once per chat: a re-encode is fine here).
                    let body = match serde_json::from_slice::<Value>(&body) {
                        Ok(Value::Object(mut map)) => {
                            if map.contains_key("model") {
                                map.insert("model".into(), Value::from(self.call.model()));
                            }
                            Value::Object(map).to_string()
                        }
                        _ => String::from_utf8_lossy(&body).into_owned(),
                    };
                    let body = redact(&body, secret);
                    p.committed = true;
                    if !self.emit(EventKind::Whole { body }).await {
                        return AttemptEnd::ClientGone;
                    }
                    return AttemptEnd::Finished {
                        finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
                        usage,
                        rest: None,
                    };
                }
                let content = redact(&content, secret);
                if !content.is_empty() {
                    p.committed = true;
                    let delta = EventKind::Delta {
                        text: content,
                        read_at: Instant::now(),
                    };
                    if !self.emit(delta).await {
                        return AttemptEnd::ClientGone;
                    }
                    p.deltas += 1;
                }
                AttemptEnd::Finished {
                    finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
                    usage,
                    rest: None,
                }
            }
        }
    }
}

/// A non-2xx answer: its message and `Retry-After`.
async fn status_error(target: &Target, resp: &mut Resp) -> AttemptError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry::parse_retry_after);
    let secret = target.api_key.as_deref();
    if resp.status().is_redirection() {
        // Not followed (the client has redirects disabled): say where it
        // pointed, so the operator can fix the URL.
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let raw = match location {
            Some(l) => format!("redirect to {l} not followed: check the upstream URL"),
            None => String::new(),
        };
        return AttemptError::Status {
            status,
            message: UpstreamMessage::new(&raw, secret),
            retry_after,
        };
    }
    let idle = target.policy.idle_timeout;
    let body = match tokio::time::timeout(idle, resp.body().limit(MAX_ERROR_BODY)).await {
        Ok(Ok(b)) => b,
        _ => Bytes::new(),
    };
    let message = UpstreamMessage::new(&completion::error_message_from_body(&body), secret);
    AttemptError::Status {
        status,
        message,
        retry_after,
    }
}

fn send_error(target: &Target, e: awc::error::SendRequestError) -> AttemptError {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => AttemptError::FirstByteTimeout(target.policy.first_byte_timeout),
        E::Connect(c) => AttemptError::Connect(connect_reason(&c)),
        other => AttemptError::Connect(other.to_string()),
    }
}

/// The `result` label of one attempt for the metrics.
fn attempt_result(end: &AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Finished { .. } => "ok",
        AttemptEnd::ClientGone => "client_gone",
        AttemptEnd::Failed(e) => match e {
            AttemptError::Connect(_) => "connect",
            AttemptError::FirstByteTimeout(_) | AttemptError::IdleTimeout(_) => "timeout",
            AttemptError::Status { status: 429, .. } => "http_429",
            AttemptError::Status { status, .. } if *status >= 500 => "http_5xx",
            AttemptError::Status { .. } => "http_4xx",
            AttemptError::StreamError(_) | AttemptError::RejectedBody(_) => "upstream_error",
            AttemptError::Broken(_) | AttemptError::UnusableBody(_) => "broken",
            AttemptError::TooLarge(_) => "too_large",
        },
    }
}

/// A short, lower-case reason for a connect failure ("connection refused").
fn connect_reason(e: &awc::error::ConnectError) -> String {
    use awc::error::ConnectError as C;
    match e {
        C::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            _ => io.to_string(),
        },
        C::Timeout => "connect timeout".into(),
        C::Resolver(r) => format!("DNS lookup failed: {r}"),
        other => other.to_string(),
    }
}

/// The end of the answer: what the redactors still hold (a proper prefix
/// of the key at most) goes out, reasoning first.
fn flush_redacted(
    thinking: &mut StreamRedactor,
    redactor: &mut StreamRedactor,
    batch: &mut Vec<EventKind>,
    read_at: Instant,
    p: &mut Progress,
) {
    let reasoning = thinking.finish();
    if !reasoning.is_empty() {
        p.committed = true;
        batch.push(EventKind::Reasoning {
            text: reasoning,
            read_at,
        });
    }
    let text = redactor.finish();
    if !text.is_empty() {
        p.committed = true;
        p.deltas += 1;
        batch.push(EventKind::Delta { text, read_at });
    }
}

/// Why a body read failed, in words: the I/O error itself when there is
/// one (e.g. the framing guard's "upstream closed the connection before the
/// end of the body"), not awc's wrapping of it.
fn payload_error(e: &awc::error::PayloadError) -> AttemptError {
    use awc::error::PayloadError as P;
    let reason = match e {
        P::Incomplete(Some(io)) | P::Io(io) => io.to_string(),
        P::Incomplete(None) => framing::CUT_BODY.to_string(),
        other => other.to_string(),
    };
    AttemptError::Broken(reason)
}

/// A 2xx answer whose body the gateway cannot read, and why: a content
/// coding awc does not decode, or an HTTP/1.1 body framed by the close of
/// a TLS connection (awc reads it as empty; see [`framing::awc_reads_no_body`]).
fn unreadable_body(resp: &Resp) -> Option<String> {
    if let Some(coding) = resp.headers().get(header::CONTENT_ENCODING) {
        let coding = String::from_utf8_lossy(coding.as_bytes())
            .trim()
            .to_ascii_lowercase();
        if !framing::DECODED_CODINGS.contains(&coding.as_str()) {
            return Some(format!(
                "content-encoding `{}` is not supported (gzip, deflate, br and zstd are)",
                clip(&coding, 40)
            ));
        }
    }
    if framing::awc_reads_no_body(resp.version(), resp.status(), resp.headers()) {
        return Some(
            "an HTTP/1.1 body with neither Content-Length nor chunked coding over TLS, \
             which cannot be read to its end (see the README: upstream framing)"
                .to_string(),
        );
    }
    None
}

/// Reads what is left of a finished body (bounded in time and size) so the
/// connection can be reused; drops it otherwise.
async fn drain(mut resp: Resp) {
    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
        let mut left = MAX_ERROR_BODY;
        while let Some(Ok(b)) = resp.next().await {
            if b.len() >= left {
                break;
            }
            left -= b.len();
        }
    })
    .await;
}
