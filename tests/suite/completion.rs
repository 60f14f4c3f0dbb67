//! Tests of chunk / body interpretation (PROTOCOL.md section 4).

use netfly::upstream::completion::{
    decode_event, decode_whole_body, Decoded, ModelField, StreamError, WholeBody,
};
use netfly::upstream::redact::UpstreamMessage;
use netfly::upstream::sse::{Event, Parser};
use serde_json::json;

fn data(d: &str) -> Event {
    Event {
        event: String::new(),
        data: d.to_owned(),
        error: None,
    }
}

/// Decodes `d`, forgetting where the chunk's `model` is (tested apart).
fn decode(d: &str) -> Result<Decoded, StreamError> {
    decode_event(&data(d)).map(|decoded| match decoded {
        Decoded::Chunk {
            content,
            reasoning,
            payload,
            finish_reason,
            usage,
            model: _,
        } => Decoded::Chunk {
            content,
            reasoning,
            payload,
            finish_reason,
            usage,
            model: ModelField::Absent,
        },
        other => other,
    })
}

/// A chunk with this content, finish reason and usage (no reasoning, no
/// tool calls, no logprobs).
fn chunk(content: Option<&str>, finish: Option<&str>, usage: Option<serde_json::Value>) -> Decoded {
    Decoded::Chunk {
        content: content.map(str::to_owned),
        reasoning: Vec::new(),
        payload: content.is_some() || finish.is_some(),
        finish_reason: finish.map(str::to_owned),
        usage,
        model: ModelField::Absent,
    }
}

fn err(message: &str) -> Result<Decoded, StreamError> {
    Err(StreamError::upstream(message))
}

/// The message an error is shown with (no key to redact).
fn err_message(r: Result<Decoded, StreamError>) -> String {
    match r {
        Err(e) => e.message(None).as_str().to_owned(),
        Ok(d) => panic!("expected an error, got {d:?}"),
    }
}

/// The message an error status body is shown with: the upstream's message
/// (raw from `completion`), through the one constructor that redacts and
/// clips it.
fn error_message_from_body(body: &[u8]) -> String {
    let raw = netfly::upstream::completion::error_message_from_body(body);
    UpstreamMessage::new(&raw, None).as_str().to_owned()
}

// ---- normal chunks ----------------------------------------------------------

#[test]
fn role_only_first_chunk_has_no_content() {
    let d = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, None, None)));
    let d = r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, None, None)));
}

#[test]
fn content_is_passed_unchanged() {
    let d = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("Hel"), None, None)));
    // Whitespace-only and escaped content is content.
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":" "}}]}"#),
        Ok(chunk(Some(" "), None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":"\n\n"}}]}"#),
        Ok(chunk(Some("\n\n"), None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":"a\"b\\c\u00e9\ud83c\udf89"}}]}"#),
        Ok(chunk(Some("a\"b\\cé🎉"), None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":"世界"}}]}"#),
        Ok(chunk(Some("世界"), None, None))
    );
}

#[test]
fn empty_and_null_content_are_not_errors() {
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":""}}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":null}}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{}}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":null}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(decode(r#"{"choices":[{}]}"#), Ok(chunk(None, None, None)));
    // A tool call carries no text, but it is something for a client (the
    // commit point of a `/v1` stream).
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#),
        Ok(Decoded::Chunk {
            content: None,
            reasoning: Vec::new(),
            payload: true,
            finish_reason: None,
            usage: None,
            model: ModelField::Absent,
        })
    );
}

