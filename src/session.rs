//! The Session actor: one per WebSocket (PROTOCOL.md §3).
//!
//! It parses client frames, enforces the per-socket limits, keeps the
//! heartbeat, knows which chat ids are in flight and turns chat events into
//! text frames. When it stops, every chat it started is cancelled. All of
//! actix-web-actors' API stays inside this file, so moving to `actix-ws`
//! later touches nothing else.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use actix::dev::MessageResponse;
use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;

use crate::admission::{self, ChatSlot, SocketPermit};
use crate::error::{Busy, ChatError, Outcome};
use crate::protocol::{self, ClientFrame, FrameError, ServerFrame};
use crate::shared::Shared;
use crate::upstream::{next_chat_key, CancelChat, ChatEvent, EventKind, StartChat, Upstream};

/// Unsent output above which a socket's chats stop reading their upstream
/// until the browser catches up (a slow browser slows the upstream read).
const LOW_WATER: u64 = 1024 * 1024;
/// Unsent output above which the socket is closed with 1008.
const HIGH_WATER: u64 = 4 * 1024 * 1024;

/// One chat in flight on this socket.
struct Slot {
    key: u64,
    id: String,
    model: String,
    /// Its place in the gateway's limits and its metrics.
    chat: ChatSlot,
}

/// Bytes queued on the socket versus bytes handed to the HTTP layer; the
/// difference is what a browser has not taken yet.
#[derive(Default)]
pub struct Output {
    queued: Cell<u64>,
    flushed: Cell<u64>,
    drained: Notify,
    /// The session has stopped: nothing will drain any more.
    closed: Cell<bool>,
}

impl Output {
    fn unsent(&self) -> u64 {
        self.queued.get().saturating_sub(self.flushed.get())
    }
}

/// The socket's outgoing byte stream, counting what leaves.
struct Counted {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>,
    output: Rc<Output>,
}

impl Stream for Counted {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            let out = &self.output;
            let before = out.unsent();
            out.flushed.set(out.flushed.get() + bytes.len() as u64);
            // Chats wait only while the output is above the low-water mark:
            // wake them when it crosses back below, not on every write.
            if before >= LOW_WATER && out.unsent() < LOW_WATER {
                out.drained.notify_waiters();
            }
        }
        polled
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The connection is gone (closed, reset or aborted by the kernel):
        // nothing will drain any more, so no chat may wait for it.
        self.output.closed.set(true);
        self.output.drained.notify_waiters();
    }
}

/// The size on the wire of an unmasked server frame carrying `len` bytes.
fn frame_len(len: usize) -> u64 {
    let header = if len < 126 {
        2
    } else if len <= 0xffff {
        4
    } else {
        10
    };
    (header + len) as u64
}

/// A message being assembled from continuation frames.
struct Partial {
    binary: bool,
    data: Vec<u8>,
}

/// One WebSocket connection.
pub struct Session {
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
    chats: Vec<Slot>,
    last_seen: Instant,
    partial: Option<Partial>,
    output: Rc<Output>,
    /// The socket's place in the connection limits, and who the client is.
    permit: SocketPermit,
}

/// Upgrades `req` to a WebSocket served by a new Session, which holds
/// `permit` for as long as the socket is open.
pub fn start(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
    permit: SocketPermit,
) -> Result<HttpResponse, actix_web::Error> {
    let max = shared.config.max_frame_bytes;
    let output = Rc::new(Output::default());
    let session = Session {
        shared,
        upstream,
        chats: Vec::new(),
        last_seen: Instant::now(),
        partial: None,
        output: output.clone(),
        permit,
    };
    let mut response = ws::handshake(req)?;
    let codec = actix_http::ws::Codec::new().max_size(max);
    let frames = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(Counted {
        inner: Box::pin(frames),
        output,
    }))
}

