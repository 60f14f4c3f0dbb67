//! The shared resume store: chat logs in Redis (or Valkey), so that every
//! instance naming the same store can serve a resume (PROTOCOL.md §1, §3.3).
//!
//! The instance running a chat keeps its in-memory [`ChatLog`] as the
//! authority for its own sockets: they are sent frames without waiting for
//! Redis. Every frame appended there is also handed to this store's writer
//! task ([`Replica::frame`], a push onto a bounded queue), which writes
//! everything pending in ONE pipeline — one round trip per burst, not per
//! delta — and once a second refreshes, in one more pipeline, the lease of
//! every chat it runs.
//!
//! Keys of one chat (named by its session `S` and client id `ID`) share the
//! hash tag `{S:ID}`, so they live in one Redis Cluster slot:
//!
//! | key | what |
//! |---|---|
//! | `netfly:{S:ID}:log` | a stream, one entry per frame: id `<seq>-<gen>`, field `f` = the frame's exact JSON |
//! | `netfly:{S:ID}:lease` | `<instance> <gen>` while the owner runs the chat (TTL [`LEASE_TTL`], refreshed every [`REFRESH`]) |
//! | `netfly:{S:ID}:alias` | the session `S0` of the chat this name stands for (a socket of session `S` resumed chat `ID` of `S0`) |
//! | `netfly:{S:ID}:attached` | set by an instance where a socket reads a copy of the chat (the owner must not abandon it) |
//!
//! `gen` is a random number per chat: the entry ids of a chat are
//! `1-gen, 2-gen, …` (increasing, so `XRANGE`/`XREAD` from an id work as
//! for `<seq>-0`), and a reader can tell a chat from a later one that
//! replaced it under the same name without a byte more per entry.
//!
//! Keys expire the resume window after the chat's end (window + lease TTL
//! while it runs, refreshed every second). Redis trouble never stops a
//! chat: a chat whose frames could not be written is dropped from the
//! store (its keys deleted when possible, or left to expire) and keeps
//! streaming to this instance's sockets; new chats are written again as
//! soon as Redis answers (the connection manager reconnects).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytestring::ByteString;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::Notify;

use super::chat_log::{ReplicaLink, StoreLink};
use super::{ChatLog, Chats, SessionId};
use crate::config::RedisUrl;
use crate::metrics::Metrics;

/// How long an owner's lease on a chat lives without being refreshed: an
/// instance that died is noticed this long (plus a reader's poll) after.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often leases (and the TTLs of running chats' keys) are refreshed:
/// every second, or a quarter of a shorter resume window (the same tick
/// tells an owner that a socket elsewhere reads its detached chat, which
/// must be known well within the window).
pub const REFRESH: Duration = Duration::from_secs(1);
/// Bytes of frames waiting for the writer past which a chat is dropped from
/// the store (Redis far behind or gone) instead of growing memory.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Connecting to Redis (at start and on reconnects).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One round trip (a pipeline) before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed flush, the writer waits this long before the next one.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(200);
/// Under load the writer starts a flush at most this often, so that frames
/// arriving meanwhile share its round trip; after a quiet spell the first
/// frame goes at once. (Only readers on other instances see the delay.)
const FLUSH_SPACING: Duration = Duration::from_millis(1);

/// A chat's name in the store: the session that started it and its id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChatName {
    pub session: SessionId,
    pub id: String,
}

impl fmt::Debug for ChatName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The session is a capability: never shown.
        write!(f, "ChatName(…, {:?})", self.id)
    }
}

impl ChatName {
    fn key(&self, what: &str) -> String {
        format!("netfly:{{{}:{}}}:{what}", self.session.as_str(), self.id)
    }

    /// The chat's stream of frames.
    pub fn log_key(&self) -> String {
        self.key("log")
    }

    /// The owner's lease.
    pub fn lease_key(&self) -> String {
        self.key("lease")
    }

    /// The chat this name stands for, when it is an alias.
    pub fn alias_key(&self) -> String {
        self.key("alias")
    }

    /// Set while a socket on another instance reads the chat.
    pub fn attached_key(&self) -> String {
        self.key("attached")
    }

