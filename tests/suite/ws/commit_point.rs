//! Stream failures and the commit point (PROTOCOL §4): before the first
//! delta a failed attempt is retried; after it, a cut, an in-stream error or
//! invalid data ends the chat with `upstream_broken` and no text is
//! repeated or invented.

use serde_json::json;

use crate::support::fake::{chunk, done_part, ev, event, finish_chunk, openai_error};
use crate::support::*;

#[actix_web::test]
async fn cut_after_a_delta_is_broken_without_repeat() {
    let cut = Reply::sse(vec![ev(&chunk("Hel")), Part::Delay(ms(100))]).with_end(End::Cut);
    let (frames, fake) = run_chat(
        vec![cut, Reply::sse_words(&["SHOULD NOT APPEAR"])],
        &["--max-attempts", "5"],
    )
    .await;
    let err = expect_error(&frames, "upstream_broken");
    assert_eq!(err["retryable"], true);
    assert_eq!(content_of(&frames), "Hel", "no text twice, none invented");
    assert_eq!(fake.attempts(), 1, "never retried after the commit point");
}

#[actix_web::test]
async fn cut_before_any_delta_is_retried() {
    let cut = Reply::sse(vec![Part::bytes(": hi\n\n")]).with_end(End::Cut);
    ok_on_the_second_attempt(cut, &["--max-attempts", "3"]).await;
}

#[actix_web::test]
async fn in_stream_error_after_a_delta_is_broken_with_its_message() {
    let script = vec![Reply::sse(vec![
        ev(&chunk("Hel")),
        ev(&openai_error(
            "The server had an error while processing your request",
        )),
        ev(&chunk("lo")),
        done_part(),
    ])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "5"]).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(message_of(err).contains("The server had an error"), "{err}");
    assert_eq!(content_of(&frames), "Hel");
    assert_eq!(fake.attempts(), 1);
}

/// The four shapes of an in-stream error (§4), each after a delta.
#[actix_web::test]
async fn in_stream_error_shapes_are_all_errors() {
    let script = vec![Reply::dynamic(|req| {
        let which = req.last_message();
        let error: Vec<u8> = match which.as_str() {
            "named-event" => b"event: error\ndata: {\"message\":\"boom-named-event\"}\n\n".to_vec(),
            "error-key" => event(&json!({ "error": { "message": "boom-error-key", "type": "server_error" } })),
            "object-error" => event(&json!({
                "object": "error", "message": "boom-object-error", "type": "BadRequestError", "code": 400
            })),
            "error-field" => {
                b"error: {\"code\":500,\"message\":\"boom-error-field\",\"type\":\"server_error\"}\n\n"
                    .to_vec()
            }
            other => panic!("unexpected test message {other:?}"),
        };
        Reply::sse(vec![
            ev(&chunk("Hel")),
            Part::Bytes(error),
            ev(&chunk("lo")),
            done_part(),
        ])
    })];
    let (fake, gw, mut ws) = fake_gateway_client(script, &[]).await;
    for which in ["named-event", "error-key", "object-error", "error-field"] {
        let frames = ws.chat(which, which, WAIT).await;
        let err = expect_error(&frames, "upstream_broken");
        assert!(
            message_of(err).contains(&format!("boom-{which}")),
            "{which}: {err}"
        );
        assert_eq!(content_of(&frames), "Hel", "{which}");
    }
    assert_eq!(fake.attempts(), 4);
    gw.stop(false).await;
}

#[actix_web::test]
async fn in_stream_error_before_any_delta_is_retried() {
    let script = vec![
        Reply::sse(vec![
            ev(&openai_error("overloaded, try again")),
            done_part(),
        ]),
        Reply::sse_words(&["fine"]),
    ];
    let (frames, fake) = run_chat(script, &["--max-attempts", "3"]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "fine");
    assert_eq!(fake.attempts(), 2);
    assert_eq!(retry_attempts(&frames), vec![2]);
    assert_eq!(of_type(&frames, "start").len(), 1, "start at most once");
}

#[actix_web::test]
async fn in_stream_error_before_any_delta_on_the_last_attempt_carries_its_message() {
    let script = vec![Reply::sse(vec![ev(&openai_error("overloaded, try again"))])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "1"]).await;
    let err = terminal(&frames);
    assert_eq!(err["type"], "error", "{frames:#?}");
    assert!(
        matches!(
            err["code"].as_str(),
            Some("upstream_broken" | "upstream_unavailable")
        ),
        "{err}"
    );
    assert!(
        message_of(err).contains("overloaded"),
        "carries the upstream's message: {err}"
    );
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn invalid_json_data_after_a_delta_is_an_error() {
    let script = vec![Reply::sse(vec![
        ev(&chunk("Hel")),
        Part::bytes("data: {\"choices\":[{\"delta\":{\"content\":\"lo\"\n\n"),
        ev(&chunk(" world")),
        ev(&finish_chunk("stop")),
        done_part(),
    ])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "3"]).await;
    expect_error(&frames, "upstream_broken");
    assert_eq!(content_of(&frames), "Hel", "{frames:#?}");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn invalid_json_data_before_any_delta_fails_the_attempt() {
    let bad = Reply::sse(vec![Part::bytes("data: not json at all\n\n"), done_part()]);
    // Retried when attempts remain...
    ok_on_the_second_attempt(bad.clone(), &["--max-attempts", "2"]).await;
    // ...an error (never a silent `done`) on the last one.
    let (frames, _fake) = run_chat(vec![bad], &["--max-attempts", "1"]).await;
    let t = terminal(&frames);
    assert_eq!(
        t["type"], "error",
        "invalid JSON is never dropped: {frames:#?}"
    );
    assert_eq!(content_of(&frames), "");
}
