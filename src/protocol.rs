//! Every wire shape, as serde types: client → gateway frames (with their
//! validation, PROTOCOL.md §3), gateway → client frames, and the upstream
//! request body (§4). JSON is never built by hand.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ChatError;

/// Longest chat id a client may choose.
pub const MAX_ID_LEN: usize = 64;
/// Most messages one chat may carry.
pub const MAX_MESSAGES: usize = 256;
/// Most `stop` sequences.
pub const MAX_STOP: usize = 4;

// ---------------------------------------------------------------- client → gateway

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of the conversation, forwarded upstream as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling parameters a client may set; everything else is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

impl Params {
    /// These params over `defaults`: a field the client set wins.
    pub fn merged_over(&self, defaults: &Params) -> Params {
        Params {
            temperature: self.temperature.or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            presence_penalty: self.presence_penalty.or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(defaults.frequency_penalty),
            max_tokens: self.max_tokens.or(defaults.max_tokens),
            stop: self.stop.clone().or_else(|| defaults.stop.clone()),
            seed: self.seed.or(defaults.seed),
        }
    }

    /// Checks every set field against its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        fn range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), String> {
            match v {
                Some(x) if !(lo..=hi).contains(&x) => Err(format!(
                    "params.{name} must be between {lo} and {hi}, got {x}"
                )),
                _ => Ok(()),
            }
        }
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.max_tokens == Some(0) {
            return Err("params.max_tokens must be a positive integer".into());
        }
        if let Some(Stop::Many(list)) = &self.stop {
            if list.len() > MAX_STOP {
                return Err(format!(
                    "params.stop may hold at most {MAX_STOP} strings, got {}",
                    list.len()
                ));
            }
        }
        Ok(())
    }
}

/// A validated `chat` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub id: String,
    /// Resolved: the client's choice, or the default model.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub params: Params,
}

/// A validated client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Chat(ChatRequest),
    Cancel {
        id: String,
    },
    /// Attach chat `id` of `session` to this socket, replaying every frame
    /// after `after` (PROTOCOL.md §3.3).
    Resume {
        session: String,
        id: String,
        after: u64,
    },
}

/// Longest `session` a client may send (PROTOCOL.md §3.2: at most 64).
pub const MAX_SESSION_LEN: usize = 64;

/// A client frame that was refused; `id` is set when the error can be tied
/// to the chat the frame named.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub id: Option<String>,
    pub error: ChatError,
    /// The frame was a `resume` (its refusal is counted as one).
    pub resume: bool,
}

impl FrameError {
    fn untied(msg: impl Into<String>) -> Self {
        FrameError {
            id: None,
            error: ChatError::BadRequest(msg.into()),
            resume: false,
        }
    }
}

#[derive(Deserialize)]
struct ChatWire {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    params: Option<Params>,
}

