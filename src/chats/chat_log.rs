//! One chat's log: its frames, seq-numbered and append-only, and the
//! sockets reading them (PROTOCOL.md §3.3).
//!
//! The chat task appends; readers (sessions) pull from their cursor. A
//! frame is in the log before any reader can see it, and every reader
//! reads by `seq`, so "exactly once, in order, no gap" is decided here and
//! nowhere else: a replay and the live tail are the same pull.
//!
//! Bounds: the log retains every frame (for resumes) up to the per-chat and
//! the total byte limits; past either it stops retaining — the chat keeps
//! streaming to the readers attached, a frame goes once every reader has
//! it, and a later resume is `resume_unavailable`. The writer waits while
//! the slowest attached reader has more than [`READER_AHEAD`] bytes
//! unread, so a slow browser slows the upstream read instead of growing
//! memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use actix::prelude::*;
use bytes::BytesMut;
use bytestring::ByteString;
use tokio::sync::Notify;

use super::{Chats, EventKind, SessionId, Verdict};
use crate::error::{ChatError, ErrorCode, Fault, Outcome};
use crate::protocol::ServerFrame;

/// Unread bytes of the slowest attached reader above which the writer
/// waits (a browser that falls behind pauses its chat's upstream read).
pub const READER_AHEAD: usize = 1024 * 1024;

/// A reader's handle on a log.
pub type ReaderId = u64;

/// What one logged frame costs besides its text, counted against the log
/// bounds so that they bound memory: the entry (twice: a growing queue may
/// hold as much again in spare room) and an allocation header.
const ENTRY_COST: usize = 2 * std::mem::size_of::<Entry>() + 16;

/// A log's frames are written one after the other into blocks of at least
/// this many bytes (a block per frame would cost an allocation each and
/// the allocator's rounding and headers: ~3× the text in a 200-delta chat);
/// a block is freed when the last frame in it is.
const MIN_BLOCK: usize = 512;
/// Blocks grow with the log (a quarter of its text so far) up to this.
const MAX_BLOCK: usize = 16 * 1024;

thread_local! {
    /// Where a frame is serialised before it is copied into its log's
    /// block (one per thread: no allocation per frame, none per chat).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a retained log costs besides its frames: itself, its place in the
/// registry (session id, chat id, map slots).
const LOG_COST: usize = std::mem::size_of::<ChatLog>() + 256;

/// New frames are in the log of chat `key` (sent to each attached reader
/// once per append, however many frames it added).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct LogReady {
    pub key: u64,
}

/// One logged frame: the text sent to sockets, and what it was.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub text: ByteString,
    kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    /// A delta, read from the upstream at this moment.
    Delta(Instant),
    /// Any other non-terminal frame.
    Other,
    /// The chat's one terminal frame.
    Terminal,
}

/// Where a chat's frames go besides this process's sockets, or come from.
/// (The shared store's side is behind traits, implemented in `store.rs`
/// and `mirror.rs`, so that the log knows nothing of Redis.)
pub enum Link {
    /// This process only (the `memory` store, or a chat the shared store
    /// does not hold).
    Local,
    /// This instance runs the chat; every frame is also written to the
    /// shared store (after it is in this log, never waiting for it).
    Replica(Arc<dyn ReplicaLink>),
    /// Another instance runs the chat: this log is a copy, fed from the
    /// shared store with the frames verbatim.
    Mirror(Arc<dyn MirrorFeed>),
}

/// What the shared store knows of a chat.
pub trait StoreLink: Send + Sync {
    /// Tells this chat from earlier and later ones of the same name.
    fn gen(&self) -> u64;
    /// The session the store names the chat by (its own, not an alias).
    fn session(&self) -> &SessionId;
    /// Whether the store still holds the chat.
    fn in_store(&self) -> bool;
}

/// The store's side of a chat this instance runs (`store.rs`).
pub trait ReplicaLink: StoreLink {
    /// Frame `seq` is in the log: write it to the store too (nothing waits).
    fn frame(self: Arc<Self>, seq: u64, text: &ByteString, terminal: bool);
    /// The log stopped retaining: the store forgets the chat.
    fn leave_store(self: Arc<Self>);
}

