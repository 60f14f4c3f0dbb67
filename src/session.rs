//! The Session actor: one per WebSocket (PROTOCOL.md §3).
//!
//! It parses client frames, enforces the per-socket limits, keeps the
//! heartbeat, knows which chat ids are in flight and turns chat events into
//! text frames. When it stops, every chat it started is cancelled. All of
//! actix-web-actors' API stays inside this file, so moving to `actix-ws`
//! later touches nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::error::ChatError;
use crate::protocol::{self, ClientFrame, FrameError, ServerFrame};
use crate::upstream::{CancelChat, ChatEvent, EventKind, Shared, StartChat, Upstream};

/// Process-wide chat keys: a client may reuse an id once its chat ended,
/// and a late event of the old chat must never reach the new one.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// One chat in flight on this socket.
struct Slot {
    key: u64,
    id: String,
    model: String,
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
    /// Held for the socket's lifetime (e.g. a connection-count permit).
    _guard: Option<Box<dyn std::any::Any>>,
}

/// Upgrades `req` to a WebSocket served by a new Session. `guard` is kept
/// alive as long as the socket (used to count connections).
pub fn start(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
    guard: Option<Box<dyn std::any::Any>>,
) -> Result<HttpResponse, actix_web::Error> {
    let max = shared.config.max_frame_bytes;
    let session = Session {
        shared,
        upstream,
        chats: Vec::new(),
        last_seen: Instant::now(),
        partial: None,
        _guard: guard,
    };
    ws::WsResponseBuilder::new(session, req, payload)
        .frame_size(max)
        .start()
}

impl Session {
    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, frame: &ServerFrame<'_>) {
        ctx.text(frame.to_json());
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
                if self.chats.len() >= max {
                    let err = ChatError::Busy(format!(
                        "{max} chats are already in flight on this connection; wait for one to finish"
                    ));
                    self.send_error(ctx, Some(&request.id), &err);
                    return;
                }
                let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
                self.chats.push(Slot {
                    key,
                    id: request.id.clone(),
                    model: request.model.clone(),
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
                    let slot = self.chats.remove(pos);
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
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for slot in self.chats.drain(..) {
            self.upstream.do_send(CancelChat { key: slot.key });
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
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

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The browser's side of the socket is gone.
        ctx.stop();
    }
}

impl Handler<ChatEvent> for Session {
    type Result = ();

    fn handle(&mut self, msg: ChatEvent, ctx: &mut Self::Context) {
        let Some(pos) = self.chats.iter().position(|s| s.key == msg.key) else {
            return; // cancelled or finished: late events are dropped
        };
        let slot = &self.chats[pos];
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
            EventKind::Delta(content) => ServerFrame::Delta { id, content }.to_json(),
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
        ctx.text(text);
        if msg.kind.is_terminal() {
            self.chats.remove(pos);
        }
    }
}
