//! The Session actor: one per WebSocket (PROTOCOL.md §3).
//!
//! It parses client frames, enforces the per-socket limits, keeps the
//! heartbeat and reads the logs of the chats attached to it: the chats it
//! started and those it resumed (§3.3). Frames are pulled from a log only
//! while the socket's unsent output is under [`LOW_WATER`], so a browser
//! that falls behind stops its chats' logs from being read — and, through
//! the log's own bound, their upstream reads — instead of growing memory.
//! When the socket goes, its chats are detached, not cancelled: they run on
//! for the resume window. All of actix-web-actors' API stays inside this
//! file, so moving to `actix-ws` later touches nothing else.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{FutureExt as _, Stream};

use crate::admission::SocketPermit;
use crate::chats::{next_chat_key, AttachError, ChatLog, Link, LogReady, ReaderId, SessionId};
use crate::error::{Busy, ChatError, Outcome};
use crate::protocol::{self, ChatRequest, ClientFrame, FrameError, ServerFrame};
use crate::shared::Shared;
use crate::upstream::{CancelChat, ChatCall, ChatSink, StartChat, Upstream};
use crate::ws_guard;

/// Unsent output under which more frames are pulled from the chats' logs.
const LOW_WATER: u64 = 1024 * 1024;

/// A chat attached to this socket.
struct Attached {
    id: String,
    log: Arc<ChatLog>,
    reader: ReaderId,
    /// The log may hold frames this socket has not pulled yet.
    pending: bool,
}

/// A chat or resume of this socket waiting on the shared store (admission,
/// or a lookup): its id is taken, and it counts toward `max_streams`.
struct Pending {
    id: String,
    /// A `cancel` came meanwhile: the chat is cancelled once it starts.
    cancelled: bool,
}

/// Bytes queued on the socket versus bytes handed to the HTTP layer; the
/// difference is what a browser has not taken yet.
struct Output {
    queued: Cell<u64>,
    flushed: Cell<u64>,
    /// When bytes last left (a reading browser makes progress).
    progressed: Cell<Instant>,
    /// The session stopped pulling for lack of room: tell it when there is.
    waiting: Cell<bool>,
    session: RefCell<Option<Addr<Session>>>,
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
            out.flushed.set(out.flushed.get() + bytes.len() as u64);
            out.progressed.set(Instant::now());
            if out.waiting.get() && out.unsent() < LOW_WATER {
                out.waiting.set(false);
                if let Some(session) = out.session.borrow().as_ref() {
                    session.do_send(Drained);
                }
            }
        }
        polled
    }
}

/// The socket's output went back under the low-water mark.
#[derive(Message)]
#[rtype(result = "()")]
struct Drained;

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
    /// Names this socket's chats for resumes.
    session: SessionId,
    chats: Vec<Attached>,
    pending: Vec<Pending>,
    last_seen: Instant,
    partial: Option<Partial>,
    output: Rc<Output>,
    /// The socket's place in the connection limits, and who the client is.
    permit: SocketPermit,
    /// Why the frame guard stopped the client's bytes, if it did.
    guard: ws_guard::VerdictSlot,
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
    // Frame sizes are checked at the header, before actix buffers a frame.
    let (payload, guard) = ws_guard::guard(payload, max);
    let output = Rc::new(Output {
        queued: Cell::new(0),
        flushed: Cell::new(0),
        progressed: Cell::new(Instant::now()),
        waiting: Cell::new(false),
        session: RefCell::new(None),
    });
    let session = Session {
        shared,
        upstream,
        session: SessionId::random(),
        chats: Vec::new(),
        pending: Vec::new(),
        last_seen: Instant::now(),
        partial: None,
        output: output.clone(),
        permit,
        guard,
    };
    let mut response = ws::handshake(req)?;
    let codec = actix_http::ws::Codec::new().max_size(max);
    let frames = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(Counted {
        inner: Box::pin(frames),
        output,
    }))
}

type Ctx = ws::WebsocketContext<Session>;

impl Session {
    fn send(&self, ctx: &mut Ctx, frame: &ServerFrame<'_>) {
        self.write(ctx, frame.to_json().into());
    }

    /// Queues one text frame, accounting for it in the unsent output.
    fn write(&self, ctx: &mut Ctx, text: ByteString) {
        let out = &self.output;
        out.queued.set(out.queued.get() + frame_len(text.len()));
        ctx.text(text);
    }

    fn send_error(&self, ctx: &mut Ctx, id: Option<&str>, err: &ChatError) {
        self.send(ctx, &ServerFrame::error(id, err));
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.chats.iter().position(|c| c.id == id)
    }

