//! The text of a chat as the browser gets it (PROTOCOL §3): `hello` first,
//! one `start`, the deltas exactly as the upstream sent them however its SSE
//! bytes were split or spelt (§4), then `done` with the finish reason and
//! usage.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fake::{self, chunk, done_part, ev, finish_chunk, usage, usage_chunk};
use crate::support::*;

/// The offset of the first `needle` in `haystack` (panics if absent).
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in body", String::from_utf8_lossy(needle)))
}

/// The offset of the `n`-th (0-based) `needle` in `haystack`.
fn nth_find(haystack: &[u8], needle: &[u8], n: usize) -> usize {
    let mut from = 0;
    for _ in 0..n {
        from += find(&haystack[from..], needle) + 1;
    }
    from + find(&haystack[from..], needle)
}

#[actix_web::test]
async fn hello_is_the_first_frame() {
    let gw = start_gateway(&[
        "--models",
        "alpha,beta",
        "--max-streams-per-connection",
        "3",
    ])
    .await;
    let ws = WsClient::connect(gw.addr).await;
    let hello = ws.hello();
    assert_eq!(hello["models"], json!(["alpha", "beta"]), "{hello}");
    assert_eq!(hello["default_model"], "alpha", "{hello}");
    assert_eq!(hello["max_streams"], 3, "{hello}");
    drop(ws);
    gw.stop(false).await;

    let gw = start_gateway(&[]).await;
    let ws = WsClient::connect(gw.addr).await;
    let hello = ws.hello();
    assert_eq!(
        hello["models"],
        json!(["gpt-3.5-turbo", "gpt-4"]),
        "{hello}"
    );
    assert_eq!(hello["default_model"], "gpt-3.5-turbo", "{hello}");
    assert_eq!(hello["max_streams"], 4, "{hello}");
    drop(ws);
    gw.stop(false).await;
}

/// A CRLF stream cut inside `data:`, inside multi-byte UTF-8 characters and
/// between CR and LF: every delta is exactly the upstream's piece.
#[actix_web::test]
async fn exact_text_across_awkward_splits_with_crlf() {
    let pieces = [
        "Hél",
        "lo, wörld ",
        "🎉 and ",
        "\"quotes\" \\ back\tslash\nnewline",
        " 日本語",
    ];
    let mut body: Vec<u8> = b": a comment\r\n\r\n".to_vec();
    for p in pieces {
        body.extend(format!("data: {}\r\n\r\n", chunk(p)).bytes());
    }
    body.extend(format!("data: {}\r\n\r\n", finish_chunk("stop")).bytes());
    body.extend(b"data: [DONE]\r\n\r\n");

    let emoji = find(&body, "🎉".as_bytes());
    let o_umlaut = find(&body, "ö".as_bytes());
    let nihon = find(&body, "日".as_bytes());
    let second_data = nth_find(&body, b"data:", 1);
    let third_data = nth_find(&body, b"data:", 2);
    let crlf_after_third = third_data + find(&body[third_data..], b"\r\n");
    let blank_after_fourth = {
        let d = nth_find(&body, b"data:", 3);
        d + find(&body[d..], b"\r\n\r\n")
    };
    let cuts = [
        second_data + 2,        // "da|ta:"
        second_data + 5,        // "data:| "
        o_umlaut + 1,           // inside a 2-byte char
        emoji + 1,              // inside a 4-byte char, twice
        emoji + 3,              //
        crlf_after_third + 1,   // CR | LF
        blank_after_fourth + 1, // CR | LF CR LF
        blank_after_fourth + 2, // CR LF | CR LF
        blank_after_fourth + 3, // CR LF CR | LF
        nihon + 2,              // inside a 3-byte char
    ];
    let (frames, fake) = run_chat(vec![Reply::sse_split(&body, &cuts, ms(15))], &[]).await;
    assert_eq!(deltas(&frames), pieces.to_vec(), "{frames:#?}");
    assert_eq!(content_of(&frames), pieces.concat());
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"], Value::Null, "no usage was sent: {done}");
    assert_eq!(fake.attempts(), 1);
}