/// Whether `id` is 1–64 printable ASCII characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Parses and validates one client text frame against the allowed models.
pub fn parse_client_frame(text: &str, models: &[String]) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::untied(format!("frame is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError::untied("frame must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(FrameError::untied("\"type\" must be a string")),
        None => return Err(FrameError::untied("frame has no \"type\"")),
    };
    if !matches!(kind.as_str(), "chat" | "cancel" | "resume") {
        return Err(FrameError::untied(format!(
            "unknown frame type {kind:?} (expected \"chat\", \"cancel\" or \"resume\")"
        )));
    }
    let untied = |msg: &str| FrameError {
        resume: kind == "resume",
        ..FrameError::untied(msg)
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) if valid_id(&s) => s,
        Some(Value::String(_)) => {
            return Err(untied("\"id\" must be 1–64 printable ASCII characters"))
        }
        Some(_) => return Err(untied("\"id\" must be a string")),
        None => return Err(untied("frame has no \"id\"")),
    };
    if kind == "cancel" {
        return Ok(ClientFrame::Cancel { id });
    }
    let tied = |error: ChatError| FrameError {
        id: Some(id.clone()),
        error,
        resume: kind == "resume",
    };
    if kind == "resume" {
        let session = match obj.get("session") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SESSION_LEN => s.clone(),
            Some(Value::String(_)) => {
                return Err(tied(ChatError::BadRequest(format!(
                    "\"session\" must be 1–{MAX_SESSION_LEN} characters"
                ))))
            }
            Some(_) => {
                return Err(tied(ChatError::BadRequest(
                    "\"session\" must be a string".into(),
                )))
            }
            None => {
                return Err(tied(ChatError::BadRequest(
                    "resume has no \"session\"".into(),
                )))
            }
        };
        let after = match obj.get("after") {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                tied(ChatError::BadRequest(format!(
                    "\"after\" must be a whole number ≥ 0, got {n}"
                )))
            })?,
            Some(_) => {
                return Err(tied(ChatError::BadRequest(
                    "\"after\" must be a whole number ≥ 0".into(),
                )))
            }
            None => {
                return Err(tied(ChatError::BadRequest(
                    "resume has no \"after\"".into(),
                )))
            }
        };
        return Ok(ClientFrame::Resume { session, id, after });
    }
    let wire: ChatWire = serde_json::from_value(Value::Object(obj))
        .map_err(|e| tied(ChatError::BadRequest(format!("invalid chat frame: {e}"))))?;
    let model = match wire.model {
        None => models.first().cloned().unwrap_or_default(),
        Some(m) if models.contains(&m) => m,
        Some(m) => {
            return Err(tied(ChatError::UnknownModel {
                model: m,
                available: models.to_vec(),
            }))
        }
    };
    if wire.messages.is_empty() || wire.messages.len() > MAX_MESSAGES {
        return Err(tied(ChatError::BadRequest(format!(
            "\"messages\" must hold 1–{MAX_MESSAGES} messages, got {}",
            wire.messages.len()
        ))));
    }
    let params = wire.params.unwrap_or_default();
    params
        .validate()
        .map_err(|m| tied(ChatError::BadRequest(m)))?;
    Ok(ClientFrame::Chat(ChatRequest {
        id,
        model,
        messages: wire.messages,
        params,
    }))
}

// ---------------------------------------------------------------- gateway → client

/// Every frame the gateway sends a browser. The frames of an accepted chat
/// carry its `seq` (PROTOCOL.md §3.2); an `error` refusing a frame has none.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Hello {
        models: &'a [String],
        default_model: &'a str,
        max_streams: usize,
        /// Names this socket's chats for `resume`.
        session: &'a str,
        /// The largest client frame (beyond the contract: lets a page check
        /// an attachment before sending it).
        max_frame_bytes: usize,
        /// The largest image data URL one content part may carry.
        max_image_bytes: usize,
    },
    Retry {
        id: &'a str,
        seq: u64,
        attempt: u32,
        delay_ms: u64,
        reason: &'a str,
    },
    Start {
        id: &'a str,
        seq: u64,
        model: &'a str,
        upstream: &'a str,
        attempt: u32,
    },
    Reasoning {
        id: &'a str,
        seq: u64,
        content: &'a str,
    },
    Delta {
        id: &'a str,
        seq: u64,
        content: &'a str,
    },
    Done {
        id: &'a str,
        seq: u64,
        finish_reason: &'a str,
        usage: Option<&'a Value>,
    },
    Error {
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        code: &'static str,
        message: std::borrow::Cow<'a, str>,
        retryable: bool,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: string keys, no maps with
        // non-string keys, no floats that JSON cannot hold.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// An `error` frame refusing a client frame (no `seq`).
    pub fn error<'a>(id: Option<&'a str>, err: &'a ChatError) -> ServerFrame<'a> {
        ServerFrame::Error {
            id,
            seq: None,
            code: err.code().as_str(),
            message: err.message(),
            retryable: err.retryable(),
        }
    }
}

// ---------------------------------------------------------------- gateway → upstream

/// The body of the upstream POST.
#[derive(Debug, Serialize)]
pub struct UpstreamRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    pub stream: bool,
    #[serde(flatten)]
    pub params: &'a Params,
}
