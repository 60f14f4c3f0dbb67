//! Who may come in, for both front ends (PROTOCOL.md §1).
//!
//! - A socket: [`admit_socket`] checks the `Origin`, the token, the
//!   per-address and total socket limits before the upgrade, so a refused
//!   client gets a plain HTTP status and never a socket.
//! - A chat, from `/ws` or `/v1` alike: [`admit_chat`] is the one way in.
//!   It refuses new chats while draining, holds the per-address chat
//!   budget and concurrency limits and the gateway's total, and returns the
//!   [`ChatSlot`] the chat holds until it ends (its metrics live there too).
//!
//! - The doors before either (issue 10): [`host_refused`], the `Host`
//!   policy against DNS rebinding, for every route a browser uses; and
//!   [`admit_api_call`] for `/v1/chat/completions`: the same `Origin`
//!   policy as `/ws` when an `Origin` is present, `application/json` only
//!   (a cross-site page can send `text/plain` or a form without asking),
//!   and a declared body over the limit refused before it is read.
//!
//! With `--resume-store redis://…` the per-minute budgets (per address,
//! per token) and the per-token concurrency are counted in Redis, one
//! atomic script per admission, so they hold for all instances together;
//! when Redis does not answer, they are counted here (per instance) until
//! it does. The `memory` store counts them here.
//!
//! `/v1` has no socket, so the chat limits are stated in socket terms:
//! an address may have `--max-connections-per-ip` × streams chats in
//! flight, the gateway `--max-connections` × streams; a WebSocket client
//! can never exceed either, an HTTP client is held to the same.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::http::header;
use actix_web::HttpRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chats::store::{Admit, RedisStore, SharedLimits, SharedSlot};
use crate::config::{AllowedHosts, AllowedOrigins, Config};
use crate::error::{Busy, ChatError, Outcome};
use crate::logsafe::{self, clip};
use crate::metrics::Metrics;

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the `Origin` is not allowed.
    Origin(String),
    /// 401: no valid token.
    Unauthorized,
    /// 503: `--max-connections` sockets are open.
    Full,
    /// 429: this address has `--max-connections-per-ip` sockets open.
    TooManyFromIp,
}

impl Refusal {
    /// The `reason` label of `netfly_ws_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Origin(_) => "origin",
            Refusal::Unauthorized => "auth",
            Refusal::Full => "full",
            Refusal::TooManyFromIp => "per_ip",
        }
    }
}

/// Who is asking: the client's address (after trusted proxies) and, when
/// per-token limits are set, the token it presented (hashed).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub token: Option<TokenKey>,
}

/// An auth token as limits know it: the first 128 bits of its SHA-256, in
/// hex. The token itself is never kept for limits nor sent to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey(Arc<str>);