#[test]
fn missing_empty_or_null_choices_are_not_errors() {
    assert_eq!(decode(r#"{"id":"x"}"#), Ok(chunk(None, None, None)));
    assert_eq!(decode("{}"), Ok(chunk(None, None, None)));
    assert_eq!(decode(r#"{"choices":[]}"#), Ok(chunk(None, None, None)));
    assert_eq!(decode(r#"{"choices":null}"#), Ok(chunk(None, None, None)));
    assert_eq!(decode(r#"{"choices":[null]}"#), Ok(chunk(None, None, None)));
}

#[test]
fn finish_reason_is_read() {
    let d = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, Some("stop"), None)));
    let d = r#"{"choices":[{"index":0,"delta":{"content":"."},"finish_reason":"length"}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("."), Some("length"), None)));
    let d = r#"{"choices":[{"delta":{},"finish_reason":null}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, None, None)));
    let d = r#"{"choices":[{"delta":{},"finish_reason":""}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, None, None)));
}

#[test]
fn usage_only_final_chunk() {
    let d = r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    let usage = json!({"prompt_tokens":9,"completion_tokens":12,"total_tokens":21});
    assert_eq!(decode(d), Ok(chunk(None, None, Some(usage.clone()))));
    // With finish_reason and usage in the same chunk (some servers do that).
    let d = r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    assert_eq!(decode(d), Ok(chunk(None, Some("stop"), Some(usage))));
    // Null usage is no usage.
    assert_eq!(
        decode(r#"{"choices":[],"usage":null}"#),
        Ok(chunk(None, None, None))
    );
    // Nested, unusual usage is passed through untouched.
    let d = r#"{"usage":{"prompt_tokens":1,"completion_tokens_details":{"reasoning_tokens":0},"cost":0.5}}"#;
    let usage =
        json!({"prompt_tokens":1,"completion_tokens_details":{"reasoning_tokens":0},"cost":0.5});
    assert_eq!(decode(d), Ok(chunk(None, None, Some(usage))));
}

#[test]
fn only_the_first_choice_counts() {
    let d =
        r#"{"choices":[{"index":0,"delta":{"content":"A"}},{"index":1,"delta":{"content":"B"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("A"), None, None)));
}

#[test]
fn unknown_fields_and_wrong_types_are_tolerated() {
    let d = r#"{"id":1,"object":["x"],"created":"now","system_fingerprint":null,"x_groq":{"id":"r"},
        "choices":[{"index":"0","logprobs":{"content":[]},"delta":{"role":"assistant","content":"ok","reasoning":"hmm","extra":[1,{"a":null}]},"finish_reason":null,"extra":true}],
        "provider":"p"}"#;
    assert_eq!(
        decode(d),
        Ok(Decoded::Chunk {
            content: Some("ok".into()),
            reasoning: vec!["hmm".into()],
            payload: true,
            finish_reason: None,
            usage: None,
            model: ModelField::Absent,
        })
    );
    // Non-string content, non-object delta, non-array choices read as absent.
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":42}}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":"hi"}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":{"0":{"delta":{"content":"x"}}}}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[{"delta":{},"finish_reason":1}]}"#),
        Ok(chunk(None, None, None))
    );
    assert_eq!(
        decode(r#"{"choices":[7,{"delta":{"content":"x"}}]}"#),
        Ok(chunk(None, None, None))
    );
}

#[test]
fn duplicate_keys_take_the_last_like_json_parse() {
    // The fast path refuses duplicates; the slow path reads them as JS would.
    let d = r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("b"), None, None)));
    let d = r#"{"choices":[],"choices":[{"delta":{"content":"c"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("c"), None, None)));
}

#[test]
fn legacy_text_completion_chunks() {
    let d =
        r#"{"object":"text_completion","choices":[{"text":"Hi","index":0,"finish_reason":null}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("Hi"), None, None)));
    let d = r#"{"choices":[{"text":"","finish_reason":"stop"}]}"#;
    assert_eq!(decode(d), Ok(chunk(None, Some("stop"), None)));
    // The delta's content wins when both are there.
    let d = r#"{"choices":[{"text":"t","delta":{"content":"d"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("d"), None, None)));
    let d = r#"{"choices":[{"text":"t","delta":{"content":null}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("t"), None, None)));
}

// ---- heartbeats and [DONE] ------------------------------------------------------

#[test]
fn done_with_surrounding_whitespace() {
    assert_eq!(decode("[DONE]"), Ok(Decoded::Done));
    assert_eq!(decode("  [DONE]  "), Ok(Decoded::Done));
    assert_eq!(decode("\n[DONE]\r\n\t"), Ok(Decoded::Done));
    // Not [DONE]: invalid JSON, so an error, never silently dropped.
    assert!(decode("[DONE").is_err());
    assert!(decode("[done]").is_err());
    assert!(decode("[DONE] x").is_err());
}

#[test]
fn whitespace_data_is_a_heartbeat() {
    assert_eq!(decode(""), Ok(Decoded::Heartbeat));
    assert_eq!(decode(" "), Ok(Decoded::Heartbeat));
    assert_eq!(decode("\n\n\t \r"), Ok(Decoded::Heartbeat));
    // Any event name but "error" with empty data is a heartbeat too.
    let ping = Event {
        event: "ping".into(),
        data: String::new(),
        error: None,
    };
    assert_eq!(decode_event(&ping), Ok(Decoded::Heartbeat));
}

// ---- errors -------------------------------------------------------------------

#[test]
fn invalid_json_is_an_error_quoting_the_text() {
    let message = err_message(decode("Hello world"));
    assert_eq!(message, "invalid JSON in stream: Hello world");
    let message = err_message(decode(r#"{"choices":[{"delta":{"content":"trunc"#));
    assert!(
        message.starts_with("invalid JSON in stream: {\"choices\""),
        "{message}"
    );
    assert!(decode("{}{}").is_err(), "trailing data");
    assert!(decode("{\"a\":1,}").is_err(), "trailing comma");
}

#[test]
fn invalid_json_quote_is_cut_at_100_chars() {
    let text = "é".repeat(150);
    let message = err_message(decode(&text));
    let quoted = message
        .strip_prefix("invalid JSON in stream: ")
        .expect("prefix");
    assert!(quoted.starts_with(&"é".repeat(100)), "{quoted}");
    assert!(quoted.chars().count() <= 101, "{quoted}");
    assert!(!quoted.starts_with(&"é".repeat(101)), "{quoted}");
}

#[test]
fn non_object_json_is_an_error() {
    for d in [
        "1",
        "\"text\"",
        "[1,2]",
        "null",
        "true",
        r#"[{"choices":[]}]"#,
    ] {
        let message = err_message(decode(d));
        assert!(message.contains(d), "{d}: {message}");
    }
}

#[test]
fn error_object_with_message() {
    let d = r#"{"error":{"message":"Rate limit reached for gpt-4","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    assert_eq!(decode(d), err("Rate limit reached for gpt-4"));
}

#[test]
fn error_string() {
    assert_eq!(
        decode(r#"{"error":"model overloaded"}"#),
        err("model overloaded")
    );
}

#[test]
fn error_next_to_choices_wins() {
    // OpenRouter-style mid-stream error: a chunk that also has choices.
    let d = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"delta":{"content":"partial"},"finish_reason":"error"}],"error":{"code":502,"message":"Provider disconnected"}}"#;
    assert_eq!(decode(d), err("Provider disconnected"));
}

#[test]
fn error_without_message_keeps_the_text() {
    let d = r#"{"error":{"code":500}}"#;
    assert_eq!(decode(d), err(d));
    let d = r#"{"error":true}"#;
    assert_eq!(decode(d), err(d));
}

#[test]
fn null_error_is_no_error() {
    let d = r#"{"error":null,"choices":[{"delta":{"content":"x"}}]}"#;
    assert_eq!(decode(d), Ok(chunk(Some("x"), None, None)));
}

#[test]
fn object_error() {
    let d = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens","type":"BadRequestError","param":null,"code":400}"#;
    assert_eq!(
        decode(d),
        err("This model's maximum context length is 4096 tokens")
    );
    assert_eq!(
        decode(r#"{"object":"error"}"#),
        err(r#"{"object":"error"}"#)
    );
}

#[test]
fn event_named_error() {
    let ev = Event {
        event: "error".into(),
        data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            .into(),
        error: None,
    };
    assert_eq!(decode_event(&ev), err("Overloaded"));
    let ev = Event {
        event: "error".into(),
        data: r#"{"message":"bad"}"#.into(),
        error: None,
    };
    assert_eq!(decode_event(&ev), err("bad"));
    let ev = Event {
        event: "error".into(),
        data: "  upstream exploded  ".into(),
        error: None,
    };
    assert_eq!(decode_event(&ev), err("upstream exploded"));
    // Even when its data looks like a normal chunk, or [DONE], or nothing.
    let ev = Event {
        event: "error".into(),
        data: r#"{"choices":[]}"#.into(),
        error: None,
    };
    assert!(decode_event(&ev).is_err());
    let ev = Event {
        event: "error".into(),
        data: "[DONE]".into(),
        error: None,
    };
    assert!(decode_event(&ev).is_err());
    let ev = Event {
        event: "error".into(),
        data: String::new(),
        error: None,
    };
    assert!(!err_message(decode_event(&ev)).is_empty());
}

#[test]
fn error_field_llama_cpp_style() {
    let ev = Event {
        event: String::new(),
        data: String::new(),
        error: Some(r#"{"code":500,"message":"failed to decode","type":"server_error"}"#.into()),
    };
    assert_eq!(decode_event(&ev), err("failed to decode"));
    let ev = Event {
        event: String::new(),
        data: String::new(),
        error: Some(r#"{"error":{"message":"nested"}}"#.into()),
    };
    assert_eq!(decode_event(&ev), err("nested"));
    let ev = Event {
        event: String::new(),
        data: String::new(),
        error: Some("plain words".into()),
    };
    assert_eq!(decode_event(&ev), err("plain words"));
    // The error field wins over perfectly good data.
    let ev = Event {
        event: String::new(),
        data: r#"{"choices":[{"delta":{"content":"x"}}]}"#.into(),
        error: Some("boom".into()),
    };
    assert_eq!(decode_event(&ev), err("boom"));
    let ev = Event {
        event: String::new(),
        data: String::new(),
        error: Some(String::new()),
    };
    assert!(!err_message(decode_event(&ev)).is_empty());
}

#[test]
fn long_error_messages_are_capped() {
    let long = "x".repeat(2000);
    let d = json!({"error": {"message": long}}).to_string();
    let message = err_message(decode(&d));
    assert!(message.chars().count() <= 500);
    assert!(message.ends_with('…'));
    assert!(message.starts_with("xxxx"));
}

#[test]
fn stream_error_displays_its_message() {
    let e = StreamError::upstream("boom");
    assert_eq!(e.to_string(), "boom");
    let e = StreamError::quoting("invalid JSON in stream", "{oops");
    assert_eq!(e.to_string(), "invalid JSON in stream: {oops");
    let _: &dyn std::error::Error = &e;
}

#[test]
fn a_whole_stream_through_parser_and_decoder() {
    let body = concat!(
        ": ping\n\n",
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hé\"}}]}\r\n\r\n",
        "data:{\"choices\":[{\"delta\":{\"content\":\"llo 🎉\"}}]}\r\r",
        "data: \n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );
    let bytes = body.as_bytes();
    for split in 0..=bytes.len() {
        let mut parser = Parser::new();
        let mut events = Vec::new();
        parser.push(&bytes[..split], &mut events);
        parser.push(&bytes[split..], &mut events);
        assert!(!parser.finish());
        let mut text = String::new();
        let mut finish = None;
        let mut usage = None;
        let mut done = false;
        for ev in &events {
            match decode_event(ev).expect("no error") {
                Decoded::Heartbeat => {}
                Decoded::Done => done = true,
                Decoded::Chunk {
                    content,
                    finish_reason,
                    usage: u,
                    ..
                } => {
                    assert!(!done);
                    text.push_str(content.as_deref().unwrap_or(""));
                    finish = finish_reason.or(finish);
                    usage = u.or(usage);
                }
            }
        }
        assert!(done);
        assert_eq!(text, "Héllo 🎉");
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(usage, Some(json!({"total_tokens":3})));
    }
}

// ---- decode_whole_body ------------------------------------------------------------

#[test]
fn whole_body_completion() {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there!"},"logprobs":null,"finish_reason":"stop"}],
        "usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Completion {
            content: "Hello there!".into(),
            finish_reason: Some("stop".into()),
            usage: Some(json!({"prompt_tokens":9,"completion_tokens":3,"total_tokens":12})),
        }
    );
}

#[test]
fn whole_body_completion_with_empty_or_null_content() {
    let body =
        br#"{"choices":[{"message":{"role":"assistant","content":""},"finish_reason":"length"}]}"#;
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Completion {
            content: String::new(),
            finish_reason: Some("length".into()),
            usage: None
        }
    );
    let body = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]},"finish_reason":"tool_calls"}],"usage":null}"#;
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Completion {
            content: String::new(),
            finish_reason: Some("tool_calls".into()),
            usage: None
        }
    );
}

