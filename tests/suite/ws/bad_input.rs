//! Bad client frames and the input limits (PROTOCOL §3.1): every kind of
//! bad frame is answered with an error and the socket survives; values at
//! the edge of every limit are accepted and forwarded; a frame over
//! `--max-frame-bytes` closes the socket with 1009.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

enum Input {
    Text(String),
    Binary,
}

/// A valid chat frame with `changes` applied (`null` removes a key).
fn chat_with(changes: Value) -> Input {
    let mut frame = json!({
        "type": "chat", "id": "bad-1",
        "messages": [{ "role": "user", "content": "hi" }]
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            frame.as_object_mut().unwrap().remove(k);
        } else {
            frame[k] = v.clone();
        }
    }
    Input::Text(frame.to_string())
}

fn with_params(params: Value) -> Input {
    chat_with(json!({ "params": params }))
}

fn with_message(message: Value) -> Input {
    chat_with(json!({ "messages": [message] }))
}

fn user_messages(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "role": "user", "content": format!("m{i}") }))
            .collect(),
    )
}

/// (label, input, expected code, whether `"id": null` is required).
type BadInput = (&'static str, Input, &'static str, bool);

/// A `bad_request` whose error may carry the chat's id or null.
fn bad(label: &'static str, input: Input) -> BadInput {
    (label, input, "bad_request", false)
}

/// A `bad_request` whose error must carry `"id": null`.
fn bad_id(label: &'static str, input: Input) -> BadInput {
    (label, input, "bad_request", true)
}

fn bad_inputs() -> Vec<BadInput> {
    let text = |s: &str| Input::Text(s.to_string());
    let mut cases = vec![
        bad_id("malformed JSON", text("{not json")),
        bad_id("empty text", text("")),
        bad_id("JSON array", text("[1,2,3]")),
        bad_id("JSON string", text("\"chat\"")),
    ];
    // (label, changes to a valid chat frame, whether `"id": null` is required)
    let frame_changes = [
        ("missing type", json!({ "type": null }), false),
        ("unknown type", json!({ "type": "bogus" }), false),
        ("type not a string", json!({ "type": 7 }), false),
        ("missing id", json!({ "id": null }), true),
        ("id too long", json!({ "id": "x".repeat(65) }), true),
        ("empty id", json!({ "id": "" }), true),
        ("control char in id", json!({ "id": "a\u{7}b" }), true),
        ("non-ASCII id", json!({ "id": "héllo" }), true),
        ("numeric id", json!({ "id": 42 }), true),
        ("model not a string", json!({ "model": 7 }), false),
        ("no messages", json!({ "messages": [] }), false),
        (
            "257 messages",
            json!({ "messages": user_messages(257) }),
            false,
        ),
        ("messages missing", json!({ "messages": null }), false),
        ("messages a string", json!({ "messages": "hi" }), false),
        (
            "message not an object",
            json!({ "messages": ["hi"] }),
            false,
        ),
        ("params not an object", json!({ "params": "hot" }), false),
    ];
    for (label, changes, id_null) in frame_changes {
        cases.push((label, chat_with(changes), "bad_request", id_null));
    }
    cases.push((
        "unknown model",
        chat_with(json!({ "model": "gpt-5-ultra" })),
        "unknown_model",
        false,
    ));
    let messages = [
        ("bad role", json!({ "role": "tool", "content": "x" })),
        ("missing role", json!({ "content": "x" })),
        ("number content", json!({ "role": "user", "content": 5 })),
        ("null content", json!({ "role": "user", "content": null })),
        ("missing content", json!({ "role": "user" })),
        // Content arrays are allowed (§3.1); these are not.
        (
            "empty content array",
            json!({ "role": "user", "content": [] }),
        ),
        (
            "unknown content part",
            json!({ "role": "user", "content": [{ "type": "audio", "audio": {} }] }),
        ),
        (
            "http image URL",
            json!({ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "http://x.example/a.png" } }] }),
        ),
        (
            "unknown message field",
            json!({ "role": "user", "content": "x", "tools": [] }),
        ),
    ];
    cases.extend(messages.map(|(label, m)| bad(label, with_message(m))));
    let params = [
        ("unknown param", json!({ "foo": 1 })),
        ("param stream", json!({ "stream": false })),
        ("param model", json!({ "model": "gpt-4" })),
        ("temperature > 2", json!({ "temperature": 2.5 })),
        ("temperature < 0", json!({ "temperature": -0.1 })),
        ("temperature a string", json!({ "temperature": "hot" })),
        ("top_p > 1", json!({ "top_p": 1.5 })),
        ("top_p < 0", json!({ "top_p": -0.1 })),
        ("presence_penalty < -2", json!({ "presence_penalty": -2.5 })),
        ("presence_penalty > 2", json!({ "presence_penalty": 2.1 })),
        ("frequency_penalty > 2", json!({ "frequency_penalty": 3 })),
        ("frequency_penalty < -2", json!({ "frequency_penalty": -3 })),
        ("max_tokens 0", json!({ "max_tokens": 0 })),
        ("max_tokens negative", json!({ "max_tokens": -1 })),
        ("max_tokens fractional", json!({ "max_tokens": 1.5 })),
        ("max_tokens a string", json!({ "max_tokens": "10" })),
        (
            "stop with 5 strings",
            json!({ "stop": ["a", "b", "c", "d", "e"] }),
        ),
        ("stop a number", json!({ "stop": 7 })),
        ("stop with a number", json!({ "stop": ["a", 1] })),
        ("seed fractional", json!({ "seed": 1.5 })),
        ("seed a string", json!({ "seed": "x" })),
    ];
    cases.extend(params.map(|(label, p)| bad(label, with_params(p))));
    cases.push(bad_id("cancel without id", text("{\"type\":\"cancel\"}")));
    cases.push(bad_id("binary frame", Input::Binary));
    cases
}