impl TokenKey {
    pub fn of(token: &str) -> TokenKey {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(token.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        TokenKey(hex.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The token a client presented, keyed for the per-token limits (only
/// when some are set: otherwise it is not hashed at all).
fn token_key(config: &Config, presented: Option<&str>) -> Option<TokenKey> {
    let limited =
        config.max_chats_per_minute_per_token > 0 || config.max_concurrent_chats_per_token > 0;
    presented
        .filter(|t| limited && !t.is_empty())
        .map(TokenKey::of)
}

/// Who is asking, for an API request (`/v1`): its address and its
/// `Authorization: Bearer` token.
pub fn api_client(req: &HttpRequest, config: &Config) -> Client {
    Client {
        ip: client_ip(req, &config.trusted_proxies),
        token: token_key(config, bearer_token(req)),
    }
}

/// The gateway's counters of sockets and chats, shared by every worker.
pub struct Admission {
    /// The gateway is shutting down: no new sockets or chats.
    draining: AtomicBool,
    metrics: Metrics,
    sockets: Arc<Semaphore>,
    max_sockets: usize,
    chats: Arc<Semaphore>,
    max_chats: u32,
    ips: Arc<IpLimits>,
    tokens: Arc<TokenLimits>,
    /// Where the cluster-wide budgets are counted (`redis://` store).
    store: Option<Arc<RedisStore>>,
    shared_limits: SharedLimits,
}

impl Admission {
    pub fn new(config: &Config, metrics: Metrics) -> Admission {
        Self::with_store(config, metrics, None)
    }

    /// Admission whose per-minute and per-token budgets are counted in
    /// `store` (when given) for every instance sharing it.
    pub fn with_store(
        config: &Config,
        metrics: Metrics,
        store: Option<Arc<RedisStore>>,
    ) -> Admission {
        let streams = config.max_streams_per_connection;
        // A semaphore counts at most u32::MAX permits at once in `acquire_many`.
        let max_chats = u32::try_from(config.max_connections.saturating_mul(streams))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let max_sockets = config.max_connections.min(Semaphore::MAX_PERMITS);
        Admission {
            draining: AtomicBool::new(false),
            metrics,
            sockets: Arc::new(Semaphore::new(max_sockets)),
            max_sockets,
            chats: Arc::new(Semaphore::new(max_chats as usize)),
            max_chats,
            ips: Arc::new(IpLimits {
                max_sockets: config.max_connections_per_ip,
                max_chats: config.max_connections_per_ip.saturating_mul(streams),
                chats_per_minute: config.max_chats_per_minute_per_ip,
                table: Mutex::new(HashMap::new()),
            }),
            tokens: Arc::new(TokenLimits {
                max_chats: config.max_concurrent_chats_per_token,
                chats_per_minute: config.max_chats_per_minute_per_token,
                table: Mutex::new(HashMap::new()),
            }),
            store,
            shared_limits: SharedLimits {
                per_minute_per_ip: config.max_chats_per_minute_per_ip,
                per_minute_per_token: config.max_chats_per_minute_per_token,
                concurrent_per_token: config.max_concurrent_chats_per_token,
            },
        }
    }

    /// Whether the gateway is shutting down (no new sockets or chats).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: new sockets and chats are refused from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Sockets open now.
    pub fn sockets_open(&self) -> usize {
        self.max_sockets - self.sockets.available_permits()
    }

    /// Waits until no chat is in flight (every [`ChatSlot`] dropped) or
    /// `deadline` passes; returns whether none is.
    pub async fn all_chats_ended(&self, deadline: tokio::time::Instant) -> bool {
        let all = self.chats.acquire_many(self.max_chats);
        matches!(tokio::time::timeout_at(deadline, all).await, Ok(Ok(_)))
    }
}

/// What an admitted socket holds until it closes.
#[derive(Debug)]
pub struct SocketPermit {
    pub client: Client,
    _total: OwnedSemaphorePermit,
    _ip: Option<IpPermit>,
}

impl Admission {
    /// Runs every admission check for a `/ws` upgrade.
    pub fn admit_socket(
        &self,
        req: &HttpRequest,
        config: &Config,
    ) -> Result<SocketPermit, Refusal> {
        let admission = self;
        origin_allowed(req, &config.allowed_origins)?;
        let presented = presented_token(req);
        if !config.auth_tokens.is_empty() {
            let presented = presented.as_deref().unwrap_or_default();
            if !token_accepted(presented, &config.auth_tokens) {
                return Err(Refusal::Unauthorized);
            }
        }
        let ip = client_ip(req, &config.trusted_proxies);
        let ip_permit = match ip {
            Some(ip) if admission.ips.max_sockets > 0 => Some(
                admission
                    .ips
                    .try_open_socket(ip)
                    .ok_or(Refusal::TooManyFromIp)?,
            ),
            _ => None,
        };
        let total = admission
            .sockets
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        Ok(SocketPermit {
            client: Client {
                ip,
                token: token_key(config, presented.as_deref()),
            },
            _total: total,
            _ip: ip_permit,
        })
    }

    /// The one way in for a chat, from either front end: refuses it while
    /// draining or past a limit (counting the refusal), else counts it in
    /// flight and returns its slot. With a shared store it spends from the
    /// cluster-wide budgets (one round trip); otherwise, or when the store
    /// does not answer, it completes without waiting.
    pub async fn admit_chat(&self, client: &Client) -> Result<ChatSlot, ChatError> {
        let refuse = |why: Busy| {
            let err = ChatError::Busy(why);
            self.metrics.chat_ended(Outcome::Failed(err.code()));
            Err(err)
        };
        if self.draining() {
            return refuse(Busy::Draining);
        }
        let admission = self;
        let Ok(total) = admission.chats.clone().try_acquire_owned() else {
            return refuse(Busy::ChatsInTotal(admission.max_chats as usize));
        };
        // The cluster-wide budgets first: counted there, they are not
        // counted again here (the in-flight counts here still are: a
        // fallback starts from them).
        let mut shared_slot = None;
        let mut counted_shared = false;
        if let (Some(store), true) = (&self.store, self.limits_shared(client)) {
            let ip = client.ip.map(|ip| ip.to_string());
            let token = client.token.as_ref().map(TokenKey::as_str);
            match store.admit(ip.as_deref(), token, self.shared_limits).await {
                Ok((Admit::Ok, slot)) => {
                    shared_slot = slot;
                    counted_shared = true;
                }
                Ok((Admit::PerMinutePerIp, _)) => {
                    return refuse(Busy::ChatsPerMinutePerIp(
                        self.shared_limits.per_minute_per_ip,
                    ))
                }
                Ok((Admit::PerMinutePerToken, _)) => {
                    return refuse(Busy::ChatsPerMinutePerToken(
                        self.shared_limits.per_minute_per_token,
                    ))
                }
                Ok((Admit::ConcurrentPerToken, _)) => {
                    return refuse(Busy::ChatsPerToken(self.shared_limits.concurrent_per_token))
                }
                Err(()) => {}
            }
            if self.draining() {
                return refuse(Busy::Draining);
            }
        }
        let ip = match client.ip {
            Some(ip) if admission.ips.limits_chats() => {
                match admission.ips.try_start_chat(ip, !counted_shared) {
                    Ok(permit) => Some(permit),
                    Err(why) => return refuse(why),
                }
            }
            _ => None,
        };
        let token = match &client.token {
            Some(key) if admission.tokens.limits_chats() => {
                match admission.tokens.try_start_chat(key, !counted_shared) {
                    Ok(permit) => Some(permit),
                    Err(why) => return refuse(why),
                }
            }
            _ => None,
        };
        self.metrics.chat_started();
        Ok(ChatSlot {
            metrics: self.metrics.clone(),
            outcome: Outcome::Disconnected,
            accepted: Instant::now(),
            deltas: 0,
            _total: total,
            _ip: ip,
            _token: token,
            _shared: shared_slot,
        })
    }

    /// Whether a chat of `client` spends from a cluster-wide budget.
    fn limits_shared(&self, client: &Client) -> bool {
        let l = &self.shared_limits;
        (client.ip.is_some() && l.per_minute_per_ip > 0)
            || (client.token.is_some()
                && (l.per_minute_per_token > 0 || l.concurrent_per_token > 0))
    }
}

/// A chat in flight: held from its admission to its end, by whatever owns
/// the chat. Dropping it counts the chat's outcome (by default
/// `disconnected`: nobody said otherwise) and frees its place.
pub struct ChatSlot {
    metrics: Metrics,
    outcome: Outcome,
    accepted: Instant,
    deltas: u64,
    _total: OwnedSemaphorePermit,
    _ip: Option<IpPermit>,
    _token: Option<TokenPermit>,
    /// Its place in the token's cluster-wide concurrency budget.
    _shared: Option<SharedSlot>,
}

impl ChatSlot {
    /// Records how the chat ended (counted when the slot is dropped).
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Counts one delta handed to a client; its bytes were read from the
    /// upstream at `read_at`.
    pub fn delta_sent(&mut self, read_at: Instant) {
        self.metrics
            .delta_sent(read_at, self.accepted, self.deltas == 0);
        self.deltas += 1;
    }
}

impl Drop for ChatSlot {
    fn drop(&mut self) {
        self.metrics.chat_finished(self.outcome);
    }
}

// ---------------------------------------------------------------- tokens

/// Compares two secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header, if any.
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The token a browser presents: `Authorization: Bearer …` or `?token=`.
fn presented_token(req: &HttpRequest) -> Option<String> {
    if let Some(t) = bearer_token(req) {
        return Some(t.to_owned());
    }
    let query =
        actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok()?;
    query.get("token").cloned()
}

/// Whether `presented` is one of `tokens` (always true when none are set),
/// comparing every token in constant time.
fn token_accepted(presented: &str, tokens: &[String]) -> bool {
    if tokens.is_empty() {
        return true;
    }
    let mut ok = false;
    for token in tokens {
        ok |= constant_time_eq(presented.as_bytes(), token.as_bytes());
    }
    ok
}

/// The `--auth-tokens` check for API clients, which present their token
/// as `Authorization: Bearer` only.
pub fn bearer_authorized(req: &HttpRequest, tokens: &[String]) -> bool {
    token_accepted(bearer_token(req).unwrap_or(""), tokens)
}

// ---------------------------------------------------------------- hosts

/// The host of a `Host` value (`name[:port]` or `[v6]:port`), lowercase,
/// without a trailing dot; `None` when it is not of that shape.
pub fn host_name(value: &str) -> Option<String> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (&value[..inner.len() + 2], port)
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    valid.then(|| host.to_ascii_lowercase())
}

/// Whether a `Host` value names this gateway: an IP address literal, a
/// loopback name, a listed name or a name under a listed `.domain`.
pub fn host_allowed(value: &str, allowed: &AllowedHosts) -> bool {
    let list = match allowed {
        AllowedHosts::Any => return true,
        AllowedHosts::List(list) => list,
    };
    let Some(host) = host_name(value) else {
        return false;
    };
    if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        // A rebinding attack needs a name; an address is what it is.
        return true;
    }
    host == "localhost"
        || list.iter().any(|name| match name.strip_prefix('.') {
            Some(domain) => {
                host == domain
                    || host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.'))
            }
            None => host == *name,
        })
}

/// The `Host` (or absolute-form authority) of `req` when the policy
/// refuses it. A request with neither (HTTP/1.0, not a browser) passes.
pub fn host_refused(req: &HttpRequest, allowed: &AllowedHosts) -> Option<String> {
    if matches!(allowed, AllowedHosts::Any) {
        return None;
    }
    // Checked borrowed (this runs on every request); only a refused value
    // is copied out.
    if let Some(a) = req.uri().authority() {
        if !host_allowed(a.as_str(), allowed) {
            return Some(a.as_str().to_owned());
        }
    }
    let header = req.headers().get(header::HOST).map(logsafe::header_text)?;
    (!host_allowed(&header, allowed)).then(|| header.into_owned())
}

// ---------------------------------------------------------------- /v1

/// Why a `/v1/chat/completions` request was refused before its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRefusal {
    /// 403: a browser page of an origin that may not use the gateway.
    Origin(String),
    /// 415: not `application/json` (the value sent, if any).
    ContentType(Option<String>),
    /// 413: the declared body is over the limit.
    TooLarge { declared: u64, max: usize },
}

impl ApiRefusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            ApiRefusal::Origin(_) => StatusCode::FORBIDDEN,
            ApiRefusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The `code` of the OpenAI-style error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiRefusal::Origin(_) => "origin_not_allowed",
            ApiRefusal::ContentType(_) => "unsupported_media_type",
            ApiRefusal::TooLarge { .. } => "bad_request",
        }
    }
}

