//! Retries and backoff before the commit point (PROTOCOL §4): which
//! failures are retried, the `retry` frames, `--max-attempts`, the backoff
//! cap and `Retry-After`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

#[actix_web::test]
async fn retries_503_twice_then_succeeds() {
    let script = vec![
        Reply::status(503),
        Reply::status(503),
        Reply::sse_words(&["fine"]),
    ];
    let (frames, fake) = run_chat(script, &["--max-attempts", "5"]).await;
    assert_eq!(content_of(&frames), "fine");
    expect_done(&frames);
    assert_eq!(fake.attempts(), 3);
    assert_eq!(retry_attempts(&frames), vec![2, 3], "{frames:#?}");
    for r in of_type(&frames, "retry") {
        assert!(r["delay_ms"].as_u64().unwrap() <= 50, "backoff cap: {r}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    let start = of_type(&frames, "start");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["attempt"], 3);
    let start_at = frames.iter().position(|f| f["type"] == "start").unwrap();
    let last_retry = frames.iter().rposition(|f| f["type"] == "retry").unwrap();
    assert!(last_retry < start_at, "retries precede start: {frames:#?}");
}

#[actix_web::test]
async fn retries_408_429_500_502() {
    let script = vec![
        Reply::status(408),
        Reply::status(429),
        Reply::status(500),
        Reply::status(502),
        Reply::sse_words(&["ok"]),
    ];
    let (frames, fake) = run_chat(script, &["--max-attempts", "5"]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "ok");
    assert_eq!(fake.attempts(), 5);
    assert_eq!(retry_attempts(&frames), vec![2, 3, 4, 5]);
}

/// A chat whose first attempt gets `status` with `Retry-After: value` and
/// whose second succeeds: returns the one `retry` frame, how long the chat
/// took and the fake.
async fn chat_with_retry_after(
    status: u16,
    value: &str,
    args: &[&str],
) -> (Value, Duration, FakeUpstream) {
    let first = Reply::status(status).with_header("Retry-After", value);
    let started = Instant::now();
    let (frames, fake) = run_chat(vec![first, Reply::sse_words(&["ok"])], args).await;
    let took = started.elapsed();
    expect_done(&frames);
    let retry = of_type(&frames, "retry");
    assert_eq!(retry.len(), 1, "one retry: {frames:#?}");
    (retry[0].clone(), took, fake)
}

#[actix_web::test]
async fn retry_after_zero_is_honoured() {
    let args = flags("--backoff-base-ms 4000 --backoff-max-ms 8000");
    let (retry, took, fake) = chat_with_retry_after(429, "0", &args).await;
    assert_eq!(fake.attempts(), 2);
    assert!(
        retry["delay_ms"].as_u64().unwrap() <= 100,
        "Retry-After: 0 must replace the 4 s backoff: {retry}"
    );
    assert!(took < Duration::from_millis(2500));
}

#[actix_web::test]
async fn retry_after_seconds_is_honoured() {
    let (retry, took, _fake) = chat_with_retry_after(503, "1", &["--backoff-max-ms", "5000"]).await;
    let delay = retry["delay_ms"].as_u64().unwrap();
    assert!(
        (900..=1100).contains(&delay),
        "Retry-After: 1 below the 5 s cap: {retry}"
    );
    assert!(took >= Duration::from_millis(900));
}

#[actix_web::test]
async fn all_503_is_unavailable_after_max_attempts() {
    let (frames, fake) = run_chat(vec![Reply::status(503)], &["--max-attempts", "3"]).await;
    let err = expect_error(&frames, "upstream_unavailable");
    assert_eq!(err["retryable"], true);
    assert_eq!(fake.attempts(), 3, "exactly --max-attempts attempts");
    assert_eq!(retry_attempts(&frames), vec![2, 3]);
    assert!(of_type(&frames, "start").is_empty());
    assert!(of_type(&frames, "delta").is_empty());
}

#[actix_web::test]
async fn connect_refused_is_retried_then_unavailable() {
    let url = closed_port_url();
    let frames = chat_once(&["--upstream", &url, "--max-attempts", "3"]).await;
    let err = expect_error(&frames, "upstream_unavailable");
    assert_eq!(err["retryable"], true);
    assert_eq!(retry_attempts(&frames), vec![2, 3], "{frames:#?}");
    assert!(of_type(&frames, "start").is_empty());
}
