//! Resuming, on this instance, a chat another instance runs (PROTOCOL.md
//! §3.3 with `--resume-store redis://…`).
//!
//! The registry has no log for the chat here, so it is looked up in the
//! shared store. Found, it becomes a local MIRROR: a [`ChatLog`] holding
//! the stream's frames verbatim (same seq, same text), registered like any
//! log so that later resumes here attach to it, and fed by a reader task
//! that tails the stream with a blocking read on a connection of its own.
//! The resuming socket attaches to it with its `after` as usual: replay,
//! then live frames, exactly once, decided by the log as for a local chat.
//!
//! - Backpressure: the reader reads more only while the mirror is
//!   writable (its slowest socket is under the log's bound).
//! - Cancel from a socket here is published on the owner's channel; the
//!   owner drops its upstream request and its `done cancelled` comes back
//!   through the stream to every reader, here and on the owner.
//! - Owner death: whenever a blocking read times out (every second) the
//!   reader checks the owner's lease. Gone, with no terminal frame in the
//!   stream, the first reader to notice appends `error upstream_broken`
//!   as the next entry (a script: only if the stream still ends where it
//!   read it), and every reader ends with that same frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use redis::aio::MultiplexedConnection;
use tokio::sync::{watch, Notify};

use super::chat_log::{Link, MirrorFeed, RemoteFrame, StoreLink};
use super::store::{entry_id, parse_entry_id, ChatName, RedisStore, LEASE_TTL};
use super::{ChatLog, Chats, SessionId};
use crate::error::{ChatError, Fault, Outcome};
use crate::protocol::ServerFrame;

/// How long one blocking read waits for new frames: the lease is checked
/// at least this often.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read per round trip.
const PAGE: usize = 256;
/// A reader that cannot reach the store for this long ends its copy with
/// `upstream_broken` (it can no longer tell whether the owner lives).
const GIVE_UP: Duration = Duration::from_secs(8);
/// How long a resume may wait for the store to catch up with its `after`.
const CATCH_UP: Duration = Duration::from_secs(2);
/// A lookup's round trips (a resume waits for them).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The tie between a mirror and the chat it copies.
pub struct MirrorLink {
    store: Arc<RedisStore>,
    /// The chat's name in the store (its own session, not an alias).
    pub name: ChatName,
    /// Its generation (entry ids are `<seq>-<gen>`).
    pub gen: u64,
    /// The instance holding the lease when last seen.
    owner: Mutex<Option<String>>,
    stopped: AtomicBool,
    /// Check the owner now (a cancel reached nobody).
    poked: AtomicBool,
    wake: Notify,
}

impl StoreLink for MirrorLink {
    fn gen(&self) -> u64 {
        self.gen
    }

    fn session(&self) -> &SessionId {
        &self.name.session
    }

    fn in_store(&self) -> bool {
        true
    }
}

impl MirrorFeed for MirrorLink {
    fn request_cancel(self: Arc<Self>) {
        MirrorLink::request_cancel(&self);
    }

    fn set_attached(&self, attached: bool) {
        MirrorLink::set_attached(self, attached);
    }

    fn owner_refreshing(&self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(MirrorLink::owner_refreshing(self))
    }
}

impl MirrorLink {
    /// A socket here cancels: the owner is asked to; when nobody heard it
    /// (the owner is gone), the reader checks the lease at once.
    pub fn request_cancel(self: &Arc<Self>) {
        let link = self.clone();
        actix_rt::spawn(async move {
            let owner = link.owner.lock().map(|o| o.clone()).unwrap_or(None);
            let heard = match owner {
                Some(owner) => {
                    link.store
                        .publish_cancel(&owner, &link.name, link.gen)
                        .await
                }
                None => false,
            };
            if !heard {
                link.poked.store(true, Ordering::Release);
                link.wake.notify_one();
            }
        });
    }

    /// The first socket here attached (`true`) or the last one left.
    pub fn set_attached(&self, on: bool) {
        self.store.attached(&self.name, on);
    }