/// The error message (client values clipped).
impl std::fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiRefusal::Origin(origin) => write!(
                f,
                "origin {} may not use this API (see --allowed-origins)",
                clip(origin)
            ),
            ApiRefusal::ContentType(None) => {
                f.write_str("the request body must be JSON, sent as Content-Type: application/json")
            }
            ApiRefusal::ContentType(Some(t)) => write!(
                f,
                "the request body must be JSON, sent as Content-Type: application/json (got {})",
                clip(t)
            ),
            ApiRefusal::TooLarge { declared, max } => {
                write!(
                    f,
                    "request body of {declared} bytes is larger than {max} bytes"
                )
            }
        }
    }
}

/// The body length a request declares, if it gives a valid one.
pub fn declared_length(headers: &header::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a `Content-Type` value is `application/json` (parameters such
/// as `charset` allowed).
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The checks a `/v1/chat/completions` request passes before its body is
/// read (see the module documentation); a refusal is logged (clipped, rate
/// limited).
pub fn admit_api_call(req: &HttpRequest, config: &Config) -> Result<(), ApiRefusal> {
    if let Err(Refusal::Origin(origin)) = origin_allowed(req, &config.allowed_origins) {
        logsafe::refusal(
            "origin",
            format_args!("/v1 request refused: origin {} not allowed", clip(&origin)),
        );
        return Err(ApiRefusal::Origin(origin));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE);
    let json = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);
    if !json {
        let sent = content_type.map(|v| logsafe::header_text(v).into_owned());
        return Err(ApiRefusal::ContentType(sent));
    }
    match declared_length(req.headers()) {
        Some(declared) if declared > config.max_frame_bytes as u64 => Err(ApiRefusal::TooLarge {
            declared,
            max: config.max_frame_bytes,
        }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- origins

fn origin_allowed(req: &HttpRequest, allowed: &AllowedOrigins) -> Result<(), Refusal> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(()); // not a browser
    };
    let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let ok = match allowed {
        AllowedOrigins::Any => true,
        AllowedOrigins::List(list) => list.contains(&origin),
        AllowedOrigins::SameHost => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            !host.is_empty() && origin_host == host
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::Origin(origin))
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted.contains(ip))
            .unwrap_or(peer),
    )
}