    /// `S:ID`, as carried by a cancel message.
    fn wire(&self) -> String {
        format!("{}:{}", self.session.as_str(), self.id)
    }

    /// The inverse of [`ChatName::wire`].
    fn from_wire(text: &str) -> Option<ChatName> {
        let session = SessionId::parse(text.get(..48)?)?;
        let id = text.get(48..)?.strip_prefix(':')?;
        Some(ChatName {
            session,
            id: id.to_owned(),
        })
    }
}

/// The stream entry id of frame `seq` of chat generation `gen`.
pub fn entry_id(seq: u64, gen: u64) -> String {
    format!("{seq}-{gen}")
}

/// The `(seq, gen)` of a stream entry id.
pub fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (seq, gen) = id.split_once('-')?;
    Some((seq.parse().ok()?, gen.parse().ok()?))
}

/// The hash tag every limit key shares (one slot: the admission script
/// touches an address's and a token's keys atomically).
pub fn limit_key(what: &str) -> String {
    format!("netfly:{{limits}}:{what}")
}

/// A random id: 64 bits from the OS's secure source, never 0.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Only uniqueness matters here (not secrecy): fall back to fastrand.
        return fastrand::u64(1..);
    }
    u64::from_le_bytes(bytes).max(1)
}

// ------------------------------------------------------------------ the queue

/// What the writer task writes next.
enum Op {
    /// A new chat: the keys of an earlier chat of the same name go.
    Begin(Arc<Replica>),
    /// One frame of a chat.
    Frame {
        chat: Arc<Replica>,
        seq: u64,
        text: ByteString,
        terminal: bool,
    },
    /// `alias` stands for the chat of session `canonical` (same id), whose
    /// local log is `log`: its key lives as long as the chat runs here.
    Alias {
        alias: ChatName,
        canonical: SessionId,
        log: Weak<ChatLog>,
    },
    /// A socket here reads a copy of chat `name` (or stopped: `false`).
    Attached(ChatName, bool),
    /// A chat leaves the store (past a log bound): its keys go.
    Drop(Arc<Replica>),
    /// A chat slot of a token's concurrency budget is held (refreshed every
    /// second) or released.
    Slot {
        key: String,
        member: String,
        held: bool,
    },
}

/// Ops waiting for the writer, with the frame bytes among them.
struct Queue {
    ops: Mutex<(Vec<Op>, usize)>,
    wake: Notify,
}

impl Queue {
    /// Queues `op` (of `bytes` frame bytes); false when the bound is passed.
    fn push(&self, op: Op, bytes: usize) -> bool {
        {
            let mut q = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            if bytes > 0 && q.1 + bytes > MAX_PENDING_BYTES {
                return false;
            }
            q.0.push(op);
            q.1 += bytes;
        }
        self.wake.notify_one();
        true
    }

    fn take(&self) -> Vec<Op> {
        let mut q = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        q.1 = 0;
        std::mem::take(&mut q.0)
    }
}

/// A chat this instance runs, as written to the store.
pub struct Replica {
    pub name: ChatName,
    /// `name.log_key()`, written once per frame.
    log_key: String,
    /// Tells this chat from earlier and later ones of the same name.
    pub gen: u64,
    store: Arc<RedisStore>,
    /// Its frames are no longer written (Redis failed, or fell behind).
    dropped: AtomicBool,
    /// Its local log (for the lease refresh: is anyone attached?).
    log: OnceLock<Weak<ChatLog>>,
}

impl StoreLink for Replica {
    fn gen(&self) -> u64 {
        self.gen
    }

    fn session(&self) -> &SessionId {
        &self.name.session
    }

    fn in_store(&self) -> bool {
        Replica::in_store(self)
    }
}

impl ReplicaLink for Replica {
    fn frame(self: Arc<Self>, seq: u64, text: &ByteString, terminal: bool) {
        Replica::frame(&self, seq, text, terminal);
    }

    fn leave_store(self: Arc<Self>) {
        Replica::leave_store(&self);
    }
}