/// The same stream written one byte per TCP write.
#[actix_web::test]
async fn exact_text_byte_by_byte() {
    let pieces = ["Ünï", "cödé ", "✓ 🎉", " end"];
    let body = fake::sse_body(&pieces);
    let cuts: Vec<usize> = (1..body.len()).collect();
    let (frames, _fake) = run_chat(vec![Reply::sse_split(&body, &cuts, Duration::ZERO)], &[]).await;
    assert_eq!(deltas(&frames), pieces.to_vec());
    expect_done(&frames);
}

/// BOM, CR-only lines, `data:` without a space, multi-line data, ignored
/// fields, heartbeats and text-less chunks (§4).
#[actix_web::test]
async fn sse_variants_are_understood() {
    let mut body: Vec<u8> = "\u{FEFF}retry: 1000\r".as_bytes().to_vec();
    body.extend(format!("id: 7\revent: message\rdata:{}\r\r", chunk("A")).bytes());
    body.extend(b"data: \n\ndata:    \n\n");
    body.extend(b"data: {\"choices\":[]}\n\n");
    body.extend(b"data: {\"choices\":null}\n\n");
    body.extend(b"data: {\"id\":\"no-choices\"}\n\n");
    body.extend(b"data: {\"choices\":[{\"index\":0,\"delta\":null}]}\n\n");
    body.extend(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null}}]}\n\n");
    body.extend(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n");
    body.extend(
        b"data: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"B\"}}]}\r\n\r\n",
    );
    body.extend(b": comment\n");
    body.extend(format!("data: {}\n\n", chunk("C")).bytes());
    body.extend(format!("data: {}\n\n", finish_chunk("stop")).bytes());
    body.extend(b"data: [DONE]\n\n");
    let (frames, _fake) = run_chat(vec![Reply::sse_bytes(&body)], &[]).await;
    assert_eq!(deltas(&frames), vec!["A", "B", "C"], "{frames:#?}");
    assert_eq!(expect_done(&frames)["finish_reason"], "stop");
}

#[actix_web::test]
async fn start_frame_once_with_host_model_and_attempt() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::sse_words(&["Hel", "lo"])],
        &["--models", "m1,m2"],
    )
    .await;
    ws.send_json(&json!({
        "type": "chat", "id": "s1", "model": "m2",
        "messages": [{ "role": "user", "content": "hi" }]
    }))
    .await;
    let frames = ws.chat_until_terminal("s1", WAIT).await;
    assert_eq!(frames[0]["type"], "start", "start comes first: {frames:#?}");
    assert_eq!(of_type(&frames, "start").len(), 1);
    let start = &frames[0];
    assert_eq!(
        start["upstream"],
        fake.host(),
        "host only, no path: {start}"
    );
    assert_eq!(start["attempt"], 1);
    assert_eq!(start["model"], "m2");
    assert_eq!(deltas(&frames), vec!["Hel", "lo"]);
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"], Value::Null);
    ws.expect_silence_for("s1", QUIET).await;

    // The default model when the chat names none.
    let frames = ws.chat("s2", "hi", WAIT).await;
    assert_eq!(frames[0]["model"], "m1");
    assert_eq!(fake.request(1).json()["model"], "m1");
    gw.stop(false).await;
}

#[actix_web::test]
async fn usage_and_finish_reason_forwarded_in_done() {
    let script = vec![Reply::sse(vec![
        ev(&chunk("Hel")),
        ev(&chunk("lo")),
        ev(&finish_chunk("length")),
        ev(&usage_chunk(&usage())),
        done_part(),
    ])];
    let (frames, _fake) = run_chat(script, &[]).await;
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["usage"], usage());
    assert_eq!(content_of(&frames), "Hello");
}
