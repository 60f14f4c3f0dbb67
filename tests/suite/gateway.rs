//! Gateway integration tests: the real gateway, a scripted fake upstream and
//! a real WebSocket client, all in-process on 127.0.0.1 port 0. Section
//! numbers refer to /work/shared/PROTOCOL.md.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::fake::{
    chunk, chunk_with_delta, completion, done_event, event, finish_chunk, openai_error,
    usage_chunk, CHAT_PATH,
};
use crate::support::*;

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One SSE `data:` event part.
fn ev(data: &Value) -> Part {
    Part::Bytes(event(data))
}

fn done_part() -> Part {
    Part::Bytes(done_event())
}

fn usage() -> Value {
    json!({ "prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21 })
}

/// Starts `script` as the only upstream of a gateway with `args`, runs one
/// chat ("hello") to its terminal frame, checks nothing follows it, stops
/// the gateway. Returns the chat's frames and the fake (for its records).
async fn run_chat(script: Vec<Reply>, args: &[&str]) -> (Vec<Value>, FakeUpstream) {
    let fake = FakeUpstream::start(script);
    let frames = chat_once(&[&["--upstream", &fake.url()][..], args].concat()).await;
    (frames, fake)
}

/// Starts a gateway with `args`, runs one chat ("hello") to its terminal
/// frame, checks nothing follows it, stops the gateway; returns the frames.
async fn chat_once(args: &[&str]) -> Vec<Value> {
    let gw = start_gateway(args).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let frames = ws.chat("c1", "hello", WAIT).await;
    ws.expect_silence_for("c1", QUIET).await;
    gw.stop(false).await;
    frames
}

fn retry_attempts(frames: &[Value]) -> Vec<u64> {
    of_type(frames, "retry")
        .iter()
        .map(|f| f["attempt"].as_u64().unwrap())
        .collect()
}

fn deltas(frames: &[Value]) -> Vec<String> {
    of_type(frames, "delta")
        .iter()
        .map(|f| f["content"].as_str().unwrap().to_string())
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in body", String::from_utf8_lossy(needle)))
}

fn nth_find(haystack: &[u8], needle: &[u8], n: usize) -> usize {
    let mut from = 0;
    for _ in 0..n {
        from += find(&haystack[from..], needle) + 1;
    }
    from + find(&haystack[from..], needle)
}

// ---------------------------------------------------------------------------
// hello, start, deltas, done (§3)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The upstream request (§4)
// ---------------------------------------------------------------------------

/// Compares a forwarded param: the real-valued ones numerically (`-2` and
/// `-2.0` are the same JSON number), the integer and string ones exactly.
fn assert_close(actual: &Value, expected: &Value, what: &str) {
    let real = matches!(
        what,
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty"
    );
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) if real => {
            assert!((a - e).abs() < 1e-9, "{what}: {actual} != {expected}")
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

const FORWARDABLE: &[&str] = &[
    "model",
    "messages",
    "stream",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "stop",
    "seed",
];

#[actix_web::test]
async fn upstream_request_has_body_params_and_headers() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::sse_words(&["ok"])],
        &["--api-key", "sk-test-abc123"],
    )
    .await;
    let messages = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Hi ✓" },
        { "role": "assistant", "content": "Hello!" },
        { "role": "user", "content": "Again" }
    ]);
    let params = json!({
        "temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.5,
        "frequency_penalty": -1.25, "max_tokens": 10, "stop": ["\n\n", "END"], "seed": 42
    });
    ws.send_json(&json!({
        "type": "chat", "id": "p1", "model": "gpt-4", "messages": messages, "params": params
    }))
    .await;
    let frames = ws.chat_until_terminal("p1", WAIT).await;
    expect_done(&frames);
    gw.stop(false).await;

    assert_eq!(fake.attempts(), 1);
    let req = fake.request(0);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, CHAT_PATH);
    let ct = req.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let accept = req.header("accept").unwrap_or_default();
    assert!(accept.contains("text/event-stream"), "accept {accept:?}");
    assert!(
        !req.header("user-agent").unwrap_or_default().is_empty(),
        "user-agent missing: {:?}",
        req.headers
    );
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-abc123"));

    let body = req.json();
    assert_eq!(body["model"], "gpt-4");
    assert_eq!(body["messages"], messages);
    assert_eq!(body["stream"], true);
    for (k, v) in params.as_object().unwrap() {
        assert_close(&body[k], v, k);
    }
    for k in body.as_object().unwrap().keys() {
        assert!(
            FORWARDABLE.contains(&k.as_str()),
            "unexpected key {k:?} in upstream body {body}"
        );
    }
}

