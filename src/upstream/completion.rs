//! Interpretation of upstream bodies as OpenAI chat completions.
//!
//! [`decode_event`] reads one SSE event as a `chat.completion.chunk`; it runs
//! once per token, so it deserializes into small lenient structs that borrow
//! the text from the event instead of building a `serde_json::Value`. Every
//! field it reads tolerates a wrong type (read as absent) and unknown fields
//! are skipped. [`decode_whole_body`] and [`error_message_from_body`] handle
//! the rarer non-streamed answers and error bodies.
//!
//! Messages come back raw (whole, neither redacted nor clipped): the chat
//! task turns each into an [`UpstreamMessage`], which redacts the API key
//! first and clips after.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use serde_json::{Map, Value};

use crate::upstream::redact::UpstreamMessage;
use crate::upstream::sse::Event;

/// What one SSE event meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// empty/whitespace-only data: a heartbeat, ignore
    Heartbeat,
    /// `data: [DONE]` (surrounding whitespace tolerated)
    Done,
    /// a chunk. `content` is Some only if `choices[0].delta.content` is a non-empty string.
    ///
    /// (For legacy completions, a non-empty string `choices[0].text` is used
    /// when the delta carries no content.) `finish_reason` is Some only for a
    /// non-empty string; `usage` is the top-level `usage` unless absent or null.
    Chunk {
        content: Option<String>,
        /// The pieces of the model's reasoning in `choices[0].delta`, in order
        /// (PROTOCOL.md §3.2): `reasoning_content`, else `reasoning`, else the
        /// `text`/`summary` of each `reasoning_details` entry; non-empty only.
        reasoning: Vec<String>,
        /// The chunk carries something for a client beyond a role: content,
        /// reasoning, tool or function calls, logprobs or a finish reason.
        payload: bool,
        finish_reason: Option<String>,
        usage: Option<Value>,
        /// Where the chunk's top-level `model` is (for `/v1`, which maps it
        /// back to the client's name without re-encoding the chunk).
        model: ModelField,
    },
}

/// The upstream reported an error inside the stream, or sent something that is not a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// What was wrong, in the gateway's words, when `text` is a payload
    /// being quoted ("invalid JSON in stream"); `None` when `text` is the
    /// upstream's own message.
    pub what: Option<String>,
    /// The upstream's message, or the offending payload: raw, whole.
    pub text: String,
}

impl StreamError {
    /// An error carrying the upstream's own message.
    pub fn upstream(text: impl Into<String>) -> Self {
        StreamError {
            what: None,
            text: text.into(),
        }
    }

    /// An error quoting an offending payload.
    pub fn quoting(what: impl Into<String>, text: &str) -> Self {
        StreamError {
            what: Some(what.into()),
            text: text.to_owned(),
        }
    }

    /// The message to show, with `secret` redacted: the upstream's message
    /// (at most 500 chars) or `what: <quote of at most 100 chars>`.
    pub fn message(&self, secret: Option<&str>) -> UpstreamMessage {
        match &self.what {
            None => UpstreamMessage::new(&self.text, secret),
            Some(what) => UpstreamMessage::quoting(what, &self.text, secret),
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.message(None), f)
    }
}

impl std::error::Error for StreamError {}

/// Interprets one SSE event (PROTOCOL.md section 4).
///
/// Errors: an `error:` field, an event named `error`, data that is not valid
/// JSON, not a JSON object, or an object with a non-null `error` key or
/// `"object":"error"`.
pub fn decode_event(ev: &Event) -> Result<Decoded, StreamError> {
    if let Some(raw) = &ev.error {
        return Err(error_from_text(
            raw,
            "upstream sent an error field without a message",
        ));
    }
    if ev.event == "error" {
        return Err(error_from_text(
            &ev.data,
            "upstream sent an error event without a message",
        ));
    }
    let text = ev.data.trim();
    if text.is_empty() {
        return Ok(Decoded::Heartbeat);
    }
    if text == "[DONE]" {
        return Ok(Decoded::Done);
    }
    match serde_json::from_str::<Loose<WireChunk<'_>>>(text) {
        Ok(wire) => chunk_from_wire(wire, text),
        Err(_) => slow_path(text),
    }
}

