//! Chats that outlive their socket (PROTOCOL.md §3.3).
//!
//! A WebSocket chat writes its frames into a [`ChatLog`]; sockets are
//! readers of it. [`Chats`] is the gateway's registry of logs by session
//! and chat id, for `resume`: it hands out session ids, finds the log a
//! resume names, and its reaper ends chats nobody has been attached to for
//! `--resume-window-ms` and forgets logs that window after their end.
//! It also holds the byte budget every retained log draws from.

pub mod chat_log;
pub mod mirror;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use chat_log::{AttachError, ChatLog, Link, LogReady, ReaderId};
pub use store::RedisStore;

use crate::config::ResumeLimits;
use crate::error::{ChatError, Outcome};
use crate::metrics::Metrics;

/// What a chat says, in order, from its task to whoever reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// An upstream answered 2xx (sent at most once per chat).
    Start { upstream: String, attempt: u32 },
    /// A new attempt is about to be made after `delay`.
    Retry {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// A piece of the model's reasoning, exactly as the upstream sent it.
    Reasoning { text: String, read_at: Instant },
    /// One content fragment, exactly as the upstream sent it, with the
    /// moment its bytes were read from the upstream.
    Delta { text: String, read_at: Instant },
    /// The chat finished.
    Done {
        finish_reason: String,
        usage: Option<Value>,
    },
    /// The chat failed.
    Failed(ChatError),
    /// `/v1` only: one upstream chunk as the client gets it (its `model`
    /// mapped back), with its content (if any) for metrics.
    Chunk {
        data: String,
        content: Option<String>,
        read_at: Instant,
    },
    /// `/v1` only: a whole (non-streamed) completion, `model` mapped back.
    Whole { body: String },
}

impl EventKind {
    /// Whether nothing follows this event for its chat.
    pub fn is_terminal(&self) -> bool {
        matches!(self, EventKind::Done { .. } | EventKind::Failed(_))
    }
}

