//! The OpenAI-compatible HTTP endpoint (`src/openai_api.rs`): the real
//! gateway and the scripted fake upstream in-process on 127.0.0.1 port 0,
//! driven by awc, a raw TCP client, `curl -sN` and the official `openai`
//! Python package (installed into target/pyenv by
//! scripts/install-deploy-deps.sh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fake::{
    chunk, chunk_with_delta, done_event, event, openai_error, usage, usage_chunk,
};
use crate::support::raw_http::{raw_post, raw_post_until};
use crate::support::*;

fn user(content: &str) -> Value {
    json!([{ "role": "user", "content": content }])
}

/// Two SSE events, `gap` apart.
fn two_events(first: &Value, gap: Duration, second: &Value) -> Vec<Part> {
    vec![
        Part::Bytes(event(first)),
        Part::Delay(gap),
        Part::Bytes(event(second)),
    ]
}

/// An HTTP answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an OpenAI-style error with `status` and `code`.
    fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "error content type {:?}",
            self.content_type
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        v
    }
}

/// `POST /v1/chat/completions` with `body` (and an optional bearer token),
/// read to the end.
async fn post(addr: SocketAddr, body: &Value, token: Option<&str>) -> Answer {
    request(addr, "POST", "/v1/chat/completions", Some(body), token).await
}

/// `POST /v1/chat/completions` of one user message "x", streamed or not.
async fn post_x(addr: SocketAddr, stream: bool) -> Answer {
    post(
        addr,
        &json!({ "messages": user("x"), "stream": stream }),
        None,
    )
    .await
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Answer {
    init();
    let client = awc::Client::builder().timeout(WAIT).finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let sent = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    };
    let mut resp = sent.unwrap_or_else(|e| panic!("{path} failed: {e}"));
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = tokio::time::timeout(WAIT, read_body(&mut resp, 8 * 1024 * 1024, path))
        .await
        .expect("body within the wait");
    Answer {
        status: resp.status().as_u16(),
        content_type,
        body: String::from_utf8(bytes).unwrap(),
    }
}

/// The `data:` payloads of an SSE body, in order (each must be a complete
/// `data: …\n\n` event).
fn sse_data(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "unterminated SSE body: {body:?}");
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|ev| {
            ev.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {ev:?}"))
                .to_string()
        })
        .collect()
}

/// Checks the OpenAI chunk shape of every event before `[DONE]` and returns
/// the chunks.
fn chunks_of(data: &[String], model: &str) -> Vec<Value> {
    let chunks: Vec<Value> = data
        .iter()
        .take_while(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().expect("chunk id").to_string();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &chunks {
        if c.get("error").is_some() {
            continue;
        }
        assert_eq!(c["id"], id.as_str(), "one id per stream: {c}");
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(c["created"].is_u64(), "{c}");
        assert_eq!(c["model"], model, "{c}");
        let choices = c["choices"].as_array().expect("choices array");
        for ch in choices {
            assert_eq!(ch["index"], 0, "{c}");
            assert!(ch["delta"].is_object(), "{c}");
            assert!(ch.get("finish_reason").is_some(), "{c}");
        }
    }
    chunks
}

fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// streaming
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn streams_exact_content_as_openai_chunks() {
    let words = ["Hél", "lo, wörld ", "🎉 and ", "more"];
    let mut parts: Vec<Part> = vec![Part::Bytes(event(&chunk_with_delta(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )))];
    parts.extend(words.iter().map(|w| Part::Bytes(event(&chunk(w)))));
    parts.push(Part::Bytes(event(&chunk_with_delta(
        json!({}),
        json!("length"),
    ))));
    parts.push(Part::Bytes(event(&usage_chunk(&usage()))));
    parts.push(Part::Bytes(done_event()));
    let (fake, gw) = fake_gateway(vec![Reply::sse(parts)], &[]).await;

    let body = json!({
        "model": "gpt-4", "messages": user("hi"), "stream": true,
        "stream_options": { "include_usage": true }, "temperature": 0.3
    });
    let a = post(gw.addr, &body, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.content_type.starts_with("text/event-stream"),
        "{}",
        a.content_type
    );
    let data = sse_data(&a.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:#?}");
    let chunks = chunks_of(&data, "gpt-4");
    // role first, one chunk per upstream delta, finish, usage.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(content(&chunks), words.concat());
    let texts: Vec<&str> = chunks[1..1 + words.len()]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, words, "one chunk per upstream delta, unchanged");
    let finish = &chunks[1 + words.len()];
    assert_eq!(finish["choices"][0]["finish_reason"], "length", "{finish}");
    assert_eq!(finish["choices"][0]["delta"], json!({}), "{finish}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"], usage(), "{last}");
    assert_eq!(chunks.len(), words.len() + 3);

    // The upstream got the same request a WebSocket chat would send.
    let up = fake.request(0);
    let up = up.json();
    assert_eq!(up["model"], "gpt-4");
    assert_eq!(up["stream"], true);
    assert_eq!(up["temperature"], 0.3);
    assert_eq!(up["messages"], user("hi"));

    let m = gw.metrics();
    assert_eq!(m.chats_active.get(), 0);
    assert_eq!(m.chats_total.with_label_values(&["done"]).get(), 1);
    assert_eq!(m.deltas_total.get(), words.len() as u64);
    gw.stop(false).await;
}

