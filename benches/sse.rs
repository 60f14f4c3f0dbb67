//! Criterion benchmark of the per-token hot path without any I/O: the SSE
//! parser (`netfly::upstream::sse::Parser`) and the chunk decoder
//! (`netfly::upstream::completion::decode_event`) on a typical OpenAI chat-completions
//! stream. Reports MB/s (bytes of body) and, per event, ns.
//!
//! Run: `cargo bench --bench sse` (see docs/PERFORMANCE.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netfly::upstream::completion::{decode_event, Decoded};
use netfly::upstream::sse::{Event, Parser};

/// Tokens as a real model streams them: short words with their leading
/// space, punctuation, a newline, a quote and some non-ASCII text.
const TOKENS: &[&str] = &[
    "Hello",
    "!",
    " How",
    " can",
    " I",
    " help",
    " you",
    " today",
    "?",
    "\\n\\n",
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
    " \\\"Quoted\\\"",
    " caf\u{e9}",
    " na\u{ef}ve",
    " \u{65e5}\u{672c}",
    " \u{1f600}",
    " streaming",
    " gateway",
    ",",
];

/// A typical streamed answer of `n` content events: the role chunk, the
/// content chunks, the finish chunk with usage, then `[DONE]`.
fn openai_stream(n: usize) -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz123","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":"#;
    let mut out = String::new();
    out.push_str(&format!(
        "data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    for i in 0..n {
        let token = TOKENS[i % TOKENS.len()];
        out.push_str(&format!(
            "data: {head}{{\"content\":\"{token}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    out.push_str(&format!(
        "data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
        n + 9
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn parse_all(body: &[u8], segment: usize, events: &mut Vec<Event>) -> usize {
    let mut parser = Parser::new();
    events.clear();
    for piece in body.chunks(segment) {
        parser.push(piece, events);
    }
    events.len()
}

fn bench(c: &mut Criterion) {
    const N: usize = 1000;
    let body = openai_stream(N);
    let mut events = Vec::with_capacity(N + 4);
    parse_all(&body, body.len(), &mut events);
    let n_events = events.len() as u64;
    // Sanity: the stream decodes to N contents.
    let contents = events
        .iter()
        .filter(|e| {
            matches!(
                decode_event(e),
                Ok(Decoded::Chunk {
                    content: Some(_),
                    ..
                })
            )
        })
        .count();
    assert_eq!(contents, N);

    let mut g = c.benchmark_group("sse_bytes");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for segment in [64usize, 1460, 16 * 1024] {
        g.bench_function(format!("parse/{segment}B-reads"), |b| {
            let mut out = Vec::with_capacity(N + 4);
            b.iter(|| parse_all(black_box(&body), segment, &mut out))
        });
    }
    g.bench_function("parse+decode/1460B-reads", |b| {
        let mut out = Vec::with_capacity(N + 4);
        b.iter(|| parse_and_decode(black_box(&body), &mut out))
    });
    g.finish();

    let mut g = c.benchmark_group("sse_events");
    g.throughput(Throughput::Elements(n_events));
    g.bench_function("decode_event", |b| {
        b.iter(|| {
            black_box(&events)
                .iter()
                .filter(|e| decode_event(e).is_ok())
                .count()
        })
    });
    g.bench_function("parse+decode/1460B-reads", |b| {
        let mut out = Vec::with_capacity(N + 4);
        b.iter(|| parse_and_decode(black_box(&body), &mut out))
    });
    g.finish();
}

/// The gateway's per-read work: parse 1460-byte reads, decode every event
/// (the same run is reported per byte and per event).
fn parse_and_decode(body: &[u8], out: &mut Vec<Event>) -> usize {
    parse_all(body, 1460, out);
    out.iter().filter(|e| decode_event(e).is_ok()).count()
}

criterion_group!(benches, bench);
criterion_main!(benches);
