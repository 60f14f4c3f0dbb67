//! Log lines an attacker cannot flood.
//!
//! - [`clip`]: every client-controlled value put in a log line (an
//!   `Origin`, a `Host`, an id, a user agent…) goes through it: at most
//!   [`CLIP_CHARS`] characters, cut on a character boundary, with an
//!   ellipsis and the full length when cut, escaped as Rust's `{:?}` does
//!   (so control characters cannot forge lines).
//! - [`refusal`]: a line about a refused request is written at most once
//!   per second per reason; the next line written says how many were
//!   suppressed in between.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Characters of a client-controlled value kept in a log line.
pub const CLIP_CHARS: usize = 80;

/// A client-controlled value as it goes into a log line (see [`clip`]).
pub struct Clipped<'a>(&'a str);

/// `value`, clipped for a log line: quoted and escaped like `{:?}`, at most
/// [`CLIP_CHARS`] characters, then `…` and the full length in bytes.
pub fn clip(value: &str) -> Clipped<'_> {
    Clipped(value)
}

/// Where `value` must be cut to keep at most `max` characters.
pub fn clip_at(value: &str, max: usize) -> Option<usize> {
    value.char_indices().nth(max).map(|(i, _)| i)
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match clip_at(self.0, CLIP_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some(cut) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// A client-controlled header value as text for a log line (invalid UTF-8
/// replaced), to be passed through [`clip`].
pub fn header_text(value: &actix_web::http::header::HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// The log target of refusal lines (`RUST_LOG=netfly::refused=warn` hides them).
pub const TARGET: &str = "netfly::refused";

/// Lines of one reason written at most this often.
const EVERY: Duration = Duration::from_secs(1);

struct Reason {
    name: &'static str,
    last: Instant,
    suppressed: u64,
}

/// Which refusal lines are written: at most one per second per reason.
#[derive(Default)]
pub struct RefusalLimiter {
    reasons: Vec<Reason>,
}

impl RefusalLimiter {
    pub const fn new() -> RefusalLimiter {
        RefusalLimiter {
            reasons: Vec::new(),
        }
    }

    /// Whether a line for `reason` is written at `now` (`Some`, with how
    /// many of that reason were suppressed since the last one written).
    pub fn admit(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        let Some(r) = self.reasons.iter_mut().find(|r| r.name == reason) else {
            self.reasons.push(Reason {
                name: reason,
                last: now,
                suppressed: 0,
            });
            return Some(0);
        };
        if now.saturating_duration_since(r.last) < EVERY {
            r.suppressed += 1;
            return None;
        }
        r.last = now;
        Some(std::mem::take(&mut r.suppressed))
    }
}

static REFUSALS: Mutex<RefusalLimiter> = Mutex::new(RefusalLimiter::new());

/// Logs a refusal at INFO, at most once per second per `reason` (a fixed
/// name, e.g. `"origin"`); the line carries the count suppressed since the
/// previous one. Client-controlled values in `line` must be [`clip`]ped.
pub fn refusal(reason: &'static str, line: fmt::Arguments<'_>) {
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let admitted = REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(reason, Instant::now());
    match admitted {
        None => {}
        Some(0) => log::info!(target: TARGET, "{line}"),
        Some(n) => log::info!(
            target: TARGET,
            "{line} (and {n} more {reason} refusals since the last such line)"
        ),
    }
}
