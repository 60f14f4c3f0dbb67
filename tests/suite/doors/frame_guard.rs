//! Item 1: a frame's size is checked at its header (`src/ws_guard.rs`).
//!
//! The pure guard is checked against its whole-input specification at
//! every split; the gateway (as a child process, its memory sampled) closes
//! a socket declaring a 2^40-byte frame with 1009 at once, and a
//! fragmented message as soon as a header takes it past the limit.

use std::time::{Duration, Instant};

use netfly::ws_guard::{verdict_of_whole, FrameGuard, Verdict};
use tokio::io::AsyncWriteExt;

use crate::support::process::{rss_bytes, ChildGateway, RssSampler, MB, MEMORY_HEAVY};
use crate::support::raw_ws::{masked_frame, RawWs, CLOSE, CONTINUATION, PING, PONG, TEXT};
use crate::support::*;

const BINARY: u8 = 0x2;

/// Feeds `input` to a new guard in pieces cut at `cuts` (sorted offsets);
/// returns the bytes it let through and its verdict.
fn run_guard(input: &[u8], max: usize, cuts: &[usize]) -> (Vec<u8>, Option<Verdict>) {
    let mut guard = FrameGuard::new(max);
    let mut passed = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let chunk = &input[from..cut.max(from)];
        let n = guard.feed(chunk);
        assert!(n <= chunk.len());
        if n < chunk.len() {
            assert!(
                guard.verdict().is_some(),
                "bytes held back without a verdict"
            );
        }
        passed.extend_from_slice(&chunk[..n]);
        from = cut.max(from);
    }
    (passed, guard.verdict())
}

/// The guard's output at these cuts is the input up to the byte that
/// decided the verdict (all of it when none), with the specification's verdict.
fn check_at(input: &[u8], max: usize, cuts: &[usize]) {
    let expected = verdict_of_whole(input, max);
    let (passed, verdict) = run_guard(input, max, cuts);
    let until = expected.map_or(input.len(), |(at, _)| at);
    assert_eq!(verdict, expected.map(|(_, v)| v), "cuts {cuts:?}");
    assert_eq!(passed, input[..until], "passed bytes at cuts {cuts:?}");
}

