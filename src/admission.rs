//! Who may open `/ws` (PROTOCOL.md §1): allowed origins, auth tokens and
//! the connection limit. Checked before the upgrade, so a refused client
//! gets a plain HTTP status and never a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

/// The token a request presents: `Authorization: Bearer …` or `?token=`.
fn presented_token(req: &HttpRequest) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        if let Ok(s) = v.to_str() {
            if let Some(t) = s
                .strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
            {
                return Some(t.trim().to_owned());
            }
        }
    }
    let query =
        actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok()?;
    query.get("token").cloned()
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

/// Runs every admission check for a `/ws` upgrade.
pub fn admit(req: &HttpRequest, config: &Config, conns: &Connections) -> Result<Permit, Refusal> {
    origin_allowed(req, &config.allowed_origins)?;
    if !config.auth_tokens.is_empty() {
        let presented = presented_token(req).unwrap_or_default();
        let mut ok = false;
        for token in &config.auth_tokens {
            ok |= constant_time_eq(presented.as_bytes(), token.as_bytes());
        }
        if !ok {
            return Err(Refusal::Unauthorized);
        }
    }
    conns
        .try_acquire(config.max_connections)
        .ok_or(Refusal::Full)
}
