//! The built-in demo upstream (PROTOCOL.md §5): an OpenAI-compatible
//! chat-completions server on a free loopback port, inside the process. The
//! gateway reaches it over real HTTP, through the same path as any upstream.
//! It streams a deterministic answer built from the last user message, word
//! by word, so the page works with no key and no network.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{dev::ServerHandle, web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

/// The path the demo serves.
pub const PATH: &str = "/v1/chat/completions";

#[derive(Deserialize)]
struct DemoMessage {
    #[serde(default)]
    role: String,
    /// Text, or content parts (their text parts are read; images are
    /// acknowledged, not looked at).
    #[serde(default)]
    content: Value,
}

impl DemoMessage {
    /// The message's text, and how many images it carries.
    fn text(&self) -> (String, usize) {
        match &self.content {
            Value::String(s) => (s.clone(), 0),
            Value::Array(parts) => {
                let text = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n");
                let images = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
                    .count();
                (text, images)
            }
            _ => (String::new(), 0),
        }
    }
}

#[derive(Deserialize)]
struct DemoRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<DemoMessage>,
    #[serde(default)]
    stream: bool,
}

/// The deterministic answer to a conversation whose last user message
/// says `last_user` and carries `images` images.
pub fn answer(last_user: &str, images: usize) -> String {
    let said = last_user.trim();
    let quoted: String = if said.chars().count() > 200 {
        let cut: String = said.chars().take(200).collect();
        format!("{cut}…")
    } else {
        said.to_owned()
    };
    let mut text = format!(
        "You said: \"{quoted}\". This answer comes from netfly's built-in demo upstream: \
         no model, no key, no network. Each word travels as its own server-sent event \
         through the gateway's retry and parsing path and reaches you as its own WebSocket frame."
    );
    if images > 0 {
        text.push_str(&format!(
            " Your message carried {images} image(s); the demo upstream cannot look at them."
        ));
    }
    let lower = said.to_lowercase();
    if lower.contains("code") {
        text.push_str(
            "\n\nHere is a code block:\n\n```rust\nfn main() {\n    println!(\"hello from netfly\");\n}\n```\n",
        );
    }
    if lower.contains("table") {
        text.push_str(
            "\n\n| piece | what it does |\n|---|---|\n| gateway | streams the answer |\n| page | renders **Markdown** |\n",
        );
    }
    text
}

/// The deterministic reasoning streamed before the answer when the last
/// user message asks the demo to think (mentions "think"); `None` otherwise.
pub fn reasoning(last_user: &str) -> Option<String> {
    last_user.to_lowercase().contains("think").then(|| {
        "The user wants to see the thinking section. I will stream these words as \
         reasoning first, then the answer."
            .to_owned()
    })
}

/// Splits `text` into word-sized pieces whose concatenation is `text`.
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in text.chars() {
        let space = c.is_whitespace();
        if !space && in_space && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        in_space = space;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn sse(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn completions(body: web::Bytes, delay: web::Data<Duration>) -> HttpResponse {
    let req: DemoRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return HttpResponse::BadRequest().json(json!({
                "error": {"message": format!("invalid request body: {e}"), "type": "invalid_request_error"}
            }))
        }
    };
    let (last_user, images) = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(DemoMessage::text)
        .unwrap_or_default();
    let text = answer(&last_user, images);
    let thought = reasoning(&last_user);
    let words = pieces(&text);
    let prompt_tokens: usize = req
        .messages
        .iter()
        .map(|m| m.text().0.split_whitespace().count())
        .sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": words.len(),
        "total_tokens": prompt_tokens + words.len(),
    });
    let model = if req.model.is_empty() {
        "demo".to_owned()
    } else {
        req.model
    };
    if !req.stream {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }));
    }
    let delay = **delay;
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        sse(&json!({
            "id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let mut events: Vec<Bytes> = Vec::with_capacity(words.len() + 4);
    events.push(chunk(json!({"role": "assistant"}), None));
    for w in thought.as_deref().map(pieces).unwrap_or_default() {
        events.push(chunk(json!({ "reasoning_content": w }), None));
    }
    for w in &words {
        events.push(chunk(json!({ "content": w }), None));
    }
    events.push(chunk(json!({}), Some("stop")));
    events.push(sse(&json!({
        "id": "chatcmpl-demo", "object": "chat.completion.chunk", "choices": [], "usage": usage,
    })));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, actix_web::Error>(next), (it, false)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

/// A running demo upstream.
pub struct Demo {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
}

impl Demo {
    /// Its chat-completions URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, PATH)
    }
}

/// Starts the demo upstream on 127.0.0.1 (free port), pausing `delay`
/// between words.
pub fn start(delay: Duration) -> std::io::Result<Demo> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(delay))
            .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
            .route(PATH, web::post().to(completions))
    })
    .workers(1)
    .disable_signals()
    .tcp_nodelay(true)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(Demo { addr, handle })
}