impl Session {
    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, frame: &ServerFrame<'_>) {
        self.write(ctx, frame.to_json());
    }

    /// Queues one text frame, accounting for it in the unsent output.
    fn write(&self, ctx: &mut ws::WebsocketContext<Self>, text: String) {
        let out = &self.output;
        out.queued.set(out.queued.get() + frame_len(text.len()));
        ctx.text(text);
    }

    /// Removes the chat at `pos`, counting how it ended.
    fn finish(&mut self, pos: usize, outcome: Outcome) -> Slot {
        let mut slot = self.chats.remove(pos);
        slot.chat.set_outcome(outcome);
        slot
    }

    fn send_error(&self, ctx: &mut ws::WebsocketContext<Self>, id: Option<&str>, err: &ChatError) {
        self.send(ctx, &ServerFrame::error(id, err));
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.chats.iter().position(|s| s.id == id)
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if self.shared.config.fault_injection && text.contains("netfly-fault:panic-session") {
            panic!("fault injection: session panic");
        }
        match protocol::parse_client_frame(text, &self.shared.config.models) {
            Ok(ClientFrame::Chat(request)) => {
                if self.position(&request.id).is_some() {
                    let err = ChatError::BadRequest(format!(
                        "duplicate id {:?}: a chat with this id is already in flight",
                        request.id
                    ));
                    self.send_error(ctx, None, &err);
                    return;
                }
                let max = self.shared.config.max_streams_per_connection;
                let admitted = if self.chats.len() >= max {
                    let err = ChatError::Busy(Busy::StreamsPerSocket(max));
                    self.shared.metrics.chat_ended(Outcome::Failed(err.code()));
                    Err(err)
                } else {
                    admission::admit_chat(&self.shared, &self.permit.client)
                };
                let chat = match admitted {
                    Ok(chat) => chat,
                    Err(err) => {
                        self.send_error(ctx, Some(&request.id), &err);
                        return;
                    }
                };
                let key = next_chat_key();
                self.chats.push(Slot {
                    key,
                    id: request.id.clone(),
                    model: request.model.clone(),
                    chat,
                });
                self.upstream.do_send(StartChat {
                    key,
                    request,
                    events: ctx.address().recipient(),
                });
            }
            Ok(ClientFrame::Cancel { id }) => {
                // Cancelling a chat that is not in flight is ignored.
                if let Some(pos) = self.position(&id) {
                    let slot = self.finish(pos, Outcome::Cancelled);
                    self.upstream.do_send(CancelChat { key: slot.key });
                    self.send(
                        ctx,
                        &ServerFrame::Done {
                            id: &slot.id,
                            finish_reason: "cancelled",
                            usage: None,
                        },
                    );
                }
            }
            Err(FrameError { id, error }) => {
                // Never tie an error to a chat that is running under that id.
                let id = id.filter(|i| self.position(i).is_none());
                if id.is_some() {
                    self.shared
                        .metrics
                        .chat_ended(Outcome::Failed(error.code()));
                }
                self.send_error(ctx, id.as_deref(), &error);
            }
        }
    }

    fn on_binary(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let err = ChatError::BadRequest(
            "binary frames are not supported: send JSON objects as text frames".into(),
        );
        self.send_error(ctx, None, &err);
    }

    fn on_continuation(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.shared.config.max_frame_bytes;
        let (first, bytes, last) = match item {
            Item::FirstText(b) => (Some(false), b, false),
            Item::FirstBinary(b) => (Some(true), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        if let Some(binary) = first {
            self.partial = Some(Partial {
                binary,
                data: Vec::new(),
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            self.close(
                ctx,
                ws::CloseCode::Protocol,
                "continuation frame without a first frame",
            );
            return;
        };
        if partial.data.len() + bytes.len() > max {
            self.close(
                ctx,
                ws::CloseCode::Size,
                &format!("message larger than {max} bytes"),
            );
            return;
        }
        partial.data.extend_from_slice(&bytes);
        if !last {
            return;
        }
        let Some(done) = self.partial.take() else {
            return;
        };
        if done.binary {
            self.on_binary(ctx);
            return;
        }
        match String::from_utf8(done.data) {
            Ok(text) => self.on_text(&text, ctx),
            Err(_) => self.close(ctx, ws::CloseCode::Invalid, "text message is not UTF-8"),
        }
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.metrics.ws_connections.inc();
        let mut closing = self.shared.closing();
        ctx.spawn(
            async move {
                let _ = closing.wait_for(|c| *c).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.close(ctx, ws::CloseCode::Away, "server shutting down");
            }),
        );
        let config = &self.shared.config;
        self.send(
            ctx,
            &ServerFrame::Hello {
                models: &config.models,
                default_model: config.default_model(),
                max_streams: config.max_streams_per_connection,
            },
        );
        let timeout = config.client_timeout;
        ctx.run_interval(config.heartbeat_interval, move |act, ctx| {
            if act.last_seen.elapsed() > timeout {
                log::info!(
                    "websocket client silent for {} ms: dropped",
                    timeout.as_millis()
                );
                ctx.stop();
            } else {
                let out = &act.output;
                out.queued.set(out.queued.get() + frame_len(0));
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.metrics.ws_connections.dec();
        // Each chat's slot counts it as disconnected when dropped.
        for slot in self.chats.drain(..) {
            self.upstream.do_send(CancelChat { key: slot.key });
        }
        // Wake chats waiting for this socket to drain: it never will.
        self.output.closed.set(true);
        self.output.drained.notify_waiters();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.contained(ctx, |s, ctx| s.on_message(msg, ctx));
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The browser's side of the socket is gone.
        ctx.stop();
    }
}

impl Session {
    /// Runs `f`; a panic inside it closes this socket (1011) and cancels
    /// its chats, and never reaches the worker or any other socket.
    fn contained<F>(&mut self, ctx: &mut ws::WebsocketContext<Self>, f: F)
    where
        F: FnOnce(&mut Self, &mut ws::WebsocketContext<Self>),
    {
        let run = std::panic::AssertUnwindSafe(|| f(self, ctx));
        if std::panic::catch_unwind(run).is_err() {
            log::error!("a websocket session panicked; closing that socket only");
            self.close(ctx, ws::CloseCode::Error, "internal error");
        }
    }

    fn on_message(
        &mut self,
        msg: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.last_seen = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => self.on_binary(ctx),
            Ok(ws::Message::Continuation(item)) => self.on_continuation(item, ctx),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                let max = self.shared.config.max_frame_bytes;
                self.close(
                    ctx,
                    ws::CloseCode::Size,
                    &format!("frame larger than {max} bytes"),
                );
            }
            Err(e) => {
                log::debug!("websocket protocol error: {e}");
                self.close(ctx, ws::CloseCode::Protocol, "protocol error");
            }
        }
    }
}

/// The answer to a chat event: at once while the socket keeps up (the
/// common case: no task, no allocation), or once its unsent output is back
/// under the low-water mark. The chat's send awaits it, so its upstream read
/// pauses while the browser is behind.
pub enum Ack {
    Now,
    WhenDrained(Rc<Output>),
}

impl MessageResponse<Session, ChatEvent> for Ack {
    fn handle(
        self,
        _: &mut ws::WebsocketContext<Session>,
        tx: Option<actix::dev::OneshotSender<()>>,
    ) {
        let Some(tx) = tx else { return };
        match self {
            Ack::Now => {
                let _ = tx.send(());
            }
            Ack::WhenDrained(output) => {
                actix_rt::spawn(async move {
                    loop {
                        let drained = output.drained.notified();
                        if output.unsent() < LOW_WATER || output.closed.get() {
                            break;
                        }
                        drained.await;
                    }
                    let _ = tx.send(());
                });
            }
        }
    }
}

impl Handler<ChatEvent> for Session {
    type Result = Ack;

    fn handle(&mut self, msg: ChatEvent, ctx: &mut Self::Context) -> Self::Result {
        self.contained(ctx, |s, ctx| s.on_event(msg, ctx));
        if self.output.unsent() < LOW_WATER {
            Ack::Now
        } else {
            Ack::WhenDrained(self.output.clone())
        }
    }
}

impl Session {
    fn on_event(&mut self, msg: ChatEvent, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(pos) = self.chats.iter().position(|s| s.key == msg.key) else {
            return; // cancelled or finished: late events are dropped
        };
        let slot = &mut self.chats[pos];
        let id = slot.id.as_str();
        let text = match &msg.kind {
            EventKind::Start { upstream, attempt } => ServerFrame::Start {
                id,
                model: &slot.model,
                upstream,
                attempt: *attempt,
            }
            .to_json(),
            EventKind::Retry {
                attempt,
                delay,
                reason,
            } => ServerFrame::Retry {
                id,
                attempt: *attempt,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason,
            }
            .to_json(),
            EventKind::Delta { text, read_at } => {
                let frame = ServerFrame::Delta { id, content: text }.to_json();
                slot.chat.delta_sent(*read_at);
                frame
            }
            EventKind::Done {
                finish_reason,
                usage,
            } => ServerFrame::Done {
                id,
                finish_reason,
                usage: usage.as_ref(),
            }
            .to_json(),
            EventKind::Failed(err) => ServerFrame::error(Some(id), err).to_json(),
        };
        self.write(ctx, text);
        match &msg.kind {
            EventKind::Done { .. } => {
                self.finish(pos, Outcome::Done);
            }
            EventKind::Failed(err) => {
                self.finish(pos, Outcome::Failed(err.code()));
            }
            _ => {}
        }
        if self.output.unsent() > HIGH_WATER {
            log::warn!(
                "websocket closed: {} bytes unsent (browser not reading)",
                self.output.unsent()
            );
            self.shared.metrics.ws_slow_consumer_closed_total.inc();
            self.close(
                ctx,
                ws::CloseCode::Policy,
                "too much unsent output: the client is not reading",
            );
        }
    }
}
