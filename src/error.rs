//! The one error type a chat can end with, and how a chat ended.
//!
//! [`ChatError`]'s variants hold what happened as data; each knows its wire
//! [`ErrorCode`] (PROTOCOL.md §3.2), whether the client may retry, and is
//! turned into the browser-safe message only at the edge ([`ChatError::message`],
//! `Display`). What went wrong upstream is a [`Fault`], whose commonest
//! cause is an [`AttemptError`] (how one attempt failed). Upstream-supplied
//! text exists only as an [`UpstreamMessage`]: redacted (never an API key)
//! and clipped when it is made.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

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

/// Why the upstream side of a chat failed, as data: the sentence a browser
/// reads is made by `Display`, at the edge. Upstream-supplied text inside
/// is an [`UpstreamMessage`] (redacted, clipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An attempt failed with `cause`; `attempts` is set when the retries
    /// ran out after that many.
    Attempt {
        cause: AttemptError,
        attempts: Option<u32>,
    },
    /// The upstream answered a redirect (3xx): not followed, never retried.
    Redirect {
        status: u16,
        message: UpstreamMessage,
    },
    /// The upstream refused the request (4xx other than 408/429).
    Refused {
        status: u16,
        message: UpstreamMessage,
    },
    /// A 2xx answer that is a JSON error object: its message.
    Rejected(UpstreamMessage),
    /// A panic in the gateway's chat task.
    Internal,
    /// The shutdown grace period ended first.
    ShuttingDown,
    /// Nobody attached to the chat within the resume window.
    NotResumedInTime,
    /// The chat's events stopped without a terminal one.
    EndedUnexpectedly,
    /// An answer being assembled passed `--max-upstream-body-bytes`.
    AnswerTooLarge { max: usize },
    /// The instance running the chat (seen through the resume store) stopped.
    OwnerStopped,
    /// The resume store lost this chat: why.
    StoreLost(&'static str),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Attempt {
                cause,
                attempts: None,
            } => write!(f, "{cause}"),
            Fault::Attempt {
                cause,
                attempts: Some(n),
            } => write!(f, "{cause} (after {n} attempts)"),
            Fault::Redirect { status, message } if message.is_empty() => write!(
                f,
                "the upstream answered HTTP {status}, a redirect (not followed: check the upstream URL)"
            ),
            Fault::Refused { status, message } if message.is_empty() => {
                write!(f, "the upstream refused the request (HTTP {status})")
            }
            Fault::Redirect { status, message } | Fault::Refused { status, message } => {
                write!(f, "HTTP {status}: {message}")
            }
            Fault::Rejected(message) => write!(f, "{message}"),
            Fault::Internal => f.write_str("internal error in the gateway"),
            Fault::ShuttingDown => f.write_str("the server is shutting down; retry shortly"),
            Fault::NotResumedInTime => {
                f.write_str("no socket was attached within the resume window")
            }
            Fault::EndedUnexpectedly => f.write_str("the chat ended unexpectedly"),
            Fault::AnswerTooLarge { max } => write!(
                f,
                "the streamed answer passed {max} bytes (--max-upstream-body-bytes)"
            ),
            Fault::OwnerStopped => f.write_str(
                "the gateway instance running this chat stopped; retry the chat",
            ),
            Fault::StoreLost(why) => f.write_str(why),
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
    UpstreamRejected(Fault),
    /// Every attempt on every upstream failed on connect, 5xx, 408, 429 or
    /// timeout (or the gateway could not run the chat to its end).
    UpstreamUnavailable(Fault),
    /// The stream failed after a delta was sent, or carried an error object.
    UpstreamBroken(Fault),
    /// First-byte or idle timeout on the last attempt.
    UpstreamTimeout(Fault),
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
            ChatError::BadRequest(m) | ChatError::ResumeUnavailable(m) => Cow::Borrowed(m),
            ChatError::UpstreamRejected(fault)
            | ChatError::UpstreamUnavailable(fault)
            | ChatError::UpstreamBroken(fault)
            | ChatError::UpstreamTimeout(fault) => Cow::Owned(fault.to_string()),
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
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, REDACTED),
        _ => text.to_owned(),
    }
}

/// [`redact`] on a text already owned: handed back as it is (no copy)
/// when the key is not in it, as on nearly every streamed chunk.
pub fn redact_owned(text: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, REDACTED),
        _ => text,
    }
}

/// What replaces the key (as [`redact`] writes it).
pub const REDACTED: &str = "[redacted]";
/// Longest upstream message passed on, in chars (including the "…").
pub const MAX_MESSAGE_CHARS: usize = 500;
/// How much of an offending payload a message quotes, in chars (then "…").
pub const SNIPPET_CHARS: usize = 100;

/// A message an upstream supplied, redacted and clipped: the only form in
/// which such text reaches a frame, an error body or a log line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamMessage(String);

impl UpstreamMessage {
    /// `raw` with every copy of `secret` replaced, then clipped to
    /// [`MAX_MESSAGE_CHARS`].
    pub fn new(raw: &str, secret: Option<&str>) -> Self {
        UpstreamMessage(clip(&redact(raw.trim(), secret), MAX_MESSAGE_CHARS))
    }

    /// `what: <quote>`, where the quote is `raw` redacted, then clipped to
    /// [`SNIPPET_CHARS`] (e.g. "invalid JSON in stream: {…").
    /// `what` is redacted too: it may repeat part of the payload (a JSON
    /// parser's complaint does).
    pub fn quoting(what: &str, raw: &str, secret: Option<&str>) -> Self {
        let quote = clip(&redact(raw.trim(), secret), SNIPPET_CHARS + 1);
        let what = redact(what, secret);
        UpstreamMessage(clip(&format!("{what}: {quote}"), MAX_MESSAGE_CHARS))
    }

    /// The text, safe to show.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the upstream said nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for UpstreamMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `s` if it has at most `max` chars, else its first `max - 1` chars and "…".
pub fn clip(s: &str, max: usize) -> String {
    let mut starts = s.char_indices().map(|(i, _)| i);
    let Some(cut) = starts.nth(max.saturating_sub(1)) else {
        return s.to_owned();
    };
    if starts.next().is_none() {
        return s.to_owned(); // exactly `max` chars
    }
    format!("{}…", &s[..cut])
}

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
    /// `Retry-After` the upstream asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A short reason, for `retry` frames, logs and the chat's final error.
impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Connect(m) => write!(f, "connect: {m}"),
            AttemptError::FirstByteTimeout(d) => {
                write!(f, "timeout: no response within {} ms", d.as_millis())
            }
            AttemptError::IdleTimeout(d) => {
                write!(f, "timeout: stream silent for {} ms", d.as_millis())
            }
            AttemptError::Status {
                status, message, ..
            } => {
                if message.is_empty() {
                    write!(f, "HTTP {status}")
                } else {
                    write!(f, "HTTP {status}: {message}")
                }
            }
            AttemptError::StreamError(m) => write!(f, "upstream error: {m}"),
            AttemptError::Broken(m) => write!(f, "stream broken: {m}"),
            AttemptError::RejectedBody(m) => write!(f, "upstream error: {m}"),
            AttemptError::UnusableBody(m) => write!(f, "unusable response: {m}"),
            AttemptError::TooLarge(m) => write!(f, "answer too large: {m}"),
        }
    }
}
