//! The retry policy, pure: how long to wait before retry k, and what an
//! attempt's failure means (PROTOCOL.md §4). No sockets, no clocks.

use std::time::Duration;

pub use crate::error::AttemptError;
use crate::error::{ChatError, Fault};

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
    let failed = |attempts| Fault::Attempt {
        cause: err.clone(),
        attempts,
    };
    if committed {
        return Verdict::Fail(ChatError::UpstreamBroken(failed(None)));
    }
    match err {
        // A redirect is a configuration error (the URL is not the API's):
        // never followed, never retried.
        AttemptError::Status {
            status, message, ..
        } if (300..400).contains(status) => {
            Verdict::Fail(ChatError::UpstreamRejected(Fault::Redirect {
                status: *status,
                message: message.clone(),
            }))
        }
        AttemptError::Status {
            status, message, ..
        } if (400..500).contains(status) && *status != 408 && *status != 429 => {
            Verdict::Fail(ChatError::UpstreamRejected(Fault::Refused {
                status: *status,
                message: message.clone(),
            }))
        }
        AttemptError::RejectedBody(m) => {
            Verdict::Fail(ChatError::UpstreamRejected(Fault::Rejected(m.clone())))
        }
        AttemptError::UnusableBody(_) | AttemptError::TooLarge(_) => {
            Verdict::Fail(ChatError::UpstreamBroken(failed(None)))
        }
        _ => Verdict::Retry,
    }
}

/// The error a chat ends with when its last attempt failed with `err` and
/// no attempts are left.
pub fn exhausted(err: &AttemptError, attempts: u32) -> ChatError {
    let fault = Fault::Attempt {
        cause: err.clone(),
        attempts: Some(attempts),
    };
    match err {
        AttemptError::FirstByteTimeout(_) | AttemptError::IdleTimeout(_) => {
            ChatError::UpstreamTimeout(fault)
        }
        AttemptError::StreamError(_)
        | AttemptError::Broken(_)
        | AttemptError::UnusableBody(_)
        | AttemptError::TooLarge(_) => ChatError::UpstreamBroken(fault),
        _ => ChatError::UpstreamUnavailable(fault),
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
