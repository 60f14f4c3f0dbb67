//! The upstream API key never reaches a browser (PROTOCOL §1 `--api-key`,
//! §4): whatever way an upstream echoes it back (status bodies, in-stream
//! errors, invalid data, retry reasons), it is replaced by `[redacted]`.

use crate::support::fake::{chunk, ev, event, openai_error};
use crate::support::*;

#[actix_web::test]
async fn upstream_401_never_leaks_the_key() {
    let key = "sk-live-SECRET-0123456789abcdef";
    let msg = format!(
        "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let script = vec![Reply::error_json(401, &msg).with_header("x-echo-key", key)];
    let args = ["--api-key", key, "--max-attempts", "5"];
    let (fake, gw, mut ws) = fake_gateway_client(script, &args).await;
    let hello = ws.hello().clone();
    let frames = ws.chat("k1", "hi", WAIT).await;
    ws.expect_silence_for("k1", QUIET).await;
    gw.stop(false).await;

    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(
        message_of(err).contains("Incorrect API key provided"),
        "the upstream's message is passed on: {err}"
    );
    let everything = format!("{hello}{}", serde_json::to_string(&frames).unwrap());
    assert!(
        !everything.contains(key),
        "API key leaked to the browser: {everything}"
    );
    assert!(!everything.contains("SECRET-0123456789"), "{everything}");
    assert_eq!(fake.attempts(), 1);
    assert_eq!(
        fake.request(0).header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
}

/// Retry reasons and the final error never carry the key either, even when
/// a 5xx body echoes it.
#[actix_web::test]
async fn upstream_5xx_echoing_the_key_never_leaks_it() {
    let key = "sk-live-SECRET-fedcba9876543210";
    let (frames, fake) = run_chat(
        vec![Reply::error_json(
            503,
            &format!("backend down for key {key}"),
        )],
        &["--api-key", key, "--max-attempts", "3"],
    )
    .await;
    expect_error(&frames, "upstream_unavailable");
    assert_eq!(fake.attempts(), 3);
    let everything = serde_json::to_string(&frames).unwrap();
    assert!(
        !everything.contains("SECRET-fedcba9876543210"),
        "API key leaked to the browser: {everything}"
    );
}

const KEY: &str = "sk-proj-LEAKCHECK-9f8e7d6c5b4a3210";

/// Every way an upstream can echo the key back, chosen by the message text.
fn echoing_the_key() -> Reply {
    Reply::dynamic(|req| {
        let msg = format!("Incorrect API key provided: {KEY}; check {KEY}");
        let err_event = event(&openai_error(&msg));
        match req.last_message().as_str() {
            "status401" => Reply::error_json(401, &msg),
            "status500" => Reply::error_json(500, &msg),
            "plain500" => Reply::body(500, "text/plain", msg.as_bytes()),
            "mid" => Reply::sse(vec![ev(&chunk("Hel")), Part::Bytes(err_event)]),
            "first" => Reply::sse(vec![Part::Bytes(err_event)]),
            "field" => Reply::sse(vec![
                ev(&chunk("Hel")),
                Part::bytes(format!("error: {msg}\n\n")),
            ]),
            "named" => Reply::sse(vec![
                ev(&chunk("Hel")),
                Part::bytes(format!("event: error\ndata: {msg}\n\n")),
            ]),
            "garbage" => Reply::sse(vec![
                ev(&chunk("Hel")),
                Part::bytes(format!("data: not json {KEY}\n\n")),
            ]),
            "whole" => Reply::json(200, &openai_error(&msg)),
            other => panic!("unexpected message {other:?}"),
        }
    })
}

#[actix_web::test]
async fn api_key_echoed_by_the_upstream_is_redacted_everywhere() {
    let args = ["--api-key", KEY, "--max-attempts", "2"];
    let (fake, gw, mut ws) = fake_gateway_client(vec![echoing_the_key()], &args).await;
    let cases = [
        ("status401", "upstream_rejected", true),
        ("status500", "upstream_unavailable", true),
        ("plain500", "upstream_unavailable", true),
        ("mid", "upstream_broken", true),
        ("first", "upstream_broken", true),
        ("field", "upstream_broken", true),
        ("named", "upstream_broken", true),
        ("garbage", "upstream_broken", true),
        ("whole", "upstream_rejected", true),
    ];
    let mut everything = ws.hello().to_string();
    for (i, (what, code, says_redacted)) in cases.iter().enumerate() {
        let id = format!("k{i}");
        let frames = ws.chat(&id, what, WAIT).await;
        let text = serde_json::to_string(&frames).unwrap();
        everything.push_str(&text);
        assert!(
            !text.contains("LEAKCHECK"),
            "{what}: the API key reached the browser: {text}"
        );
        let err = expect_error(&frames, code);
        if *says_redacted {
            assert!(
                err["message"].as_str().unwrap().contains("[redacted]"),
                "{what}: the echoed key is replaced by [redacted]: {err}"
            );
        }
    }
    assert!(!everything.contains(KEY));
    // Every attempt did carry the key upstream.
    for req in fake.requests() {
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }
    gw.stop(false).await;
}
