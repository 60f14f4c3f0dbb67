//! The first-byte and idle timeouts (PROTOCOL §1, §4): retried before the
//! commit point, `upstream_timeout` on the last attempt, `upstream_broken`
//! after a delta; the idle timer runs between reads.

use std::time::Instant;

use serde_json::{json, Value};

use crate::support::fake::{chunk, chunk_with_delta, done_part, ev, stalled_after_hel};
use crate::support::*;

#[actix_web::test]
async fn first_byte_timeout_on_the_last_attempt() {
    let args = ["--first-byte-timeout-ms", "300", "--max-attempts", "1"];
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::StallHeaders], &args).await;
    let started = Instant::now();
    let frames = ws.chat("t1", "hi", WAIT).await;
    let took = started.elapsed();
    let err = expect_error(&frames, "upstream_timeout");
    assert_eq!(err["retryable"], true);
    assert!(took >= ms(250) && took < ms(3000), "took {took:?}");
    fake.expect_client_disconnect("after the first-byte timeout")
        .await;
    assert_eq!(fake.attempts(), 1);
    gw.stop(false).await;
}

#[actix_web::test]
async fn first_byte_timeout_is_retried() {
    ok_on_the_second_attempt(
        Reply::StallHeaders,
        &["--first-byte-timeout-ms", "300", "--max-attempts", "2"],
    )
    .await;
}

#[actix_web::test]
async fn idle_timeout_before_any_delta_is_retried() {
    let stalled = Reply::sse(vec![Part::bytes(": open\n\n")]).with_end(End::Stall);
    let (frames, fake) = ok_on_the_second_attempt(
        stalled,
        &["--idle-timeout-ms", "300", "--max-attempts", "3"],
    )
    .await;
    assert_eq!(retry_attempts(&frames), vec![2]);
    assert!(fake.disconnects() >= 1, "the stalled stream was dropped");
}

#[actix_web::test]
async fn idle_timeout_on_the_last_attempt_is_timeout() {
    let stalled = Reply::sse(vec![ev(&chunk_with_delta(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    ))])
    .with_end(End::Stall);
    let (frames, fake) = run_chat(
        vec![stalled],
        &["--idle-timeout-ms", "300", "--max-attempts", "2"],
    )
    .await;
    expect_error(&frames, "upstream_timeout");
    assert_eq!(fake.attempts(), 2);
}

/// After a delta, a timeout is a failure past the commit point: §4 "A
/// failure after that is `upstream_broken`".
#[actix_web::test]
async fn idle_timeout_after_a_delta_is_broken() {
    let script = vec![
        stalled_after_hel(),
        Reply::sse_words(&["SHOULD NOT APPEAR"]),
    ];
    let args = ["--idle-timeout-ms", "300", "--max-attempts", "3"];
    let (fake, gw, mut ws) = fake_gateway_client(script, &args).await;
    let frames = ws.chat("t1", "hi", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert_eq!(err["retryable"], true);
    assert_eq!(content_of(&frames), "Hel");
    fake.expect_client_disconnect("after the idle timeout")
        .await;
    ws.expect_silence_for("t1", QUIET).await;
    assert_eq!(fake.attempts(), 1);
    gw.stop(false).await;
}

/// The idle timeout is between reads, not for the whole body: comments
/// every 100 ms keep a 300 ms idle timeout from firing.
#[actix_web::test]
async fn idle_timer_resets_on_every_read() {
    let mut parts = Vec::new();
    for _ in 0..8 {
        parts.push(Part::bytes(": keep-alive\n\n"));
        parts.push(Part::Delay(ms(100)));
    }
    parts.push(ev(&chunk("Hel")));
    for _ in 0..5 {
        parts.push(Part::Delay(ms(100)));
        parts.push(Part::bytes("data: \n\n"));
    }
    parts.push(ev(&chunk("lo")));
    parts.push(done_part());
    let (frames, fake) = run_chat(
        vec![Reply::sse(parts)],
        &["--idle-timeout-ms", "300", "--max-attempts", "1"],
    )
    .await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "Hello");
    assert_eq!(fake.attempts(), 1);
}