#[actix_web::test]
async fn upstream_request_without_key_or_params() {
    let (frames, fake) = run_chat(vec![Reply::sse_words(&["ok"])], &[]).await;
    expect_done(&frames);
    let req = fake.request(0);
    assert_eq!(req.header("authorization"), None, "{:?}", req.headers);
    let body = req.json();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["messages", "model", "stream"], "{body}");
    assert_eq!(body["model"], "gpt-3.5-turbo");
    assert_eq!(
        body["messages"],
        json!([{ "role": "user", "content": "hello" }])
    );
    assert_eq!(body["stream"], true);
}

// ---------------------------------------------------------------------------
// Retries (§4)
// ---------------------------------------------------------------------------

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

/// A chat whose first attempt gets `first` and whose second succeeds with
/// "ok" (checked): returns the frames and the fake.
async fn ok_on_the_second_attempt(first: Reply, args: &[&str]) -> (Vec<Value>, FakeUpstream) {
    let (frames, fake) = run_chat(vec![first, Reply::sse_words(&["ok"])], args).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "ok");
    assert_eq!(fake.attempts(), 2);
    (frames, fake)
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

// ---------------------------------------------------------------------------
// Rejections (§3 table, §4)
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn upstream_400_is_rejected_once_with_its_message() {
    let msg = "Invalid value for 'temperature': decimal above maximum value.";
    let (frames, fake) =
        run_chat(vec![Reply::error_json(400, msg)], &["--max-attempts", "5"]).await;
    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(
        message_of(err).contains(msg),
        "the upstream's message is passed on: {err}"
    );
    assert_eq!(fake.attempts(), 1, "4xx is never retried");
    assert!(of_type(&frames, "retry").is_empty());
    assert!(of_type(&frames, "start").is_empty(), "no start without 2xx");
}

#[actix_web::test]
async fn upstream_401_never_leaks_the_key() {
    let key = "sk-live-SECRET-0123456789abcdef";
    let msg = format!(
        "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let fake = FakeUpstream::start(vec![
        Reply::error_json(401, &msg).with_header("x-echo-key", key)
    ]);
    let gw = gateway_for(&fake, &["--api-key", key, "--max-attempts", "5"]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let hello = ws.hello().clone();
    let frames = ws.chat("k1", "hi", WAIT).await;
    ws.expect_silence_for("k1", QUIET).await;
    gw.stop(false).await;

    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(
        message_of(err).contains("Incorrect API key provided"),
        "the upstream's message is passed on: {err}"
    );
    let everything = format!("{hello}{}", serde_json::to_string(&frames).unwrap());
    assert!(
        !everything.contains(key),
        "API key leaked to the browser: {everything}"
    );
    assert!(!everything.contains("SECRET-0123456789"), "{everything}");
    assert_eq!(fake.attempts(), 1);
    assert_eq!(
        fake.request(0).header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
}

/// Retry reasons and the final error never carry the key either, even when
/// a 5xx body echoes it.
#[actix_web::test]
async fn upstream_5xx_echoing_the_key_never_leaks_it() {
    let key = "sk-live-SECRET-fedcba9876543210";
    let (frames, fake) = run_chat(
        vec![Reply::error_json(
            503,
            &format!("backend down for key {key}"),
        )],
        &["--api-key", key, "--max-attempts", "3"],
    )
    .await;
    expect_error(&frames, "upstream_unavailable");
    assert_eq!(fake.attempts(), 3);
    let everything = serde_json::to_string(&frames).unwrap();
    assert!(
        !everything.contains("SECRET-fedcba9876543210"),
        "API key leaked to the browser: {everything}"
    );
}

#[actix_web::test]
async fn other_4xx_are_rejected_too() {
    for status in [403u16, 404, 422] {
        let (frames, fake) = run_chat(
            vec![Reply::error_json(status, &format!("nope {status}"))],
            &["--max-attempts", "3"],
        )
        .await;
        let err = expect_error(&frames, "upstream_rejected");
        assert!(message_of(err).contains(&format!("nope {status}")));
        assert_eq!(fake.attempts(), 1, "status {status}");
    }
}

// ---------------------------------------------------------------------------
// Stream failures and the commit point (§4)
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn cut_after_a_delta_is_broken_without_repeat() {
    let cut = Reply::sse(vec![ev(&chunk("Hel")), Part::Delay(ms(100))]).with_end(End::Cut);
    let (frames, fake) = run_chat(
        vec![cut, Reply::sse_words(&["SHOULD NOT APPEAR"])],
        &["--max-attempts", "5"],
    )
    .await;
    let err = expect_error(&frames, "upstream_broken");
    assert_eq!(err["retryable"], true);
    assert_eq!(content_of(&frames), "Hel", "no text twice, none invented");
    assert_eq!(fake.attempts(), 1, "never retried after the commit point");
}

#[actix_web::test]
async fn cut_before_any_delta_is_retried() {
    let cut = Reply::sse(vec![Part::bytes(": hi\n\n")]).with_end(End::Cut);
    ok_on_the_second_attempt(cut, &["--max-attempts", "3"]).await;
}

#[actix_web::test]
async fn in_stream_error_after_a_delta_is_broken_with_its_message() {
    let script = vec![Reply::sse(vec![
        ev(&chunk("Hel")),
        ev(&openai_error(
            "The server had an error while processing your request",
        )),
        ev(&chunk("lo")),
        done_part(),
    ])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "5"]).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(message_of(err).contains("The server had an error"), "{err}");
    assert_eq!(content_of(&frames), "Hel");
    assert_eq!(fake.attempts(), 1);
}

