//! Graceful shutdown (PROTOCOL §1 `--shutdown-grace-ms`): no new sockets,
//! streams in flight finish, then sockets close with 1001; past the grace
//! period (or on `stop`) they close at once and their upstream requests are
//! dropped.

use std::time::{Duration, Instant};

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