/// The store's side of a copy of a chat another instance runs (`mirror.rs`).
pub trait MirrorFeed: StoreLink {
    /// A socket here cancels: ask the instance running the chat.
    fn request_cancel(self: Arc<Self>);
    /// Whether a socket here reads the copy (the owner keeps the chat).
    fn set_attached(&self, attached: bool);
    /// Whether the instance running the chat still refreshes its lease.
    fn owner_refreshing(&self) -> futures_util::future::BoxFuture<'_, bool>;
}

/// A frame read from the shared store: its seq and exact text.
#[derive(Debug, Clone)]
pub struct RemoteFrame {
    pub seq: u64,
    pub text: ByteString,
}

/// The type of a logged frame, from its text.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
}

impl EntryKind {
    /// What a frame read back from the store is, and how it ends the chat.
    fn of_text(text: &str) -> (EntryKind, Option<Outcome>) {
        match serde_json::from_str::<Head<'_>>(text).map(|h| h.ty) {
            Ok("delta") => (EntryKind::Delta(Instant::now()), None),
            Ok("done") => (EntryKind::Terminal, Some(Outcome::Done)),
            Ok("error") => (
                EntryKind::Terminal,
                Some(Outcome::Failed(ErrorCode::UpstreamBroken)),
            ),
            _ => (EntryKind::Other, None),
        }
    }
}

/// Whether a logged frame's text is a terminal frame (`done` or `error`).
pub fn is_terminal_text(text: &str) -> bool {
    EntryKind::of_text(text).0 == EntryKind::Terminal
}

/// Why a reader could not attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// `after` is past the last frame of a chat still running.
    AfterPastEnd { after: u64, last: u64 },
    /// The log no longer holds what a resume needs.
    Unavailable,
}

/// What one pull gave a reader.
#[derive(Debug, Default)]
pub struct Pulled {
    pub entries: Vec<Entry>,
    /// Frames are left after these (the budget ran out).
    pub more: bool,
    /// The terminal frame is among `entries`: the reader is detached.
    pub ended: bool,
}

struct Reader {
    id: ReaderId,
    to: Recipient<LogReady>,
    /// The last seq handed to it.
    cursor: u64,
    /// Bytes appended and not yet pulled by it.
    unread: usize,
}

struct Inner {
    /// Frames from seq `first_seq` on (a log that stopped retaining drops
    /// the ones every reader has).
    frames: VecDeque<Entry>,
    /// The rest of the block the next frame is written into.
    block: BytesMut,
    /// Text bytes written so far (sizes the next block).
    written: usize,
    first_seq: u64,
    next_seq: u64,
    /// Bytes of `frames` counted against the bounds (while retaining).
    bytes: usize,
    /// Every frame since the first is kept: the chat can be resumed.
    retained: bool,
    readers: Vec<Reader>,
    next_reader: ReaderId,
    /// Since when no reader is attached (counted as detached meanwhile).
    detached_since: Option<Instant>,
    /// How the chat ended, and when (its terminal frame is in the log).
    ended: Option<(Outcome, Instant)>,
    /// Told the chat's outcome when it ends (a mirror has none).
    on_end: Option<Box<dyn FnOnce(Outcome) + Send>>,
    /// Highest seq handed to any reader: deltas are counted at their first
    /// delivery.
    delivered: u64,
    deltas_delivered: u64,
}

impl Inner {
    /// Serialises `frame` into the current block (opening a new one if it
    /// does not fit): its text, and the size of the block it opened (0 if
    /// none).
    fn write(&mut self, frame: &ServerFrame<'_>) -> (ByteString, usize) {
        SCRATCH.with(|scratch| {
            let mut json = scratch.borrow_mut();
            json.clear();
            frame.write_json(&mut json);
            let len = json.len();
            let mut opened = 0;
            if self.block.capacity() < len {
                opened = (self.written / 4).clamp(MIN_BLOCK, MAX_BLOCK).max(len);
                self.block = BytesMut::with_capacity(opened);
            }
            self.block.extend_from_slice(&json);
            self.written += len;
            // A huge frame leaves a huge scratch: give it back.
            if json.capacity() > 4 * MAX_BLOCK {
                *json = Vec::new();
            }
            let text = ByteString::try_from(self.block.split().freeze())
                .unwrap_or_else(|_| ByteString::from_static("{}"));
            (text, opened)
        })
    }