impl Replica {
    /// Hands frame `seq` to the writer (nothing waits for Redis).
    pub fn frame(self: &Arc<Self>, seq: u64, text: &ByteString, terminal: bool) {
        if self.dropped.load(Ordering::Acquire) {
            return;
        }
        let op = Op::Frame {
            chat: self.clone(),
            seq,
            text: text.clone(),
            terminal,
        };
        if !self.store.queue.push(op, text.len().max(1)) {
            // Redis is far behind (or gone): this chat leaves the store and
            // keeps streaming here; its lease is no longer refreshed.
            self.store.failed(
                "writing chat frames",
                &format_args!("{MAX_PENDING_BYTES} bytes of frames waiting"),
            );
            self.leave_store();
        }
    }

    /// The chat leaves the store (its log passed a bound): no more frames
    /// are written and its keys are deleted, so a resume elsewhere is
    /// `resume_unavailable` as it is here.
    pub fn leave_store(self: &Arc<Self>) {
        if !self.dropped.swap(true, Ordering::AcqRel) {
            self.store.queue.push(Op::Drop(self.clone()), 0);
        }
    }

    /// Whether the chat is still written to the store.
    pub fn in_store(&self) -> bool {
        !self.dropped.load(Ordering::Acquire)
    }

    /// Binds the replica to its local log (once, right after both exist).
    pub fn set_log(&self, log: &Arc<ChatLog>) {
        let _ = self.log.set(Arc::downgrade(log));
    }

    fn local_log(&self) -> Option<Arc<ChatLog>> {
        self.log.get().and_then(Weak::upgrade)
    }
}

/// A chat slot of a token's concurrency budget held in Redis; released
/// (and no longer refreshed) when dropped.
#[derive(Debug)]
pub struct SharedSlot {
    store: Weak<RedisStore>,
    key: String,
    member: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.queue.push(
                Op::Slot {
                    key: std::mem::take(&mut self.key),
                    member: std::mem::take(&mut self.member),
                    held: false,
                },
                0,
            );
        }
    }
}

// ------------------------------------------------------------------ the store

/// Which budget an admission spent from or was refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Ok,
    PerMinutePerIp,
    PerMinutePerToken,
    ConcurrentPerToken,
}

/// The limits one admission is checked against (0 = none).
#[derive(Debug, Clone, Copy)]
pub struct SharedLimits {
    pub per_minute_per_ip: u32,
    pub per_minute_per_token: u32,
    pub concurrent_per_token: usize,
}

/// One gateway's connection to the shared store.
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    /// The URL without its password, for messages.
    shown: String,
    /// This instance, as named in leases and on its cancel channel.
    pub instance: String,
    /// The resume window (keys live this long after a chat's end).
    window: Duration,
    /// The writer's refresh tick.
    refresh: Duration,
    metrics: Metrics,
    queue: Queue,
    /// The last round trip succeeded (logged on each change).
    healthy: AtomicBool,
    /// Limits are counted here because Redis did not answer (logged on
    /// each change).
    limits_local: AtomicBool,
    next_slot: AtomicU64,
    /// Counts the writer's flushes (the last one is awaited at stop).
    flushes: tokio::sync::watch::Sender<u64>,
}

