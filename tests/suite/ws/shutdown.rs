//! Graceful shutdown (PROTOCOL §1 `--shutdown-grace-ms`): no new sockets,
//! streams in flight finish, then sockets close with 1001; past the grace
//! period (or on `stop`) they close at once and their upstream requests are
//! dropped.

use std::time::{Duration, Instant};

use crate::support::fake::{self, ev};
use crate::support::*;

/// Graceful drain (§1): no new sockets, the stream in flight finishes,
/// then the socket is closed with 1001.
#[actix_web::test]
async fn graceful_shutdown_lets_streams_finish_then_closes_1001() {
    let slow = Reply::sse_words_slow(&["one ", "two ", "three"], ms(200));
    let (fake, gw) = fake_gateway(vec![slow], &[]).await;
    let addr = gw.addr;
    let mut ws = WsClient::connect(addr).await;
    ws.send_chat("g1", "hi").await;
    assert!(fake.wait_attempts(1, WAIT).await);
    let client = async {
        // Let the drain begin (join! polls this future first).
        tokio::time::sleep(ms(100)).await;
        let refused = WsClient::refusal(addr, "/ws", &[]).await;
        let frames = ws.chat_until_terminal("g1", Duration::from_secs(12)).await;
        let closed = ws.wait_closed(Duration::from_secs(12)).await;
        (refused, frames, closed, ws.close_code())
    };
    let ((refused, frames, closed, code), ()) = tokio::join!(client, gw.shutdown());
    assert!(
        refused.is_some(),
        "a new socket was accepted while draining"
    );
    expect_done(&frames);
    assert_eq!(content_of(&frames), "one two three");
    assert!(closed, "socket not closed after the drain");
    assert_eq!(code, Some(1001));
}

/// When the grace period runs out, sockets are closed with 1001 and the
/// upstream requests of their chats are dropped.
#[actix_web::test]
async fn graceful_shutdown_grace_expires() {
    let (fake, gw, mut ws) = client_mid_stream(&["--shutdown-grace-ms", "300"], true).await;
    let started = Instant::now();
    let client = async {
        let closed = ws.wait_closed(Duration::from_secs(5)).await;
        (closed, ws.close_code(), started.elapsed())
    };
    let ((closed, code, took), ()) = tokio::join!(client, gw.shutdown());
    assert!(closed, "socket not closed after the grace period");
    assert_eq!(code, Some(1001));
    assert!(took >= ms(250), "closed before the grace period: {took:?}");
    fake.expect_client_disconnect("after the grace period")
        .await;
}

/// `stop` closes every socket with 1001 at once.
#[actix_web::test]
async fn stop_closes_sockets_1001() {
    let (fake, gw, mut ws) = client_mid_stream(&[], true).await;
    let client = async {
        let closed = ws.wait_closed(Duration::from_secs(5)).await;
        (closed, ws.close_code())
    };
    let ((closed, code), ()) = tokio::join!(client, gw.stop(true));
    assert!(closed);
    assert_eq!(code, Some(1001));
    fake.expect_client_disconnect("after stop").await;
}

/// Issue 10 item 11: chats still running when the grace period ends get
/// their one terminal frame — `error` `upstream_unavailable`, retryable, the
/// next seq — before the 1001 close, on every socket (the old gateway sent
/// 50 of 50 sockets only a close).
#[actix_web::test]
async fn chats_running_at_the_end_of_the_grace_period_get_a_terminal_frame() {
    const SOCKETS: usize = 20;
    let stalled = Reply::sse(vec![ev(&fake::chunk("Hel"))]).with_end(End::Stall);
    let (fake, gw) = fake_gateway(vec![stalled], &flags("--shutdown-grace-ms 300")).await;
    let mut clients = Vec::new();
    for i in 0..SOCKETS {
        let mut ws = WsClient::connect(gw.addr).await;
        let id = format!("s{i}");
        ws.send_chat(&id, "hi").await;
        ws.expect_type(&id, "delta", WAIT).await;
        clients.push((id, ws));
    }
    let readers = async {
        let mut seen = Vec::new();
        for (id, ws) in &mut clients {
            let rest = ws.chat_until_terminal(id, Duration::from_secs(10)).await;
            let closed = ws.wait_closed(Duration::from_secs(5)).await;
            seen.push((rest, closed, ws.close_code()));
        }
        seen
    };
    let (seen, ()) = tokio::join!(readers, gw.shutdown());
    for (rest, closed, code) in seen {
        let err = expect_error(&rest, "upstream_unavailable");
        assert_eq!(err["retryable"], true, "{err}");
        assert!(message_of(err).contains("shutting down"), "{err}");
        assert!(err["seq"].as_u64().is_some_and(|s| s > 2), "{err}");
        assert!(closed);
        assert_eq!(code, Some(1001));
    }
    assert!(
        fake.wait_until_disconnects(SOCKETS, Duration::from_secs(2))
            .await
    );
}

/// A `/v1` stream still running at the end of the grace period ends with an
/// error event and a clean end of the chunked body (never cut mid-body).
#[actix_web::test]
async fn v1_streams_at_the_end_of_the_grace_period_end_with_an_error_event() {
    let stalled = Reply::sse(vec![ev(&fake::chunk("Hel"))]).with_end(End::Stall);
    let (_fake, gw) = fake_gateway(vec![stalled], &flags("--shutdown-grace-ms 300")).await;
    let body =
        serde_json::json!({ "messages": [{ "role": "user", "content": "x" }], "stream": true });
    let (mut tcp, head) = raw_http::raw_post_until(gw.addr, &body, "Hel").await;
    let reader = async {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        String::from_utf8_lossy(&rest).into_owned()
    };
    let (rest, ()) = tokio::join!(reader, gw.shutdown());
    let all = format!("{head}{rest}");
    assert!(all.contains("transfer-encoding: chunked"), "{all}");
    assert!(
        all.contains("\"code\":\"upstream_unavailable\"") && all.contains("shutting down"),
        "no error event: {all}"
    );
    assert!(!all.contains("[DONE]"), "{all}");
    assert!(
        all.ends_with("0\r\n\r\n"),
        "the chunked body was cut: {all:?}"
    );
}