    /// A log with no frame, no reader and no end yet; `retained` if the
    /// log's own cost was reserved.
    fn empty(retained: bool) -> Inner {
        Inner {
            frames: VecDeque::new(),
            block: BytesMut::new(),
            written: 0,
            first_seq: 1,
            next_seq: 1,
            bytes: if retained { LOG_COST } else { 0 },
            retained,
            readers: Vec::new(),
            next_reader: ChatLog::FIRST,
            detached_since: None,
            ended: None,
            on_end: None,
            delivered: 0,
            deltas_delivered: 0,
        }
    }
}

/// The log of one chat.
pub struct ChatLog {
    /// The chat's process-wide key.
    pub key: u64,
    /// The client's id for the chat.
    pub id: String,
    model: String,
    accepted: Instant,
    chats: Arc<Chats>,
    /// Drops the chat's task (its upstream request) in its worker.
    cancel: Box<dyn Fn() + Send + Sync>,
    inner: Mutex<Inner>,
    /// Wakes the writer when a reader pulled (or left).
    pulled: Notify,
    /// The shared store's side of the chat, if any.
    link: Link,
}

impl ChatLog {
    /// A new log for chat `key` (`id`, `model`), with `first` attached as
    /// reader [`ChatLog::FIRST`]; `on_end` is told the chat's outcome when
    /// its terminal frame is appended (before any reader can see it: it
    /// releases the chat's place in the limits), `cancel` drops the chat's
    /// upstream request.
    pub(super) fn new(
        chats: Arc<Chats>,
        key: u64,
        id: String,
        model: String,
        on_end: Box<dyn FnOnce(Outcome) + Send>,
        cancel: Box<dyn Fn() + Send + Sync>,
        first: Recipient<LogReady>,
    ) -> ChatLog {
        let retained = chats.resumable() && chats.reserve(LOG_COST);
        ChatLog {
            key,
            id,
            model,
            accepted: Instant::now(),
            chats,
            cancel,
            inner: Mutex::new(Inner {
                readers: vec![Reader {
                    id: Self::FIRST,
                    to: first,
                    cursor: 0,
                    unread: 0,
                }],
                next_reader: Self::FIRST + 1,
                on_end: Some(on_end),
                ..Inner::empty(retained)
            }),
            pulled: Notify::new(),
            link: Link::Local,
        }
    }

    /// The same log, tied to the shared store by `link`.
    pub(super) fn with_link(mut self, link: Link) -> ChatLog {
        self.link = link;
        self
    }

    /// A copy of chat `id` that another instance runs (`link` feeds it),
    /// with no reader yet; `stop` ends its feed when the copy ends here.
    pub(super) fn mirror(
        chats: Arc<Chats>,
        key: u64,
        id: String,
        link: Arc<dyn MirrorFeed>,
        stop: Box<dyn Fn() + Send + Sync>,
    ) -> ChatLog {
        let retained = chats.resumable() && chats.reserve(LOG_COST);
        chats.count_detached(1);
        ChatLog {
            key,
            id,
            model: String::new(),
            accepted: Instant::now(),
            chats,
            cancel: stop,
            inner: Mutex::new(Inner {
                detached_since: Some(Instant::now()),
                ..Inner::empty(retained)
            }),
            pulled: Notify::new(),
            link: Link::Mirror(link),
        }
    }

    /// Whether every frame is kept (the chat can be resumed).
    pub(super) fn retains(&self) -> bool {
        self.lock().retained
    }

    /// The shared store's side of the chat.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The reader id of the socket that started the chat.
    pub const FIRST: ReaderId = 1;

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned log only means a thread panicked mid-update (that panic
        // is contained elsewhere); the state is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the chat ended, once its terminal frame is in the log.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().ended.map(|(o, _)| o)
    }