/// Every single cut, and a few hundred random multi-cuts.
fn check_everywhere(input: &[u8], max: usize, rng: &mut fastrand::Rng) {
    for cut in 0..=input.len() {
        check_at(input, max, &[cut]);
    }
    check_at(input, max, &(0..input.len()).collect::<Vec<_>>());
    for _ in 0..200 {
        let mut cuts: Vec<usize> = (0..rng.usize(1..8))
            .map(|_| rng.usize(0..=input.len()))
            .collect();
        cuts.sort_unstable();
        check_at(input, max, &cuts);
    }
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(fin, opcode, payload.len() as u64, payload)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

const MAX: usize = 300;

/// Inputs at and past every rule, each with the verdict it must get.
fn cases() -> Vec<(&'static str, Vec<u8>, Option<Verdict>)> {
    let big = |len, fragmented| {
        Some(Verdict::TooBig {
            len,
            max: MAX as u64,
            fragmented,
        })
    };
    let protocol = |why| Some(Verdict::Protocol(why));
    let at_limit = vec![b'a'; MAX];
    vec![
        (
            "frames within the limit, 7- and 16-bit lengths",
            concat(&[
                frame(true, TEXT, b"hello"),
                frame(true, BINARY, &[0u8; 200]),
                frame(true, PING, b"p"),
            ]),
            None,
        ),
        (
            "a frame exactly at the limit",
            frame(true, TEXT, &at_limit),
            None,
        ),
        (
            "one byte over, 16-bit length",
            frame(true, TEXT, &[b'a'; MAX + 1]),
            big(MAX as u64 + 1, false),
        ),
        (
            "2^40 declared, 64-bit length",
            masked_frame(true, TEXT, 1 << 40, b"abc"),
            big(1 << 40, false),
        ),
        (
            "64-bit length with its top bit set",
            masked_frame(true, BINARY, u64::MAX, b""),
            big(u64::MAX, false),
        ),
        (
            "fragmented message exactly at the limit, a ping inside",
            concat(&[
                frame(false, TEXT, &[b'a'; 100]),
                frame(true, PING, b"x"),
                frame(false, CONTINUATION, &[b'b'; 100]),
                frame(true, CONTINUATION, &[b'c'; 100]),
                frame(true, TEXT, b"next message"),
            ]),
            None,
        ),
        (
            "fragmented message one byte over",
            concat(&[
                frame(false, TEXT, &[b'a'; 150]),
                frame(false, CONTINUATION, &[b'b'; 100]),
                masked_frame(true, CONTINUATION, 51, b"partial"),
            ]),
            big(301, true),
        ),
        (
            "control frame declaring 126 bytes",
            masked_frame(true, PING, 126, b""),
            protocol("control frame longer than 125 bytes"),
        ),
        (
            "fragmented control frame",
            frame(false, PING, b"p"),
            protocol("fragmented control frame"),
        ),
        (
            "unmasked frame",
            vec![0x81, 0x02, b'h', b'i'],
            protocol("client frame not masked"),
        ),
        (
            "reserved bits",
            {
                let mut f = frame(true, TEXT, b"x");
                f[0] |= 0x40;
                f
            },
            protocol("reserved bits set without an extension"),
        ),
        (
            "reserved opcode",
            frame(true, 0x3, b"x"),
            protocol("reserved opcode"),
        ),
        (
            "continuation with nothing to continue",
            concat(&[frame(true, TEXT, b"x"), frame(true, CONTINUATION, b"y")]),
            protocol("continuation frame without a message to continue"),
        ),
        (
            "a new message inside a fragmented one",
            concat(&[frame(false, TEXT, b"x"), frame(true, BINARY, b"y")]),
            protocol("new message before the fragmented one ended"),
        ),
        (
            "empty frames and a close",
            concat(&[
                frame(true, TEXT, b""),
                frame(false, BINARY, b""),
                frame(true, CONTINUATION, b""),
                frame(true, CLOSE, &[0x03, 0xe8]),
            ]),
            None,
        ),
    ]
}

#[test]
fn the_guard_decides_at_the_header_whatever_the_split() {
    let mut rng = fastrand::Rng::with_seed(10);
    for (label, input, verdict) in cases() {
        assert_eq!(
            verdict_of_whole(&input, MAX).map(|(_, v)| v),
            verdict,
            "{label}: the specification"
        );
        check_everywhere(&input, MAX, &mut rng);
    }
}

#[test]
fn a_huge_declared_length_is_refused_at_its_last_length_byte() {
    let input = masked_frame(true, TEXT, 1 << 40, b"");
    // 2 bytes, then the 64-bit length: the tenth byte decides.
    assert_eq!(
        verdict_of_whole(&input, MAX).map(|(at, _)| at),
        Some(9),
        "decided at the last length byte"
    );
    let (passed, verdict) = run_guard(&input, MAX, &[1, 5]);
    assert_eq!(passed, input[..9]);
    assert!(matches!(verdict, Some(Verdict::TooBig { len, .. }) if len == 1 << 40));
    // Nothing passes once there is a verdict.
    let mut guard = FrameGuard::new(MAX);
    guard.feed(&input);
    assert_eq!(guard.feed(b"more bytes"), 0);
}

#[test]
fn random_frame_streams_agree_with_the_specification() {
    let mut rng = fastrand::Rng::with_seed(1009);
    let opcodes = [TEXT, BINARY, CONTINUATION, PING, PONG, CLOSE, 0x3];
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..rng.usize(1..6) {
            let opcode = opcodes[rng.usize(..opcodes.len())];
            let len = match rng.u8(..4) {
                0 => rng.usize(..126),
                1 => rng.usize(126..400),
                2 => rng.usize(..8),
                _ => rng.usize(MAX - 2..MAX + 2),
            };
            let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut f = frame(rng.bool(), opcode, &payload);
            if rng.u8(..20) == 0 {
                f[1] &= 0x7f; // unmasked
            }
            input.extend_from_slice(&f);
        }
        if rng.bool() {
            input.truncate(rng.usize(..=input.len()));
        }
        let mut cuts: Vec<usize> = (0..rng.usize(..10))
            .map(|_| rng.usize(..=input.len()))
            .collect();
        cuts.sort_unstable();
        check_at(&input, MAX, &cuts);
        // Random bytes too: no panic, same answer.
        let noise: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
        check_at(&noise, MAX, &[noise.len() / 2]);
    }
}

/// Reads frames until a close (bounded), answering nothing; returns the
/// close code, its reason and how long it took from `since`.
async fn close_after(ws: &mut RawWs, since: Instant) -> (u16, String, Duration) {
    let (code, reason) = ws
        .read_close(WAIT, |_| {})
        .await
        .expect("a close frame from the gateway");
    (code, reason, since.elapsed())
}

