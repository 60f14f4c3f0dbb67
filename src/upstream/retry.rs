//! The retry policy, pure: how long to wait before retry k, and what an
//! attempt's failure means (PROTOCOL.md §4). No sockets, no clocks.

use std::time::Duration;

use crate::error::ChatError;
use crate::upstream::redact::UpstreamMessage;

/// How one upstream attempt failed. Text an upstream supplied is held as
/// an [`UpstreamMessage`] (redacted, clipped); the other messages are the
/// gateway's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// TCP/TLS/DNS connection failure (or connect timeout).
    Connect(String),
    /// No response head within the first-byte timeout.
    FirstByteTimeout(Duration),
    /// No body bytes within the idle timeout.
    IdleTimeout(Duration),
    /// A non-2xx answer. `message` is the upstream's.
    Status {
        status: u16,
        message: UpstreamMessage,
        retry_after: Option<Duration>,
    },
    /// The upstream sent an error inside the stream (error object, `event: error`, invalid JSON).
    StreamError(UpstreamMessage),
    /// The body broke off (connection reset or closed before the end of
    /// the body, malformed chunking, closed before any event).
    Broken(String),
    /// A 2xx answer that is a JSON error object instead of a stream.
    RejectedBody(UpstreamMessage),
    /// A 2xx answer that is neither a stream, a completion nor an error,
    /// or one the gateway cannot read (an unsupported content coding, an
    /// unframed HTTP/1.1 body over TLS).
    UnusableBody(String),
    /// The upstream sent more than a bound allows: an SSE line or event
    /// over `--max-upstream-event-bytes`, or a whole body over
    /// `--max-upstream-body-bytes`. Not retried: asking again would most
    /// likely bring the same answer, at the cost of the bound each time.
    TooLarge(String),
}

impl AttemptError {
    /// A short reason for `retry` frames and logs.
    pub fn reason(&self) -> String {
        match self {
            AttemptError::Connect(m) => format!("connect: {m}"),
            AttemptError::FirstByteTimeout(d) => {
                format!("timeout: no response within {} ms", d.as_millis())
            }
            AttemptError::IdleTimeout(d) => {
                format!("timeout: stream silent for {} ms", d.as_millis())
            }
            AttemptError::Status {
                status, message, ..
            } => {
                if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {message}")
                }
            }
            AttemptError::StreamError(m) => format!("upstream error: {m}"),
            AttemptError::Broken(m) => format!("stream broken: {m}"),
            AttemptError::RejectedBody(m) => format!("upstream error: {m}"),
            AttemptError::UnusableBody(m) => format!("unusable response: {m}"),
            AttemptError::TooLarge(m) => format!("answer too large: {m}"),
        }
    }

    /// `Retry-After` the upstream asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again (same upstream while attempts remain, then the next one).
    Retry,
    /// Stop now with this error.
    Fail(ChatError),
}

/// Classifies a failure. `committed` is the one fact that turns a retryable
/// error into a terminal one: once a delta reached the client, asking again
/// would send the user the text twice.
pub fn classify(err: &AttemptError, committed: bool) -> Verdict {
    if committed {
        return Verdict::Fail(ChatError::UpstreamBroken(err.reason()));
    }
    match err {
        // A redirect is a configuration error (the URL is not the API's):
        // never followed, never retried.
        AttemptError::Status {
            status, message, ..
        } if (300..400).contains(status) => {
            let msg = if message.is_empty() {
                format!("the upstream answered HTTP {status}, a redirect (not followed: check the upstream URL)")
            } else {
                format!("HTTP {status}: {message}")
            };
            Verdict::Fail(ChatError::UpstreamRejected(msg))
        }
        AttemptError::Status {
            status, message, ..
        } if (400..500).contains(status) && *status != 408 && *status != 429 => {
            let msg = if message.is_empty() {
                format!("the upstream refused the request (HTTP {status})")
            } else {
                format!("HTTP {status}: {message}")
            };
            Verdict::Fail(ChatError::UpstreamRejected(msg))
        }
        AttemptError::RejectedBody(m) => {
            Verdict::Fail(ChatError::UpstreamRejected(m.as_str().to_owned()))
        }
        AttemptError::UnusableBody(_) | AttemptError::TooLarge(_) => {
            Verdict::Fail(ChatError::UpstreamBroken(err.reason()))
        }
        _ => Verdict::Retry,
    }
}

/// The error a chat ends with when its last attempt failed with `err` and
/// no attempts are left.
pub fn exhausted(err: &AttemptError, attempts: u32) -> ChatError {
    let msg = format!("{} (after {attempts} attempts)", err.reason());
    match err {
        AttemptError::FirstByteTimeout(_) | AttemptError::IdleTimeout(_) => {
            ChatError::UpstreamTimeout(msg)
        }
        AttemptError::StreamError(_)
        | AttemptError::Broken(_)
        | AttemptError::UnusableBody(_)
        | AttemptError::TooLarge(_) => ChatError::UpstreamBroken(msg),
        _ => ChatError::UpstreamUnavailable(msg),
    }
}

/// Backoff: the delay before retry `k` (k = 1, 2, …) on one upstream is
/// drawn from [0, min(cap, base·2^(k−1))] ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The upper bound of the delay before retry `k`.
    pub fn ceiling(&self, k: u32) -> Duration {
        let exp = k.saturating_sub(1).min(32);
        let factor = 1u64 << exp;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// The delay before retry `k`, with `unit` ∈ [0, 1) the random draw.
    /// A `Retry-After` below the cap replaces the draw.
    pub fn delay_for(&self, k: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            if ra < self.cap {
                return ra;
            }
        }
        let ceiling = self.ceiling(k).as_millis() as f64;
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_millis((ceiling * unit).round() as u64)
    }
}

/// Parses a `Retry-After` header given in seconds (an HTTP date is not
/// honoured: the backoff applies instead).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if (0.0..1.0e7).contains(&secs) {
        Some(Duration::from_millis((secs * 1000.0).round() as u64))
    } else {
        None
    }
}