    /// Whether `id` is in flight on this socket (or about to be).
    fn taken(&self, id: &str) -> bool {
        self.position(id).is_some() || self.pending.iter().any(|p| p.id == id)
    }

    /// `id` is no longer pending; returns whether it was cancelled meanwhile.
    fn unpend(&mut self, id: &str) -> bool {
        match self.pending.iter().position(|p| p.id == id) {
            Some(i) => self.pending.remove(i).cancelled,
            None => false,
        }
    }

    fn close(&self, ctx: &mut Ctx, code: ws::CloseCode, why: &str) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    /// Refuses a chat or resume that would pass `--max-streams-per-connection`.
    fn streams_full(&self) -> Option<ChatError> {
        let max = self.shared.config.max_streams_per_connection;
        (self.chats.len() + self.pending.len() >= max)
            .then_some(ChatError::Busy(Busy::StreamsPerSocket(max)))
    }

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        if self.shared.config.fault_injection && text.contains("netfly-fault:panic-session") {
            panic!("fault injection: session panic");
        }
        match protocol::parse_client_frame(text, &self.shared.config.frame_rules()) {
            Ok(ClientFrame::Chat(request)) => self.on_chat(request, ctx),
            Ok(ClientFrame::Cancel { id }) => {
                // Cancelling a chat that is not in flight is ignored. The
                // `done` it gets arrives through its log, like any frame.
                if let Some(pos) = self.position(&id) {
                    self.chats[pos].log.cancel();
                } else if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
                    p.cancelled = true;
                }
            }
            Ok(ClientFrame::Resume { session, id, after }) => {
                self.on_resume(&session, id, after, ctx)
            }
            Err(FrameError { id, error, resume }) => {
                // Never tie an error to a chat that is running under that id.
                let id = id.filter(|i| !self.taken(i));
                if resume {
                    self.resumed("bad_request");
                } else if id.is_some() {
                    self.shared
                        .metrics
                        .chat_ended(Outcome::Failed(error.code()));
                }
                self.send_error(ctx, id.as_deref(), &error);
            }
        }
    }

    fn on_chat(&mut self, request: ChatRequest, ctx: &mut Ctx) {
        if self.taken(&request.id) {
            let err = ChatError::BadRequest(format!(
                "duplicate id {:?}: a chat with this id is already in flight",
                request.id
            ));
            self.send_error(ctx, None, &err);
            return;
        }
        if let Some(err) = self.streams_full() {
            self.shared.metrics.chat_ended(Outcome::Failed(err.code()));
            self.send_error(ctx, Some(&request.id), &err);
            return;
        }
        let shared = self.shared.clone();
        let client = self.permit.client.clone();
        let mut admit = Box::pin(async move { shared.admission.admit_chat(&client).await });
        // Without a shared store admission needs no round trip: the chat
        // starts now, in the order its frame came.
        if let Some(admitted) = (&mut admit).now_or_never() {
            return self.admitted(request, admitted, false, ctx);
        }
        self.pending.push(Pending {
            id: request.id.clone(),
            cancelled: false,
        });
        ctx.spawn(admit.into_actor(self).map(move |admitted, act, ctx| {
            let cancelled = act.unpend(&request.id);
            act.contained(ctx, |s, ctx| s.admitted(request, admitted, cancelled, ctx));
        }));
    }

    /// Starts an admitted chat (cancelled at once when a `cancel` came
    /// while it waited), or sends its refusal.
    fn admitted(
        &mut self,
        request: ChatRequest,
        admitted: Result<crate::admission::ChatSlot, ChatError>,
        cancelled: bool,
        ctx: &mut Ctx,
    ) {
        let slot = match admitted {
            Ok(slot) => slot,
            Err(err) => {
                self.send_error(ctx, Some(&request.id), &err);
                return;
            }
        };
        let key = next_chat_key();
        let upstream = self.upstream.clone();
        let log = self.shared.chats.start(
            &self.session,
            key,
            &request.id,
            &request.model,
            // The chat's place in the limits goes with its terminal frame.
            Box::new(move |outcome| {
                let mut slot = slot;
                slot.set_outcome(outcome);
            }),
            Box::new(move || upstream.do_send(CancelChat { key })),
            ctx.address().recipient(),
        );
        self.chats.push(Attached {
            id: request.id.clone(),
            log: log.clone(),
            reader: ChatLog::FIRST,
            pending: false,
        });
        self.upstream.do_send(StartChat {
            key,
            call: ChatCall::Frame(request),
            sink: ChatSink::Log(log.clone()),
        });
        if cancelled {
            log.cancel();
        }
    }

    /// Counts one `resume` by its result.
    fn resumed(&self, result: &str) {
        self.shared
            .metrics
            .resumes_total
            .with_label_values(&[result])
            .inc();
    }

    fn on_resume(&mut self, session: &str, id: String, after: u64, ctx: &mut Ctx) {
        if self.taken(&id) {
            let err = ChatError::BadRequest(format!(
                "a chat with id {id:?} is already in flight on this socket"
            ));
            return self.refuse_resume(ctx, None, err, "bad_request");
        }
        let session = SessionId::parse(session);
        let local = session
            .as_ref()
            .and_then(|s| self.shared.chats.find(s, &id));
        match (local, session) {
            // This instance runs the chat (or the store is `memory`).
            (Some(log), _) if !matches!(log.link(), Link::Mirror(_)) => {
                self.attach_resumed(id, log, after, false, ctx)
            }
            // Another instance runs it, maybe: ask the shared store.
            (_, Some(session)) if self.shared.chats.store().is_some() => {
                self.resume_remote(session, id, after, ctx)
            }
            _ => self.refuse_resume(ctx, Some(&id), unavailable(&id), "unavailable"),
        }
    }

    /// Counts a refused resume and sends its `error`.
    fn refuse_resume(&self, ctx: &mut Ctx, id: Option<&str>, err: ChatError, result: &str) {
        self.resumed(result);
        self.send_error(ctx, id, &err);
    }

    /// Looks chat `id` of `session` up in the shared store (its id is taken
    /// meanwhile), then attaches to the copy made here.
    fn resume_remote(&mut self, session: SessionId, id: String, after: u64, ctx: &mut Ctx) {
        if let Some(err) = self.streams_full() {
            return self.refuse_resume(ctx, Some(&id), err, "busy");
        }
        self.pending.push(Pending {
            id: id.clone(),
            cancelled: false,
        });
        let chats = self.shared.chats.clone();
        let ending = self.shared.chats_ending();
        let wanted = id.clone();
        let find = async move {
            let log = chats.find_remote(&session, &wanted, ending).await?;
            // The owner sends a frame to its sockets before the store has
            // it: a client may be a burst ahead of the copy.
            chats.catch_up(&log, after).await;
            Some(log)
        };
        ctx.spawn(find.into_actor(self).map(move |log, act, ctx| {
            let cancelled = act.unpend(&id);
            act.contained(ctx, |s, ctx| match log {
                Some(log) => s.attach_resumed(id, log, after, cancelled, ctx),
                None => s.refuse_resume(ctx, Some(&id), unavailable(&id), "unavailable"),
            });
        }));
    }

    /// Attaches this socket to `log` from `after` (cancelling it at once
    /// when a `cancel` came while the resume waited).
    fn attach_resumed(
        &mut self,
        id: String,
        log: Arc<ChatLog>,
        after: u64,
        cancelled: bool,
        ctx: &mut Ctx,
    ) {
        if let Some(err) = self.streams_full() {
            return self.refuse_resume(ctx, Some(&id), err, "busy");
        }
        match log.attach(ctx.address().recipient(), after) {
            Ok(reader) => {
                self.resumed("ok");
                self.shared.chats.name(&self.session, &log);
                self.chats.push(Attached {
                    id,
                    log: log.clone(),
                    reader,
                    pending: true,
                });
                if cancelled {
                    log.cancel();
                }
                self.pump(ctx);
            }
            Err(AttachError::AfterPastEnd { after, last }) => {
                let err = ChatError::BadRequest(format!(
                    "\"after\" is {after} but chat {id:?} has sent only {last} frames"
                ));
                self.refuse_resume(ctx, Some(&id), err, "bad_request");
            }
            Err(AttachError::Unavailable) => {
                self.refuse_resume(ctx, Some(&id), unavailable(&id), "unavailable")
            }
        }
    }

    /// Writes what the attached logs hold for this socket while its output
    /// has room (each log in turn, so several chats interleave), or all of
    /// it when `flush_all` (the socket is about to close).
    fn pump(&mut self, ctx: &mut Ctx) {
        self.pump_with(ctx, false);
    }

    fn pump_with(&mut self, ctx: &mut Ctx, flush_all: bool) {
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.chats.len() {
                let room = LOW_WATER.saturating_sub(self.output.unsent());
                if !flush_all && room == 0 {
                    self.output.waiting.set(true);
                    return;
                }
                let chat = &mut self.chats[i];
                if !chat.pending {
                    i += 1;
                    continue;
                }
                let budget = if flush_all { usize::MAX } else { room as usize };
                let pulled = chat.log.pull(chat.reader, budget);
                chat.pending = pulled.more;
                let ended = pulled.ended;
                for entry in pulled.entries {
                    progressed = true;
                    self.write(ctx, entry.text);
                }
                if ended {
                    self.chats.remove(i);
                } else {
                    i += 1;
                }
            }
            if !progressed {
                return;
            }
        }
    }
}