/// The fast parse failed: either the text is not JSON, or it is JSON the
/// derived structs refuse (e.g. a duplicated key); read it through a `Value`.
#[cold]
fn slow_path(text: &str) -> Result<Decoded, StreamError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| StreamError::quoting("invalid JSON in stream", text))?;
    match Loose::<WireChunk<'_>>::deserialize(&value) {
        Ok(wire) => chunk_from_wire(wire, text),
        Err(e) => Err(StreamError::quoting(
            format!("unreadable chunk ({e})"),
            text,
        )),
    }
}

/// The string, unless it is empty.
fn nonempty(s: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    s.filter(|s| !s.is_empty())
}

fn chunk_from_wire(wire: Loose<WireChunk<'_>>, text: &str) -> Result<Decoded, StreamError> {
    let Some(chunk) = wire.0 else {
        return Err(StreamError::quoting(
            "expected a JSON object in stream, got",
            text,
        ));
    };
    if chunk.error.0 || chunk.object.0.as_deref() == Some("error") {
        return Err(error_from_text(
            text,
            "upstream sent an error object without a message",
        ));
    }
    let model = ModelField::locate(&chunk.model.0, text);
    let mut reasoning = Vec::new();
    let mut calls = false;
    let (content, finish_reason, logprobs) = match chunk.choices.0.and_then(|c| c.0) {
        None => (None, None, false),
        Some(choice) => {
            let delta = choice.delta.0;
            let mut delta_content = None;
            if let Some(d) = delta {
                // The same text may come in several fields (vLLM sends
                // `reasoning` and `reasoning_content` alike): the first wins.
                if let Some(r) = nonempty(d.reasoning_content.0).or(nonempty(d.reasoning.0)) {
                    reasoning.push(r.into_owned());
                } else {
                    for detail in d.reasoning_details.0.into_iter().filter_map(|x| x.0) {
                        if let Some(r) = nonempty(detail.text.0).or(nonempty(detail.summary.0)) {
                            reasoning.push(r.into_owned());
                        }
                    }
                }
                calls = d.tool_calls.0 || d.function_call.0;
                delta_content = nonempty(d.content.0);
            }
            let content = delta_content.or_else(|| choice.text.0.filter(|s| !s.is_empty()));
            let finish = choice.finish_reason.0.filter(|s| !s.is_empty());
            (
                content.map(Cow::into_owned),
                finish.map(Cow::into_owned),
                choice.logprobs.0,
            )
        }
    };
    let payload =
        content.is_some() || !reasoning.is_empty() || calls || logprobs || finish_reason.is_some();
    Ok(Decoded::Chunk {
        content,
        reasoning,
        payload,
        finish_reason,
        usage: chunk.usage,
        model,
    })
}

/// Where a chunk's top-level `model` string is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelField {
    /// No `model` string.
    Absent,
    /// Its characters (between the quotes) are these bytes of the event's
    /// data, trimmed.
    At(std::ops::Range<usize>),
    /// It has escapes: only a re-encode can replace it.
    Escaped,
}

impl ModelField {
    fn locate(model: &Option<Cow<'_, str>>, text: &str) -> ModelField {
        match model {
            None => ModelField::Absent,
            Some(Cow::Owned(_)) => ModelField::Escaped,
            Some(Cow::Borrowed(m)) => {
                let start = (m.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
                match text.get(start..start + m.len()) {
                    Some(_) => ModelField::At(start..start + m.len()),
                    None => ModelField::Escaped,
                }
            }
        }
    }

    /// `text` (a chunk's trimmed data) with its `model` replaced by `model`:
    /// a splice of the string when it can be found, else a re-encode.
    pub fn replace(&self, text: &str, model: &str) -> String {
        match self {
            ModelField::Absent => text.to_owned(),
            ModelField::At(r) => {
                // A name with nothing to escape (any real one) is spliced
                // as it is; only another needs JSON's spelling.
                let plain = model.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
                let quoted;
                let inner = if plain {
                    model
                } else {
                    quoted = serde_json::to_string(model).unwrap_or_else(|_| String::from("\"\""));
                    &quoted[1..quoted.len() - 1]
                };
                let mut out = String::with_capacity(text.len() + inner.len());
                out.push_str(&text[..r.start]);
                out.push_str(inner);
                out.push_str(&text[r.end..]);
                out
            }
            ModelField::Escaped => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut map)) => {
                    map.insert("model".into(), Value::from(model));
                    Value::Object(map).to_string()
                }
                _ => text.to_owned(),
            },
        }
    }
}