// ---------------------------------------------------------------- per address

/// Table size past which idle, refilled addresses are forgotten.
const PRUNE_AT: usize = 4096;

/// Per-address limits: sockets and chats at once, and chats per minute (a
/// token bucket refilled continuously, kept across reconnects).
#[derive(Debug)]
struct IpLimits {
    /// Sockets at once (0 = no limit).
    max_sockets: usize,
    /// Chats in flight at once (0 = no limit).
    max_chats: usize,
    /// Chats started per minute (0 = no limit).
    chats_per_minute: u32,
    table: Mutex<HashMap<IpAddr, IpEntry>>,
}

#[derive(Debug)]
struct IpEntry {
    sockets: usize,
    chats: usize,
    tokens: f64,
    refilled: Instant,
}

/// What a permit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    Chat,
}

/// One socket's or chat's share of its address's limits, released on drop.
#[derive(Debug)]
struct IpPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
    kind: Kind,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut table = limits.lock();
        let now = Instant::now();
        let forget = match table.get_mut(&self.ip) {
            Some(e) => {
                match self.kind {
                    Kind::Socket => e.sockets = e.sockets.saturating_sub(1),
                    Kind::Chat => e.chats = e.chats.saturating_sub(1),
                }
                limits.idle(e, now)
            }
            None => false,
        };
        // An address keeps its chat budget across reconnects: its entry goes
        // only once nothing of it is open and its bucket is full again.
        if forget {
            table.remove(&self.ip);
        }
    }
}

