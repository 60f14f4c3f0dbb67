//! Backpressure against a client that does not read: its upstream is
//! paused (and the gateway's memory stays bounded), the socket is dropped
//! past `--client-timeout-ms` with its upstream request, and one enormous
//! delta is delivered whole or the socket is closed with 1008.
//!
//! The upstream floods with a generated body ([`Reply::flood`]) and the
//! client is a raw WebSocket that reads only when told ([`RawWs`]).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fake::completion;
use crate::support::process::{plateau, rss_bytes, ChildGateway, RssSampler, MB, MEMORY_HEAVY};
use crate::support::raw_ws::{RawWs, CLOSE, TEXT};
use crate::support::*;

const FLOOD_BYTES: u64 = 200 * 1024 * 1024;

/// The upstream of the flood tests: a chat whose last message starts with
/// `flood` gets a [`Reply::flood`] of [`FLOOD_BYTES`] (generated, never
/// held); any other chat gets its message streamed back word by word. Every
/// reply closes its connection when complete. The flood chat is sent first,
/// so it is request 0.
fn flood_or_echo() -> FakeUpstream {
    FakeUpstream::start(vec![Reply::dynamic(|req| {
        let message = req.last_message();
        let reply = if message.starts_with("flood") {
            Reply::flood(FLOOD_BYTES)
        } else {
            let words: Vec<&str> = message.split_inclusive(' ').collect();
            Reply::sse_words(&words)
        };
        reply.with_header("connection", "close")
    })])
}

/// Body bytes of the flood (request 0) written so far.
fn flooded(up: &FakeUpstream) -> u64 {
    up.body_written(0)
}

/// A client that never reads while the upstream streams as fast as it can:
/// the gateway stops reading that upstream (the fake's writes plateau far
/// below 200 MB), memory stays bounded, and another socket is served
/// exactly meanwhile.
#[actix_web::test]
async fn non_reading_client_pauses_its_upstream_and_memory_stays_bounded() {
    let _alone = MEMORY_HEAVY.lock().await;
    let up = flood_or_echo();
    let url = up.url();
    // The gateway runs as its own process (the real binary) so that its
    // memory is measured alone, whatever the other tests are doing.
    let gw = ChildGateway::start(&["--upstream", url.as_str()]);
    let sampler = RssSampler::start(gw.pid);
    let rss_start = rss_bytes(gw.pid);

    let mut stalled = RawWs::connect(gw.addr).await;
    stalled.send_json(&chat_frame("f1", "flood please")).await;
    assert!(
        poll_until(WAIT, ms(20), || flooded(&up) > 2 * MB).await,
        "the flood never started (written {})",
        flooded(&up)
    );
    let plateau_at = plateau(Duration::from_secs(20), ms(1000), || flooded(&up)).await;
    let Some(plateau_at) = plateau_at else {
        panic!(
            "the upstream kept being read for 20 s ({} MB written): no backpressure",
            flooded(&up) / MB
        );
    };
    eprintln!(
        "backpressure: upstream writes plateaued at {:.1} MB (of a {} MB flood)",
        plateau_at as f64 / MB as f64,
        FLOOD_BYTES / MB
    );
    assert!(
        plateau_at < 64 * MB,
        "the gateway read {plateau_at} bytes for a client that reads nothing"
    );

    // Meanwhile a normal socket is served exactly.
    let mut normal = WsClient::connect(gw.addr).await;
    let text = "the other socket is not slowed down by the stalled one";
    let frames = normal.chat("n1", text, WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), text);

    // Still stalled (nothing more read), and nothing disconnected yet.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        flooded(&up),
        plateau_at,
        "the stalled stream was read further"
    );
    assert_eq!(up.disconnects(), 0);
    assert_eq!(up.attempts(), 2, "one flood and the normal chat, no retry");
    assert!(up.request(0).last_message().starts_with("flood"));

    let peak = sampler.max();
    eprintln!(
        "backpressure: gateway RSS start {:.1} MB, peak {:.1} MB",
        rss_start as f64 / MB as f64,
        peak as f64 / MB as f64
    );
    assert!(rss_start > 0, "could not read the gateway's RSS");
    assert!(peak < 150 * MB, "gateway RSS reached {} MB", peak / MB);
    drop(stalled);
    drop(gw);
}

/// A stalled (non-reading, silent) client is dropped, and its paused
/// upstream request is closed with it. The Session actor runs only while
/// actix-http can write to the socket, so the heartbeat cannot see this
/// client; the kernel can: the gateway sets TCP_USER_TIMEOUT to the client
/// timeout, and data stuck behind a closed window past it aborts the
/// connection, which ends the session and cancels its chat.
#[actix_web::test]
async fn stalled_client_dropped_by_heartbeat_closes_its_paused_upstream() {
    let up = flood_or_echo();
    let heartbeat = [
        "--heartbeat-interval-ms",
        "200",
        "--client-timeout-ms",
        "1000",
    ];
    let gw = gateway_to(&up.url(), &heartbeat).await;
    let mut stalled = RawWs::connect(gw.addr).await;
    stalled.send_json(&chat_frame("f1", "flood please")).await;
    let sent_at = Instant::now();
    assert!(
        poll_until(WAIT, ms(20), || flooded(&up) > MB).await,
        "the flood never started"
    );
    assert!(
        poll_until(ms(4000), ms(20), || up.disconnects() == 1).await,
        "the stalled client's upstream request was not closed in time \
         (written {} MB)",
        flooded(&up) / MB
    );
    let took = sent_at.elapsed();
    eprintln!(
        "heartbeat: stalled client's upstream closed {took:?} after its chat, \
         after {:.1} MB",
        flooded(&up) as f64 / MB as f64
    );
    assert!(
        took >= ms(900),
        "dropped before --client-timeout-ms: {took:?}"
    );
    let (status, _) = http_get(gw.addr, "/healthz").await;
    assert_eq!(status, 200);
    drop(stalled);
    gw.stop(false).await;
}