/// The four shapes of an in-stream error (§4), each after a delta.
#[actix_web::test]
async fn in_stream_error_shapes_are_all_errors() {
    let fake = FakeUpstream::start(vec![Reply::dynamic(|req| {
        let which = req.last_message();
        let error: Vec<u8> = match which.as_str() {
            "named-event" => b"event: error\ndata: {\"message\":\"boom-named-event\"}\n\n".to_vec(),
            "error-key" => event(&json!({ "error": { "message": "boom-error-key", "type": "server_error" } })),
            "object-error" => event(&json!({
                "object": "error", "message": "boom-object-error", "type": "BadRequestError", "code": 400
            })),
            "error-field" => {
                b"error: {\"code\":500,\"message\":\"boom-error-field\",\"type\":\"server_error\"}\n\n"
                    .to_vec()
            }
            other => panic!("unexpected test message {other:?}"),
        };
        Reply::sse(vec![
            ev(&chunk("Hel")),
            Part::Bytes(error),
            ev(&chunk("lo")),
            done_part(),
        ])
    })]);
    let gw = gateway_for(&fake, &[]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    for which in ["named-event", "error-key", "object-error", "error-field"] {
        let frames = ws.chat(which, which, WAIT).await;
        let err = expect_error(&frames, "upstream_broken");
        assert!(
            message_of(err).contains(&format!("boom-{which}")),
            "{which}: {err}"
        );
        assert_eq!(content_of(&frames), "Hel", "{which}");
    }
    assert_eq!(fake.attempts(), 4);
    gw.stop(false).await;
}

#[actix_web::test]
async fn in_stream_error_before_any_delta_is_retried() {
    let script = vec![
        Reply::sse(vec![
            ev(&openai_error("overloaded, try again")),
            done_part(),
        ]),
        Reply::sse_words(&["fine"]),
    ];
    let (frames, fake) = run_chat(script, &["--max-attempts", "3"]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "fine");
    assert_eq!(fake.attempts(), 2);
    assert_eq!(retry_attempts(&frames), vec![2]);
    assert_eq!(of_type(&frames, "start").len(), 1, "start at most once");
}

#[actix_web::test]
async fn in_stream_error_before_any_delta_on_the_last_attempt_carries_its_message() {
    let script = vec![Reply::sse(vec![ev(&openai_error("overloaded, try again"))])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "1"]).await;
    let err = terminal(&frames);
    assert_eq!(err["type"], "error", "{frames:#?}");
    assert!(
        matches!(
            err["code"].as_str(),
            Some("upstream_broken" | "upstream_unavailable")
        ),
        "{err}"
    );
    assert!(
        message_of(err).contains("overloaded"),
        "carries the upstream's message: {err}"
    );
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn invalid_json_data_after_a_delta_is_an_error() {
    let script = vec![Reply::sse(vec![
        ev(&chunk("Hel")),
        Part::bytes("data: {\"choices\":[{\"delta\":{\"content\":\"lo\"\n\n"),
        ev(&chunk(" world")),
        ev(&finish_chunk("stop")),
        done_part(),
    ])];
    let (frames, fake) = run_chat(script, &["--max-attempts", "3"]).await;
    expect_error(&frames, "upstream_broken");
    assert_eq!(content_of(&frames), "Hel", "{frames:#?}");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn invalid_json_data_before_any_delta_fails_the_attempt() {
    let bad = Reply::sse(vec![Part::bytes("data: not json at all\n\n"), done_part()]);
    // Retried when attempts remain...
    ok_on_the_second_attempt(bad.clone(), &["--max-attempts", "2"]).await;
    // ...an error (never a silent `done`) on the last one.
    let (frames, _fake) = run_chat(vec![bad], &["--max-attempts", "1"]).await;
    let t = terminal(&frames);
    assert_eq!(
        t["type"], "error",
        "invalid JSON is never dropped: {frames:#?}"
    );
    assert_eq!(content_of(&frames), "");
}

// ---------------------------------------------------------------------------
// Fallback (§1 --upstream, §4)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Timeouts (§1, §4)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Stream ends (§4)
// ---------------------------------------------------------------------------

fn events_without_done() -> Vec<Part> {
    vec![
        ev(&chunk("Hel")),
        ev(&chunk("lo")),
        ev(&finish_chunk("stop")),
    ]
}

#[actix_web::test]
async fn stream_ending_without_done_marker_chunked() {
    let (frames, fake) = run_chat(vec![Reply::sse(events_without_done())], &[]).await;
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(content_of(&frames), "Hello");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn stream_ending_without_done_marker_close_delimited() {
    let reply = Reply::sse(events_without_done()).with_end(End::Close);
    let (frames, fake) = run_chat(vec![reply], &[]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "Hello");
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn unterminated_last_event_is_dropped() {
    let mut tail = b"data: ".to_vec();
    tail.extend(chunk("lo").to_string().bytes());
    let reply = Reply::sse(vec![ev(&chunk("Hel")), Part::Bytes(tail)]);
    let (frames, _fake) = run_chat(vec![reply], &[]).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "Hel");
}

// ---------------------------------------------------------------------------
// 2xx that is not text/event-stream (§4)
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn non_sse_whole_completion_is_one_delta() {
    let text = "Hello there, friend. ✓";
    let (frames, fake) = run_chat(
        vec![Reply::json(200, &completion(text, "stop", &usage()))],
        &[],
    )
    .await;
    assert_eq!(deltas(&frames), vec![text]);
    let done = expect_done(&frames);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"], usage());
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn non_sse_json_error_is_rejected() {
    let (frames, fake) = run_chat(
        vec![Reply::json(
            200,
            &openai_error("You exceeded your current quota"),
        )],
        &["--max-attempts", "3"],
    )
    .await;
    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(message_of(err).contains("You exceeded your current quota"));
    assert_eq!(fake.attempts(), 1);
}

#[actix_web::test]
async fn non_sse_other_body_is_broken() {
    let (frames, _fake) = run_chat(
        vec![Reply::body(200, "text/html", "<html>hello</html>")],
        &["--max-attempts", "1"],
    )
    .await;
    expect_error(&frames, "upstream_broken");
    assert_eq!(content_of(&frames), "");
}

// ---------------------------------------------------------------------------
// Cancel and disconnects (§3, §4 last bullet)
// ---------------------------------------------------------------------------

fn stalled_after_hel() -> Reply {
    Reply::sse(vec![ev(&chunk("Hel"))]).with_end(End::Stall)
}

/// A gateway (with `args`) whose upstream sends "Hel" and then stalls, and
/// a client (answering pings or not) whose chat "k1" got that delta.
async fn client_mid_stream(
    args: &[&str],
    auto_pong: bool,
) -> (FakeUpstream, netfly::Gateway, WsClient) {
    let (fake, gw, mut ws) = fake_gateway_client(vec![stalled_after_hel()], args).await;
    ws.set_auto_pong(auto_pong);
    ws.send_chat("k1", "hi").await;
    ws.expect_type("k1", "delta", WAIT).await;
    (fake, gw, ws)
}

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

// ---------------------------------------------------------------------------
// Several chats per socket (§1 --max-streams-per-connection, §3)
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn four_interleaved_chats_stay_apart() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(10))], &[]).await;
    let texts = [
        ("a", "alpha one two three four five six seven"),
        ("b", "bravo uno dos tres cuatro cinco seis"),
        ("c", "charlie eins zwei drei vier fünf sechs"),
        ("d", "delta 一 二 三 四 五 六 七 🎉"),
    ];
    for (id, text) in texts {
        ws.send_chat(id, text).await;
    }
    for (id, text) in texts {
        let frames = ws.chat_until_terminal(id, WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), text, "chat {id}");
    }
    for (id, _) in texts {
        ws.expect_silence_for(id, ms(100)).await;
    }
    assert!(ws.backlog().is_empty(), "stray frames: {:?}", ws.backlog());
    assert_eq!(fake.attempts(), 4);
    gw.stop(false).await;
}