impl IpEntry {
    fn tokens_at(&self, now: Instant, per_sec: f64, full: f64) -> f64 {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        (self.tokens + elapsed * per_sec).min(full)
    }
}

impl IpLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        // A poisoned table only means another thread panicked mid-update;
        // the counts are still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether chats are limited per address at all.
    fn limits_chats(&self) -> bool {
        self.max_chats > 0 || self.chats_per_minute > 0
    }

    fn full_bucket(&self) -> f64 {
        f64::from(self.chats_per_minute)
    }

    /// Whether an entry holds nothing and has its whole budget back.
    fn idle(&self, e: &IpEntry, now: Instant) -> bool {
        let full = self.full_bucket();
        e.sockets == 0 && e.chats == 0 && e.tokens_at(now, full / 60.0, full) >= full
    }

    /// The entry of `ip`, made (with a full bucket) when missing; forgets
    /// idle addresses first when the table has grown large.
    fn entry<'t>(
        &self,
        table: &'t mut HashMap<IpAddr, IpEntry>,
        ip: IpAddr,
        now: Instant,
    ) -> &'t mut IpEntry {
        if table.len() >= PRUNE_AT {
            table.retain(|_, e| !self.idle(e, now));
        }
        table.entry(ip).or_insert_with(|| IpEntry {
            sockets: 0,
            chats: 0,
            tokens: self.full_bucket(),
            refilled: now,
        })
    }

    /// Takes a socket permit for `ip`, unless it already has the maximum.
    fn try_open_socket(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let mut table = self.lock();
        let e = self.entry(&mut table, ip, Instant::now());
        if self.max_sockets > 0 && e.sockets >= self.max_sockets {
            return None;
        }
        e.sockets += 1;
        Some(IpPermit {
            limits: self.clone(),
            ip,
            kind: Kind::Socket,
        })
    }

    /// Starts a chat for `ip`: checks its chats in flight, then spends one
    /// chat from its per-minute budget (unless `spend` is false: the shared
    /// store counted it).
    fn try_start_chat(self: &Arc<Self>, ip: IpAddr, spend: bool) -> Result<IpPermit, Busy> {
        let mut table = self.lock();
        let now = Instant::now();
        let e = self.entry(&mut table, ip, now);
        if self.max_chats > 0 && e.chats >= self.max_chats {
            return Err(Busy::ChatsPerIp(self.max_chats));
        }
        if self.chats_per_minute > 0 && spend {
            let full = self.full_bucket();
            e.tokens = e.tokens_at(now, full / 60.0, full);
            e.refilled = now;
            if e.tokens < 1.0 {
                return Err(Busy::ChatsPerMinutePerIp(self.chats_per_minute));
            }
            e.tokens -= 1.0;
        }
        e.chats += 1;
        Ok(IpPermit {
            limits: self.clone(),
            ip,
            kind: Kind::Chat,
        })
    }
}

