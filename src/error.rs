//! The one error type a chat can end with. Each variant knows its wire
//! `code` (PROTOCOL.md §3), whether the client may retry, and carries only a
//! message that is safe to show a browser (never an API key).

use std::fmt;

/// Why a chat (or a client frame) failed, as told to the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// Malformed JSON, unknown `type`, missing/invalid field, duplicate id, binary frame.
    BadRequest(String),
    /// `model` not in `--models`.
    UnknownModel(String),
    /// Too many chats in flight on this socket.
    Busy(String),
    /// The upstream answered 4xx (other than 408/429) or a JSON error object.
    UpstreamRejected(String),
    /// Every attempt on every upstream failed on connect, 5xx, 408, 429 or timeout.
    UpstreamUnavailable(String),
    /// The stream failed after a delta was sent, or carried an error object.
    UpstreamBroken(String),
    /// First-byte or idle timeout on the last attempt.
    UpstreamTimeout(String),
}

impl ChatError {
    /// The wire `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadRequest(_) => "bad_request",
            ChatError::UnknownModel(_) => "unknown_model",
            ChatError::Busy(_) => "busy",
            ChatError::UpstreamRejected(_) => "upstream_rejected",
            ChatError::UpstreamUnavailable(_) => "upstream_unavailable",
            ChatError::UpstreamBroken(_) => "upstream_broken",
            ChatError::UpstreamTimeout(_) => "upstream_timeout",
        }
    }

    /// Whether sending the same chat again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ChatError::Busy(_)
                | ChatError::UpstreamUnavailable(_)
                | ChatError::UpstreamBroken(_)
                | ChatError::UpstreamTimeout(_)
        )
    }

    /// The human message, safe for a browser.
    pub fn message(&self) -> &str {
        match self {
            ChatError::BadRequest(m)
            | ChatError::UnknownModel(m)
            | ChatError::Busy(m)
            | ChatError::UpstreamRejected(m)
            | ChatError::UpstreamUnavailable(m)
            | ChatError::UpstreamBroken(m)
            | ChatError::UpstreamTimeout(m) => m,
        }
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for ChatError {}

/// Replaces every occurrence of `secret` in `text` (upstreams sometimes echo
/// the key back in their error messages).
pub fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, "[redacted]"),
        _ => text.to_owned(),
    }
}