#[actix_web::test]
async fn fifth_chat_in_flight_is_busy() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(600))], &[]).await;
    assert_eq!(ws.hello()["max_streams"], 4);
    let ids = ["c1", "c2", "c3", "c4"];
    for id in ids {
        ws.send_chat(id, &format!("{id}-first {id}-second")).await;
    }
    for id in ids {
        ws.expect_type(id, "delta", WAIT).await;
    }
    ws.send_chat("c5", "too many").await;
    let busy = ws
        .next_matching(WAIT, |v| v["type"] == "error" && v["id"] == "c5")
        .await
        .unwrap_or_else(|| panic!("no busy error for c5; backlog {:?}", ws.backlog()));
    assert_eq!(busy["code"], "busy", "{busy}");
    assert_eq!(busy["retryable"], true, "{busy}");
    ws.expect_silence_for("c5", ms(100)).await;
    for id in ids {
        let rest = ws.chat_until_terminal(id, WAIT).await;
        expect_done(&rest);
        // The first delta was taken out above; the rest completes the text.
        assert_eq!(
            format!("{id}-first {}", content_of(&rest)),
            format!("{id}-first {id}-second"),
            "chat {id} unaffected"
        );
    }
    assert_eq!(fake.attempts(), 4, "the busy chat never went upstream");
    // The slots are free again.
    let frames = ws.chat("c6", "again", WAIT).await;
    assert_eq!(content_of(&frames), "again");
    gw.stop(false).await;
}