/// The refusal of a resume naming no chat that can be resumed.
fn unavailable(id: &str) -> ChatError {
    ChatError::ResumeUnavailable(format!(
        "chat {id:?} of that session cannot be resumed: unknown, expired or dropped"
    ))
}

impl Session {
    fn on_binary(&mut self, ctx: &mut Ctx) {
        let err = ChatError::BadRequest(
            "binary frames are not supported: send JSON objects as text frames".into(),
        );
        self.send_error(ctx, None, &err);
    }

    fn on_continuation(&mut self, item: Item, ctx: &mut Ctx) {
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
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        self.shared.metrics.ws_connections.inc();
        *self.output.session.borrow_mut() = Some(ctx.address());
        let mut closing = self.shared.closing();
        ctx.spawn(
            async move {
                let _ = closing.wait_for(|c| *c).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                // Every frame already in the logs goes out before the close.
                act.pump_with(ctx, true);
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
                session: self.session.as_str(),
                max_frame_bytes: config.max_frame_bytes,
                max_image_bytes: config.max_image_bytes,
            },
        );
        let timeout = config.client_timeout;
        ctx.run_interval(config.heartbeat_interval, move |act, ctx| {
            let out = &act.output;
            if act.last_seen.elapsed() > timeout {
                log::info!(
                    "websocket client silent for {} ms: dropped",
                    timeout.as_millis()
                );
                ctx.stop();
            } else if out.unsent() > 0 && out.progressed.get().elapsed() > timeout {
                // Slowness is no progress over time, never a byte count: a
                // browser that takes bytes, however slowly, is kept.
                log::warn!(
                    "websocket closed: {} bytes unsent and none taken for {} ms",
                    out.unsent(),
                    timeout.as_millis()
                );
                act.shared.metrics.ws_slow_consumer_closed_total.inc();
                act.close(
                    ctx,
                    ws::CloseCode::Policy,
                    "the client is not reading its frames",
                );
            } else {
                out.queued.set(out.queued.get() + frame_len(0));
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Ctx) {
        self.shared.metrics.ws_connections.dec();
        self.output.session.borrow_mut().take();
        // The chats run on for the resume window (or, with none, end now).
        for chat in self.chats.drain(..) {
            chat.log.detach(chat.reader);
        }
    }
}

impl Handler<LogReady> for Session {
    type Result = ();

    fn handle(&mut self, msg: LogReady, ctx: &mut Ctx) {
        if let Some(chat) = self.chats.iter_mut().find(|c| c.log.key == msg.key) {
            chat.pending = true;
            self.contained(ctx, |s, ctx| s.pump(ctx));
        }
    }
}

impl Handler<Drained> for Session {
    type Result = ();

    fn handle(&mut self, _: Drained, ctx: &mut Ctx) {
        self.contained(ctx, |s, ctx| s.pump(ctx));
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Ctx) {
        self.contained(ctx, |s, ctx| s.on_message(msg, ctx));
    }

    fn finished(&mut self, ctx: &mut Ctx) {
        // The frame guard ended the client's bytes: close with its verdict.
        if let Some(verdict) = self.guard.get() {
            self.close(ctx, verdict.close_code(), &verdict.to_string());
            return;
        }
        // The browser's side of the socket is gone.
        ctx.stop();
    }
}

impl Session {
    /// Runs `f`; a panic inside it closes this socket (1011), and never
    /// reaches the worker or any other socket.
    fn contained<F>(&mut self, ctx: &mut Ctx, f: F)
    where
        F: FnOnce(&mut Self, &mut Ctx),
    {
        let run = std::panic::AssertUnwindSafe(|| f(self, ctx));
        if std::panic::catch_unwind(run).is_err() {
            log::error!("a websocket session panicked; closing that socket only");
            self.close(ctx, ws::CloseCode::Error, "internal error");
        }
    }

    fn on_message(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Ctx) {
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
            Err(e) => {
                log::debug!("websocket protocol error: {e}");
                let max = self.shared.config.max_frame_bytes;
                let (code, why) = ws_guard::close_for_decoder_error(&e, max);
                self.close(ctx, code, &why);
            }
        }
    }
}
