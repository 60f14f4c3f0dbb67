//! Keeping the API key out of what reaches a client
//! (`netfly::upstream::redact`): the streaming redactor at every split, a
//! property test against whole-text redaction, and the gateway with a key
//! split across deltas and a key at the clip boundary of a message.

use netfly::error::redact;
use netfly::upstream::redact::StreamRedactor;
use serde_json::{json, Value};

use crate::support::fake::{chunk, chunk_with_delta, completion, done_event, event};
use crate::support::*;

const KEY: &str = "sk-test-SECRET12345678";

/// Pushes `pieces`, then finishes; checks the invariants after every push
/// and returns the outputs (the last one is what `finish` gave).
fn stream(key: &str, pieces: &[&str]) -> Vec<String> {
    let mut r = StreamRedactor::new(Some(key));
    let whole: String = pieces.concat();
    let want = redact(&whole, Some(key));
    let mut outs = Vec::new();
    let mut so_far = String::new();
    for p in pieces {
        let out = r.push(*p);
        so_far.push_str(&out);
        assert!(
            want.starts_with(&so_far),
            "{pieces:?}: {so_far:?} is not a prefix of {want:?}"
        );
        assert!(r.held() < key.len(), "{pieces:?}: holds {}", r.held());
        outs.push(out);
    }
    let last = r.finish();
    so_far.push_str(&last);
    outs.push(last);
    assert_eq!(so_far, want, "{pieces:?}");
    assert!(!so_far.contains(key), "{pieces:?}");
    outs
}

/// Every way of cutting `text` into 2 and 3 pieces (char boundaries).
fn every_split(key: &str, text: &str) {
    let cuts: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    for &a in &cuts {
        stream(key, &[&text[..a], &text[a..]]);
        for &b in cuts.iter().filter(|&&b| b >= a) {
            stream(key, &[&text[..a], &text[a..b], &text[b..]]);
        }
    }
}

#[test]
fn a_key_split_anywhere_is_redacted() {
    every_split(KEY, &format!("before {KEY} after"));
    every_split(KEY, KEY);
    every_split(KEY, &format!("{KEY}{KEY}"));
    every_split(KEY, &format!("sk-test-{KEY}sk-"));
    // Byte by byte (characters), and with empty fragments in between.
    let text = format!("é {KEY} ü {KEY}");
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().flat_map(|c| [c.as_str(), ""]).collect();
    stream(KEY, &pieces);
    // Keys whose prefixes repeat inside them (the held tail must be the
    // longest possible start of the key).
    every_split("aab", "aaaabaab");
    every_split("abab", "abababab ab aba abab");
    every_split("éé!", "ééé!é!éé");
}

