//! The one error type a chat can end with, and how a chat ended.
//!
//! [`ChatError`]'s variants hold what happened as data; each knows its wire
//! [`ErrorCode`] (PROTOCOL.md §3.2), whether the client may retry, and is
//! turned into the browser-safe message only at the edge ([`ChatError::message`],
//! `Display`). Upstream-supplied text reaches a variant already redacted
//! (never an API key).

use std::borrow::Cow;
use std::fmt;

/// The `code` of an `error` frame (PROTOCOL.md §3.2 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownModel,
    Busy,
    UpstreamRejected,
    UpstreamUnavailable,
    UpstreamBroken,
    UpstreamTimeout,
    ResumeUnavailable,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::Busy => "busy",
            ErrorCode::UpstreamRejected => "upstream_rejected",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamBroken => "upstream_broken",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::ResumeUnavailable => "resume_unavailable",
        }
    }

    /// Whether sending the same chat again may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::UpstreamBroken
                | ErrorCode::UpstreamTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which limit refused a chat (`busy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// The gateway is shutting down.
    Draining,
    /// `--max-streams-per-connection` chats are in flight on this socket.
    StreamsPerSocket(usize),
    /// The address spent its `--max-chats-per-minute-per-ip` budget.
    ChatsPerMinutePerIp(u32),
    /// The address has this many chats in flight (its share of the
    /// connection limits: `--max-connections-per-ip` × streams).
    ChatsPerIp(usize),
    /// The gateway has this many chats in flight (`--max-connections` ×
    /// streams).
    ChatsInTotal(usize),
    /// The auth token spent its `--max-chats-per-minute-per-token` budget.
    ChatsPerMinutePerToken(u32),
    /// The auth token has `--max-concurrent-chats-per-token` chats in flight.
    ChatsPerToken(usize),
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Busy::Draining => f.write_str("the server is shutting down; retry shortly"),
            Busy::StreamsPerSocket(n) => write!(
                f,
                "{n} chats are already in flight on this connection; wait for one to finish"
            ),
            Busy::ChatsPerMinutePerIp(n) => write!(
                f,
                "more than {n} chats per minute from your address; slow down"
            ),
            Busy::ChatsPerIp(n) => write!(
                f,
                "{n} chats are already in flight from your address; wait for one to finish"
            ),
            Busy::ChatsInTotal(n) => write!(
                f,
                "the gateway has {n} chats in flight, its limit; retry shortly"
            ),
            Busy::ChatsPerMinutePerToken(n) => write!(
                f,
                "more than {n} chats per minute with your token; slow down"
            ),
            Busy::ChatsPerToken(n) => write!(
                f,
                "{n} chats are already in flight with your token; wait for one to finish"
            ),
        }
    }
}

/// Why a chat (or a client frame) failed, as told to the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// Malformed JSON, unknown `type`, missing/invalid field, duplicate id,
    /// binary frame: what was wrong, in the gateway's words.
    BadRequest(String),
    /// `model` is not one of `available`.
    UnknownModel {
        model: String,
        available: Vec<String>,
    },
    /// A limit refused the chat.
    Busy(Busy),
    /// The upstream answered 4xx (other than 408/429), 3xx or a JSON error object.
    UpstreamRejected(String),
    /// Every attempt on every upstream failed on connect, 5xx, 408, 429 or timeout.
    UpstreamUnavailable(String),
    /// The stream failed after a delta was sent, or carried an error object.
    UpstreamBroken(String),
    /// First-byte or idle timeout on the last attempt.
    UpstreamTimeout(String),
    /// A `resume` named no chat that can still be resumed.
    ResumeUnavailable(String),
}

impl ChatError {
    /// The wire `code`.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::BadRequest(_) => ErrorCode::BadRequest,
            ChatError::UnknownModel { .. } => ErrorCode::UnknownModel,
            ChatError::Busy(_) => ErrorCode::Busy,
            ChatError::UpstreamRejected(_) => ErrorCode::UpstreamRejected,
            ChatError::UpstreamUnavailable(_) => ErrorCode::UpstreamUnavailable,
            ChatError::UpstreamBroken(_) => ErrorCode::UpstreamBroken,
            ChatError::UpstreamTimeout(_) => ErrorCode::UpstreamTimeout,
            ChatError::ResumeUnavailable(_) => ErrorCode::ResumeUnavailable,
        }
    }

    /// Whether sending the same chat again may succeed.
    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }

    /// The human message, safe for a browser.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ChatError::BadRequest(m)
            | ChatError::UpstreamRejected(m)
            | ChatError::UpstreamUnavailable(m)
            | ChatError::UpstreamBroken(m)
            | ChatError::UpstreamTimeout(m)
            | ChatError::ResumeUnavailable(m) => Cow::Borrowed(m),
            ChatError::UnknownModel { model, available } => Cow::Owned(format!(
                "model {model:?} is not available; choose one of {}",
                available.join(", ")
            )),
            ChatError::Busy(why) => Cow::Owned(why.to_string()),
        }
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for ChatError {}

/// How a chat ended: the `outcome` label of `netfly_chats_total` and of
/// the per-chat log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream finished the answer.
    Done,
    /// A client cancelled it.
    Cancelled,
    /// Its client went away and nobody may resume it (`/v1` hang-up, or a
    /// closed socket with `--resume-window-ms 0`).
    Disconnected,
    /// Nobody was attached to it for the resume window: its upstream
    /// request was dropped.
    Abandoned,
    /// It failed (or was refused) with this code.
    Failed(ErrorCode),
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Cancelled => "cancelled",
            Outcome::Disconnected => "disconnected",
            Outcome::Abandoned => "abandoned",
            Outcome::Failed(code) => code.as_str(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Replaces every occurrence of `secret` in `text` (upstreams sometimes echo
/// the key back in their error messages).
pub fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, "[redacted]"),
        _ => text.to_owned(),
    }
}