// ---------------------------------------------------------------- per token

/// Per-token limits counted in this process (the `memory` store, or the
/// fallback while Redis does not answer): chats in flight and chats per
/// minute (a token bucket), by hashed token.
#[derive(Debug)]
struct TokenLimits {
    /// Chats in flight at once (0 = no limit).
    max_chats: usize,
    /// Chats started per minute (0 = no limit).
    chats_per_minute: u32,
    table: Mutex<HashMap<TokenKey, TokenEntry>>,
}

#[derive(Debug)]
struct TokenEntry {
    chats: usize,
    tokens: f64,
    refilled: Instant,
}

/// One chat's share of its token's limits, released on drop.
#[derive(Debug)]
struct TokenPermit {
    limits: Arc<TokenLimits>,
    key: TokenKey,
}

impl Drop for TokenPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut table = limits.lock();
        let now = Instant::now();
        let forget = match table.get_mut(&self.key) {
            Some(e) => {
                e.chats = e.chats.saturating_sub(1);
                limits.idle(e, now)
            }
            None => false,
        };
        if forget {
            table.remove(&self.key);
        }
    }
}

impl TokenLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, TokenEntry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits_chats(&self) -> bool {
        self.max_chats > 0 || self.chats_per_minute > 0
    }

    fn full_bucket(&self) -> f64 {
        f64::from(self.chats_per_minute)
    }

    fn tokens_at(&self, e: &TokenEntry, now: Instant) -> f64 {
        let full = self.full_bucket();
        let elapsed = now.duration_since(e.refilled).as_secs_f64();
        (e.tokens + elapsed * full / 60.0).min(full)
    }

    fn idle(&self, e: &TokenEntry, now: Instant) -> bool {
        e.chats == 0 && self.tokens_at(e, now) >= self.full_bucket()
    }

    /// Starts a chat with token `key`: checks its chats in flight, then
    /// spends from its per-minute budget (unless `spend` is false).
    fn try_start_chat(self: &Arc<Self>, key: &TokenKey, spend: bool) -> Result<TokenPermit, Busy> {
        let mut table = self.lock();
        let now = Instant::now();
        if table.len() >= PRUNE_AT {
            table.retain(|_, e| !self.idle(e, now));
        }
        let e = table.entry(key.clone()).or_insert_with(|| TokenEntry {
            chats: 0,
            tokens: self.full_bucket(),
            refilled: now,
        });
        if self.max_chats > 0 && e.chats >= self.max_chats {
            return Err(Busy::ChatsPerToken(self.max_chats));
        }
        if self.chats_per_minute > 0 && spend {
            e.tokens = self.tokens_at(e, now);
            e.refilled = now;
            if e.tokens < 1.0 {
                return Err(Busy::ChatsPerMinutePerToken(self.chats_per_minute));
            }
            e.tokens -= 1.0;
        }
        e.chats += 1;
        Ok(TokenPermit {
            limits: self.clone(),
            key: key.clone(),
        })
    }
}
