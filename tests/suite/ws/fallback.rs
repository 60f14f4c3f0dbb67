//! Fallback to the next upstream of `--upstream` once one is exhausted
//! (PROTOCOL §1, §4).

use crate::support::*;

#[actix_web::test]
async fn fallback_to_second_upstream_after_503s() {
    let first = FakeUpstream::start(vec![Reply::status(503)]);
    let second = FakeUpstream::start(vec![Reply::sse_words(&["from ", "second"])]);
    let list = format!("{},{}", first.url(), second.url());
    let frames = chat_once(&["--upstream", &list, "--max-attempts", "2"]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "from second");
    assert_eq!(first.attempts(), 2, "--max-attempts on the first upstream");
    assert_eq!(second.attempts(), 1);
    let start = of_type(&frames, "start");
    assert_eq!(start[0]["upstream"], second.host(), "{}", start[0]);
    assert!(!of_type(&frames, "retry").is_empty());
}

#[actix_web::test]
async fn fallback_to_second_upstream_after_refused() {
    let second = FakeUpstream::start(vec![Reply::sse_words(&["ok"])]);
    let list = format!("{},{}", closed_port_url(), second.url());
    let frames = chat_once(&["--upstream", &list, "--max-attempts", "2"]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "ok");
    assert_eq!(of_type(&frames, "start")[0]["upstream"], second.host());
    assert_eq!(second.attempts(), 1);
}

#[actix_web::test]
async fn fallback_exhausted_is_unavailable() {
    let first = FakeUpstream::start(vec![Reply::status(500)]);
    let second = FakeUpstream::start(vec![Reply::status(503)]);
    let list = format!("{},{}", first.url(), second.url());
    let frames = chat_once(&["--upstream", &list, "--max-attempts", "2"]).await;
    expect_error(&frames, "upstream_unavailable");
    assert_eq!((first.attempts(), second.attempts()), (2, 2));
}