#[test]
fn whole_body_legacy_text_completion() {
    let body = br#"{"object":"text_completion","choices":[{"text":"abc","index":0,"finish_reason":"stop"}]}"#;
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Completion {
            content: "abc".into(),
            finish_reason: Some("stop".into()),
            usage: None
        }
    );
}

#[test]
fn whole_body_errors() {
    let cases: [(&[u8], &str); 5] = [
        (br#"{"error":{"message":"Invalid API key","type":"invalid_request_error","code":"invalid_api_key"}}"#, "Invalid API key"),
        (br#"{"error":"quota exceeded"}"#, "quota exceeded"),
        (br#"{"object":"error","message":"model not found","type":"NotFoundError","code":404}"#, "model not found"),
        (br#"{"message":"Too many requests","code":429}"#, "Too many requests"),
        (br#"{"detail":"Not Found"}"#, "Not Found"),
    ];
    for (body, message) in cases {
        let got = decode_whole_body(body);
        assert_eq!(
            got,
            WholeBody::Error {
                message: message.into()
            },
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A JSON array is not an object, even wrapping an error (Gemini style).
    let body = br#"[{"error":{"code":400,"message":"API key not valid"}}]"#;
    assert!(matches!(decode_whole_body(body), WholeBody::Other(_)));
    let body = br#"{"error":{"code":500}}"#;
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Error {
            message: r#"{"error":{"code":500}}"#.into()
        }
    );
}

#[test]
fn whole_body_other() {
    let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    match decode_whole_body(html) {
        WholeBody::Other(what) => {
            assert!(
                what.starts_with(&format!("non-JSON body of {} bytes", html.len())),
                "{what}"
            );
            assert!(what.contains("HTML"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    for body in [
        &b""[..],
        b"   \n",
        b"plain text",
        b"\xFF\xFE",
        b"42",
        b"[]",
        b"null",
        b"{}",
        br#"{"choices":[]}"#,
        br#"{"choices":[{"index":0}]}"#,
        br#"{"id":"x"}"#,
    ] {
        match decode_whole_body(body) {
            WholeBody::Other(what) => assert!(!what.is_empty()),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    match decode_whole_body(b"data: {\"choices\":[]}\n\n") {
        WholeBody::Other(what) => assert!(what.contains("SSE"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn whole_body_with_bom_and_whitespace() {
    let body = b"\xEF\xBB\xBF \n{\"choices\":[{\"message\":{\"content\":\"hi\"}}]}\n";
    assert_eq!(
        decode_whole_body(body),
        WholeBody::Completion {
            content: "hi".into(),
            finish_reason: None,
            usage: None
        }
    );
}

// ---- error_message_from_body ------------------------------------------------------

#[test]
fn openai_401_body() {
    let body = br#"{
    "error": {
        "message": "Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }
}
"#;
    assert_eq!(
        error_message_from_body(body),
        "Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys."
    );
}

#[test]
fn error_body_shapes() {
    let cases: [(&[u8], &str); 10] = [
        (br#"{"error":"Unauthorized"}"#, "Unauthorized"),
        (br#"{"message":"Forbidden","code":403}"#, "Forbidden"),
        (br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#, "The model `x` does not exist."),
        (br#"{"detail":"Not authenticated"}"#, "Not authenticated"),
        (br#"{"detail":[{"loc":["body","messages"],"msg":"field required","type":"value_error.missing"}]}"#, "field required"),
        (br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}"#, "max_tokens: required"),
        (br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#, "API key not valid."),
        (br#"{"error":{"message":"","code":"x"},"message":"outer"}"#, "outer"),
        (br#"{"code":500}"#, r#"{"code":500}"#),
        (br#""just a string""#, "just a string"),
    ];
    for (body, message) in cases {
        assert_eq!(
            error_message_from_body(body),
            message,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn error_body_plain_text_is_trimmed() {
    assert_eq!(error_message_from_body(b"  Bad Gateway\r\n"), "Bad Gateway");
    assert_eq!(
        error_message_from_body(b"upstream connect error or disconnect/reset before headers"),
        "upstream connect error or disconnect/reset before headers"
    );
    assert_eq!(
        error_message_from_body(b"Bad \xFF bytes"),
        "Bad \u{FFFD} bytes"
    );
}

#[test]
fn error_body_empty() {
    assert_eq!(error_message_from_body(b""), "");
    assert_eq!(error_message_from_body(b" \r\n\t"), "");
}

#[test]
fn error_body_long_text_is_truncated() {
    let body = "a".repeat(10_000);
    let message = error_message_from_body(body.as_bytes());
    assert!(
        message.chars().count() <= 500,
        "{}",
        message.chars().count()
    );
    assert!(message.chars().count() >= 490, "keeps most of the 500");
    assert!(message.ends_with('…'));
    assert!(message.trim_end_matches('…').bytes().all(|b| b == b'a'));
    // Exactly 500 chars fit untouched; one more does not.
    let body = "b".repeat(500);
    assert_eq!(error_message_from_body(body.as_bytes()), body);
    let body = "b".repeat(501);
    assert!(error_message_from_body(body.as_bytes()).ends_with('…'));
    // A long JSON message is capped the same way.
    let body = json!({"error": {"message": "m".repeat(1000)}}).to_string();
    let message = error_message_from_body(body.as_bytes());
    assert!(message.chars().count() <= 500 && message.ends_with('…') && message.starts_with("mmm"));
}

#[test]
fn error_body_truncation_respects_char_boundaries() {
    // Multi-byte chars of every width around the cut: slicing by bytes would
    // panic or produce broken UTF-8.
    for prefix in 0..4 {
        let body = "a".repeat(prefix) + &"é世🎉".repeat(300);
        let message = error_message_from_body(body.as_bytes());
        assert!(message.chars().count() <= 500);
        assert!(message.ends_with('…'));
        let kept = message.strip_suffix('…').expect("ellipsis");
        assert!(
            body.starts_with(kept),
            "kept text is a prefix of the original"
        );
        assert!(kept.chars().count() >= 490);
    }
    let body = "🎉".repeat(500);
    assert_eq!(error_message_from_body(body.as_bytes()), body);
}

// ---- reasoning (PROTOCOL.md §3.2) and the model field (§7) ------------------

/// The three real shapes, each cited from its provider's documentation:
/// DeepSeek's API ("reasoning_content" in the delta, api-docs.deepseek.com,
/// "Reasoning Model"), OpenRouter's ("reasoning" and "reasoning_details"
/// entries of type reasoning.text / reasoning.summary / reasoning.encrypted,
/// openrouter.ai/docs "Reasoning Tokens"), vLLM's reasoning parsers (both
/// "reasoning" and, before 0.10, "reasoning_content").
#[test]
fn reasoning_in_each_shape_is_decoded_once_in_order() {
    let reasoning = |d: &str| match decode(d) {
        Ok(Decoded::Chunk { reasoning, .. }) => reasoning,
        other => panic!("{d} → {other:?}"),
    };
    // DeepSeek.
    assert_eq!(
        reasoning(
            r#"{"choices":[{"index":0,"delta":{"content":null,"reasoning_content":"Let me"}}]}"#
        ),
        ["Let me"]
    );
    // OpenRouter / newer vLLM.
    assert_eq!(
        reasoning(r#"{"choices":[{"delta":{"content":"","reasoning":"think"}}]}"#),
        ["think"]
    );
    // vLLM sends the same text twice: once.
    assert_eq!(
        reasoning(r#"{"choices":[{"delta":{"reasoning":"same","reasoning_content":"same"}}]}"#),
        ["same"]
    );
    // OpenRouter details: one piece per entry with text or summary; the
    // encrypted one has neither.
    assert_eq!(
        reasoning(
            r#"{"choices":[{"delta":{"reasoning_details":[
                {"type":"reasoning.summary","summary":"Plan: ","format":"anthropic-claude-v1","index":0},
                {"type":"reasoning.encrypted","data":"gAAAA…","index":1},
                {"type":"reasoning.text","text":"step one","signature":null,"index":2}]}}]}"#
        ),
        ["Plan: ", "step one"]
    );
    // `reasoning` wins over details (they repeat it).
    assert_eq!(
        reasoning(
            r#"{"choices":[{"delta":{"reasoning":"r","reasoning_details":[{"type":"reasoning.text","text":"r"}]}}]}"#
        ),
        ["r"]
    );
    // Empty, null and wrongly typed reasoning is none.
    for d in [
        r#"{"choices":[{"delta":{"reasoning_content":""}}]}"#,
        r#"{"choices":[{"delta":{"reasoning":null}}]}"#,
        r#"{"choices":[{"delta":{"reasoning":7,"reasoning_details":"x"}}]}"#,
        r#"{"choices":[{"delta":{"reasoning_details":[{"type":"reasoning.text","text":""}, 5, null]}}]}"#,
    ] {
        assert_eq!(reasoning(d), Vec::<String>::new(), "{d}");
    }
    // Reasoning with content: both, and the chunk carries something.
    match decode(r#"{"choices":[{"delta":{"content":"A","reasoning_content":"r"}}]}"#) {
        Ok(Decoded::Chunk {
            content,
            reasoning,
            payload,
            ..
        }) => {
            assert_eq!(
                (content.as_deref(), reasoning, payload),
                (Some("A"), vec!["r".to_owned()], true)
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A chunk's `model` is found where it is and replaced without re-encoding
/// the rest; an escaped model name falls back to a re-encode; no model,
/// no change.
#[test]
fn the_model_field_is_replaced_in_place() {
    let replace = |d: &str, m: &str| match decode_event(&data(d)) {
        Ok(Decoded::Chunk { model, .. }) => model.replace(d.trim(), m),
        other => panic!("{d} → {other:?}"),
    };
    let d = r#"{"id":"c","model":"vendor-fast-001","choices":[{"delta":{"content":"\"model\":\"x\""}}],"usage":null}"#;
    let out = replace(d, "fast");
    assert_eq!(
        out,
        r#"{"id":"c","model":"fast","choices":[{"delta":{"content":"\"model\":\"x\""}}],"usage":null}"#
    );
    // A client model with characters JSON escapes.
    let out = replace(d, "a\"b\\c");
    let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
    assert_eq!(v["model"], "a\"b\\c");
    assert_eq!(v["choices"][0]["delta"]["content"], "\"model\":\"x\"");
    // Escaped upstream model: re-encoded, everything else kept.
    let d = r#"{"model":"v\u0065ndor","choices":[{"delta":{"content":"hi"}}],"x":[1,2]}"#;
    let v: serde_json::Value = serde_json::from_str(&replace(d, "fast")).expect("json");
    assert_eq!(
        v,
        json!({"model":"fast","choices":[{"delta":{"content":"hi"}}],"x":[1,2]})
    );
    // No model: unchanged.
    let d = r#"{"choices":[{"delta":{"content":"hi"}}]}"#;
    assert_eq!(replace(d, "fast"), d);
}
