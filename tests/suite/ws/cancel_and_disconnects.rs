//! A chat's upstream request is dropped as soon as nobody wants its answer
//! (PROTOCOL §3 `cancel`, §4 last bullet): on `cancel` (streaming, waiting
//! for headers, backing off), when the socket closes or vanishes, and when
//! the heartbeat drops a silent client; a client answering pings is kept.

use std::time::Instant;

use crate::support::fake::stalled_after_hel;
use crate::support::raw_ws::{RawWs, CLOSE};
use crate::support::*;

#[actix_web::test]
async fn cancel_mid_stream_drops_the_upstream_request() {
    let (fake, gw, mut ws) =
        fake_gateway_client(vec![stalled_after_hel(), Reply::sse_words(&["next"])], &[]).await;
    ws.send_chat("k1", "hi").await;
    let delta = ws.expect_type("k1", "delta", WAIT).await;
    assert_eq!(delta["content"], "Hel");
    ws.send_cancel("k1").await;
    let frames = ws.chat_until_terminal("k1", ms(2000)).await;
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "cancelled");
    fake.expect_client_disconnect("after cancel").await;
    ws.expect_silence_for("k1", QUIET).await;
    // A second cancel of the finished id is ignored.
    ws.send_cancel("k1").await;
    ws.expect_no_frame(QUIET).await;
    // The socket still works.
    let frames = ws.chat("k2", "hi", WAIT).await;
    assert_eq!(content_of(&frames), "next");
    gw.stop(false).await;
}

#[actix_web::test]
async fn cancel_while_waiting_for_headers() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::StallHeaders], &[]).await;
    ws.send_chat("k1", "hi").await;
    assert!(fake.wait_attempts(1, WAIT).await);
    ws.send_cancel("k1").await;
    let frames = ws.chat_until_terminal("k1", ms(2000)).await;
    assert_eq!(expect_done(&frames)["finish_reason"], "cancelled");
    fake.expect_client_disconnect("after cancel while waiting for headers")
        .await;
    ws.expect_silence_for("k1", QUIET).await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn cancel_during_backoff_is_prompt() {
    let args = flags("--max-attempts 5 --backoff-base-ms 3000 --backoff-max-ms 3000");
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::status(503)], &args).await;
    ws.send_chat("k1", "hi").await;
    ws.expect_type("k1", "retry", WAIT).await;
    ws.send_cancel("k1").await;
    let started = Instant::now();
    let frames = ws.chat_until_terminal("k1", ms(2000)).await;
    assert!(
        started.elapsed() < ms(1000),
        "cancel waited for the backoff"
    );
    assert_eq!(expect_done(&frames)["finish_reason"], "cancelled");
    let attempts = fake.attempts();
    ws.expect_silence_for("k1", QUIET).await;
    assert_eq!(fake.attempts(), attempts, "no attempt after cancel");
    gw.stop(false).await;
}

#[actix_web::test]
async fn cancel_of_unknown_id_is_ignored() {
    let (_fake, gw, mut ws) = fake_gateway_client(vec![Reply::sse_words(&["ok"])], &[]).await;
    ws.send_cancel("never-started").await;
    ws.expect_no_frame(QUIET).await;
    let frames = ws.chat("c1", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "ok");
    gw.stop(false).await;
}

/// With `--resume-window-ms 0`, the client leaving mid-stream (after a
/// close frame, or by just vanishing) closes the upstream connection within
/// 1 s. (With a resume window the chat runs on: see resume.rs.)
async fn leaving_mid_stream_drops_the_upstream(send_close_frame: bool, what: &str) {
    let (fake, gw, mut ws) = client_mid_stream(&flags("--resume-window-ms 0"), true).await;
    if send_close_frame {
        ws.close().await;
    }
    drop(ws);
    fake.expect_client_disconnect(what).await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn socket_close_mid_stream_drops_the_upstream_request() {
    leaving_mid_stream_drops_the_upstream(true, "closing the socket").await;
}

#[actix_web::test]
async fn socket_dropped_without_close_frame_drops_the_upstream_request() {
    leaving_mid_stream_drops_the_upstream(false, "a vanished socket").await;
}

#[actix_web::test]
async fn silent_client_is_dropped_with_its_upstream_request() {
    let args = [FAST_HEARTBEAT, &flags("--resume-window-ms 0")].concat();
    let (fake, gw, mut ws) = client_mid_stream(&args, false).await;
    assert!(
        ws.wait_closed(ms(3000)).await,
        "a client silent past --client-timeout-ms must be dropped"
    );
    fake.expect_client_disconnect("after dropping the silent client")
        .await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn client_answering_pings_is_kept() {
    let slow = Reply::sse_words_slow(&["a", "b", "c"], ms(300));
    let (_fake, gw, mut ws) = fake_gateway_client(vec![slow], FAST_HEARTBEAT).await;
    let frames = ws.chat("k1", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "abc");
    assert!(!ws.wait_closed(ms(800)).await, "a live client was dropped");
    gw.stop(false).await;
}

/// A raw client that neither reads nor answers pings (its host vanished):
/// dropped by the heartbeat, and (with `--resume-window-ms 0`) its chat's
/// upstream request dropped too, within about 2 s.
#[actix_web::test]
async fn vanished_raw_peer_is_dropped_with_its_upstream_request() {
    let args = [FAST_HEARTBEAT, &flags("--resume-window-ms 0")].concat();
    let (fake, gw) = fake_gateway(vec![stalled_after_hel()], &args).await;
    let mut raw = RawWs::connect(gw.addr).await;
    raw.send_json(&chat_frame("v1", "hi")).await;
    assert!(fake.wait_attempts(1, WAIT).await);
    let t0 = Instant::now();
    assert!(
        fake.wait_client_disconnect(ms(2500)).await,
        "the vanished peer's upstream request is still open after 2.5 s"
    );
    eprintln!(
        "vanished peer: upstream dropped {:?} after the request",
        t0.elapsed()
    );
    // The socket itself was closed: reading now finds the end (close frame
    // or EOF) after the queued frames.
    let mut ended = false;
    for _ in 0..50 {
        match raw.read_frame(ms(2000)).await {
            None => {
                ended = true;
                break;
            }
            Some(f) if f.opcode == CLOSE => {
                ended = true;
                break;
            }
            Some(_) => {}
        }
    }
    assert!(ended, "the vanished peer's socket was not closed");
    expect_metric(gw.addr, "netfly_ws_connections 0").await;
    gw.stop(false).await;
}
