//! What an upstream may send: size bounds on SSE lines, events and whole
//! bodies (`--max-upstream-event-bytes`, `--max-upstream-body-bytes`),
//! redirects (never followed), and content-encoded event streams.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::support::fake::{
    chunk, completion, done_event, event, split_at, sse_body, sse_events, with_gaps,
};
use crate::support::process::plateau;
use crate::support::*;

const MB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Size bounds
// ---------------------------------------------------------------------------

/// A 100 MB SSE line without a newline (after one good delta): the chat
/// ends `upstream_broken` naming the bound, and the gateway stops reading:
/// the upstream's writes plateau at the bound plus socket buffers, far
/// below 100 MB (before the bound, the gateway read it all into one line).
#[actix_web::test]
async fn an_endless_sse_line_is_cut_at_the_bound_and_reading_stops() {
    let mut prefix = event(&chunk("ok"));
    prefix.extend_from_slice(b"data: ");
    let flood = Reply::sse(vec![
        Part::Bytes(prefix),
        Part::Repeat {
            piece: vec![b'x'; 64 * 1024],
            total: 100 * MB as u64,
        },
    ]);
    // The default bound (1 MiB).
    let (fake, gw, mut ws) = fake_gateway_client(vec![flood], &[]).await;
    let frames = ws.chat("f", "flood", Duration::from_secs(30)).await;
    let err = expect_error(&frames, "upstream_broken");
    let message = message_of(err);
    assert!(
        message.contains("an SSE line over 1048576 bytes")
            && message.contains("--max-upstream-event-bytes"),
        "{message}"
    );
    assert_eq!(content_of(&frames), "ok", "what came before the line");
    let at = plateau(Duration::from_secs(20), Duration::from_millis(500), || {
        fake.body_written(0) as usize
    })
    .await
    .expect("the upstream kept being read");
    eprintln!(
        "bounded SSE line: upstream writes plateaued at {:.1} MB of a 100 MB line",
        at as f64 / MB as f64
    );
    assert!(at < 32 * MB, "the gateway read {at} bytes of one line");
    assert_eq!(fake.attempts(), 1, "an oversized answer is not retried");
    gw.stop(false).await;
}

#[actix_web::test]
async fn an_oversized_event_fails_before_and_after_the_commit_point() {
    // 70 data lines of 1 KiB: each line fits 64 KiB, the event does not.
    let line = format!("data: {}\n", "y".repeat(1024));
    let big = format!("{}\n", line.repeat(70));
    let script = vec![
        Reply::sse(vec![Part::bytes(&big)]),
        Reply::sse(vec![Part::Bytes(event(&chunk("a"))), Part::bytes(&big)]),
        // Under the bound is fine: one 65 KB delta.
        Reply::sse(vec![
            Part::Bytes(event(&chunk(&"z".repeat(65_000)))),
            Part::Bytes(done_event()),
        ]),
    ];
    let (fake, gw, mut ws) =
        fake_gateway_client(script, &["--max-upstream-event-bytes", "65536"]).await;
    for (id, content) in [("before", ""), ("after", "a")] {
        let frames = ws.chat(id, "hi", WAIT).await;
        let err = expect_error(&frames, "upstream_broken");
        assert!(
            message_of(err).contains("an SSE event over 65536 bytes"),
            "{err}"
        );
        assert!(
            of_type(&frames, "retry").is_empty(),
            "not retried: {frames:#?}"
        );
        assert_eq!(content_of(&frames), content);
    }
    let frames = ws.chat("fits", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "z".repeat(65_000));
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 3);
}

#[actix_web::test]
async fn a_whole_body_over_the_bound_is_refused() {
    let usage = json!(null);
    let big = completion(&"w".repeat(100_000), "stop", &usage);
    let small = completion("small answer", "stop", &usage);
    let script = vec![Reply::json(200, &big), Reply::json(200, &small)];
    let (fake, gw, mut ws) =
        fake_gateway_client(script, &["--max-upstream-body-bytes", "65536"]).await;
    let frames = ws.chat("big", "hi", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(
        message_of(err).contains("a body over 65536 bytes (--max-upstream-body-bytes)"),
        "{err}"
    );
    assert!(of_type(&frames, "retry").is_empty());
    let frames = ws.chat("small", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "small answer");
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 2);
}