    /// The copy ended here: its reader stops.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Whether the chat's owner holds its lease and refreshed it lately
    /// (a Redis error counts as yes: nothing is known to be wrong with it).
    async fn owner_refreshing(&self) -> bool {
        let mut conn = self.store.conn();
        let lease: redis::RedisResult<(Option<String>, i64)> = redis::pipe()
            .cmd("GET")
            .arg(self.name.lease_key())
            .cmd("PTTL")
            .arg(self.name.lease_key())
            .query_async(&mut conn)
            .await;
        // Refreshed every REFRESH, a live owner's lease has more than half
        // its TTL left.
        let fresh = u64::try_from((LEASE_TTL / 2).as_millis()).unwrap_or(0);
        match lease {
            Ok((lease, pttl)) => {
                matches!(owner_of(lease, self.gen), Owner::Alive(_))
                    && u64::try_from(pttl).is_ok_and(|t| t >= fresh)
            }
            Err(_) => true,
        }
    }

    fn set_owner(&self, lease: &str) {
        if let Ok(mut o) = self.owner.lock() {
            *o = lease.split_once(' ').map(|(inst, _)| inst.to_owned());
        }
    }
}

/// What the lease says of a chat.
enum Owner {
    /// Held for this chat by `lease`.
    Alive(String),
    /// Held for a later chat of the same name.
    Replaced,
    Gone,
}

fn owner_of(lease: Option<String>, gen: u64) -> Owner {
    match lease {
        None => Owner::Gone,
        Some(l) if l.rsplit_once(' ').and_then(|(_, g)| g.parse().ok()) == Some(gen) => {
            Owner::Alive(l)
        }
        Some(_) => Owner::Replaced,
    }
}

/// What a new mirror's reader needs: its link, its connection and the last
/// seq read.
type Feed = (Arc<MirrorLink>, MultiplexedConnection, u64);

type Fields = Vec<Vec<u8>>;
type Entries = Vec<(String, Fields)>;

/// A stream entry as a frame of generation `gen`; `None` when it is not one.
fn frame_of(id: &str, fields: Fields, gen: u64) -> Option<RemoteFrame> {
    let (seq, g) = parse_entry_id(id)?;
    if g != gen {
        return None;
    }
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if k == b"f" {
            let text = String::from_utf8(v).ok()?;
            return Some(RemoteFrame {
                seq,
                text: ByteString::from(text),
            });
        }
    }
    None
}