/// What a 2xx, non-SSE body was.
#[derive(Debug, Clone, PartialEq)]
pub enum WholeBody {
    /// a non-streamed chat.completion: `choices[0].message.content` (may be empty string)
    Completion {
        content: String,
        finish_reason: Option<String>,
        usage: Option<Value>,
    },
    /// a JSON error object ({"error":{...}}, {"error":"..."}, {"object":"error","message":..}, {"message":..,"code"..} style);
    /// `message` is raw (see [`UpstreamMessage`])
    Error { message: String },
    /// anything else; the string says briefly what it was (e.g. "non-JSON body of 123 bytes")
    Other(String),
}

/// For a 2xx response whose content-type is not text/event-stream.
///
/// A completion's content is `choices[0].message.content` (null reads as
/// ""), or a legacy `choices[0].text`. An object counts as an error when it
/// has a non-null `error`, `"object":"error"`, or, lacking `choices`, a
/// `message` or `detail`.
pub fn decode_whole_body(body: &[u8]) -> WholeBody {
    if body.is_empty() {
        return WholeBody::Other("empty body".to_owned());
    }
    if body.trim_ascii().is_empty() {
        return WholeBody::Other(format!("blank body of {} bytes", body.len()));
    }
    let value: Value = match serde_json::from_slice(strip_bom(body)) {
        Ok(v) => v,
        Err(_) => return WholeBody::Other(describe_non_json(body)),
    };
    let Value::Object(map) = &value else {
        return WholeBody::Other(format!(
            "JSON {} instead of a chat completion",
            kind(&value)
        ));
    };
    if is_error_object(map) {
        let message = extract_message(&value).unwrap_or_else(|| value.to_string());
        return WholeBody::Error { message };
    }
    let Some(choice) = map
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return WholeBody::Other("JSON object without choices".to_owned());
    };
    let message = choice.get("message").filter(|m| m.is_object());
    let content = match (message, choice.get("text").and_then(Value::as_str)) {
        (Some(m), _) => m.get("content").and_then(Value::as_str).unwrap_or_default(),
        (None, Some(text)) => text,
        (None, None) => return WholeBody::Other("JSON choice without a message".to_owned()),
    };
    WholeBody::Completion {
        content: content.to_owned(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        usage: map.get("usage").filter(|u| !u.is_null()).cloned(),
    }
}

/// For an error status (4xx/5xx) body: the upstream's human message (error.message, error as string, message, detail, ...) or, if not JSON, the trimmed text; raw, whole (see [`UpstreamMessage`]); empty body -> "".
///
/// A JSON body with no recognizable message is returned as its trimmed text.
/// Invalid UTF-8 is replaced with U+FFFD.
pub fn error_message_from_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(strip_bom(body));
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| extract_message(&v));
    message.unwrap_or_else(|| text.to_owned())
}

// ---- error messages -------------------------------------------------------

/// The message carried by an error payload: the JSON's message when there is
/// one, else the raw (trimmed) text, else `fallback`.
fn error_from_text(raw: &str, fallback: &str) -> StreamError {
    let raw = raw.trim();
    if raw.is_empty() {
        return StreamError::upstream(fallback);
    }
    let message = serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| extract_message(&v));
    StreamError::upstream(message.unwrap_or_else(|| raw.to_owned()))
}

/// Finds a human message in the usual error shapes: `{"error":{"message":..}}`,
/// `{"error":".."}`, `{"message":..}`, `{"detail":..}` (also FastAPI's list
/// of `{"msg":..}`), a bare string, or an array wrapping one of those.
fn extract_message(v: &Value) -> Option<String> {
    const KEYS: [&str; 6] = [
        "error",
        "message",
        "detail",
        "error_description",
        "msg",
        "title",
    ];
    match v {
        Value::String(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned),
        Value::Object(map) => KEYS
            .iter()
            .find_map(|k| map.get(*k).and_then(extract_message)),
        Value::Array(items) => items.first().and_then(extract_message),
        _ => None,
    }
}

fn is_error_object(map: &Map<String, Value>) -> bool {
    map.get("error").is_some_and(|e| !e.is_null())
        || map.get("object").and_then(Value::as_str) == Some("error")
        || (!map.contains_key("choices")
            && (map.get("message").is_some_and(Value::is_string) || map.contains_key("detail")))
}