#[actix_web::test]
async fn duplicate_id_in_flight_is_rejected_and_the_running_chat_untouched() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(400))], &[]).await;
    ws.send_chat("d1", "one two").await;
    ws.expect_type("d1", "delta", WAIT).await;
    ws.send_chat("d1", "duplicate").await;
    let err = ws
        .next_unattributed(WAIT)
        .await
        .expect("an error with id null for the duplicate");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "bad_request", "{err}");
    assert_eq!(err["retryable"], false, "{err}");
    let rest = ws.chat_until_terminal("d1", WAIT).await;
    expect_done(&rest);
    assert_eq!(content_of(&rest), "two", "the running chat is untouched");
    ws.expect_silence_for("d1", QUIET).await;
    assert_eq!(fake.attempts(), 1);
    // Once finished, the id may be used again.
    let frames = ws.chat("d1", "reuse", WAIT).await;
    assert_eq!(content_of(&frames), "reuse");
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Bad input (§3)
// ---------------------------------------------------------------------------

enum Input {
    Text(String),
    Binary,
}

/// A valid chat frame with `changes` applied (`null` removes a key).
fn chat_with(changes: Value) -> Input {
    let mut frame = json!({
        "type": "chat", "id": "bad-1",
        "messages": [{ "role": "user", "content": "hi" }]
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            frame.as_object_mut().unwrap().remove(k);
        } else {
            frame[k] = v.clone();
        }
    }
    Input::Text(frame.to_string())
}

fn with_params(params: Value) -> Input {
    chat_with(json!({ "params": params }))
}

fn with_message(message: Value) -> Input {
    chat_with(json!({ "messages": [message] }))
}

fn user_messages(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "role": "user", "content": format!("m{i}") }))
            .collect(),
    )
}

/// (label, input, expected code, whether `"id": null` is required).
type BadInput = (&'static str, Input, &'static str, bool);

/// A `bad_request` whose error may carry the chat's id or null.
fn bad(label: &'static str, input: Input) -> BadInput {
    (label, input, "bad_request", false)
}

/// A `bad_request` whose error must carry `"id": null`.
fn bad_id(label: &'static str, input: Input) -> BadInput {
    (label, input, "bad_request", true)
}