impl Chats {
    /// Waits (bounded) until the copy `log` holds frame `after` or has
    /// ended. A socket of the owner is sent a frame before the store has it,
    /// so a client resuming here may be a burst ahead: up to [`CATCH_UP`]
    /// for the stream to catch up. Still behind then, a live owner (its
    /// lease refreshed within the last second or so) means the client is
    /// simply ahead: the attach says `bad_request`. An owner that stopped
    /// refreshing its lease is dying or dead: the wait goes on until the
    /// copy ends (`upstream_broken`, within the lease TTL and a read), so
    /// such a client gets that terminal frame rather than a refusal.
    pub async fn catch_up(&self, log: &ChatLog, after: u64) {
        let Link::Mirror(link) = log.link() else {
            return;
        };
        let link = link.clone();
        let behind = || log.last_seq() < after && log.outcome().is_none();
        let mut deadline = Instant::now() + CATCH_UP;
        let mut extended = false;
        while behind() {
            if Instant::now() >= deadline {
                if extended || link.owner_refreshing().await {
                    return;
                }
                extended = true;
                deadline = Instant::now() + LEASE_TTL + BLOCK * 2;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The log a resume of chat `id` of `session` attaches to when this
    /// instance does not run it: a mirror of the chat in the shared store
    /// (made, or already here), or `None` (`resume_unavailable`): not in
    /// the store, past the per-chat bound, or the store did not answer.
    pub async fn find_remote(
        self: &Arc<Self>,
        session: &SessionId,
        id: &str,
        ending: watch::Receiver<bool>,
    ) -> Option<Arc<ChatLog>> {
        let store = self.store.clone()?;
        if !self.resumable() {
            return None;
        }
        let looked = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(&store, session, id)).await;
        let (name, gen) = match looked {
            Ok(Some(found)) => found,
            // The store cannot be asked: a copy already here is the best
            // there is (its own reader notices what the store says later).
            Ok(None) => return self.find(session, id),
            Err(_) => {
                store.failed("looking up a chat", &"no answer within 2 s");
                return self.find(session, id);
            }
        };
        // This instance runs it, or already has a copy of this very chat.
        if let Some(log) = self.find(&name.session, id) {
            match log.link() {
                Link::Mirror(m) if Some(m.gen()) != gen => {}
                Link::Mirror(_) => return Some(log),
                Link::Replica(r) if gen.is_some_and(|g| g != r.gen()) => {}
                _ => return Some(log),
            }
        }
        let gen = gen?;
        let made = tokio::time::timeout(LOOKUP_TIMEOUT, self.make_mirror(&store, name, gen)).await;
        let (log, feed) = match made {
            Ok(m) => m?,
            Err(_) => {
                store.failed("reading a chat", &"no answer within 2 s");
                return None;
            }
        };
        if let Some((link, conn, last)) = feed {
            if log.outcome().is_none() {
                actix_rt::spawn(tail(store, log.clone(), link, conn, last, ending));
            }
        }
        Some(log)
    }

    /// The chat `id` of `session` stands for (its own name, or the one
    /// its alias names) and the generation of the chat its stream holds
    /// (`None`: no stream). `None` when the store failed.
    async fn lookup(
        &self,
        store: &RedisStore,
        session: &SessionId,
        id: &str,
    ) -> Option<(ChatName, Option<u64>)> {
        let mut conn = store.conn();
        let asked = ChatName {
            session: session.clone(),
            id: id.to_owned(),
        };
        let alias: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(asked.alias_key())
            .query_async(&mut conn)
            .await;
        let alias = match alias {
            Ok(a) => a,
            Err(e) => {
                store.failed("looking up a chat", &e);
                return None;
            }
        };
        let name = match alias.as_deref().and_then(SessionId::parse) {
            Some(s) => ChatName {
                session: s,
                id: id.to_owned(),
            },
            None => asked,
        };
        let first: redis::RedisResult<Entries> = redis::cmd("XRANGE")
            .arg(name.log_key())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await;
        match first {
            Ok(entries) => {
                store.succeeded();
                let gen = entries
                    .first()
                    .and_then(|(id, _)| parse_entry_id(id))
                    .map(|(_, g)| g);
                Some((name, gen))
            }
            Err(e) => {
                store.failed("looking up a chat", &e);
                None
            }
        }
    }

    /// Reads chat `name` (generation `gen`) from its first frame, bounded by
    /// the per-chat log bound, into a new mirror registered here; returns it
    /// with what its reader needs (its link, a connection and the last seq
    /// read), or without when a copy made meanwhile is returned instead.
    async fn make_mirror(
        self: &Arc<Self>,
        store: &Arc<RedisStore>,
        name: ChatName,
        gen: u64,
    ) -> Option<(Arc<ChatLog>, Option<Feed>)> {
        let mut conn = store.conn();
        let mut frames: Vec<RemoteFrame> = Vec::new();
        let mut bytes = 0usize;
        let mut from = "-".to_owned();
        loop {
            let page: redis::RedisResult<Entries> = redis::cmd("XRANGE")
                .arg(name.log_key())
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    store.failed("reading a chat", &e);
                    return None;
                }
            };
            let full = page.len() == PAGE;
            for (id, fields) in page {
                from = format!("({id}");
                // Another generation (replaced meanwhile) or a gap: no copy.
                let frame = frame_of(&id, fields, gen)?;
                if frame.seq != frames.len() as u64 + 1 {
                    return None;
                }
                bytes += frame.text.len();
                if bytes > self.max_chat_bytes() {
                    return None;
                }
                frames.push(frame);
            }
            if !full {
                break;
            }
        }
        let last = frames.last()?.seq;
        let lease: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(name.lease_key())
            .query_async(&mut conn)
            .await;
        let owner = match lease {
            Ok(l) => match owner_of(l, gen) {
                Owner::Alive(lease) => Some(lease),
                _ => None,
            },
            Err(e) => {
                store.failed("reading a chat", &e);
                return None;
            }
        };
        // A chat still running is tailed on a connection of its own.
        let ended = frames
            .last()
            .is_some_and(|f| super::chat_log::is_terminal_text(&f.text));
        let reader = if ended {
            None
        } else {
            match store.dedicated(BLOCK).await {
                Ok(c) => Some(c),
                Err(e) => {
                    store.failed("opening a connection for a reader", &e);
                    return None;
                }
            }
        };
        store.succeeded();
        let link = Arc::new(MirrorLink {
            store: store.clone(),
            name: name.clone(),
            gen,
            owner: Mutex::new(None),
            stopped: AtomicBool::new(false),
            poked: AtomicBool::new(false),
            wake: Notify::new(),
        });
        if let Some(lease) = owner {
            link.set_owner(&lease);
        }
        let stop = link.clone();
        let log = Arc::new(ChatLog::mirror(
            self.clone(),
            super::next_chat_key(),
            name.id.clone(),
            link.clone(),
            Box::new(move || stop.stop()),
        ));
        if log.append_remote(frames).is_err() {
            log.forgotten();
            return None;
        }
        // Another resume here may have made a copy meanwhile: use that one.
        if let Some(existing) = self.register_mirror(&name, &log, gen) {
            log.forgotten();
            link.stop();
            return Some((existing, None));
        }
        Some((log, reader.map(|reader| (link, reader, last))))
    }

