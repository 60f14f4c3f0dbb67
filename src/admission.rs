//! Who may open `/ws` (PROTOCOL.md §1): allowed origins, auth tokens and
//! the connection limit. Checked before the upgrade, so a refused client
//! gets a plain HTTP status and never a socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::config::{AllowedOrigins, Config};

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

/// Counts open sockets; one permit per socket, released on drop.
#[derive(Debug, Default)]
pub struct Connections {
    open: Arc<AtomicUsize>,
}

/// Held by a socket for as long as it is open.
#[derive(Debug)]
pub struct Permit {
    open: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// Takes a permit unless `max` are already out.
    pub fn try_acquire(&self, max: usize) -> Option<Permit> {
        let mut cur = self.open.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Permit {
                        open: self.open.clone(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

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

/// What an admitted socket holds until it closes.
#[derive(Debug)]
pub struct Admitted {
    pub permit: Permit,
    pub ip_permit: Option<IpPermit>,
    pub ip: Option<IpAddr>,
}

/// Runs every admission check for a `/ws` upgrade.
pub fn admit(
    req: &HttpRequest,
    config: &Config,
    conns: &Connections,
    ips: &Arc<IpLimits>,
) -> Result<Admitted, Refusal> {
    origin_allowed(req, &config.allowed_origins)?;
    if !config.auth_tokens.is_empty() {
        let presented = presented_token(req).unwrap_or_default();
        if !token_accepted(&presented, &config.auth_tokens) {
            return Err(Refusal::Unauthorized);
        }
    }
    let ip = client_ip(req, &config.trusted_proxies);
    let ip_permit = match ip {
        Some(ip) if ips.enabled() => Some(ips.try_open(ip).ok_or(Refusal::TooManyFromIp)?),
        _ => None,
    };
    let permit = conns
        .try_acquire(config.max_connections)
        .ok_or(Refusal::Full)?;
    Ok(Admitted {
        permit,
        ip_permit,
        ip,
    })
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

/// Table size past which idle, refilled addresses are forgotten.
const PRUNE_AT: usize = 4096;

/// Per-address limits: sockets at once and chats per minute (a token
/// bucket refilled continuously). Shared by every worker.
#[derive(Debug)]
pub struct IpLimits {
    max_sockets: usize,
    chats_per_minute: u32,
    table: Mutex<HashMap<IpAddr, IpEntry>>,
}

#[derive(Debug)]
struct IpEntry {
    sockets: usize,
    tokens: f64,
    refilled: Instant,
}

/// One socket's share of its address's limit, released on drop.
#[derive(Debug)]
pub struct IpPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut table = self.limits.lock();
        if let Some(e) = table.get_mut(&self.ip) {
            e.sockets = e.sockets.saturating_sub(1);
        }
        // An address keeps its chat budget across reconnects: its entry goes
        // only once it has no socket and a full bucket again.
        let full = f64::from(self.limits.chats_per_minute);
        let now = Instant::now();
        let per_sec = full / 60.0;
        if let Some(e) = table.get(&self.ip) {
            if e.sockets == 0 && e.tokens_at(now, per_sec, full) >= full {
                table.remove(&self.ip);
            }
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
    pub fn new(max_sockets: usize, chats_per_minute: u32) -> IpLimits {
        IpLimits {
            max_sockets,
            chats_per_minute,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        // A poisoned table only means another thread panicked mid-update;
        // the counts are still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any limit is set at all.
    pub fn enabled(&self) -> bool {
        self.max_sockets > 0 || self.chats_per_minute > 0
    }

    /// Takes a socket permit for `ip`, unless it already has the maximum.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let mut table = self.lock();
        let burst = f64::from(self.chats_per_minute);
        if table.len() >= PRUNE_AT {
            // Forget idle addresses whose budget has refilled.
            let now = Instant::now();
            let per_sec = burst / 60.0;
            table.retain(|_, e| e.sockets > 0 || e.tokens_at(now, per_sec, burst) < burst);
        }
        let e = table.entry(ip).or_insert_with(|| IpEntry {
            sockets: 0,
            tokens: burst,
            refilled: Instant::now(),
        });
        if self.max_sockets > 0 && e.sockets >= self.max_sockets {
            return None;
        }
        e.sockets += 1;
        Some(IpPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Spends one chat from `ip`'s per-minute budget; false when empty.
    pub fn allow_chat(&self, ip: IpAddr) -> bool {
        if self.chats_per_minute == 0 {
            return true;
        }
        let mut table = self.lock();
        let Some(e) = table.get_mut(&ip) else {
            return true; // no socket from there: nothing to limit
        };
        let full = f64::from(self.chats_per_minute);
        let now = Instant::now();
        e.tokens = e.tokens_at(now, full / 60.0, full);
        e.refilled = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