fn bad_inputs() -> Vec<BadInput> {
    let text = |s: &str| Input::Text(s.to_string());
    let mut cases = vec![
        bad_id("malformed JSON", text("{not json")),
        bad_id("empty text", text("")),
        bad_id("JSON array", text("[1,2,3]")),
        bad_id("JSON string", text("\"chat\"")),
    ];
    // (label, changes to a valid chat frame, whether `"id": null` is required)
    let frame_changes = [
        ("missing type", json!({ "type": null }), false),
        ("unknown type", json!({ "type": "bogus" }), false),
        ("type not a string", json!({ "type": 7 }), false),
        ("missing id", json!({ "id": null }), true),
        ("id too long", json!({ "id": "x".repeat(65) }), true),
        ("empty id", json!({ "id": "" }), true),
        ("control char in id", json!({ "id": "a\u{7}b" }), true),
        ("non-ASCII id", json!({ "id": "héllo" }), true),
        ("numeric id", json!({ "id": 42 }), true),
        ("model not a string", json!({ "model": 7 }), false),
        ("no messages", json!({ "messages": [] }), false),
        (
            "257 messages",
            json!({ "messages": user_messages(257) }),
            false,
        ),
        ("messages missing", json!({ "messages": null }), false),
        ("messages a string", json!({ "messages": "hi" }), false),
        (
            "message not an object",
            json!({ "messages": ["hi"] }),
            false,
        ),
        ("params not an object", json!({ "params": "hot" }), false),
    ];
    for (label, changes, id_null) in frame_changes {
        cases.push((label, chat_with(changes), "bad_request", id_null));
    }
    cases.push((
        "unknown model",
        chat_with(json!({ "model": "gpt-5-ultra" })),
        "unknown_model",
        false,
    ));
    let messages = [
        ("bad role", json!({ "role": "tool", "content": "x" })),
        ("missing role", json!({ "content": "x" })),
        ("number content", json!({ "role": "user", "content": 5 })),
        ("null content", json!({ "role": "user", "content": null })),
        ("missing content", json!({ "role": "user" })),
        (
            "array content",
            json!({ "role": "user", "content": [{ "type": "text", "text": "x" }] }),
        ),
    ];
    cases.extend(messages.map(|(label, m)| bad(label, with_message(m))));
    let params = [
        ("unknown param", json!({ "foo": 1 })),
        ("param stream", json!({ "stream": false })),
        ("param model", json!({ "model": "gpt-4" })),
        ("temperature > 2", json!({ "temperature": 2.5 })),
        ("temperature < 0", json!({ "temperature": -0.1 })),
        ("temperature a string", json!({ "temperature": "hot" })),
        ("top_p > 1", json!({ "top_p": 1.5 })),
        ("top_p < 0", json!({ "top_p": -0.1 })),
        ("presence_penalty < -2", json!({ "presence_penalty": -2.5 })),
        ("presence_penalty > 2", json!({ "presence_penalty": 2.1 })),
        ("frequency_penalty > 2", json!({ "frequency_penalty": 3 })),
        ("frequency_penalty < -2", json!({ "frequency_penalty": -3 })),
        ("max_tokens 0", json!({ "max_tokens": 0 })),
        ("max_tokens negative", json!({ "max_tokens": -1 })),
        ("max_tokens fractional", json!({ "max_tokens": 1.5 })),
        ("max_tokens a string", json!({ "max_tokens": "10" })),
        (
            "stop with 5 strings",
            json!({ "stop": ["a", "b", "c", "d", "e"] }),
        ),
        ("stop a number", json!({ "stop": 7 })),
        ("stop with a number", json!({ "stop": ["a", 1] })),
        ("seed fractional", json!({ "seed": 1.5 })),
        ("seed a string", json!({ "seed": "x" })),
    ];
    cases.extend(params.map(|(label, p)| bad(label, with_params(p))));
    cases.push(bad_id("cancel without id", text("{\"type\":\"cancel\"}")));
    cases.push(bad_id("binary frame", Input::Binary));
    cases
}

#[actix_web::test]
async fn every_bad_input_is_answered_and_the_socket_survives() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(Duration::ZERO)], &[]).await;
    let cases = bad_inputs();
    let mut valid = 0;
    for (i, (label, input, code, id_null)) in cases.into_iter().enumerate() {
        match &input {
            Input::Text(t) => ws.send_text(t).await,
            Input::Binary => ws.send_binary(b"\x00\x01binary").await,
        }
        let err = ws
            .next_json(WAIT)
            .await
            .unwrap_or_else(|| panic!("{label}: no answer (socket closed: {})", ws.is_closed()));
        assert_eq!(err["type"], "error", "{label}: {err}");
        assert_eq!(err["code"], code, "{label}: {err}");
        assert_eq!(err["retryable"], false, "{label}: {err}");
        assert!(err["message"].is_string(), "{label}: {err}");
        if id_null {
            assert!(err["id"].is_null(), "{label}: id must be null: {err}");
        } else {
            assert!(
                err["id"].is_null() || err["id"] == "bad-1",
                "{label}: id must be null or the chat's: {err}"
            );
        }
        // The socket still works.
        let id = format!("ok-{i}");
        let text = format!("still fine after {label}");
        let frames = ws.chat(&id, &text, WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), text, "{label}");
        valid += 1;
        assert!(
            ws.backlog().is_empty(),
            "{label}: stray frames {:?}",
            ws.backlog()
        );
    }
    ws.expect_no_frame(QUIET).await;
    assert_eq!(fake.attempts(), valid, "no bad input reached the upstream");
    gw.stop(false).await;
}

