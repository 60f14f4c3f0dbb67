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
    Developer,
    User,
    Assistant,
}

/// One message of the conversation, forwarded upstream as the client sent
/// it (PROTOCOL.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub content: Content,
}

/// A message's content: text, or an array of parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// By hand rather than `untagged`, so that a bad part says what is wrong
/// with it (serde's untagged error names no field).
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Content, A::Error> {
                Vec::<ContentPart>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Content::Parts)
            }
        }
        d.deserialize_any(V)
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Content {
        Content::Text(text.to_owned())
    }
}

impl Content {
    /// The text of the content (its text parts, joined by a newline).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(t) => std::borrow::Cow::Borrowed(t),
            Content::Parts(parts) => std::borrow::Cow::Owned(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text.as_str()),
                        ContentPart::ImageUrl { .. } => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// An image a message refers to: an `https:` URL or a
/// `data:image/…;base64,` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a client's frame is checked against (besides the fixed limits).
#[derive(Debug, Clone, Copy)]
pub struct FrameRules<'a> {
    /// `--models`: the first is the default.
    pub models: &'a [String],
    /// Longest image URL a content part may carry (`--max-image-bytes`).
    pub max_image_bytes: usize,
}

impl ChatMessage {
    /// Checks the message's content parts; `i` is its index (for messages).
    fn validate(&self, i: usize, rules: &FrameRules<'_>) -> Result<(), String> {
        let Content::Parts(parts) = &self.content else {
            return Ok(());
        };
        if parts.is_empty() {
            return Err(format!("messages[{i}].content is an empty array"));
        }
        for (j, part) in parts.iter().enumerate() {
            let ContentPart::ImageUrl { image_url } = part else {
                continue;
            };
            let at = format!("messages[{i}].content[{j}].image_url");
            check_image_url(&image_url.url, rules.max_image_bytes)
                .map_err(|why| format!("{at}.url {why}"))?;
            if let Some(d) = &image_url.detail {
                if !matches!(d.as_str(), "auto" | "low" | "high") {
                    return Err(format!(
                        "{at}.detail must be \"auto\", \"low\" or \"high\", got {d:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `url` is an image URL a chat may carry: `https:` or a base64
/// `data:image/…` URL of at most `max` bytes.
fn check_image_url(url: &str, max: usize) -> Result<(), String> {
    if url.len() > max {
        return Err(format!(
            "is {} bytes, over the {max}-byte limit for one image",
            url.len()
        ));
    }
    let lower = url.get(..11).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        return match url.parse::<awc::http::Uri>() {
            Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => Ok(()),
            _ => Err("is not a valid https: URL".into()),
        };
    }
    if let Some(rest) = lower.strip_prefix("data:image/").map(|_| &url[11..]) {
        let Some((mime, data)) = rest.split_once(";base64,") else {
            return Err("must be a base64 data URL (data:image/…;base64,…)".into());
        };
        let mime_ok = !mime.is_empty()
            && mime
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        let data_ok = !data.is_empty()
            && data
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        return match (mime_ok, data_ok) {
            (true, true) => Ok(()),
            (false, _) => Err(format!("has an invalid image type {mime:?}")),
            (_, false) => Err("has invalid base64 data".into()),
        };
    }
    Err("must be an https: URL or a data:image/…;base64, URL".into())
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

/// Parses and validates one client text frame against `rules`.
pub fn parse_client_frame(text: &str, rules: &FrameRules<'_>) -> Result<ClientFrame, FrameError> {
    let models = rules.models;
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
    // The error names the field it is about ("messages[1].content[0].type: …").
    let wire: ChatWire = serde_path_to_error::deserialize(Value::Object(obj))
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
    for (i, m) in wire.messages.iter().enumerate() {
        m.validate(i, rules)
            .map_err(|e| tied(ChatError::BadRequest(e)))?;
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

// ---------------------------------------------------------------- /v1 (PROTOCOL.md §7)

/// Roles a `/v1` message may have (the OpenAI set).
const API_ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated `/v1/chat/completions` body: what netfly owns is checked
/// (model, message count, image sizes, the ranges of the sampling params
/// `/ws` also checks), everything else is forwarded as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// Resolved: the client's choice, or the default model.
    pub model: String,
    pub stream: bool,
    /// The body as sent (its `model` is replaced per upstream).
    pub fields: serde_json::Map<String, Value>,
}

/// Parses and checks a `/v1/chat/completions` body against `rules`.
pub fn parse_api_request(body: &[u8], rules: &FrameRules<'_>) -> Result<ApiRequest, ChatError> {
    let bad = |m: String| ChatError::BadRequest(m);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(bad("body must be a JSON object".into()));
    };
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"stream\" must be a boolean".into())),
    };
    match fields.get("stream_options") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(bad("\"stream_options\" must be an object".into())),
    }
    let model = match fields.get("model") {
        None | Some(Value::Null) => rules.models.first().cloned().unwrap_or_default(),
        Some(Value::String(m)) if rules.models.contains(m) => m.clone(),
        Some(Value::String(m)) => {
            return Err(ChatError::UnknownModel {
                model: m.clone(),
                available: rules.models.to_vec(),
            })
        }
        Some(_) => return Err(bad("\"model\" must be a string".into())),
    };
    let messages = match fields.get("messages") {
        Some(Value::Array(m)) if (1..=MAX_MESSAGES).contains(&m.len()) => m,
        Some(Value::Array(m)) => {
            return Err(bad(format!(
                "\"messages\" must hold 1–{MAX_MESSAGES} messages, got {}",
                m.len()
            )))
        }
        Some(_) => return Err(bad("\"messages\" must be an array".into())),
        None => return Err(bad("body has no \"messages\"".into())),
    };
    for (i, m) in messages.iter().enumerate() {
        check_api_message(i, m, rules).map_err(bad)?;
    }
    // The sampling params `/ws` checks are checked here too, when present
    // (the upstream would refuse them anyway; a 400 now is clearer).
    let known: serde_json::Map<String, Value> = fields
        .iter()
        .filter(|(k, v)| {
            !v.is_null()
                && matches!(
                    k.as_str(),
                    "temperature"
                        | "top_p"
                        | "presence_penalty"
                        | "frequency_penalty"
                        | "max_tokens"
                        | "stop"
                        | "seed"
                )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let params: Params = serde_path_to_error::deserialize(Value::Object(known))
        .map_err(|e| bad(format!("invalid parameter: {e}")))?;
    params
        .validate()
        .map_err(|e| bad(e.replace("params.", "")))?;
    if let Some(v) = fields.get("max_completion_tokens").filter(|v| !v.is_null()) {
        if !v.as_u64().is_some_and(|n| n > 0) {
            return Err(bad(
                "max_completion_tokens must be a positive integer".into()
            ));
        }
    }
    Ok(ApiRequest {
        model,
        stream,
        fields,
    })
}

/// Checks one `/v1` message: an object with a known role, and images in
/// its content parts within their limit.
fn check_api_message(i: usize, m: &Value, rules: &FrameRules<'_>) -> Result<(), String> {
    let Value::Object(m) = m else {
        return Err(format!("messages[{i}] must be an object"));
    };
    match m.get("role") {
        Some(Value::String(r)) if API_ROLES.contains(&r.as_str()) => {}
        Some(r) => {
            return Err(format!(
                "messages[{i}].role must be one of {}, got {r}",
                API_ROLES.join(", ")
            ))
        }
        None => return Err(format!("messages[{i}] has no role")),
    }
    let Some(Value::Array(parts)) = m.get("content") else {
        return Ok(());
    };
    for (j, part) in parts.iter().enumerate() {
        let url = part
            .get("image_url")
            .and_then(|u| u.get("url").or(Some(u)))
            .and_then(Value::as_str);
        if part.get("type").and_then(Value::as_str) == Some("image_url") {
            let url = url.ok_or_else(|| {
                format!("messages[{i}].content[{j}].image_url.url must be a string")
            })?;
            check_image_url(url, rules.max_image_bytes)
                .map_err(|why| format!("messages[{i}].content[{j}].image_url.url {why}"))?;
        }
    }
    Ok(())
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

    /// Appends the frame's JSON to `out` (what [`Self::to_json`] returns).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Cannot fail, as above; on the impossible error `out` holds what
        // was written and the caller's frame is cut: say `{}` instead.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.clear();
            out.extend_from_slice(b"{}");
        }
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

/// The body of the upstream POST of a WebSocket chat.
#[derive(Debug, Serialize)]
pub struct UpstreamRequest<'a> {
    pub model: &'a str,
    pub messages: UpstreamMessages<'a>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub params: &'a Params,
}

/// `stream_options` of an upstream request.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// A chat's messages as the upstream gets them: unchanged, except that
/// `developer` becomes `system` for an upstream that does not know it.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamMessages<'a> {
    pub messages: &'a [ChatMessage],
    pub developer_as_system: bool,
}

impl Serialize for UpstreamMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            role: Role,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: &'a Option<String>,
            content: &'a Content,
        }
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.messages.len()))?;
        for m in self.messages {
            let role = match m.role {
                Role::Developer if self.developer_as_system => Role::System,
                other => other,
            };
            seq.serialize_element(&View {
                role,
                name: &m.name,
                content: &m.content,
            })?;
        }
        seq.end()
    }
}