/// A client declaring a 2^40-byte frame, then sending as fast as the
/// gateway takes bytes: closed with 1009 within a second of the header,
/// and the gateway (its own process) buffers nothing of it. Before the
/// guard: no close until the heartbeat gave up, and RSS grew by everything
/// sent.
#[actix_web::test]
async fn a_2_pow_40_frame_is_closed_with_1009_at_once_and_memory_stays_flat() {
    let _alone = MEMORY_HEAVY.lock().await;
    let gw = ChildGateway::start(&["--upstream", &closed_port_url(), "--workers", "1"]);
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    let sampler = RssSampler::start(gw.pid);
    tokio::time::sleep(ms(100)).await;
    let before = rss_bytes(gw.pid);
    let (mut reader, mut writer) = ws.into_split();
    writer
        .write_all(&masked_frame(true, TEXT, 1 << 40, b""))
        .await
        .expect("send the header");
    let sent_at = Instant::now();
    let flood = async {
        // At most 64 MiB, at most 3 s, each write bounded.
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0u64;
        while sent < 64 * MB && sent_at.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(ms(500), writer.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                _ => break,
            }
        }
        sent
    };
    let close = async {
        let close = reader.read_close(ms(5000), |_| {}).await;
        let took = sent_at.elapsed();
        // After its close frame the gateway ends the connection.
        let eof = reader.read_frame(ms(2000)).await.is_none();
        (close, took, eof)
    };
    let (sent, (close, took, eof)) = tokio::join!(flood, close);
    let grew = sampler.max().saturating_sub(before);
    eprintln!(
        "2^40 frame: close {close:?} after {took:?}; {} KiB sent; RSS {} KiB -> peak {} KiB",
        sent / 1024,
        before / 1024,
        sampler.max() / 1024
    );
    assert!(
        grew < 8 * MB,
        "the gateway grew by {} KiB while {} KiB were sent",
        grew / 1024,
        sent / 1024
    );
    let (code, reason) = close.expect("a close frame within 5 s");
    assert_eq!(code, 1009, "close code ({reason})");
    assert!(took < Duration::from_secs(1), "1009 took {took:?}");
    assert!(eof, "the connection is closed after the close frame");
}

/// A fragmented message whose next header takes it past the limit is
/// closed at that header, before its payload (here: never sent in full).
#[actix_web::test]
async fn a_fragmented_message_past_the_limit_is_closed_at_the_header() {
    let gw = start_gateway(&["--max-frame-bytes", "1000"]).await;
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    ws.send_raw(&frame(false, TEXT, &[b' '; 600]))
        .await
        .unwrap();
    ws.send_raw(&masked_frame(false, CONTINUATION, 401, b"0123456789"))
        .await
        .unwrap();
    let (code, reason, took) = close_after(&mut ws, Instant::now()).await;
    assert_eq!(
        (code, reason.as_str()),
        (1009, "message larger than 1000 bytes")
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    gw.stop(false).await;
}

/// A control frame declaring more than 125 bytes is a protocol error at
/// its header (actix-http waits for the payload first).
#[actix_web::test]
async fn a_long_control_frame_is_closed_with_1002_at_the_header() {
    let gw = start_gateway(&[]).await;
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    ws.send_raw(&masked_frame(true, PING, 1000, b""))
        .await
        .unwrap();
    let (code, _, took) = close_after(&mut ws, Instant::now()).await;
    assert_eq!(code, 1002);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    gw.stop(false).await;
}

/// Frames before a refused header, in the same write, are still read: the
/// ping is answered, then the socket is closed.
#[actix_web::test]
async fn frames_before_a_refused_header_are_still_served() {
    let gw = start_gateway(&[]).await;
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    let bytes = concat(&[
        frame(true, PING, b"p1"),
        masked_frame(true, TEXT, 1 << 40, b""),
    ]);
    ws.send_raw(&bytes).await.unwrap();
    let mut pongs = Vec::new();
    let (code, _) = ws
        .read_close(WAIT, |f| {
            if f.opcode == PONG {
                pongs.push(f.payload.clone());
            }
        })
        .await
        .expect("close");
    assert_eq!(code, 1009);
    assert_eq!(pongs, vec![b"p1".to_vec()]);
    gw.stop(false).await;
}

/// A chat frame exactly at the limit, and a message fragmented into three
/// frames exactly at the limit, are served.
#[actix_web::test]
async fn messages_at_the_limit_are_served() {
    let (_fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"]), Reply::sse_words(&["ok"])],
        &["--max-frame-bytes", "1000"],
    )
    .await;
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    let padded = |id: &str| {
        let mut text = chat_frame(id, "hi").to_string();
        text.push_str(&" ".repeat(1000 - text.len()));
        text.into_bytes()
    };
    let one = padded("whole");
    assert_eq!(one.len(), 1000);
    ws.send_raw(&frame(true, TEXT, &one)).await.unwrap();
    let two = padded("fragmented");
    ws.send_raw(&concat(&[
        frame(false, TEXT, &two[..400]),
        frame(false, CONTINUATION, &two[400..700]),
        frame(true, CONTINUATION, &two[700..]),
    ]))
    .await
    .unwrap();
    let mut done = Vec::new();
    for _ in 0..20 {
        let Some(f) = ws.read_frame(WAIT).await else {
            break;
        };
        assert_ne!(
            f.opcode,
            CLOSE,
            "closed: {:?}",
            String::from_utf8_lossy(&f.payload)
        );
        let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("JSON frame");
        if v["type"] == "done" {
            done.push(v["id"].as_str().unwrap_or_default().to_owned());
            if done.len() == 2 {
                break;
            }
        }
    }
    done.sort();
    assert_eq!(done, ["fragmented", "whole"]);
    gw.stop(false).await;
}