    /// Appends the frames of `events`, in order (nothing after a terminal
    /// one), and tells every attached reader once. Returns false when the
    /// log has ended (cancelled, shut down): the writer should stop.
    pub fn append(&self, events: impl IntoIterator<Item = EventKind>) -> bool {
        let mut inner = self.lock();
        let mut added = false;
        for event in events {
            if inner.ended.is_some() {
                break;
            }
            let outcome = match &event {
                EventKind::Done { .. } => Some(Outcome::Done),
                EventKind::Failed(err) => Some(Outcome::Failed(err.code())),
                _ => None,
            };
            self.push(&mut inner, &event);
            if let Some(outcome) = outcome {
                self.finish(&mut inner, outcome);
            }
            added = true;
        }
        if added {
            self.tell_readers(&inner);
        }
        inner.ended.is_none()
    }

    /// Appends frames read from the shared store, verbatim (a mirror):
    /// frames it already has are skipped. `Err` when one is missing (the
    /// store lost frames: the copy cannot go on). `Ok(open)` as [`append`].
    ///
    /// [`append`]: ChatLog::append
    pub fn append_remote(&self, frames: Vec<RemoteFrame>) -> Result<bool, u64> {
        let mut inner = self.lock();
        let mut added = false;
        for frame in frames {
            if inner.ended.is_some() {
                break;
            }
            if frame.seq < inner.next_seq {
                continue;
            }
            if frame.seq > inner.next_seq {
                if added {
                    self.tell_readers(&inner);
                }
                return Err(inner.next_seq);
            }
            let (kind, outcome) = EntryKind::of_text(&frame.text);
            inner.next_seq += 1;
            let cost = frame.text.len() + ENTRY_COST;
            self.keep(&mut inner, frame.seq, frame.text, kind, cost);
            if let Some(outcome) = outcome {
                self.finish(&mut inner, outcome);
            }
            added = true;
        }
        if added {
            self.tell_readers(&inner);
        }
        Ok(inner.ended.is_none())
    }

    /// Waits while the slowest attached reader is more than
    /// [`READER_AHEAD`] bytes behind.
    pub async fn writable(&self) {
        loop {
            let pulled = self.pulled.notified();
            {
                let inner = self.lock();
                let behind = inner.readers.iter().map(|r| r.unread).max().unwrap_or(0);
                if behind <= READER_AHEAD || inner.ended.is_some() {
                    return;
                }
            }
            pulled.await;
        }
    }

    fn tell_readers(&self, inner: &Inner) {
        for r in &inner.readers {
            r.to.do_send(LogReady { key: self.key });
        }
    }

    /// Serialises `event` as the next frame and appends it (a `/v1`-only
    /// event is not a frame and is ignored).
    fn push(&self, inner: &mut Inner, event: &EventKind) {
        let seq = inner.next_seq;
        let id = self.id.as_str();
        let (frame, kind) = match event {
            EventKind::Start { upstream, attempt } => (
                ServerFrame::Start {
                    id,
                    seq,
                    model: &self.model,
                    upstream,
                    attempt: *attempt,
                },
                EntryKind::Other,
            ),
            EventKind::Retry {
                attempt,
                delay,
                reason,
            } => (
                ServerFrame::Retry {
                    id,
                    seq,
                    attempt: *attempt,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    reason,
                },
                EntryKind::Other,
            ),
            EventKind::Reasoning { text, .. } => (
                ServerFrame::Reasoning {
                    id,
                    seq,
                    content: text,
                },
                EntryKind::Other,
            ),
            EventKind::Delta { text, read_at } => (
                ServerFrame::Delta {
                    id,
                    seq,
                    content: text,
                },
                EntryKind::Delta(*read_at),
            ),
            EventKind::Done {
                finish_reason,
                usage,
            } => (
                ServerFrame::Done {
                    id,
                    seq,
                    finish_reason,
                    usage: usage.as_ref(),
                },
                EntryKind::Terminal,
            ),
            EventKind::Failed(err) => (
                ServerFrame::Error {
                    id: Some(id),
                    seq: Some(seq),
                    code: err.code().as_str(),
                    message: err.message(),
                    retryable: err.retryable(),
                },
                EntryKind::Terminal,
            ),
            EventKind::Chunk { .. } | EventKind::Whole { .. } => return,
        };
        let (text, block) = inner.write(&frame);
        // The memory the frame takes: its entry, and the block it opened.
        let cost = block + ENTRY_COST;
        inner.next_seq += 1;
        if let Link::Replica(replica) = &self.link {
            replica
                .clone()
                .frame(seq, &text, kind == EntryKind::Terminal);
        }
        self.keep(inner, seq, text, kind, cost);
    }