    /// Registers `log` as the copy of `name` unless the same chat
    /// (generation) is already here: then that log. A stale copy it
    /// replaces is forgotten.
    fn register_mirror(
        &self,
        name: &ChatName,
        log: &Arc<ChatLog>,
        gen: u64,
    ) -> Option<Arc<ChatLog>> {
        let stale = {
            let mut logs = self.lock();
            let chats = logs.entry(name.session.clone()).or_default();
            if let Some(existing) = chats.get(&name.id) {
                let same = match existing.link() {
                    Link::Mirror(m) => m.gen() == gen,
                    Link::Replica(r) => r.gen() == gen,
                    Link::Local => false,
                };
                if same {
                    return Some(existing.clone());
                }
            }
            chats.insert(name.id.clone(), log.clone())
        };
        // Looked at without the registry locked (a log may take the
        // registry's lock while holding its own).
        if let Some(stale) = stale {
            stale.forgotten();
        }
        None
    }
}

/// Tails the stream of `link`'s chat from seq `last` into `log` until the
/// chat ends (or the copy ends here: abandoned, shut down).
async fn tail(
    store: Arc<RedisStore>,
    log: Arc<ChatLog>,
    link: Arc<MirrorLink>,
    conn: MultiplexedConnection,
    mut last: u64,
    mut ending: watch::Receiver<bool>,
) {
    let key = link.name.log_key();
    let gen = link.gen;
    let mut failing_since: Option<Instant> = None;
    let mut read = None;
    loop {
        if link.is_stopped() || log.outcome().is_some() {
            return;
        }
        if read.is_none() {
            // Backpressure: more is read only while the sockets keep up.
            tokio::select! {
                _ = log.writable() => {}
                _ = link.wake.notified() => {
                    if link.poked.swap(false, Ordering::AcqRel) {
                        check_owner(&store, &log, &link, last).await;
                    }
                    continue;
                }
                _ = ending.wait_for(|e| *e) => return shut_down(&log),
            }
            read = Some(Box::pin(xread(
                conn.clone(),
                key.clone(),
                entry_id(last, gen),
            )));
        }
        let Some(pending) = read.as_mut() else {
            continue;
        };
        tokio::select! {
            answer = pending => {
                read = None;
                match answer {
                    Ok(entries) => {
                        failing_since = None;
                        store.succeeded();
                        if entries.is_empty() {
                            check_owner(&store, &log, &link, last).await;
                            continue;
                        }
                        let mut frames = Vec::with_capacity(entries.len());
                        for (id, fields) in entries {
                            match frame_of(&id, fields, gen) {
                                Some(f) => frames.push(f),
                                None => return broken(&log, "the chat was replaced in the resume store"),
                            }
                        }
                        let next = frames.last().map_or(last, |f| f.seq);
                        if log.append_remote(frames).is_err() {
                            return broken(&log, "frames of this chat are missing from the resume store");
                        }
                        last = next;
                    }
                    Err(e) => {
                        store.failed("reading a chat", &e);
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= GIVE_UP {
                            return broken(&log, "the resume store is unreachable");
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            _ = link.wake.notified() => {
                if link.poked.swap(false, Ordering::AcqRel) {
                    check_owner(&store, &log, &link, last).await;
                }
            }
            _ = ending.wait_for(|e| *e) => return shut_down(&log),
        }
    }
}

/// One blocking read of the entries after `after` (empty: none came).
async fn xread(
    mut conn: MultiplexedConnection,
    key: String,
    after: String,
) -> redis::RedisResult<Entries> {
    let reply: Option<Vec<(String, Entries)>> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(PAGE)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&key)
        .arg(&after)
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .and_then(|streams| streams.into_iter().next())
        .map(|(_, entries)| entries)
        .unwrap_or_default())
}

/// No new frame for a while: is the owner still there? Gone (its lease
/// lapsed) with the chat unfinished, the chat ends with `upstream_broken`
/// as its next entry — written once, whoever notices first — and the next
/// read brings it to every copy.
async fn check_owner(store: &RedisStore, log: &ChatLog, link: &MirrorLink, last: u64) {
    let mut conn = store.conn();
    let lease: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(link.name.lease_key())
        .query_async(&mut conn)
        .await;
    let lease = match lease {
        Ok(l) => l,
        Err(e) => return store.failed("checking a chat's owner", &e),
    };
    match owner_of(lease, link.gen) {
        Owner::Alive(lease) => link.set_owner(&lease),
        Owner::Replaced => broken(log, "the chat was replaced in the resume store"),
        Owner::Gone => {
            let err = ChatError::UpstreamBroken(Fault::OwnerStopped);
            let frame = ServerFrame::Error {
                id: Some(&log.id),
                seq: Some(last + 1),
                code: err.code().as_str(),
                message: err.message(),
                retryable: err.retryable(),
            }
            .to_json();
            let written = store
                .end_orphan(
                    &link.name,
                    &entry_id(last, link.gen),
                    &entry_id(last + 1, link.gen),
                    &frame,
                )
                .await;
            if written == Some(-1) {
                // The stream is gone (the chat left the store): this copy
                // cannot go on. (Redis failing: tried again next time.)
                broken(log, "the chat's log is no longer in the resume store");
            }
        }
    }
}

/// Ends this copy here with `upstream_broken` (not written to the store).
fn broken(log: &ChatLog, why: &'static str) {
    let err = ChatError::UpstreamBroken(Fault::StoreLost(why));
    let outcome = Outcome::Failed(err.code());
    log.end(err, outcome);
}

/// The gateway is shutting down: this copy ends here (the chat runs on
/// where it runs; a client may resume it elsewhere).
fn shut_down(log: &ChatLog) {
    let err = ChatError::UpstreamUnavailable(Fault::ShuttingDown);
    let outcome = Outcome::Failed(err.code());
    log.end(err, outcome);
}