#[actix_web::test]
async fn stream_without_include_usage_has_no_usage_chunk_and_default_model() {
    let (_fake, gw) = fake_gateway(vec![Reply::sse_words(&["a", "b"])], &[]).await;
    let a = post_x(gw.addr, true).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let data = sse_data(&a.body);
    let chunks = chunks_of(&data, "gpt-3.5-turbo");
    assert_eq!(content(&chunks), "ab");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:#?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    gw.stop(false).await;
}

/// Retries happen before the status is chosen: a 503 the gateway retried
/// away is invisible to the HTTP client, as on the WebSocket.
#[actix_web::test]
async fn retried_failures_are_invisible() {
    let (fake, gw) = fake_gateway(vec![Reply::status(503), Reply::sse_words(&["fine"])], &[]).await;
    let a = post_x(gw.addr, true).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        content(&chunks_of(&sse_data(&a.body), "gpt-3.5-turbo")),
        "fine"
    );
    assert_eq!(fake.attempts(), 2);
    gw.stop(false).await;
}

#[actix_web::test]
async fn error_after_streaming_began_is_an_sse_error_event() {
    let parts = two_events(
        &chunk("Hel"),
        ms(20),
        &openai_error("model overloaded mid-way"),
    );
    let (_fake, gw) = fake_gateway(vec![Reply::sse(parts)], &[]).await;
    let a = post_x(gw.addr, true).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let data = sse_data(&a.body);
    assert!(!data.contains(&"[DONE]".to_string()), "{data:#?}");
    let chunks = chunks_of(&data, "gpt-3.5-turbo");
    assert_eq!(content(&chunks), "Hel");
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_broken", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model overloaded mid-way"),
        "{last}"
    );
    let m = gw.metrics();
    assert_eq!(
        m.chats_total.with_label_values(&["upstream_broken"]).get(),
        1
    );
    assert_eq!(m.chats_active.get(), 0);
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// non-streamed
// ---------------------------------------------------------------------------

/// An upstream that streams although asked not to: the gateway assembles
/// the completion from its chunks.
#[actix_web::test]
async fn whole_completion_when_not_streaming() {
    let parts = vec![
        Part::Bytes(event(&chunk("Hello, "))),
        Part::Bytes(event(&chunk("world"))),
        Part::Bytes(event(&chunk_with_delta(json!({}), json!("stop")))),
        Part::Bytes(event(&usage_chunk(&usage()))),
        Part::Bytes(done_event()),
    ];
    let (fake, gw) = fake_gateway(vec![Reply::sse(parts)], &[]).await;
    let a = post(
        gw.addr,
        &json!({ "model": "gpt-4", "messages": user("x"), "stream": false }),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.content_type.starts_with("application/json"));
    let v = a.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["model"], "gpt-4");
    assert!(v["created"].is_u64());
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello, world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], usage());
    // The upstream is asked exactly what the client asked.
    assert_eq!(fake.request(0).json()["stream"], false);
    assert_eq!(
        gw.metrics().chats_total.with_label_values(&["done"]).get(),
        1
    );
    gw.stop(false).await;
}