    /// Adds frame `seq` to the log: readers' unread counts, the bounds
    /// (against `cost`, the memory it takes).
    fn keep(&self, inner: &mut Inner, seq: u64, text: ByteString, kind: EntryKind, cost: usize) {
        let len = text.len();
        for r in &mut inner.readers {
            r.unread += len;
        }
        if inner.retained {
            if inner.bytes + cost <= self.chats.max_chat_bytes() && self.chats.reserve(cost) {
                inner.bytes += cost;
            } else {
                // Past a bound: keep streaming, stop retaining.
                self.stop_retaining(inner);
            }
        }
        inner.frames.push_back(Entry { seq, text, kind });
        self.trim(inner);
    }

    /// Records the end (the terminal frame was just pushed) and its
    /// `outcome`, which the chat's owner is told at once.
    fn finish(&self, inner: &mut Inner, outcome: Outcome) {
        inner.ended = Some((outcome, Instant::now()));
        if let Some(on_end) = inner.on_end.take() {
            on_end(outcome);
        }
        // Nothing is added any more: give the queue's spare room back.
        inner.frames.shrink_to_fit();
        self.chats.show_retained();
        self.pulled.notify_one();
    }

    /// The log gives up its resumability: what it held leaves the total,
    /// and frames go once every reader has them. Nobody attached and
    /// nobody able to resume: the chat is stopped.
    fn stop_retaining(&self, inner: &mut Inner) {
        if !inner.retained {
            return;
        }
        inner.retained = false;
        self.chats.release(inner.bytes);
        inner.bytes = 0;
        log::debug!("chat {} log past its bound: no longer resumable", self.key);
        if let Link::Replica(replica) = &self.link {
            replica.clone().leave_store();
        }
        if inner.readers.is_empty() {
            if inner.detached_since.take().is_some() {
                self.chats.count_detached(-1);
            }
            self.end_with(inner, None, Outcome::Disconnected);
        }
    }

    /// Drops, from a log that no longer retains, the frames every reader
    /// has (the terminal frame stays).
    fn trim(&self, inner: &mut Inner) {
        if inner.retained {
            return;
        }
        let upto = inner.readers.iter().map(|r| r.cursor).min();
        while let Some(front) = inner.frames.front() {
            if front.kind == EntryKind::Terminal || upto.is_some_and(|c| front.seq > c) {
                break;
            }
            inner.frames.pop_front();
            inner.first_seq += 1;
        }
    }

    /// Ends the chat unless it has: appends the terminal frame for `err`
    /// (or `done` `cancelled`), records `outcome`, drops the chat's task
    /// (its upstream request) and tells the readers.
    fn end_with(&self, inner: &mut Inner, err: Option<ChatError>, outcome: Outcome) {
        if inner.ended.is_some() {
            return;
        }
        let terminal = match err {
            Some(err) => EventKind::Failed(err),
            None => EventKind::Done {
                finish_reason: "cancelled".into(),
                usage: None,
            },
        };
        self.push(inner, &terminal);
        self.finish(inner, outcome);
        (self.cancel)();
        self.tell_readers(inner);
    }

    /// A client cancels the chat: `done` `cancelled` to every reader, and
    /// its upstream request is dropped. Ignored once the chat has ended.
    pub fn cancel(&self) {
        if let Link::Mirror(link) = &self.link {
            // The owner cancels; its `done` comes back through the store.
            if self.lock().ended.is_none() {
                link.clone().request_cancel();
            }
            return;
        }
        let mut inner = self.lock();
        self.end_with(&mut inner, None, Outcome::Cancelled);
    }

    /// Ends the chat with `err` as its terminal frame (shutdown, the resume
    /// window passed), counted as `outcome`.
    pub fn end(&self, err: ChatError, outcome: Outcome) {
        let mut inner = self.lock();
        self.end_with(&mut inner, Some(err), outcome);
    }

