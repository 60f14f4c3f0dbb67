//! How an upstream answer may end (PROTOCOL §4): without `[DONE]` (chunked
//! or close-delimited), with an unterminated last event, or as a 2xx that
//! is not `text/event-stream` at all (a whole completion, a JSON error,
//! anything else).

use crate::support::fake::{chunk, completion, ev, events_without_done, openai_error, usage};
use crate::support::*;

#[actix_web::test]
async fn stream_ending_without_done_marker_chunked() {
    let (frames, fake) = run_chat(vec![Reply::sse(events_without_done())], &[]).await;
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(content_of(&frames), "Hello");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn stream_ending_without_done_marker_close_delimited() {
    let reply = Reply::sse(events_without_done()).with_end(End::Close);
    let (frames, fake) = run_chat(vec![reply], &[]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "Hello");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn unterminated_last_event_is_dropped() {
    let mut tail = b"data: ".to_vec();
    tail.extend(chunk("lo").to_string().bytes());
    let reply = Reply::sse(vec![ev(&chunk("Hel")), Part::Bytes(tail)]);
    let (frames, _fake) = run_chat(vec![reply], &[]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "Hel");
}

#[actix_web::test]
async fn non_sse_whole_completion_is_one_delta() {
    let text = "Hello there, friend. ✓";
    let (frames, fake) = run_chat(
        vec![Reply::json(200, &completion(text, "stop", &usage()))],
        &[],
    )
    .await;
    assert_eq!(deltas(&frames), vec![text]);
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"], usage());
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn non_sse_json_error_is_rejected() {
    let (frames, fake) = run_chat(
        vec![Reply::json(
            200,
            &openai_error("You exceeded your current quota"),
        )],
        &["--max-attempts", "3"],
    )
    .await;
    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(message_of(err).contains("You exceeded your current quota"));
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn non_sse_other_body_is_broken() {
    let (frames, _fake) = run_chat(
        vec![Reply::body(200, "text/html", "<html>hello</html>")],
        &["--max-attempts", "1"],
    )
    .await;
    expect_error(&frames, "upstream_broken");
    assert_eq!(content_of(&frames), "");
}