/// Writes a frame that ends a chat whose owner is gone: only when no lease
/// is held and the stream still ends with the entry the reader saw last, so
/// of several readers noticing at once exactly one writes it.
const END_ORPHAN: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return -1 end
if last[1][1] ~= ARGV[1] then return 2 end
redis.call('XADD', KEYS[1], ARGV[2], 'f', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Deletes the keys of a chat dropped from the store, unless a later chat
/// of the same name has replaced them.
const DROP_CHAT: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 and string.match(last[1][1], '%-(%d+)$') ~= ARGV[1] then return 0 end
local lease = redis.call('GET', KEYS[2])
if lease and string.match(lease, ' (%d+)$') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// Atomically checks and spends an address's and a token's per-minute
/// budgets (token buckets refilled continuously) and takes a slot of the
/// token's concurrency budget (a sorted set of slot leases scored by their
/// expiry, so a crashed instance's slots lapse). Server time throughout.
/// Returns 0 (admitted), 1 (per address), 2 (per token per minute) or 3
/// (per token concurrency).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, per_min)
  local v = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(v[1]) or per_min
  local at = tonumber(v[2]) or now
  if now > at then tokens = tokens + (now - at) * per_min / 60000 end
  if tokens > per_min then tokens = per_min end
  return tokens
end
local ipm, tpm, tmax, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local ipt, tokt
if ipm > 0 then
  ipt = level(KEYS[1], ipm)
  if ipt < 1 then return 1 end
end
if tpm > 0 then
  tokt = level(KEYS[2], tpm)
  if tokt < 1 then return 2 end
end
if tmax > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tmax then return 3 end
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
if ipm > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(ipt - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokt - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return 0
";

/// Extends the leases of the slots still held (server time).
const REFRESH_SLOTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 0
";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Connects to `url` and checks that it answers (`PING`): a gateway
    /// whose store is unreachable does not start. The error names the store
    /// (never its password).
    pub async fn connect(
        url: &RedisUrl,
        window: Duration,
        metrics: Metrics,
    ) -> Result<Arc<RedisStore>, String> {
        let unreachable = |e: &dyn fmt::Display| format!("resume store {url} is unreachable: {e}");
        let client = redis::Client::open(url.secret()).map_err(|e| unreachable(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let connect = ConnectionManager::new_with_config(client.clone(), config);
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT * 3, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 6 s")),
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        pong.map_err(|e| unreachable(&e))?;
        let instance = format!("{:016x}", random_u64());
        log::info!("resume store {url}: connected (instance {instance})");
        Ok(Arc::new(RedisStore {
            client,
            conn,
            shown: url.to_string(),
            instance,
            window,
            refresh: (window / 4).clamp(Duration::from_millis(50), REFRESH),
            metrics,
            queue: Queue {
                ops: Mutex::new((Vec::new(), 0)),
                wake: Notify::new(),
            },
            healthy: AtomicBool::new(true),
            limits_local: AtomicBool::new(false),
            next_slot: AtomicU64::new(1),
            flushes: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// The shared connection (multiplexed; never used for blocking reads).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, for a blocking read of up to `block`.
    pub async fn dedicated(&self, block: Duration) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(block + RESPONSE_TIMEOUT);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The resume window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// What a chat's keys live for while it runs.
    fn running_ttl(&self) -> u64 {
        millis(self.window + LEASE_TTL)
    }

    /// A round trip succeeded.
    pub fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            log::info!(
                "resume store {} back: new chats are resumable on every instance again",
                self.shown
            );
        }
    }

    /// A round trip failed: counted, and logged once until one succeeds.
    pub fn failed(&self, what: &str, e: &dyn fmt::Display) {
        self.metrics.resume_store_errors_total.inc();
        if self.healthy.swap(false, Ordering::AcqRel) {
            log::warn!(
                "resume store {} lost ({what}: {e}): chats keep streaming, new ones run without cross-instance resume until it is back",
                self.shown
            );
        } else {
            log::debug!("resume store {what}: {e}");
        }
    }

    /// The value of a chat's lease held by this instance.
    fn lease_value(&self, gen: u64) -> String {
        format!("{} {gen}", self.instance)
    }

    /// Adds to `batch` this instance's lease on chat `r` and the lifetime
    /// `key_ttl` (ms) of its log.
    fn hold_lease(&self, batch: &mut Batch, r: &Replica, key_ttl: u64) {
        batch
            .add(Check::Nothing)
            .cmd("SET")
            .arg(r.name.lease_key())
            .arg(self.lease_value(r.gen))
            .arg("PX")
            .arg(millis(LEASE_TTL));
        batch
            .add(Check::Nothing)
            .cmd("PEXPIRE")
            .arg(r.name.log_key())
            .arg(key_ttl);
    }

    /// Adds to `batch` the mark that a socket here is attached to chat
    /// `name` (it lapses unless refreshed).
    fn mark_attached(&self, batch: &mut Batch, name: &ChatName) {
        batch
            .add(Check::Nothing)
            .cmd("SET")
            .arg(name.attached_key())
            .arg(&self.instance)
            .arg("PX")
            .arg(millis(LEASE_TTL));
    }

    /// Starts writing a new chat of this instance: returns its replica,
    /// whose frames go to the store from now on.
    pub fn begin(self: &Arc<Self>, name: ChatName) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            log_key: name.log_key(),
            name,
            gen: random_u64(),
            store: self.clone(),
            dropped: AtomicBool::new(false),
            log: OnceLock::new(),
        });
        self.queue.push(Op::Begin(replica.clone()), 0);
        replica
    }

    /// Records that `alias` names the chat of session `canonical` (same id).
    pub fn alias(&self, alias: ChatName, canonical: SessionId, log: &Arc<ChatLog>) {
        let op = Op::Alias {
            alias,
            canonical,
            log: Arc::downgrade(log),
        };
        self.queue.push(op, 0);
    }

    /// A socket here started (`true`) or stopped reading a copy of `name`.
    pub fn attached(&self, name: &ChatName, on: bool) {
        self.queue.push(Op::Attached(name.clone(), on), 0);
    }

    /// Asks the instance running chat `name` (generation `gen`) to cancel
    /// it. False when no instance heard it (its owner is gone) or Redis
    /// failed.
    pub async fn publish_cancel(&self, owner: &str, name: &ChatName, gen: u64) -> bool {
        let mut conn = self.conn();
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(owner_channel(owner))
            .arg(format!("{gen} {}", name.wire()))
            .query_async(&mut conn)
            .await;
        match sent {
            Ok(n) => {
                self.succeeded();
                n > 0
            }
            Err(e) => {
                self.failed("publishing a cancel", &e);
                false
            }
        }
    }

    /// Ends chat `name` with `frame` as entry `next` when its owner's lease
    /// is gone and the stream still ends at `last`. `Some(1)`: written;
    /// `Some(0 | 2)`: not needed (a lease is held, or someone appended);
    /// `Some(-1)`: the stream is gone; `None`: Redis failed.
    pub async fn end_orphan(
        &self,
        name: &ChatName,
        last: &str,
        next: &str,
        frame: &str,
    ) -> Option<i64> {
        let mut conn = self.conn();
        let done: redis::RedisResult<i64> = redis::Script::new(END_ORPHAN)
            .key(name.log_key())
            .key(name.lease_key())
            .arg(last)
            .arg(next)
            .arg(frame)
            .arg(millis(self.window))
            .invoke_async(&mut conn)
            .await;
        match done {
            Ok(n) => {
                self.succeeded();
                Some(n)
            }
            Err(e) => {
                self.failed("ending an orphaned chat", &e);
                None
            }
        }
    }

    /// One admission against the cluster-wide budgets: `ip` and `token`
    /// (a hashed token) name whose budgets are spent. `Err` when Redis did
    /// not answer in time (the caller counts locally instead).
    pub async fn admit(
        self: &Arc<Self>,
        ip: Option<&str>,
        token: Option<&str>,
        limits: SharedLimits,
    ) -> Result<(Admit, Option<SharedSlot>), ()> {
        let ip_limit = if ip.is_some() {
            limits.per_minute_per_ip
        } else {
            0
        };
        let (tok_minute, tok_max) = match token {
            Some(_) => (limits.per_minute_per_token, limits.concurrent_per_token),
            None => (0, 0),
        };
        if ip_limit == 0 && tok_minute == 0 && tok_max == 0 {
            return Ok((Admit::Ok, None));
        }
        let ip_key = limit_key(&format!("ip:{}", ip.unwrap_or("-")));
        let tok = token.unwrap_or("-");
        let bucket_key = limit_key(&format!("tok:{tok}:minute"));
        let slots_key = limit_key(&format!("tok:{tok}:chats"));
        let member = format!(
            "{}:{}",
            self.instance,
            self.next_slot.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.conn();
        let script = redis::Script::new(ADMIT);
        let mut call = script.prepare_invoke();
        call.key(&ip_key)
            .key(&bucket_key)
            .key(&slots_key)
            .arg(ip_limit)
            .arg(tok_minute)
            .arg(tok_max)
            .arg(&member)
            .arg(millis(LEASE_TTL));
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            call.invoke_async::<i64>(&mut conn),
        )
        .await;
        let verdict = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.failed("checking the shared limits", &e);
                self.limits_fall_back();
                return Err(());
            }
            Err(_) => {
                self.failed("checking the shared limits", &"no answer within 500 ms");
                self.limits_fall_back();
                return Err(());
            }
        };
        self.succeeded();
        if self.limits_local.swap(false, Ordering::AcqRel) {
            log::info!(
                "cluster-wide chat limits back (resume store {})",
                self.shown
            );
        }
        Ok(match verdict {
            0 => {
                let slot = (tok_max > 0).then(|| {
                    self.queue.push(
                        Op::Slot {
                            key: slots_key.clone(),
                            member: member.clone(),
                            held: true,
                        },
                        0,
                    );
                    SharedSlot {
                        store: Arc::downgrade(self),
                        key: slots_key,
                        member,
                    }
                });
                (Admit::Ok, slot)
            }
            1 => (Admit::PerMinutePerIp, None),
            2 => (Admit::PerMinutePerToken, None),
            _ => (Admit::ConcurrentPerToken, None),
        })
    }

    fn limits_fall_back(&self) {
        if !self.limits_local.swap(true, Ordering::AcqRel) {
            log::warn!(
                "cluster-wide chat limits unavailable (resume store {}): counting per instance until it is back",
                self.shown
            );
        }
    }

    /// Starts the writer and the cancel listener; they run until the
    /// returned handle stops them.
    pub fn spawn(self: &Arc<Self>, chats: Arc<Chats>) -> StoreTasks {
        let writer = actix_rt::spawn(Writer::new(self.clone()).run());
        let listener = actix_rt::spawn(listen_for_cancels(self.clone(), chats));
        StoreTasks {
            store: self.clone(),
            writer,
            listener,
        }
    }
}