#[test]
fn text_without_the_key_is_passed_at_once_unchanged() {
    // A fragment comes out as it went in whenever nothing was held before
    // it and nothing is held after it.
    let pieces = [
        "Hello", ", wor", "ld! ", "s", "o sk", "ip ", "üñí", "sk-", "tea",
    ];
    stream(KEY, &pieces);
    let mut r = StreamRedactor::new(Some(KEY));
    let mut immediate = 0;
    for p in pieces {
        let before = r.held();
        let out = r.push(p);
        if before == 0 && r.held() == 0 {
            assert_eq!(out, p);
            immediate += 1;
        }
    }
    assert_eq!(immediate, 4);
    // A fragment ending with a start of the key is held back only until the
    // next fragment shows it is not the key.
    let mut r = StreamRedactor::new(Some(KEY));
    assert_eq!(r.push("ask"), "a");
    assert_eq!(r.push("ed"), "sked");
    assert_eq!(r.push("sk-te"), "");
    assert_eq!(r.push("a"), "sk-tea");
    assert_eq!(r.push("the end sk-"), "the end ");
    assert_eq!(r.finish(), "sk-");
    // Without a key (or with an empty one) nothing is ever held.
    for secret in [None, Some("")] {
        let mut r = StreamRedactor::new(secret);
        assert_eq!(r.push("s"), "s");
        assert_eq!(r.finish(), "");
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_texts_and_splits_match_whole_text_redaction() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let keys = ["sk-ab", "aab", "abab", "s", "ks-k", "sk-sk-s"];
    let alphabet = ['s', 'k', '-', 'a', 'b', ' ', 'é'];
    for round in 0..20_000 {
        let key = keys[round % keys.len()];
        let len = rng.below(40);
        let text: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut points: Vec<usize> = (0..rng.below(6))
            .map(|_| cuts[rng.below(cuts.len())])
            .collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for p in points {
            pieces.push(&text[from..p]);
            from = p;
        }
        pieces.push(&text[from..]);
        stream(key, &pieces);
    }
}

// ---------------------------------------------------------------------------
// Through the gateway
// ---------------------------------------------------------------------------

/// An answer whose deltas are `pieces`, then `[DONE]`.
fn answer(pieces: &[&str]) -> Reply {
    let mut parts: Vec<Part> = pieces
        .iter()
        .map(|p| Part::Bytes(event(&chunk(p))))
        .collect();
    parts.push(Part::Bytes(done_event()));
    Reply::sse(parts)
}

#[actix_web::test]
async fn a_key_split_across_deltas_never_reaches_the_client() {
    let text = format!("the key is {KEY}, again {KEY}. ends with sk-te");
    // The key cut into 2, 3 and many deltas.
    let mut answers = Vec::new();
    for n in [2, 3, 5, KEY.len()] {
        let cuts: Vec<usize> = (1..n).map(|i| 11 + i * KEY.len() / n).collect();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts {
            pieces.push(text[from..c].to_string());
            from = c;
        }
        pieces.push(text[from..].to_string());
        answers.push(pieces);
    }
    let script: Vec<Reply> = answers
        .iter()
        .map(|p| answer(&p.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    let (fake, gw, mut ws) = fake_gateway_client(script, &["--api-key", KEY]).await;
    let want = redact(&text, Some(KEY));
    for (i, pieces) in answers.iter().enumerate() {
        let frames = ws.chat(&format!("k{i}"), "hi", WAIT).await;
        expect_done(&frames);
        let all = serde_json::to_string(&frames).unwrap();
        assert!(!all.contains("SECRET"), "{pieces:?}: {all}");
        // The text, redacted; the held "sk-te" comes out at the end.
        assert_eq!(content_of(&frames), want, "{pieces:?}");
    }
    gw.stop(false).await;
    assert_eq!(fake.attempts(), answers.len());
}

#[actix_web::test]
async fn a_key_at_the_clip_boundary_of_a_message_is_redacted() {
    // 490 chars, then the key: clipping first kept "sk-test-S".
    let message = format!("{}{KEY} and more", "x".repeat(490));
    let script = vec![
        Reply::error_json(400, &message),
        Reply::sse(vec![Part::Bytes(
            format!("data: {}\n\n", json!({"error": {"message": message}})).into_bytes(),
        )]),
        Reply::sse(vec![Part::bytes(format!(
            "data: {}{KEY}\n\n",
            "{".repeat(90)
        ))]),
    ];
    let (_fake, gw, mut ws) =
        fake_gateway_client(script, &["--api-key", KEY, "--max-attempts", "1"]).await;
    for (id, code) in [
        ("status", "upstream_rejected"),
        ("in-stream", "upstream_broken"),
        ("snippet", "upstream_broken"),
    ] {
        let frames = ws.chat(id, "hi", WAIT).await;
        let err = expect_error(&frames, code);
        let all = serde_json::to_string(&frames).unwrap();
        assert!(!all.contains("sk-test"), "{id}: {all}");
        assert!(message_of(err).chars().count() <= 600, "{id}: {err}");
    }
    gw.stop(false).await;
}

#[actix_web::test]
async fn a_key_in_reasoning_is_redacted_across_fragments() {
    let text = format!("I think {KEY} is the key; sk-");
    let cuts = [8 + 3, 8 + 12, 8 + KEY.len() + 2];
    let mut parts = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([text.len()]) {
        let piece = &text[from..c];
        from = c;
        parts.push(Part::Bytes(event(&chunk_with_delta(
            json!({ "reasoning_content": piece }),
            Value::Null,
        ))));
    }
    parts.push(Part::Bytes(event(&chunk("answer"))));
    parts.push(Part::Bytes(done_event()));
    let (_fake, gw, mut ws) =
        fake_gateway_client(vec![Reply::sse(parts)], &["--api-key", KEY]).await;
    let frames = ws.chat("r", "hi", WAIT).await;
    expect_done(&frames);
    let all = serde_json::to_string(&frames).unwrap();
    assert!(!all.contains("SECRET"), "{all}");
    let reasoning: String = frames
        .iter()
        .filter(|f| f["type"] == "reasoning")
        .filter_map(|f| f["content"].as_str())
        .collect();
    assert_eq!(reasoning, redact(&text, Some(KEY)));
    assert_eq!(content_of(&frames), "answer");
    gw.stop(false).await;
}

#[actix_web::test]
async fn v1_chunks_and_whole_answers_are_redacted() {
    // /v1 forwards the upstream's chunks as they are: a key a chunk holds
    // whole is redacted there too (a key split across raw chunks is not:
    // the chunks are not re-encoded).
    let script = vec![
        Reply::sse(vec![
            Part::Bytes(event(&chunk(&format!("a {KEY} b")))),
            Part::Bytes(done_event()),
        ]),
        Reply::json(
            200,
            &completion(&format!("whole {KEY}"), "stop", &Value::Null),
        ),
    ];
    let (_fake, gw) = fake_gateway(script, &["--api-key", KEY]).await;
    init();
    let client = awc::Client::builder().timeout(WAIT).finish();
    for stream in [true, false] {
        let body = json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "stream": stream
        });
        let mut resp = client
            .post(format!("http://{}/v1/chat/completions", gw.addr))
            .send_json(&body)
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 200);
        let text = read_body(&mut resp, 1 << 20, "/v1").await;
        let text = String::from_utf8_lossy(&text);
        assert!(!text.contains("SECRET"), "stream {stream}: {text}");
        assert!(text.contains("[redacted]"), "stream {stream}: {text}");
    }
    gw.stop(false).await;
}