/// Process-wide chat keys, for every front end (WebSocket sessions, the
/// HTTP API and mirrors of chats other instances run): a client may reuse
/// an id once its chat ended, and a late event of the old chat must never
/// reach the new one.
static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh chat key, unique in this process.
pub fn next_chat_key() -> u64 {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

/// An opaque session name: 192 bits from the OS's secure random source,
/// as 48 hex digits. Its `Debug` never shows it (it is a capability).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh, unguessable id.
    pub fn random() -> SessionId {
        let mut bytes = [0u8; 24];
        // The OS's source failing is not something a gateway can serve
        // without: a guessable id would let anyone read others' chats.
        if let Err(e) = getrandom::getrandom(&mut bytes) {
            panic!("no secure random source for session ids: {e}");
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        SessionId(hex.into())
    }

    /// The id as sent in `hello`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id a client sent, if it has the shape of one.
    pub fn parse(text: &str) -> Option<SessionId> {
        (text.len() == 48 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| SessionId(text.to_ascii_lowercase().into()))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(…)")
    }
}

/// Every resumable chat of a gateway, by session and id.
pub struct Chats {
    limits: ResumeLimits,
    retained: AtomicUsize,
    metrics: Metrics,
    logs: Mutex<HashMap<SessionId, HashMap<String, Arc<ChatLog>>>>,
    /// The shared store (`--resume-store redis://…`), if any.
    store: Option<Arc<RedisStore>>,
}

/// What the reaper does with one log.
enum Verdict {
    Keep,
    /// Nobody attached for the window: end it, then forget it.
    Abandon,
    /// Ended (or no longer resumable) and past its time: forget it.
    Forget,
}

impl Chats {
    pub fn new(limits: ResumeLimits, metrics: Metrics) -> Arc<Chats> {
        Self::with_store(limits, metrics, None)
    }

    /// A registry whose chats are also written to `store` (when given).
    pub fn with_store(
        limits: ResumeLimits,
        metrics: Metrics,
        store: Option<Arc<RedisStore>>,
    ) -> Arc<Chats> {
        Arc::new(Chats {
            limits,
            retained: AtomicUsize::new(0),
            metrics,
            logs: Mutex::new(HashMap::new()),
            store,
        })
    }

    /// The shared store, if any.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.store.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, HashMap<String, Arc<ChatLog>>>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether chats outlive their socket at all (`--resume-window-ms` > 0).
    pub fn resumable(&self) -> bool {
        !self.limits.window.is_zero()
    }

    fn max_chat_bytes(&self) -> usize {
        self.limits.per_chat
    }

    /// Takes `n` bytes from the total budget, if they fit.
    fn reserve(&self, n: usize) -> bool {
        let total = self.limits.total;
        // (The gauge is set where a log ends or gives bytes back, and by
        // the reaper: not on this per-frame path.)
        self.retained
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= total).then_some(cur + n)
            })
            .is_ok()
    }

    /// Gives `n` bytes back to the total budget.
    fn release(&self, n: usize) {
        self.retained.fetch_sub(n, Ordering::AcqRel);
        self.show_retained();
    }

    /// The gauge follows the total: set when a log ends or releases bytes
    /// and at each reaper look (two racing updates may leave it a moment
    /// old; the next one corrects it).
    fn show_retained(&self) {
        let now = self.retained.load(Ordering::Acquire);
        self.metrics
            .resume_retained_bytes
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Bytes retained by every log now.
    pub fn retained_bytes(&self) -> usize {
        self.retained.load(Ordering::Acquire)
    }

    fn count_detached(&self, delta: i64) {
        self.metrics.chats_detached.add(delta);
    }

    /// Starts the log of a new chat (`key`, client `id`, `model`) of
    /// `session`, with `reader` attached as [`ChatLog::FIRST`]; `on_end` is
    /// told how the chat ended, `cancel` drops its upstream request. The
    /// log is registered for resumes (as the session's most recent chat
    /// with that id).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        self: &Arc<Self>,
        session: &SessionId,
        key: u64,
        id: &str,
        model: &str,
        on_end: Box<dyn FnOnce(Outcome) + Send>,
        cancel: Box<dyn Fn() + Send + Sync>,
        reader: actix::Recipient<LogReady>,
    ) -> Arc<ChatLog> {
        let log = ChatLog::new(
            self.clone(),
            key,
            id.to_owned(),
            model.to_owned(),
            on_end,
            cancel,
            reader,
        );
        let log = match (&self.store, self.resumable() && log.retains()) {
            // Written to the shared store too, from its first frame on
            // (unless the total bound left no room for it: then it is
            // resumable nowhere, here as elsewhere).
            (Some(store), true) => {
                let replica = store.begin(store::ChatName {
                    session: session.clone(),
                    id: id.to_owned(),
                });
                let log = Arc::new(log.with_link(Link::Replica(replica.clone())));
                replica.set_log(&log);
                log
            }
            _ => Arc::new(log),
        };
        if self.resumable() {
            self.name(session, &log);
        }
        log
    }

    /// Registers `log` under `session` too (a socket of that session
    /// resumed it), as the session's most recent chat with its id. With a
    /// shared store, the name is recorded there too (an alias), so that a
    /// resume naming it finds the chat on any instance.
    pub fn name(&self, session: &SessionId, log: &Arc<ChatLog>) {
        self.lock()
            .entry(session.clone())
            .or_default()
            .insert(log.id.clone(), log.clone());
        let canonical = match log.link() {
            Link::Replica(r) if r.in_store() => r.session(),
            Link::Mirror(m) => m.session(),
            _ => return,
        };
        if let (Some(store), false) = (&self.store, canonical == session) {
            let alias = store::ChatName {
                session: session.clone(),
                id: log.id.clone(),
            };
            store.alias(alias, canonical.clone(), log);
        }
    }

    /// Cancels chat `name` of generation `gen` if this instance runs it (a
    /// socket elsewhere asked, through the shared store).
    pub fn cancel_owned(&self, name: &store::ChatName, gen: u64) {
        let Some(log) = self.find(&name.session, &name.id) else {
            return;
        };
        if matches!(log.link(), Link::Replica(r) if r.gen() == gen) {
            log.cancel();
        }
    }

    /// The most recent chat `id` of `session`, if it is still known.
    pub fn find(&self, session: &SessionId, id: &str) -> Option<Arc<ChatLog>> {
        self.lock().get(session).and_then(|m| m.get(id)).cloned()
    }

    /// How often the reaper looks.
    fn tick(&self) -> Duration {
        (self.limits.window / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// Ends chats nobody has been attached to for the window and forgets
    /// logs past their time; runs until the gateway stops.
    pub async fn reap(self: Arc<Self>) {
        if !self.resumable() {
            return;
        }
        let mut every = tokio::time::interval(self.tick());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.reap_once(Instant::now());
            self.show_retained();
        }
    }

    fn reap_once(&self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.limits.window) else {
            return;
        };
        // Logs are looked at without the registry locked (a log may take
        // the registry's lock while holding its own, never the reverse).
        let all: Vec<(SessionId, Arc<ChatLog>)> = self
            .lock()
            .iter()
            .flat_map(|(s, m)| m.values().map(move |l| (s.clone(), l.clone())))
            .collect();
        let mut forget = Vec::new();
        for (session, log) in all {
            match log.verdict(cutoff) {
                Verdict::Keep => {}
                Verdict::Abandon => {
                    log.abandon();
                    forget.push((session, log));
                }
                Verdict::Forget => forget.push((session, log)),
            }
        }
        if forget.is_empty() {
            return;
        }
        let mut logs = self.lock();
        for (session, log) in &forget {
            if let Some(m) = logs.get_mut(session) {
                if m.get(&log.id).is_some_and(|l| Arc::ptr_eq(l, log)) {
                    m.remove(&log.id);
                }
                if m.is_empty() {
                    logs.remove(session);
                }
            }
        }
        drop(logs);
        for (_, log) in forget {
            log.forgotten();
        }
    }
}