/// One enormous delta (a 6 MB whole completion) to a client that is not
/// reading: it is over the high-water mark at once. What happens is
/// reported on stderr; either the socket is closed with 1008 after the
/// frame, or the frame is delivered once and the chat ends with `done`.
/// Never is the content duplicated or mangled.
#[actix_web::test]
async fn enormous_single_delta_to_a_non_reader() {
    let _alone = MEMORY_HEAVY.lock().await;
    const SIZE: usize = 6 * 1024 * 1024;
    let content: String = "abcdefghij".repeat(SIZE / 10);
    let script = vec![Reply::json(
        200,
        &completion(&content, "stop", &Value::Null),
    )];
    let (fake, gw) = fake_gateway(script, &[]).await;
    let mut raw = RawWs::connect(gw.addr).await;
    raw.send_json(&chat_frame("big", "one huge answer please"))
        .await;
    // Not reading for a while: the frame sits in the gateway.
    assert!(fake.wait_attempts(1, WAIT).await);
    tokio::time::sleep(ms(1500)).await;
    let mut frames: Vec<Value> = Vec::new();
    let mut close_code = None;
    let mut texts = 0;
    loop {
        let Some(frame) = raw.read_frame(Duration::from_secs(5)).await else {
            break;
        };
        match frame.opcode {
            TEXT => {
                texts += 1;
                frames.push(serde_json::from_slice(&frame.payload).expect("json frame"));
            }
            CLOSE => {
                if frame.payload.len() >= 2 {
                    close_code = Some(u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                }
                break;
            }
            _ => {}
        }
        if frames.last().is_some_and(|f| f["type"] == "done") {
            break;
        }
    }
    let chat: Vec<&Value> = frames.iter().filter(|f| f["id"] == "big").collect();
    let got: String = chat
        .iter()
        .filter(|f| f["type"] == "delta")
        .map(|f| f["content"].as_str().unwrap())
        .collect();
    let kinds: Vec<&str> = chat.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let slow_closed = gw.metrics().ws_slow_consumer_closed_total.get();
    eprintln!(
        "enormous delta: {texts} text frames, chat frames {kinds:?}, delta bytes {}, \
         close code {close_code:?}, slow-consumer closes {slow_closed}",
        got.len()
    );
    assert!(
        got.is_empty() || got == content,
        "the 6 MB delta arrived altered ({} bytes)",
        got.len()
    );
    let closed_1008 = close_code == Some(1008);
    let delivered = kinds.last() == Some(&"done") && got == content;
    assert!(
        closed_1008 || delivered,
        "expected a 1008 close or the whole delta and done; got {kinds:?}, close {close_code:?}"
    );
    gw.stop(false).await;
}

/// Issue 10 item 5: slowness is judged by lack of progress over time, never
/// by a byte count. A client that reads is never closed, however large the
/// burst: 120 deltas of 100 KB (12 MB, written by the upstream as fast as
/// TCP allows) reach it exactly (the old gateway closed it with 1008
/// "the client is not reading" after 4.4 MB).
#[actix_web::test]
async fn a_reading_client_is_never_closed_for_a_large_burst() {
    let _alone = MEMORY_HEAVY.lock().await;
    let pieces: Vec<String> = (0..120)
        .map(|i| format!("{i:04}{}", "x".repeat(100 * 1024 - 4)))
        .collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let (_fake, gw, mut ws) = fake_gateway_client(vec![Reply::sse_words(&refs)], &[]).await;
    let frames = ws.chat("big", "hi", Duration::from_secs(60)).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), pieces.concat());
    assert!(!ws.is_closed(), "a reading client was closed");
    assert_eq!(gw.metrics().ws_slow_consumer_closed_total.get(), 0);
    gw.stop(false).await;
}

/// Issue 10 item 5, the other half: one event larger than the old
/// high-water mark (an 8 MB delta; the old gateway ended a 50 MB one with
/// 1008 and no terminal frame) reaches a reading client whole, then `done`.
#[actix_web::test]
async fn one_huge_event_reaches_a_reading_client() {
    let _alone = MEMORY_HEAVY.lock().await;
    let huge = "0123456789".repeat(800 * 1024);
    let (_fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::sse_words(&[huge.as_str(), " end"])],
        &flags("--max-upstream-event-bytes 33554432"),
    )
    .await;
    let frames = ws.chat("huge", "hi", Duration::from_secs(60)).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), format!("{huge} end"));
    assert_eq!(gw.metrics().ws_slow_consumer_closed_total.get(), 0);
    gw.stop(false).await;
}
