//! Everything a modern chat carries on `/ws` (issue 12): reasoning frames
//! from the three real shapes (§3.2), content parts and the `developer`
//! role forwarded upstream unchanged (§3.1, §4), and the provider-file
//! switches `developer_as_system` and `include_usage`.

use serde_json::{json, Value};

use crate::support::fake::{chunk_with_delta, done_part, ev, finish_chunk, usage, usage_chunk};
use crate::support::temp_file::write_file;
use crate::support::*;

/// A stream of `deltas` (each a chunk's `delta`), a finish chunk, `[DONE]`.
fn stream_of(deltas: &[Value]) -> Reply {
    let mut parts: Vec<Part> = deltas
        .iter()
        .map(|d| ev(&chunk_with_delta(d.clone(), Value::Null)))
        .collect();
    parts.push(ev(&finish_chunk("stop")));
    parts.push(done_part());
    Reply::sse(parts)
}

/// The reasoning frames and the deltas of a chat, in arrival order, as
/// ("reasoning" | "delta", content).
fn pieces(frames: &[Value]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|f| f["type"] == "reasoning" || f["type"] == "delta")
        .map(|f| {
            (
                f["type"].as_str().unwrap_or_default().to_owned(),
                f["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn r(s: &str) -> (String, String) {
    ("reasoning".into(), s.into())
}

fn d(s: &str) -> (String, String) {
    ("delta".into(), s.into())
}

/// The three shapes real providers stream (DeepSeek `reasoning_content`,
/// OpenRouter / newer vLLM `reasoning`, OpenRouter `reasoning_details`;
/// see the citations in tests/suite/completion.rs), each becomes `reasoning`
/// frames in order, never mixed into `delta`, and a chunk with both yields
/// its reasoning first.
#[actix_web::test]
async fn reasoning_in_each_shape_becomes_reasoning_frames() {
    let deltas = [
        json!({ "role": "assistant", "content": null, "reasoning_content": "First, " }),
        json!({ "content": null, "reasoning_content": "deepseek. " }),
        json!({ "content": "", "reasoning": "Then openrouter; ", "reasoning_content": "Then openrouter; " }),
        json!({ "reasoning_details": [
            { "type": "reasoning.summary", "summary": "summary, ", "index": 0 },
            { "type": "reasoning.encrypted", "data": "gAAAAB…", "index": 1 },
            { "type": "reasoning.text", "text": "details.", "index": 2 }
        ] }),
        json!({ "content": "The answer", "reasoning": " last thought" }),
        json!({ "content": " is 42." }),
    ];
    let (_fake, gw, mut ws) = fake_gateway_client(vec![stream_of(&deltas)], &[]).await;
    let frames = ws.chat("c1", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(
        pieces(&frames),
        vec![
            r("First, "),
            r("deepseek. "),
            r("Then openrouter; "),
            r("summary, "),
            r("details."),
            r(" last thought"),
            d("The answer"),
            d(" is 42."),
        ]
    );
    assert_eq!(content_of(&frames), "The answer is 42.");
    expect_metric(gw.addr, "netfly_reasoning_deltas_total 6").await;
    gw.stop(false).await;
}

/// Reasoning is text sent to the client: a failure after it is past the
/// commit point (`upstream_broken`, never a second attempt that would show
/// the reasoning twice).
#[actix_web::test]
async fn reasoning_counts_toward_the_commit_point() {
    let cut = Reply::sse(vec![
        ev(&chunk_with_delta(
            json!({ "reasoning_content": "Hmm, " }),
            Value::Null,
        )),
        Part::Delay(std::time::Duration::from_millis(30)),
    ])
    .with_end(End::Cut);
    let (fake, gw, mut ws) =
        fake_gateway_client(vec![cut, Reply::sse_words(&["never"])], &[]).await;
    let frames = ws.chat("c1", "hi", WAIT).await;
    expect_error(&frames, "upstream_broken");
    assert_eq!(pieces(&frames), vec![r("Hmm, ")]);
    assert_eq!(fake.attempts(), 1, "retried after the reasoning was sent");
    gw.stop(false).await;
}

/// Content parts, names and the `developer` role reach the upstream exactly
/// as the client sent them.
#[actix_web::test]
async fn parts_and_developer_messages_go_upstream_unchanged() {
    let messages = json!([
        { "role": "developer", "content": "Answer in one word." },
        { "role": "user", "name": "ann", "content": [
            { "type": "text", "text": "What is in the picture?" },
            { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "detail": "low" } },
            { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } }
        ] }
    ]);
    let (fake, gw, mut ws) =
        fake_gateway_client(vec![Reply::sse_words(&["A", " cat."])], &[]).await;
    ws.send_json(&json!({ "type": "chat", "id": "c1", "messages": messages }))
        .await;
    let frames = ws.chat_until_terminal("c1", WAIT).await;
    expect_done(&frames);
    assert_eq!(fake.request(0).json()["messages"], messages);
    assert!(fake.request(0).json().get("stream_options").is_none());
    gw.stop(false).await;
}

/// An image over `--max-image-bytes` is refused, precisely, and never
/// reaches the upstream.
#[actix_web::test]
async fn an_image_over_the_limit_is_refused() {
    let (fake, gw, mut ws) = fake_gateway_client(
        vec![Reply::sse_words(&["x"])],
        &flags("--max-image-bytes 100"),
    )
    .await;
    assert_eq!(ws.hello()["max_image_bytes"], 100);
    let url = format!("data:image/png;base64,{}", "A".repeat(200));
    ws.send_json(&json!({ "type": "chat", "id": "c1", "messages": [
        { "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }
    ] }))
    .await;
    let frames = ws.chat_until_terminal("c1", WAIT).await;
    let err = expect_error(&frames, "bad_request");
    let m = message_of(err);
    assert!(
        m.contains("messages[0].content[0].image_url.url") && m.contains("100-byte"),
        "{m}"
    );
    assert_eq!(fake.attempts(), 0);
    gw.stop(false).await;
}

/// A provider that rejects `developer` gets `system`; one that supports
/// `include_usage` is asked for it and the usage reaches `done`.
#[actix_web::test]
async fn provider_switches_developer_as_system_and_include_usage() {
    let mut parts = vec![ev(&chunk_with_delta(
        json!({ "content": "ok" }),
        Value::Null,
    ))];
    parts.push(ev(&finish_chunk("stop")));
    parts.push(ev(&usage_chunk(&usage())));
    parts.push(done_part());
    let fake = FakeUpstream::start(vec![Reply::sse(parts)]);
    let file = write_file(&format!(
        "[[upstream]]\nname = \"old\"\nurl = \"{}\"\ndeveloper_as_system = true\ninclude_usage = true\n",
        fake.url()
    ));
    let gw = start_gateway(&["--config", file.path()]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    ws.send_json(&json!({ "type": "chat", "id": "c1", "messages": [
        { "role": "developer", "content": "Be brief." },
        { "role": "user", "content": "hi" }
    ] }))
    .await;
    let frames = ws.chat_until_terminal("c1", WAIT).await;
    assert_eq!(expect_done(&frames)["usage"], usage());
    let sent = fake.request(0).json().clone();
    assert_eq!(
        sent["messages"][0],
        json!({ "role": "system", "content": "Be brief." })
    );
    assert_eq!(
        sent["messages"][1],
        json!({ "role": "user", "content": "hi" })
    );
    assert_eq!(sent["stream_options"], json!({ "include_usage": true }));
    gw.stop(false).await;
}