/// The channel on which instance `owner` hears cancels of its chats.
fn owner_channel(owner: &str) -> String {
    format!("netfly:owner:{owner}")
}

/// The store's background tasks.
pub struct StoreTasks {
    store: Arc<RedisStore>,
    writer: tokio::task::JoinHandle<()>,
    listener: tokio::task::JoinHandle<()>,
}

impl StoreTasks {
    /// Writes what is pending (bounded by `within`), then stops.
    pub async fn stop(self, within: Duration) {
        let store = &self.store;
        let mut flushes = store.flushes.subscribe();
        flushes.borrow_and_update();
        // Two flushes end: the second one began after this call, so it
        // took everything queued before it.
        let two = async {
            for _ in 0..2 {
                store.queue.wake.notify_one();
                if flushes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(within, two).await;
        self.writer.abort();
        self.listener.abort();
        // Nothing queued outlives the gateway (ops hold their chats).
        store.queue.take();
    }
}

// ------------------------------------------------------------------ the writer

/// An alias key kept alive while its chat runs here.
struct AliasEntry {
    log: Weak<ChatLog>,
}

/// What one command's answer means.
enum Check {
    Nothing,
    /// An `XADD` of this chat: an error drops it from the store.
    Frame(Arc<Replica>),
    /// `PTTL` of this chat's `attached` key: > 0 means a remote reader.
    Attached(Arc<Replica>),
}

/// One pipeline and what each of its answers means.
#[derive(Default)]
struct Batch {
    pipe: redis::Pipeline,
    checks: Vec<Check>,
}

impl Batch {
    /// The pipeline, for one more command whose answer means `check`.
    fn add(&mut self, check: Check) -> &mut redis::Pipeline {
        self.checks.push(check);
        &mut self.pipe
    }
}

/// The writer task's state: every chat it keeps leases for.
struct Writer {
    store: Arc<RedisStore>,
    running: HashMap<u64, Arc<Replica>>,
    aliases: HashMap<ChatName, AliasEntry>,
    attached: HashSet<ChatName>,
    slots: HashMap<String, HashSet<String>>,
    /// Chats dropped from the store whose keys are still to be deleted.
    drops: Vec<Arc<Replica>>,
}

impl Writer {
    fn new(store: Arc<RedisStore>) -> Writer {
        Writer {
            store,
            running: HashMap::new(),
            aliases: HashMap::new(),
            attached: HashSet::new(),
            slots: HashMap::new(),
            drops: Vec::new(),
        }
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.store.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            let refresh = tokio::select! {
                _ = self.store.queue.wake.notified() => false,
                _ = tick.tick() => true,
            };
            if !refresh {
                tokio::time::sleep_until(last + FLUSH_SPACING).await;
            }
            last = tokio::time::Instant::now();
            let ops = self.store.queue.take();
            let ok = self.flush(ops, refresh).await;
            self.store.flushes.send_modify(|n| *n += 1);
            if !ok {
                tokio::time::sleep(RETRY_AFTER_ERROR).await;
            }
        }
    }

    /// Writes `ops` (and, on `refresh`, every lease) in one pipeline.
    async fn flush(&mut self, ops: Vec<Op>, refresh: bool) -> bool {
        let store = self.store.clone();
        let mut batch = Batch::default();
        // Chats with frames in this batch, in order: (chat, begun, ended).
        let mut touched: Vec<(Arc<Replica>, bool, bool)> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut find = |touched: &mut Vec<(Arc<Replica>, bool, bool)>, r: &Arc<Replica>| {
            *index.entry(r.gen).or_insert_with(|| {
                touched.push((r.clone(), false, false));
                touched.len() - 1
            })
        };
        for op in ops {
            match op {
                Op::Begin(r) => {
                    if !r.in_store() {
                        continue;
                    }
                    let n = &r.name;
                    batch
                        .add(Check::Nothing)
                        .cmd("DEL")
                        .arg(n.log_key())
                        .arg(n.alias_key())
                        .arg(n.attached_key());
                    let i = find(&mut touched, &r);
                    touched[i].1 = true;
                    self.running.insert(r.gen, r);
                }
                Op::Frame {
                    chat,
                    seq,
                    text,
                    terminal,
                } => {
                    if !chat.in_store() {
                        continue;
                    }
                    batch
                        .add(Check::Frame(chat.clone()))
                        .cmd("XADD")
                        .arg(&chat.log_key)
                        .arg(entry_id(seq, chat.gen))
                        .arg("f")
                        .arg(&*text);
                    let i = find(&mut touched, &chat);
                    touched[i].2 |= terminal;
                }
                Op::Alias {
                    alias,
                    canonical,
                    log,
                } => {
                    batch
                        .add(Check::Nothing)
                        .cmd("SET")
                        .arg(alias.alias_key())
                        .arg(canonical.as_str())
                        .arg("PX")
                        .arg(store.running_ttl());
                    self.aliases.insert(alias, AliasEntry { log });
                }
                Op::Attached(name, on) => {
                    if on {
                        store.mark_attached(&mut batch, &name);
                        self.attached.insert(name);
                    } else if self.attached.remove(&name) {
                        batch
                            .add(Check::Nothing)
                            .cmd("DEL")
                            .arg(name.attached_key());
                    }
                }
                Op::Drop(r) => {
                    self.running.remove(&r.gen);
                    self.drops.push(r);
                }
                Op::Slot { key, member, held } => {
                    if held {
                        self.slots.entry(key).or_default().insert(member);
                    } else {
                        batch.add(Check::Nothing).cmd("ZREM").arg(&key).arg(&member);
                        if let Some(set) = self.slots.get_mut(&key) {
                            set.remove(&member);
                            if set.is_empty() {
                                self.slots.remove(&key);
                            }
                        }
                    }
                }
            }
        }
        // After a chat's frames: its lease and its keys' lifetime.
        for (r, begun, ended) in &touched {
            let n = &r.name;
            if *ended {
                batch
                    .add(Check::Nothing)
                    .cmd("PEXPIRE")
                    .arg(n.log_key())
                    .arg(millis(store.window));
                batch.add(Check::Nothing).cmd("DEL").arg(n.lease_key());
                self.running.remove(&r.gen);
            } else if *begun {
                store.hold_lease(&mut batch, r, store.running_ttl());
            }
        }
        for r in std::mem::take(&mut self.drops) {
            batch
                .add(Check::Nothing)
                .cmd("EVAL")
                .arg(DROP_CHAT)
                .arg(2)
                .arg(r.name.log_key())
                .arg(r.name.lease_key())
                .arg(r.gen.to_string());
        }
        if refresh {
            self.refresh(&mut batch);
        }
        if batch.checks.is_empty() {
            return true;
        }
        let mut conn = store.conn();
        let n = batch.checks.len();
        let answer = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            conn.req_packed_commands(&batch.pipe, 0, n),
        )
        .await;
        let values = match answer {
            Ok(Ok(values)) => values,
            failed => {
                match failed {
                    Ok(Err(e)) => store.failed("writing chat frames", &e),
                    _ => store.failed("writing chat frames", &"no answer within 2 s"),
                }
                // What was in this batch may be partly written: those chats
                // leave the store (their keys go once Redis answers again).
                for (r, _, _) in touched {
                    self.drop_chat(&r);
                }
                return false;
            }
        };
        store.succeeded();
        for (value, check) in values.iter().zip(batch.checks) {
            match (check, value) {
                (Check::Frame(r), Value::ServerError(e)) => {
                    log::debug!("resume store refused a frame: {e:?}");
                    store.metrics.resume_store_errors_total.inc();
                    self.drop_chat(&r);
                }
                (Check::Attached(r), Value::Int(ttl)) if *ttl > 0 => {
                    if let Some(log) = r.local_log() {
                        log.remote_reader_seen();
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Every second: the leases and key lifetimes of the chats running here,
    /// the aliases and `attached` marks made here, the token slots held.
    fn refresh(&mut self, batch: &mut Batch) {
        let store = self.store.clone();
        let running_ttl = store.running_ttl();
        for r in self.running.values() {
            let n = &r.name;
            store.hold_lease(batch, r, running_ttl);
            // Nobody attached here: is someone attached elsewhere?
            if r.local_log().is_some_and(|l| !l.has_readers()) {
                batch
                    .add(Check::Attached(r.clone()))
                    .cmd("PTTL")
                    .arg(n.attached_key());
            }
        }
        self.aliases.retain(|alias, entry| {
            let (ttl, keep) = match entry.log.upgrade() {
                Some(log) if log.outcome().is_none() => (running_ttl, true),
                Some(_) => (millis(store.window), false),
                None => return false,
            };
            batch
                .add(Check::Nothing)
                .cmd("PEXPIRE")
                .arg(alias.alias_key())
                .arg(ttl);
            keep
        });
        for name in &self.attached {
            store.mark_attached(batch, name);
        }
        for (key, members) in &self.slots {
            let eval = batch
                .add(Check::Nothing)
                .cmd("EVAL")
                .arg(REFRESH_SLOTS)
                .arg(1)
                .arg(key)
                .arg(millis(LEASE_TTL));
            for m in members {
                eval.arg(m);
            }
        }
    }

    /// `r`'s frames are no longer written; its keys go at the next flush.
    fn drop_chat(&mut self, r: &Arc<Replica>) {
        if r.dropped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.running.remove(&r.gen);
        self.drops.push(r.clone());
    }
}

// ------------------------------------------------------------------ cancels

/// Listens on this instance's channel for cancels of the chats it runs
/// (sent by instances where a socket reads a copy); reconnects while the
/// gateway runs.
async fn listen_for_cancels(store: Arc<RedisStore>, chats: Arc<Chats>) {
    use futures_util::StreamExt as _;
    let channel = owner_channel(&store.instance);
    loop {
        let subscribed = async {
            let mut pubsub = store.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await {
            Ok(Ok(mut pubsub)) => {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Some((gen, name)) = text.split_once(' ') else {
                        continue;
                    };
                    let (Ok(gen), Some(name)) = (gen.parse::<u64>(), ChatName::from_wire(name))
                    else {
                        continue;
                    };
                    chats.cancel_owned(&name, gen);
                }
                store.failed("listening for cancels", &"connection closed");
            }
            Ok(Err(e)) => store.failed("listening for cancels", &e),
            Err(_) => store.failed("listening for cancels", &"no answer"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entry_ids_round_trip() {
        let s = SessionId::random();
        let name = ChatName {
            session: s.clone(),
            id: "a:b}c".into(),
        };
        assert_eq!(ChatName::from_wire(&name.wire()), Some(name.clone()));
        assert!(name
            .log_key()
            .starts_with(&format!("netfly:{{{}:a:b}}", s.as_str())));
        assert_eq!(parse_entry_id(&entry_id(17, 99)), Some((17, 99)));
        assert_eq!(parse_entry_id("17"), None);
        assert_eq!(ChatName::from_wire("short:x"), None);
    }
}