fn describe_non_json(body: &[u8]) -> String {
    let start = strip_bom(body).trim_ascii_start();
    let hint = if start.first() == Some(&b'<') {
        " (looks like HTML)"
    } else if [&b"data:"[..], b"event:", b":"]
        .iter()
        .any(|p| start.starts_with(p))
    {
        " (looks like SSE)"
    } else {
        ""
    };
    format!("non-JSON body of {} bytes{hint}", body.len())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

// ---- lenient wire shapes --------------------------------------------------

/// The fields of a chunk this module reads; everything else is skipped.
#[derive(DeriveDeserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    object: LooseStr<'a>,
    #[serde(default, borrow)]
    model: LooseStr<'a>,
    #[serde(default)]
    error: NonNull,
    #[serde(default, borrow)]
    choices: First<Loose<WireChoice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(DeriveDeserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Loose<WireDelta<'a>>,
    #[serde(default, borrow)]
    text: LooseStr<'a>,
    #[serde(default, borrow)]
    finish_reason: LooseStr<'a>,
    #[serde(default)]
    logprobs: NonNull,
}

#[derive(DeriveDeserialize)]
struct WireDelta<'a> {
    #[serde(default, borrow)]
    content: LooseStr<'a>,
    #[serde(default, borrow)]
    reasoning_content: LooseStr<'a>,
    #[serde(default, borrow)]
    reasoning: LooseStr<'a>,
    #[serde(default, borrow)]
    reasoning_details: Each<Loose<WireDetail<'a>>>,
    #[serde(default)]
    tool_calls: NonNull,
    #[serde(default)]
    function_call: NonNull,
}

/// One `reasoning_details` entry (OpenRouter): its text or summary.
#[derive(DeriveDeserialize)]
struct WireDetail<'a> {
    #[serde(default, borrow)]
    text: LooseStr<'a>,
    #[serde(default, borrow)]
    summary: LooseStr<'a>,
}

/// Generates the visitor methods that read any value `T` does not want as
/// `T::default()`, consuming (and ignoring) arrays and objects.
macro_rules! anything_else_is_default {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// A string, borrowed from the input when it has no escapes; `None` for null
/// or any other type.
#[derive(Default)]
struct LooseStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a str>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LooseStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(v))))
            }
            anything_else_is_default!();
            anything_else_is_default!(seq);
            anything_else_is_default!(map);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object read as `T`; `None` for null or any other type.
struct Loose<T>(Option<T>);

impl<T> Default for Loose<T> {
    fn default() -> Self {
        Loose(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Loose<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Loose(Some(t)))
            }
            anything_else_is_default!();
            anything_else_is_default!(str);
            anything_else_is_default!(seq);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The first element of an array (the rest is skipped unparsed); `None` for
/// an empty array, null or any other type.
struct First<T>(Option<T>);

impl<T> Default for First<T> {
    fn default() -> Self {
        First(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
            anything_else_is_default!();
            anything_else_is_default!(str);
            anything_else_is_default!(map);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Every element of an array read as `T`; empty for null or any other type.
struct Each<T>(Vec<T>);

impl<T> Default for Each<T> {
    fn default() -> Self {
        Each(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Each<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Each<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element::<T>()? {
                    out.push(x);
                }
                Ok(Each(out))
            }
            anything_else_is_default!();
            anything_else_is_default!(str);
            anything_else_is_default!(map);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Whether a value is present and not null (its content is skipped).
#[derive(Default)]
struct NonNull(bool);

impl<'de> Deserialize<'de> for NonNull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(NonNullVisitor)
    }
}

struct NonNullVisitor;

impl<'de> Visitor<'de> for NonNullVisitor {
    type Value = NonNull;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_none<E: de::Error>(self) -> Result<NonNull, E> {
        Ok(NonNull(false))
    }
    fn visit_unit<E: de::Error>(self) -> Result<NonNull, E> {
        Ok(NonNull(false))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NonNull, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(NonNull(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_of(text: &str) -> Option<Cow<'_, str>> {
        let wire: Loose<WireChunk<'_>> = serde_json::from_str(text).expect("parses");
        let choice = wire.0.and_then(|c| c.choices.0).and_then(|c| c.0)?;
        choice.delta.0.and_then(|d| d.content.0)
    }

    #[test]
    fn fast_path_borrows_content_without_escapes() {
        let content = content_of(r#"{"choices":[{"delta":{"content":"plain text"}}]}"#);
        assert!(
            matches!(content, Some(Cow::Borrowed("plain text"))),
            "{content:?}"
        );
        let content = content_of(r#"{"choices":[{"delta":{"content":"line\n"}}]}"#);
        assert!(
            matches!(content, Some(Cow::Owned(ref s)) if s == "line\n"),
            "{content:?}"
        );
    }
}
