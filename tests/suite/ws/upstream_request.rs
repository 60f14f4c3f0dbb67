//! The request the gateway sends upstream for a chat (PROTOCOL §4): method,
//! path, headers, the API key, and a body with exactly the forwardable
//! fields.

use serde_json::json;

use crate::support::fake::CHAT_PATH;
use crate::support::*;

const FORWARDABLE: &[&str] = &[
    "model",
    "messages",
    "stream",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "stop",
    "seed",
];

#[actix_web::test]
async fn upstream_request_has_body_params_and_headers() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::sse_words(&["ok"])],
        &["--api-key", "sk-test-abc123"],
    )
    .await;
    let messages = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Hi ✓" },
        { "role": "assistant", "content": "Hello!" },
        { "role": "user", "content": "Again" }
    ]);
    let params = json!({
        "temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.5,
        "frequency_penalty": -1.25, "max_tokens": 10, "stop": ["\n\n", "END"], "seed": 42
    });
    ws.send_json(&json!({
        "type": "chat", "id": "p1", "model": "gpt-4", "messages": messages, "params": params
    }))
    .await;
    let frames = ws.chat_until_terminal("p1", WAIT).await;
    expect_done(&frames);
    gw.stop(false).await;

    assert_eq!(fake.attempts(), 1);
    let req = fake.request(0);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, CHAT_PATH);
    let ct = req.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let accept = req.header("accept").unwrap_or_default();
    assert!(accept.contains("text/event-stream"), "accept {accept:?}");
    assert!(
        !req.header("user-agent").unwrap_or_default().is_empty(),
        "user-agent missing: {:?}",
        req.headers
    );
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-abc123"));

    let body = req.json();
    assert_eq!(body["model"], "gpt-4");
    assert_eq!(body["messages"], messages);
    assert_eq!(body["stream"], true);
    for (k, v) in params.as_object().unwrap() {
        assert_close(&body[k], v, k);
    }
    for k in body.as_object().unwrap().keys() {
        assert!(
            FORWARDABLE.contains(&k.as_str()),
            "unexpected key {k:?} in upstream body {body}"
        );
    }
}

#[actix_web::test]
async fn upstream_request_without_key_or_params() {
    let (frames, fake) = run_chat(vec![Reply::sse_words(&["ok"])], &[]).await;
    expect_done(&frames);
    let req = fake.request(0);
    assert_eq!(req.header("authorization"), None, "{:?}", req.headers);
    let body = req.json();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["messages", "model", "stream"], "{body}");
    assert_eq!(body["model"], "gpt-3.5-turbo");
    assert_eq!(
        body["messages"],
        json!([{ "role": "user", "content": "hello" }])
    );
    assert_eq!(body["stream"], true);
}