    /// Attaches a reader (a resume) that has seen every frame up to
    /// `after` (0: none): it will pull the frames after it, the terminal
    /// frame included; for an ended chat, an `after` at or past its
    /// terminal frame gets that frame again.
    pub fn attach(&self, to: Recipient<LogReady>, after: u64) -> Result<ReaderId, AttachError> {
        let mut inner = self.lock();
        if !inner.retained {
            return Err(AttachError::Unavailable);
        }
        let last = inner.next_seq - 1;
        let cursor = match inner.ended {
            Some(_) if after >= last => last - 1,
            None if after > last => return Err(AttachError::AfterPastEnd { after, last }),
            _ => after,
        };
        let unread = inner
            .frames
            .iter()
            .filter(|e| e.seq > cursor)
            .map(|e| e.text.len())
            .sum();
        let id = inner.next_reader;
        inner.next_reader += 1;
        if inner.detached_since.take().is_some() {
            self.chats.count_detached(-1);
        }
        if let (Link::Mirror(link), true) = (&self.link, inner.readers.is_empty()) {
            link.set_attached(true);
        }
        inner.readers.push(Reader {
            id,
            to: to.clone(),
            cursor,
            unread,
        });
        if unread > 0 {
            to.do_send(LogReady { key: self.key });
        }
        Ok(id)
    }

    /// Detaches `reader` (its socket went away). With nobody left the
    /// chat runs on for the resume window — or, when nobody could resume
    /// it, ends now.
    pub fn detach(&self, reader: ReaderId) {
        let mut inner = self.lock();
        let before = inner.readers.len();
        inner.readers.retain(|r| r.id != reader);
        if inner.readers.len() == before {
            return;
        }
        self.left(&mut inner);
    }

    /// After a reader left: with nobody attached, the log counts as
    /// detached (retaining) or the chat ends (not retaining).
    fn left(&self, inner: &mut Inner) {
        if let (Link::Mirror(link), true) = (&self.link, inner.readers.is_empty()) {
            link.set_attached(false);
        }
        if inner.readers.is_empty() {
            if inner.retained {
                inner.detached_since = Some(Instant::now());
                self.chats.count_detached(1);
            } else {
                self.end_with(inner, None, Outcome::Disconnected);
            }
        }
        self.trim(inner);
        self.pulled.notify_one();
    }

    /// Hands `reader` the frames after its cursor: at least one, then as
    /// long as they fit in `budget` bytes. A reader that pulls the
    /// terminal frame is detached.
    pub fn pull(&self, reader: ReaderId, budget: usize) -> Pulled {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(r) = inner.readers.iter_mut().find(|r| r.id == reader) else {
            return Pulled::default();
        };
        let skip = usize::try_from((r.cursor + 1).saturating_sub(inner.first_seq)).unwrap_or(0);
        let mut out = Pulled::default();
        let mut taken = 0usize;
        for e in inner.frames.iter().skip(skip) {
            if !out.entries.is_empty() && taken + e.text.len() > budget {
                out.more = true;
                break;
            }
            taken += e.text.len();
            out.ended |= e.kind == EntryKind::Terminal;
            out.entries.push(e.clone());
        }
        let Some(last) = out.entries.last().map(|e| e.seq) else {
            return out;
        };
        r.cursor = last;
        r.unread = r.unread.saturating_sub(taken);
        if last > inner.delivered {
            for e in out.entries.iter().filter(|e| e.seq > inner.delivered) {
                if let EntryKind::Delta(read_at) = e.kind {
                    let first = inner.deltas_delivered == 0;
                    self.chats.metrics.delta_sent(read_at, self.accepted, first);
                    inner.deltas_delivered += 1;
                }
            }
            inner.delivered = last;
        }
        if out.ended {
            inner.readers.retain(|r| r.id != reader);
            self.left(inner);
        } else {
            self.trim(inner);
            self.pulled.notify_one();
        }
        out
    }