/// The edges of every limit are accepted and forwarded.
#[actix_web::test]
async fn inputs_at_the_limits_are_accepted() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::sse_words(&["ok"])], &[]).await;
    let long_id: String = (0..64).map(|i| (b' ' + (i % 95) as u8) as char).collect();
    assert_eq!(long_id.len(), 64);
    let cases = vec![
        json!({ "id": long_id.clone() }),
        json!({ "id": "~" }),
        json!({ "messages": user_messages(256) }),
        json!({ "model": "gpt-4" }),
        json!({ "messages": [
            { "role": "system", "content": "" },
            { "role": "assistant", "content": "a" },
            { "role": "user", "content": "b" }
        ] }),
        json!({ "params": { "temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": -2 } }),
        json!({ "params": { "temperature": 2, "top_p": 1, "presence_penalty": 2, "frequency_penalty": 2 } }),
        json!({ "params": { "max_tokens": 1, "stop": "x", "seed": -5 } }),
        json!({ "params": { "stop": ["a", "b", "c", "d"], "seed": 0 } }),
        json!({ "params": {} }),
    ];
    for (n, changes) in cases.iter().enumerate() {
        let id = changes["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("edge-{n}"));
        let mut frame = json!({
            "type": "chat", "id": id,
            "messages": [{ "role": "user", "content": "hi" }]
        });
        for (k, v) in changes.as_object().unwrap() {
            frame[k] = v.clone();
        }
        ws.send_json(&frame).await;
        let frames = ws.chat_until_terminal(&id, WAIT).await;
        expect_done(&frames);
        let req = fake.request(n);
        let body = req.json();
        assert_eq!(body["messages"], frame["messages"], "case {n}");
        if let Some(params) = changes.get("params") {
            for (k, v) in params.as_object().unwrap() {
                assert_close(&body[k], v, k);
            }
        }
    }
    gw.stop(false).await;
}

#[actix_web::test]
async fn frame_over_max_frame_bytes_closes_1009() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::echo(Duration::ZERO)],
        &["--max-frame-bytes", "1024"],
    )
    .await;
    // Just under the limit is fine.
    let text = "y".repeat(900);
    let frame = chat_frame("small", &text).to_string();
    assert!(frame.len() <= 1024);
    ws.send_text(&frame).await;
    let frames = ws.chat_until_terminal("small", WAIT).await;
    assert_eq!(content_of(&frames), text);
    // Over it closes the socket with 1009.
    let big = chat_frame("big", &"z".repeat(4096)).to_string();
    ws.try_send_text(&big).await;
    assert!(ws.wait_closed(ms(3000)).await, "socket not closed");
    assert_eq!(ws.close_code(), Some(1009));
    assert_eq!(fake.attempts(), 1);
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Scale, demo, HTTP surface
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn two_hundred_sockets_at_once_all_exact() {
    const N: usize = 200;
    let fake = FakeUpstream::start(vec![Reply::echo(ms(5))]);
    let gw = gateway_for(&fake, &[]).await;
    let clients = join_all((0..N).map(|_| WsClient::connect(gw.addr))).await;
    let results = join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| async move {
                let text = format!("client {i} says hello to the gateway ✓");
                ws.send_chat("m", &text).await;
                let frames = ws.chat_until_terminal("m", Duration::from_secs(60)).await;
                (text, frames, ws)
            }),
    )
    .await;
    for (text, frames, _ws) in &results {
        expect_done(frames);
        assert_eq!(&content_of(frames), text);
    }
    assert_eq!(fake.attempts(), N);
    drop(results);
    gw.stop(false).await;
}

#[actix_web::test]
async fn demo_upstream_is_the_default_and_deterministic() {
    let mut answers = Vec::new();
    for _ in 0..2 {
        let gw = start_gateway(&["--demo-word-delay-ms", "1"]).await;
        let mut ws = WsClient::connect(gw.addr).await;
        for id in ["d1", "d2"] {
            let frames = ws.chat(id, "Tell me about Rust", WAIT).await;
            expect_done(&frames);
            assert!(of_type(&frames, "error").is_empty());
            let text = content_of(&frames);
            assert!(!text.trim().is_empty(), "the demo answered nothing");
            answers.push(text);
        }
        ws.expect_silence_for("d2", ms(100)).await;
        gw.stop(false).await;
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "demo answers differ: {answers:#?}"
    );
}