#[actix_web::test]
async fn every_bad_input_is_answered_and_the_socket_survives() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(Duration::ZERO)], &[]).await;
    let cases = bad_inputs();
    let mut valid = 0;
    for (i, (label, input, code, id_null)) in cases.into_iter().enumerate() {
        match &input {
            Input::Text(t) => ws.send_text(t).await,
            Input::Binary => ws.send_binary(b"\x00\x01binary").await,
        }
        let err = ws
            .next_json(WAIT)
            .await
            .unwrap_or_else(|| panic!("{label}: no answer (socket closed: {})", ws.is_closed()));
        assert_eq!(err["type"], "error", "{label}: {err}");
        assert_eq!(err["code"], code, "{label}: {err}");
        assert_eq!(err["retryable"], false, "{label}: {err}");
        assert!(err["message"].is_string(), "{label}: {err}");
        if id_null {
            assert!(err["id"].is_null(), "{label}: id must be null: {err}");
        } else {
            assert!(
                err["id"].is_null() || err["id"] == "bad-1",
                "{label}: id must be null or the chat's: {err}"
            );
        }
        // The socket still works.
        let id = format!("ok-{i}");
        let text = format!("still fine after {label}");
        let frames = ws.chat(&id, &text, WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), text, "{label}");
        valid += 1;
        assert!(
            ws.backlog().is_empty(),
            "{label}: stray frames {:?}",
            ws.backlog()
        );
    }
    ws.expect_no_frame(QUIET).await;
    assert_eq!(fake.attempts(), valid, "no bad input reached the upstream");
    gw.stop(false).await;
}

/// The edges of every limit are accepted and forwarded.
#[actix_web::test]
async fn inputs_at_the_limits_are_accepted() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::sse_words(&["ok"])], &[]).await;
    let long_id: String = (0..64).map(|i| (b' ' + (i % 95) as u8) as char).collect();
    assert_eq!(long_id.len(), 64);
    let cases = vec![
        json!({ "id": long_id.clone() }),
        json!({ "id": "~" }),
        json!({ "messages": user_messages(256) }),
        json!({ "model": "gpt-4" }),
        json!({ "messages": [
            { "role": "system", "content": "" },
            { "role": "assistant", "content": "a" },
            { "role": "user", "content": "b" }
        ] }),
        json!({ "params": { "temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": -2 } }),
        json!({ "params": { "temperature": 2, "top_p": 1, "presence_penalty": 2, "frequency_penalty": 2 } }),
        json!({ "params": { "max_tokens": 1, "stop": "x", "seed": -5 } }),
        json!({ "params": { "stop": ["a", "b", "c", "d"], "seed": 0 } }),
        json!({ "params": {} }),
    ];
    for (n, changes) in cases.iter().enumerate() {
        let id = changes["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("edge-{n}"));
        let mut frame = json!({
            "type": "chat", "id": id,
            "messages": [{ "role": "user", "content": "hi" }]
        });
        for (k, v) in changes.as_object().unwrap() {
            frame[k] = v.clone();
        }
        ws.send_json(&frame).await;
        let frames = ws.chat_until_terminal(&id, WAIT).await;
        expect_done(&frames);
        let req = fake.request(n);
        let body = req.json();
        assert_eq!(body["messages"], frame["messages"], "case {n}");
        if let Some(params) = changes.get("params") {
            for (k, v) in params.as_object().unwrap() {
                assert_close(&body[k], v, k);
            }
        }
    }
    gw.stop(false).await;
}

#[actix_web::test]
async fn frame_over_max_frame_bytes_closes_1009() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::echo(Duration::ZERO)],
        &["--max-frame-bytes", "1024"],
    )
    .await;
    // Just under the limit is fine.
    let text = "y".repeat(900);
    let frame = chat_frame("small", &text).to_string();
    assert!(frame.len() <= 1024);
    ws.send_text(&frame).await;
    let frames = ws.chat_until_terminal("small", WAIT).await;
    assert_eq!(content_of(&frames), text);
    // Over it closes the socket with 1009.
    let big = chat_frame("big", &"z".repeat(4096)).to_string();
    ws.try_send_text(&big).await;
    assert!(ws.wait_closed(ms(3000)).await, "socket not closed");
    assert_eq!(ws.close_code(), Some(1009));
    assert_eq!(fake.attempts(), 1);
    gw.stop(false).await;
}