    /// For the reaper, with `cutoff` = now − the window: a running chat
    /// nobody has been attached to since before it is abandoned; a log that
    /// ended before it, or can no longer be resumed and has no reader, is
    /// forgotten.
    pub(super) fn verdict(&self, cutoff: Instant) -> Verdict {
        let inner = self.lock();
        match inner.ended {
            None if inner.readers.is_empty()
                && inner.detached_since.is_some_and(|t| t <= cutoff) =>
            {
                Verdict::Abandon
            }
            Some((_, at)) if at <= cutoff => Verdict::Forget,
            _ if !inner.retained && inner.readers.is_empty() => Verdict::Forget,
            _ => Verdict::Keep,
        }
    }

    /// Nobody came back within the window: the chat's upstream request is
    /// dropped (counted `abandoned`).
    pub(super) fn abandon(&self) {
        let err = ChatError::UpstreamUnavailable(Fault::NotResumedInTime);
        let mut inner = self.lock();
        self.end_with(&mut inner, Some(err), Outcome::Abandoned);
    }

    /// The seq of the last frame appended.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Whether a socket of this process reads the chat now.
    pub fn has_readers(&self) -> bool {
        !self.lock().readers.is_empty()
    }

    /// A socket on another instance reads the chat (through the shared
    /// store): while it does, the chat is not abandoned here.
    pub fn remote_reader_seen(&self) {
        let mut inner = self.lock();
        if inner.ended.is_none() && inner.readers.is_empty() {
            if let Some(since) = inner.detached_since.as_mut() {
                *since = Instant::now();
            }
        }
    }