#[actix_web::test]
async fn healthz_and_metrics() {
    let fake = FakeUpstream::start(vec![Reply::sse_words(&["ok"])]);
    let gw = gateway_for(&fake, &[]).await;
    let (status, body) = http_get(gw.addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut ws = WsClient::connect(gw.addr).await;
    expect_done(&ws.chat("c1", "hi", WAIT).await);
    let (status, metrics) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "netfly_ws_connections",
        "netfly_chats_active",
        "netfly_chats_total",
        "netfly_upstream_attempts_total",
        "netfly_deltas_total",
        "netfly_upstream_first_byte_seconds",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    gw.stop(false).await;
}

#[actix_web::test]
async fn origins_are_checked() {
    let gw = start_gateway(&["--allowed-origins", "http://good.example"]).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Some(403)
    );
    WsClient::connect_with(gw.addr, "/ws", &[("Origin", "http://good.example")]).await;
    WsClient::connect(gw.addr).await; // no Origin: not a browser, allowed
    gw.stop(false).await;

    // Default: same host only.
    let gw = start_gateway(&[]).await;
    let same = format!("http://{}", gw.addr);
    WsClient::connect_with(gw.addr, "/ws", &[("Origin", same.as_str())]).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Some(403)
    );
    gw.stop(false).await;
}

#[actix_web::test]
async fn auth_tokens_are_required_when_set() {
    let gw = start_gateway(&["--auth-tokens", "t1,t2"]).await;
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(401));
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws?token=wrong", &[]).await,
        Some(401)
    );
    WsClient::connect_with(gw.addr, "/ws?token=t2", &[]).await;
    WsClient::connect_with(gw.addr, "/ws", &[("Authorization", "Bearer t1")]).await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn max_connections_refuses_one_more() {
    let gw = start_gateway(&["--max-connections", "2"]).await;
    let a = WsClient::connect(gw.addr).await;
    let _b = WsClient::connect(gw.addr).await;
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(503));
    drop(a);
    let deadline = Instant::now() + ms(3000);
    loop {
        match WsClient::try_connect(gw.addr, "/ws", &[]).await {
            Ok(_) => break,
            Err(503) if Instant::now() < deadline => tokio::time::sleep(ms(50)).await,
            Err(s) => panic!("a freed slot was not reused: HTTP {s}"),
        }
    }
    gw.stop(false).await;
}

/// Graceful drain (§1): no new sockets, the stream in flight finishes,
/// then the socket is closed with 1001.
#[actix_web::test]
async fn graceful_shutdown_lets_streams_finish_then_closes_1001() {
    let fake = FakeUpstream::start(vec![Reply::sse_words_slow(
        &["one ", "two ", "three"],
        ms(200),
    )]);
    let gw = gateway_for(&fake, &[]).await;
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

// ---------------------------------------------------------------------------
// Self-checks of the harness (so a passing test means what it says)
// ---------------------------------------------------------------------------

async fn post(client: &awc::Client, url: &str) -> awc::ClientResponse {
    client
        .post(url)
        .insert_header(("accept", "text/event-stream"))
        .send_json(&json!({ "probe": true }))
        .await
        .expect("request to the fake upstream")
}

#[actix_web::test]
async fn harness_fake_upstream_behaves() {
    init();
    let fake = FakeUpstream::start(vec![
        Reply::status(503).with_header("retry-after", "0"),
        Reply::sse_words(&["a", "b"]),
        Reply::sse(events_without_done()).with_end(End::Close),
        Reply::sse(vec![ev(&chunk("x"))]).with_end(End::Cut),
        stalled_after_hel(),
    ]);
    let client = awc::Client::default();

    let mut r = post(&client, &fake.url()).await;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "0");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    let mut r = post(&client, &fake.url()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(r.body().await.unwrap(), fake::sse_body(&["a", "b"]));
    // Requests are counted per request: both came on one kept-alive connection.
    assert_eq!((fake.attempts(), fake.connections()), (2, 1));

    // A close-delimited body is read to its end.
    let mut r = post(&client, &fake.url()).await;
    let expected: Vec<u8> = events_without_done()
        .into_iter()
        .flat_map(|p| match p {
            Part::Bytes(b) => b,
            Part::Delay(_) => Vec::new(),
        })
        .collect();
    assert_eq!(r.body().await.unwrap(), expected);

    // A cut body is an error for the client.
    let mut r = post(&client, &fake.url()).await;
    assert!(r.body().await.is_err(), "a cut body must not look complete");
    assert_eq!(
        fake.disconnects(),
        0,
        "complete replies are not disconnects"
    );

    // Dropping a response mid-stream is seen as a client disconnect.
    let mut r = post(&client, &fake.url()).await;
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(WAIT, r.next()).await.unwrap();
    assert!(first.unwrap().unwrap().starts_with(b"data: "));
    drop(r);
    fake.expect_client_disconnect("after dropping a response mid-stream")
        .await;

    let req = fake.request(0);
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", CHAT_PATH)
    );
    assert_eq!(req.json(), &json!({ "probe": true }));
    assert_eq!(fake.attempts(), 5);

    // Nothing listens on closed_port_url.
    assert!(client.post(closed_port_url()).send().await.is_err());
}