#[actix_web::test]
async fn models_list() {
    let gw = start_gateway(&["--models", "alpha,beta"]).await;
    let a = request(gw.addr, "GET", "/v1/models", None, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "{m}");
            assert!(m["owned_by"].is_string(), "{m}");
            assert!(m["created"].is_u64(), "{m}");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// errors before any content
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn validation_errors_are_400_and_never_reach_the_upstream() {
    let (fake, gw) = fake_gateway(vec![Reply::sse_words(&["never"])], &[]).await;
    let addr = gw.addr;
    for stream in [true, false] {
        let cases = [
            (json!({ "messages": [], "stream": stream }), "bad_request"),
            (json!({ "stream": stream }), "bad_request"),
            (json!([1, 2]), "bad_request"),
            (
                json!({ "messages": [{ "role": "robot", "content": "x" }], "stream": stream }),
                "bad_request",
            ),
            (
                json!({ "messages": user("x"), "temperature": 2.5, "stream": stream }),
                "bad_request",
            ),
            (
                json!({ "messages": user("x"), "max_completion_tokens": 0, "stream": stream }),
                "bad_request",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url",
                    "image_url": { "url": "javascript:alert(1)" } }] }], "stream": stream }),
                "bad_request",
            ),
            (
                json!({ "messages": user("x"), "stream": "yes" }),
                "bad_request",
            ),
            (
                json!({ "model": "gpt-5", "messages": user("x"), "stream": stream }),
                "unknown_model",
            ),
        ];
        for (body, code) in cases {
            let v = post(addr, &body, None).await.expect_error(400, code);
            assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
        }
    }
    // Not JSON at all.
    init();
    let mut resp = awc::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .insert_header(("content-type", "application/json"))
        .send_body("{nope")
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert_eq!(
        fake.attempts(),
        0,
        "invalid requests never reach the upstream"
    );
    assert_eq!(gw.metrics().chats_active.get(), 0);
    gw.stop(false).await;
}

#[actix_web::test]
async fn upstream_4xx_is_502_with_its_message() {
    let (fake, gw) = fake_gateway(
        vec![Reply::error_json(400, "context too long for fake")],
        &[],
    )
    .await;
    for stream in [true, false] {
        let a = post_x(gw.addr, stream).await;
        let v = a.expect_error(502, "upstream_rejected");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("context too long for fake"),
            "{v}"
        );
    }
    assert_eq!(fake.attempts(), 2, "4xx is never retried");
    let m = gw.metrics();
    assert_eq!(
        m.chats_total
            .with_label_values(&["upstream_rejected"])
            .get(),
        2
    );
    assert_eq!(m.chats_active.get(), 0);
    gw.stop(false).await;
}

#[actix_web::test]
async fn exhausted_upstream_is_503_and_timeout_504() {
    let (_fake, gw) = fake_gateway(vec![Reply::status(503)], &["--max-attempts", "2"]).await;
    let a = post_x(gw.addr, true).await;
    a.expect_error(503, "upstream_unavailable");
    gw.stop(false).await;

    let (_fake, gw) = fake_gateway(
        vec![Reply::StallHeaders],
        &["--max-attempts", "1", "--first-byte-timeout-ms", "100"],
    )
    .await;
    let a = post(gw.addr, &json!({ "messages": user("x") }), None).await;
    a.expect_error(504, "upstream_timeout");
    gw.stop(false).await;
}