    /// The registry forgot the log: it leaves the detached count and the
    /// total (what a task or socket still holds of it is theirs).
    pub(super) fn forgotten(&self) {
        let mut inner = self.lock();
        if inner.detached_since.take().is_some() {
            self.chats.count_detached(-1);
        }
        if inner.retained {
            inner.retained = false;
            self.chats.release(inner.bytes);
            inner.bytes = 0;
        }
        self.trim(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    //! A model-based property test: random interleavings of appends,
    //! attaches (resumes at random `after`), pulls with random budgets,
    //! detaches and cancels; every reader must see each seq exactly once,
    //! in order, from its cursor on, and the terminal frame exactly once.

    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use actix::prelude::*;

    use super::*;
    use crate::chats::Chats;
    use crate::config::ResumeLimits;
    use crate::metrics::Metrics;

    /// A reader that is never told anything useful (the test pulls).
    struct Deaf;
    impl Actor for Deaf {
        type Context = Context<Self>;
    }
    impl Handler<LogReady> for Deaf {
        type Result = ();
        fn handle(&mut self, _: LogReady, _: &mut Context<Self>) {}
    }

    fn setup(per_chat: usize) -> Arc<Chats> {
        let metrics = Metrics::new().expect("metrics");
        let limits = ResumeLimits {
            window: Duration::from_secs(60),
            per_chat,
            total: usize::MAX / 2,
        };
        Chats::new(limits, metrics)
    }

    #[actix_rt::test]
    async fn random_interleavings_keep_every_reader_exact() {
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            // Every third run has a small bound: the log stops retaining.
            let per_chat = if seed % 3 == 0 { 600 } else { 1 << 30 };
            let chats = setup(per_chat);
            let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cancelled.clone();
            let deaf = Deaf.start().recipient::<LogReady>();
            let log = ChatLog::new(
                chats.clone(),
                7,
                "c".into(),
                "m".into(),
                Box::new(|_| {}),
                Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)),
                deaf.clone(),
            );
            // reader id → the next seq it must receive.
            let mut expect: HashMap<ReaderId, u64> = HashMap::from([(ChatLog::FIRST, 1)]);
            let mut last = 0u64;
            let mut terminal: Option<u64> = None;
            for _ in 0..rng.usize(20..120) {
                match rng.u8(0..10) {
                    0..=3 if terminal.is_none() => {
                        let n = rng.usize(1..6);
                        let events = (0..n).map(|i| EventKind::Delta {
                            text: format!("d{}-{i} ", last + 1),
                            read_at: Instant::now(),
                        });
                        if log.append(events) {
                            last += n as u64;
                        } else {
                            // Past its bound with nobody attached: it ended.
                            assert!(per_chat < 1 << 30 && expect.is_empty(), "seed {seed}");
                            last = log.last_seq();
                            terminal = Some(last);
                        }
                    }
                    4 if terminal.is_none() && rng.u8(0..4) == 0 => {
                        let open = log.append([EventKind::Done {
                            finish_reason: "stop".into(),
                            usage: None,
                        }]);
                        assert!(!open);
                        last += 1;
                        terminal = Some(last);
                    }
                    5 if terminal.is_none() && rng.u8(0..6) == 0 => {
                        log.cancel();
                        last += 1;
                        terminal = Some(last);
                        assert!(cancelled.load(std::sync::atomic::Ordering::SeqCst));
                    }
                    6 => {
                        let after = rng.u64(0..=last + 2);
                        match log.attach(deaf.clone(), after) {
                            Ok(id) => {
                                let from = match terminal {
                                    Some(t) if after >= t => t,
                                    _ => after + 1,
                                };
                                assert!(after <= last || terminal.is_some());
                                expect.insert(id, from);
                            }
                            Err(AttachError::AfterPastEnd { .. }) => {
                                assert!(terminal.is_none() && after > last, "seed {seed}");
                            }
                            Err(AttachError::Unavailable) => {
                                assert!(
                                    per_chat < 1 << 30,
                                    "seed {seed}: unavailable while retaining"
                                );
                            }
                        }
                    }
                    7 if !expect.is_empty() && rng.u8(0..3) == 0 => {
                        let ids: Vec<ReaderId> = expect.keys().copied().collect();
                        let id = ids[rng.usize(0..ids.len())];
                        log.detach(id);
                        expect.remove(&id);
                        if terminal.is_none() && log.outcome().is_some() {
                            // Nobody attached and no longer resumable: it ended.
                            assert!(per_chat < 1 << 30 && expect.is_empty(), "seed {seed}");
                            last += 1;
                            assert_eq!(log.last_seq(), last);
                            terminal = Some(last);
                        }
                    }
                    _ if !expect.is_empty() => {
                        let ids: Vec<ReaderId> = expect.keys().copied().collect();
                        let id = ids[rng.usize(0..ids.len())];
                        pull_and_check(&log, id, &mut expect, rng.usize(1..400), terminal, seed);
                    }
                    _ => {}
                }
            }
            // Whoever is still attached reads to the end: exactly one terminal.
            if terminal.is_none() {
                log.append([EventKind::Done {
                    finish_reason: "stop".into(),
                    usage: None,
                }]);
                last += 1;
                terminal = Some(last);
            }
            let ids: Vec<ReaderId> = expect.keys().copied().collect();
            for id in ids {
                for _ in 0..10_000 {
                    if !expect.contains_key(&id) {
                        break;
                    }
                    pull_and_check(&log, id, &mut expect, 300, terminal, seed);
                }
                assert!(
                    !expect.contains_key(&id),
                    "seed {seed}: reader {id} never got the terminal frame"
                );
            }
            let _ = last;
        }
    }

    /// One pull by `id`: its entries continue exactly where it was, in order,
    /// and the terminal frame (if among them) is the last, after which the
    /// reader is gone.
    fn pull_and_check(
        log: &ChatLog,
        id: ReaderId,
        expect: &mut HashMap<ReaderId, u64>,
        budget: usize,
        terminal: Option<u64>,
        seed: u64,
    ) {
        let pulled = log.pull(id, budget);
        let mut next = expect[&id];
        for e in &pulled.entries {
            assert_eq!(
                e.seq, next,
                "seed {seed}: reader {id} got seq {} instead of {next}",
                e.seq
            );
            next += 1;
        }
        if pulled.ended {
            assert_eq!(
                pulled.entries.last().map(|e| e.seq),
                terminal,
                "seed {seed}"
            );
            assert!(pulled
                .entries
                .last()
                .is_some_and(|e| e.kind == EntryKind::Terminal));
            expect.remove(&id);
            assert!(
                log.pull(id, budget).entries.is_empty(),
                "seed {seed}: frames after the terminal one"
            );
        } else {
            assert!(pulled.entries.iter().all(|e| e.kind != EntryKind::Terminal));
            expect.insert(id, next);
        }
    }
}