#[test]
fn size_flags_and_variables_are_read_and_checked() {
    let c = test_config(&[]);
    assert_eq!(c.max_upstream_event_bytes, 1_048_576);
    assert_eq!(c.max_upstream_body_bytes, 16_777_216);
    let c = test_config(&[
        "--max-upstream-event-bytes",
        "2048",
        "--max-upstream-body-bytes",
        "4096",
    ]);
    assert_eq!(
        (c.max_upstream_event_bytes, c.max_upstream_body_bytes),
        (2048, 4096)
    );
    let env = |k: &str| match k {
        "NETFLY_MAX_UPSTREAM_EVENT_BYTES" => Some("5000".to_string()),
        "NETFLY_MAX_UPSTREAM_BODY_BYTES" => Some("6000".to_string()),
        _ => None,
    };
    let c = netfly::Config::from_args(Vec::<String>::new(), env).unwrap();
    assert_eq!(
        (c.max_upstream_event_bytes, c.max_upstream_body_bytes),
        (5000, 6000)
    );
    let err = netfly::Config::from_args(["--max-upstream-event-bytes", "10"], |_: &str| None)
        .unwrap_err();
    assert!(
        err.contains("--max-upstream-event-bytes") && err.contains("10"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn a_redirect_is_rejected_at_once_and_never_followed() {
    let target = FakeUpstream::start(vec![Reply::sse_words(&["followed"])]);
    let script = vec![
        Reply::body(301, "text/html", "<a>moved</a>").with_header("location", &target.url()),
        Reply::body(307, "text/plain", ""),
    ];
    let (fake, gw, mut ws) = fake_gateway_client(script, &[]).await;
    let frames = ws.chat("r1", "hi", WAIT).await;
    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    let message = message_of(err);
    assert!(
        message.contains("HTTP 301")
            && message.contains(&target.url())
            && message.contains("not followed"),
        "{message}"
    );
    assert!(of_type(&frames, "retry").is_empty());
    let frames = ws.chat("r2", "hi", WAIT).await;
    let err = expect_error(&frames, "upstream_rejected");
    assert!(message_of(err).contains("307"), "{err}");
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 2, "one attempt each");
    assert_eq!(target.attempts(), 0, "the Location is never followed");
}

// ---------------------------------------------------------------------------
// Content-encoded event streams
// ---------------------------------------------------------------------------

const WORDS: [&str; 4] = ["Zip", "ped", " str", "eam"];

/// The answer's events compressed with `coding`, flushed after each event
/// (as a streaming server does), as one byte string.
fn encoded(coding: &str) -> Vec<u8> {
    let events = sse_events(&WORDS);
    match coding {
        "gzip" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            for e in &events {
                enc.write_all(e).unwrap();
                enc.flush().unwrap();
            }
            enc.finish().unwrap()
        }
        "deflate" => {
            let mut enc =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            for e in &events {
                enc.write_all(e).unwrap();
                enc.flush().unwrap();
            }
            enc.finish().unwrap()
        }
        "br" => {
            let mut enc = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            for e in &events {
                enc.write_all(e).unwrap();
                enc.flush().unwrap();
            }
            enc.into_inner()
        }
        "zstd" => {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            for e in &events {
                enc.write_all(e).unwrap();
                enc.flush().unwrap();
            }
            enc.finish().unwrap()
        }
        other => panic!("no encoder for {other}"),
    }
}

#[actix_web::test]
async fn gzip_br_and_zstd_event_streams_are_decoded_however_split() {
    let plain = sse_body(&WORDS);
    let reply = Reply::dynamic(|req| {
        let msg = req.last_message();
        let (coding, k) = msg.split_once(' ').unwrap_or(("gzip", "0"));
        let k: usize = k.parse().unwrap_or(0);
        let body = encoded(coding);
        Reply::sse(with_gaps(split_at(&body, &[k]), Duration::from_millis(1)))
            .with_header("content-encoding", coding)
    });
    let (fake, gw, mut ws) = fake_gateway_client(vec![reply], &[]).await;
    let mut chats = 0;
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let len = encoded(coding).len();
        assert!(len < plain.len(), "{coding} compresses");
        // Every split for gzip; a few for the others.
        let step = if coding == "gzip" { 1 } else { 7 };
        for k in (0..len).step_by(step) {
            let id = format!("{coding}{k}");
            let frames = ws.chat(&id, &format!("{coding} {k}"), WAIT).await;
            expect_done(&frames);
            assert_eq!(content_of(&frames), WORDS.concat(), "{coding} split at {k}");
            chats += 1;
        }
    }
    gw.stop(false).await;
    assert_eq!(fake.attempts(), chats);
    let req = fake.request(0);
    assert_eq!(req.header("accept-encoding"), Some("identity"));
}

#[actix_web::test]
async fn an_unsupported_content_encoding_is_named() {
    let script =
        vec![Reply::sse_bytes(b"\x1f\x9d\x90garbage").with_header("content-encoding", "compress")];
    let (fake, gw, mut ws) = fake_gateway_client(script, &[]).await;
    let frames = ws.chat("c", "hi", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(
        message_of(err).contains("content-encoding `compress` is not supported"),
        "{err}"
    );
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 1);
}