#[actix_web::test]
async fn auth_tokens_are_required_as_bearer() {
    let (fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &["--auth-tokens", "s3cret,other"],
    )
    .await;
    let body = json!({ "messages": user("x"), "stream": true });
    for token in [None, Some("wrong"), Some("s3cre")] {
        let a = post(gw.addr, &body, token).await;
        let v = a.expect_error(401, "invalid_api_key");
        assert!(!v.to_string().contains("s3cret"), "never echo a token: {v}");
        let a = request(gw.addr, "GET", "/v1/models", None, token).await;
        a.expect_error(401, "invalid_api_key");
    }
    assert_eq!(fake.attempts(), 0);
    for token in ["s3cret", "other"] {
        let a = post(gw.addr, &body, Some(token)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = request(gw.addr, "GET", "/v1/models", None, Some(token)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// client disconnect
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn client_disconnect_mid_stream_cancels_the_upstream() {
    let parts = two_events(&chunk("first "), ms(50), &chunk("second "));
    let (fake, gw) = fake_gateway(vec![Reply::sse(parts).with_end(End::Stall)], &[]).await;
    let body = json!({ "messages": user("x"), "stream": true });
    let (tcp, seen) = raw_post_until(gw.addr, &body, "second ").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(gw.metrics().chats_active.get(), 1);
    drop(tcp);
    assert!(
        fake.wait_client_disconnect(Duration::from_secs(1)).await,
        "the upstream request was not dropped within 1 s of the client leaving"
    );
    let m = gw.metrics();
    poll_until(Duration::from_secs(1), ms(5), || m.chats_active.get() == 0).await;
    assert_eq!(m.chats_active.get(), 0);
    assert_eq!(m.chats_total.with_label_values(&["disconnected"]).get(), 1);
    gw.stop(false).await;
}

#[actix_web::test]
async fn client_disconnect_before_any_content_cancels_the_upstream() {
    for stream in [true, false] {
        let (fake, gw) = fake_gateway(vec![Reply::StallHeaders], &[]).await;
        let body = json!({ "messages": user("x"), "stream": stream });
        let tcp = raw_post(gw.addr, &body).await;
        assert!(fake.wait_attempts(1, WAIT).await);
        drop(tcp);
        assert!(
            fake.wait_client_disconnect(Duration::from_secs(1)).await,
            "stream={stream}: the upstream request was not dropped within 1 s"
        );
        gw.stop(false).await;
    }
}

// ---------------------------------------------------------------------------
// real clients: curl and the official openai Python package
// ---------------------------------------------------------------------------

/// The repository root (found from this file, so the test also works when
/// compiled from another package through `#[path]`).
fn repo() -> PathBuf {
    let file = Path::new(file!());
    let here = if file.is_absolute() {
        file.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
    };
    here.ancestors()
        .nth(3)
        .expect("tests/suite/openai_api.rs has a repository root")
        .to_path_buf()
}

/// Runs `program args…` under `timeout` off the test's runtime thread.
async fn run(program: String, args: Vec<String>, secs: u32) -> std::process::Output {
    let shown = format!("{program} {}", args.join(" "));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg("--kill-after=5")
            .arg(secs.to_string())
            .arg(&program)
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// The stdout of a finished program, after checking that it succeeded.
fn stdout_of_success(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[actix_web::test]
async fn curl_streams_it() {
    let (_fake, gw) = fake_gateway(vec![Reply::echo(ms(5))], &[]).await;
    let message = "streamed through curl";
    let body = json!({ "model": "gpt-4", "messages": user(message), "stream": true });
    let out = run(
        "curl".into(),
        vec![
            "-sN".into(),
            "--fail-with-body".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "-d".into(),
            body.to_string(),
            format!("http://{}/v1/chat/completions", gw.addr),
        ],
        20,
    )
    .await;
    let stdout = stdout_of_success(&out, "curl");
    let data = sse_data(&stdout);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(content(&chunks_of(&data, "gpt-4")), message);
    gw.stop(false).await;
}

#[actix_web::test]
async fn official_openai_python_client() {
    let python = repo().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/install-deploy-deps.sh` first (it creates the venv \
         with the official `openai` package)",
        python.display()
    );
    let (_fake, gw) = fake_gateway(
        vec![Reply::echo(ms(2))],
        &["--auth-tokens", "sk-netfly-test"],
    )
    .await;
    let message = "Hello from the official openai client";
    let out = run(
        python.display().to_string(),
        vec![
            repo().join("deploy/openai-smoke.py").display().to_string(),
            format!("http://{}/v1", gw.addr),
            "sk-netfly-test".into(),
            message.into(),
        ],
        60,
    )
    .await;
    let stdout = stdout_of_success(&out, "openai client");
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}"));
    assert_eq!(v["models"], json!(["gpt-3.5-turbo", "gpt-4"]), "{v}");
    let parts: Vec<&str> = v["stream"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(parts.concat(), message, "{v}");
    assert_eq!(
        parts.len(),
        message.split(' ').count(),
        "one chunk per word: {v}"
    );
    assert_eq!(v["stream"]["finish_reason"], "stop", "{v}");
    assert_eq!(v["stream"]["ids"], 1, "{v}");
    assert_eq!(v["whole"]["object"], "chat.completion", "{v}");
    assert_eq!(v["whole"]["content"], message, "{v}");
    assert_eq!(v["whole"]["role"], "assistant", "{v}");
    assert_eq!(v["whole"]["finish_reason"], "stop", "{v}");
    assert_eq!(
        v["unknown_model"],
        json!({ "status": 400, "code": "unknown_model" }),
        "{v}"
    );
    assert_eq!(
        v["wrong_key"],
        json!({ "status": 401, "code": "invalid_api_key" }),
        "{v}"
    );
    let m = gw.metrics();
    assert_eq!(m.chats_total.with_label_values(&["done"]).get(), 2, "{v}");
    assert_eq!(m.chats_active.get(), 0);
    gw.stop(false).await;
}

/// `/v1` spends the same per-minute chat budget as `/ws`, also for an
/// address that holds no WebSocket (issue 9: the copies had drifted and
/// `/v1` never spent it then).
#[actix_web::test]
async fn v1_spends_the_per_minute_budget_without_a_websocket() {
    let (fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &flags("--max-chats-per-minute-per-ip 2"),
    )
    .await;
    for _ in 0..2 {
        let a = post_x(gw.addr, false).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let third = post_x(gw.addr, true).await;
    let err = third.expect_error(429, "busy");
    assert!(message_of(&err["error"]).contains("per minute"), "{err}");
    assert_eq!(
        fake.attempts(),
        2,
        "a refused chat never reaches the upstream"
    );
    // The budget is the address's, shared with its WebSockets.
    let mut ws = WsClient::connect(gw.addr).await;
    ws.send_chat("w1", "hi").await;
    let frames = ws.chat_until_terminal("w1", WAIT).await;
    assert_eq!(expect_error(&frames, "busy")["retryable"], true);
    gw.stop(false).await;
}

/// `/v1` is held to the concurrency limits that bound `/ws`: chats in flight
/// per address (`--max-connections-per-ip` × streams) and in total
/// (`--max-connections` × streams); a finished chat frees its place.
#[actix_web::test]
async fn v1_obeys_the_per_address_and_total_chat_limits() {
    let stalled = Reply::sse(vec![Part::Bytes(event(&chunk("held ")))]).with_end(End::Stall);
    for limits in [
        "--max-connections-per-ip 1 --max-streams-per-connection 2",
        "--max-connections 1 --max-streams-per-connection 2",
    ] {
        let (fake, gw) = fake_gateway(vec![stalled.clone()], &flags(limits)).await;
        let body = json!({ "messages": user("x"), "stream": true });
        let (first, _) = raw_post_until(gw.addr, &body, "held ").await;
        let (second, _) = raw_post_until(gw.addr, &body, "held ").await;
        let third = post_x(gw.addr, true).await;
        let err = third.expect_error(429, "busy");
        assert!(
            message_of(&err["error"]).contains("in flight"),
            "{limits}: {err}"
        );
        assert_eq!(
            fake.attempts(),
            2,
            "{limits}: the third chat reached the upstream"
        );
        drop(first);
        assert!(fake.wait_client_disconnect(Duration::from_secs(1)).await);
        let m = gw.metrics();
        assert!(
            poll_until(Duration::from_secs(2), ms(5), || m.chats_active.get() == 1).await,
            "{limits}: the first chat's place was not freed"
        );
        let (_fourth, _) = raw_post_until(gw.addr, &body, "held ").await;
        drop(second);
        gw.stop(false).await;
    }
}

// ---------------------------------------------------------------------------
// A faithful proxy (PROTOCOL.md §7, issue 12)
// ---------------------------------------------------------------------------

/// A realistic tool-call stream, in the shape OpenAI documents for
/// streamed function calling (platform.openai.com/docs/guides/function-calling,
/// "Streaming"): a role chunk whose delta opens the call with its id and
/// name, then the arguments split across many chunks, `finish_reason`
/// `tool_calls`, and, with `stream_options.include_usage`, a last chunk with
/// empty `choices` and the usage. Each chunk carries `logprobs: null` and
/// the upstream's own model name, as OpenAI's do.
fn tool_call_chunks() -> Vec<Value> {
    let base = |choices: Value| {
        json!({ "id": "chatcmpl-up1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": "vendor-fast-001", "system_fingerprint": "fp_44709d6fcb", "choices": choices })
    };
    let args = [
        "{\"",
        "city",
        "\":\"",
        "Par",
        "is",
        "\",\"",
        "unit",
        "\":\"c\"}",
    ];
    let mut out = vec![base(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": null,
        "tool_calls": [{ "index": 0, "id": "call_abc123", "type": "function",
        "function": { "name": "get_weather", "arguments": "" } }] }, "logprobs": null, "finish_reason": null }]),
    )];
    for a in args {
        out.push(base(
            json!([{ "index": 0, "delta": { "tool_calls": [{ "index": 0,
            "function": { "arguments": a } }] }, "logprobs": null, "finish_reason": null }]),
        ));
    }
    out.push(base(
        json!([{ "index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls" }]),
    ));
    let mut usage_chunk = base(json!([]));
    usage_chunk["usage"] =
        json!({ "prompt_tokens": 81, "completion_tokens": 19, "total_tokens": 100 });
    out.push(usage_chunk);
    out
}

/// Content with logprobs and reasoning (the `reasoning_content` shape of
/// DeepSeek / vLLM), as one more realistic stream.
fn reasoning_and_logprobs_chunks() -> Vec<Value> {
    let base = |delta: Value, logprobs: Value, finish: Value| {
        json!({ "id": "chatcmpl-up2", "object": "chat.completion.chunk", "created": 1_700_000_001,
                "model": "vendor-fast-001",
                "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }] })
    };
    vec![
        base(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
            Value::Null,
        ),
        base(
            json!({ "content": null, "reasoning_content": "Greet back." }),
            Value::Null,
            Value::Null,
        ),
        base(
            json!({ "content": "Hel" }),
            json!({ "content": [{ "token": "Hel", "logprob": -0.01, "bytes": [72, 101, 108],
                "top_logprobs": [{ "token": "Hel", "logprob": -0.01, "bytes": [72, 101, 108] }] }], "refusal": null }),
            Value::Null,
        ),
        base(
            json!({ "content": "lo" }),
            json!({ "content": [{ "token": "lo", "logprob": -0.2, "bytes": [108, 111], "top_logprobs": [] }], "refusal": null }),
            Value::Null,
        ),
        base(json!({}), Value::Null, json!("stop")),
    ]
}

fn stream_reply(chunks: &[Value]) -> Reply {
    let mut parts: Vec<Part> = chunks.iter().map(|c| Part::Bytes(event(c))).collect();
    parts.push(Part::Bytes(done_event()));
    Reply::sse(parts)
}

/// A gateway whose model "fast" is the fake's "vendor-fast-001" (so that
/// the mapping both ways shows).
async fn mapped_gateway(
    script: Vec<Reply>,
) -> (
    FakeUpstream,
    netfly::Gateway,
    crate::support::temp_file::TempFile,
) {
    init();
    let fake = FakeUpstream::start(script);
    let file = crate::support::temp_file::write_file(&format!(
        "[[upstream]]\nname = \"p\"\nurl = \"{}\"\n[upstream.models]\nfast = \"vendor-fast-001\"\n",
        fake.url()
    ));
    let gw = start_gateway(&["--config", file.path()]).await;
    (fake, gw, file)
}

/// Every request field beyond `model` reaches the upstream unchanged:
/// tools, tool_choice, response_format, stream_options, logprobs, n, tool
/// messages, assistant tool calls, content parts, reasoning_effort, …
#[actix_web::test]
async fn v1_request_fields_are_forwarded_unchanged() {
    let (fake, gw, _file) = mapped_gateway(vec![stream_reply(&tool_call_chunks())]).await;
    let body = json!({
        "model": "fast",
        "stream": true,
        "stream_options": { "include_usage": true },
        "messages": [
            { "role": "developer", "content": "Use the tools." },
            { "role": "user", "content": [{ "type": "text", "text": "Weather in Paris?" },
                { "type": "image_url", "image_url": { "url": "https://example.com/map.png", "detail": "high" } }] },
            { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_0", "type": "function",
                "function": { "name": "get_time", "arguments": "{}" } }] },
            { "role": "tool", "tool_call_id": "call_0", "content": "12:00" }
        ],
        "tools": [{ "type": "function", "function": { "name": "get_weather", "description": "Weather",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } }],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "response_format": { "type": "text" },
        "logprobs": true,
        "top_logprobs": 2,
        "n": 1,
        "reasoning_effort": "low",
        "max_completion_tokens": 256,
        "user": "u-42",
        "logit_bias": { "50256": -100 },
        "metadata": { "trace": "t1" },
        "temperature": 0.2
    });
    let a = post(gw.addr, &body, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut expected = body.clone();
    expected["model"] = json!("vendor-fast-001");
    assert_eq!(
        fake.request(0).json(),
        &expected,
        "the upstream got the body as sent"
    );
    gw.stop(false).await;
}

/// Streamed chunks reach the client as the upstream sent them (tool call
/// fragments, logprobs, reasoning fields, the usage chunk with empty
/// choices), only `model` mapped back; `[DONE]` ends the stream.
#[actix_web::test]
async fn v1_streamed_chunks_are_forwarded_with_everything_in_them() {
    for chunks in [tool_call_chunks(), reasoning_and_logprobs_chunks()] {
        let (_fake, gw, _file) = mapped_gateway(vec![stream_reply(&chunks)]).await;
        let body = json!({ "model": "fast", "messages": user("x"), "stream": true,
            "stream_options": { "include_usage": true }, "logprobs": true });
        let a = post(gw.addr, &body, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let data = sse_data(&a.body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let got: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("chunk JSON"))
            .collect();
        let want: Vec<Value> = chunks
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["model"] = json!("fast");
                c
            })
            .collect();
        assert_eq!(got, want);
        gw.stop(false).await;
    }
}

/// A whole (non-streamed) completion is forwarded as the upstream sent it,
/// tool calls and all, only `model` mapped back.
#[actix_web::test]
async fn v1_whole_completion_is_forwarded_unchanged() {
    let completion = json!({
        "id": "chatcmpl-whole", "object": "chat.completion", "created": 1_700_000_002,
        "model": "vendor-fast-001", "system_fingerprint": "fp_1",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{ "id": "call_9", "type": "function",
                "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }] },
            "logprobs": null, "finish_reason": "tool_calls" }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12 }
    });
    let (fake, gw, _file) = mapped_gateway(vec![Reply::json(200, &completion)]).await;
    let a = post(
        gw.addr,
        &json!({ "model": "fast", "messages": user("x"), "stream": false }),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut want = completion.clone();
    want["model"] = json!("fast");
    assert_eq!(a.json(), want);
    assert_eq!(fake.request(0).json()["stream"], false);
    gw.stop(false).await;
}

/// The provider's `include_usage` is for WebSocket chats: a `/v1` client
/// that did not ask for the usage chunk never gets one (nor asks for it).
#[actix_web::test]
async fn v1_never_gets_a_usage_chunk_it_did_not_ask_for() {
    init();
    let fake = FakeUpstream::start(vec![Reply::sse_words(&["a", "b"])]);
    let file = crate::support::temp_file::write_file(&format!(
        "[[upstream]]\nname = \"p\"\nurl = \"{}\"\ninclude_usage = true\n",
        fake.url()
    ));
    let gw = start_gateway(&["--config", file.path()]).await;
    let a = post_x(gw.addr, true).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(fake.request(0).json().get("stream_options").is_none());
    gw.stop(false).await;
}

/// The official `openai` Python package against a tool-call stream and a
/// reasoning stream: the tool call accumulates to the right name and JSON
/// arguments with `finish_reason` `tool_calls` and the usage chunk; the
/// reasoning is visible on the delta.
#[actix_web::test]
async fn official_openai_client_sees_tool_calls_usage_and_reasoning() {
    let python = repo().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/install-deploy-deps.sh` first",
        python.display()
    );
    let (_fake, gw, _file) = mapped_gateway(vec![
        stream_reply(&tool_call_chunks()),
        stream_reply(&reasoning_and_logprobs_chunks()),
    ])
    .await;
    let out = run(
        python.display().to_string(),
        vec![
            repo().join("deploy/openai-tools.py").display().to_string(),
            format!("http://{}/v1", gw.addr),
        ],
        60,
    )
    .await;
    let stdout = stdout_of_success(&out, "openai client");
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}"));
    assert_eq!(v["tool"]["name"], "get_weather", "{v}");
    assert_eq!(v["tool"]["id"], "call_abc123", "{v}");
    assert_eq!(
        serde_json::from_str::<Value>(v["tool"]["arguments"].as_str().unwrap()).unwrap(),
        json!({ "city": "Paris", "unit": "c" }),
        "{v}"
    );
    assert_eq!(v["tool"]["finish_reason"], "tool_calls", "{v}");
    assert_eq!(v["tool"]["usage"]["total_tokens"], 100, "{v}");
    assert_eq!(v["tool"]["model"], "fast", "{v}");
    assert_eq!(v["reasoning"]["reasoning"], "Greet back.", "{v}");
    assert_eq!(v["reasoning"]["content"], "Hello", "{v}");
    assert_eq!(
        v["reasoning"]["logprob_tokens"],
        json!(["Hel", "lo"]),
        "{v}"
    );
    gw.stop(false).await;
}

/// A non-streamed `/v1` answer assembled from a streamed upstream is held
/// to `--max-upstream-body-bytes` like a whole body; past it the client gets
/// `upstream_broken` and the upstream request is dropped.
#[actix_web::test]
async fn v1_assembled_answer_is_bounded() {
    let big: Vec<String> = (0..50)
        .map(|i| format!("{i:03}{}", "y".repeat(997)))
        .collect();
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let mut reply = Reply::sse_words(&refs);
    if let Reply::Sse { end, .. } = &mut reply {
        *end = End::Stall;
    }
    let (fake, gw) = fake_gateway(vec![reply], &flags("--max-upstream-body-bytes 20000")).await;
    let a = post_x(gw.addr, false).await;
    let v = a.expect_error(502, "upstream_broken");
    assert!(
        message_of(&v["error"]).contains("--max-upstream-body-bytes"),
        "{v}"
    );
    fake.expect_client_disconnect("an assembled answer past its bound")
        .await;
    gw.stop(false).await;
}
