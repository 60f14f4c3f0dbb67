//! Unit tests of client-frame validation and the wire shapes (src/protocol.rs).

use netfly::error::ChatError;
use netfly::protocol::{
    parse_client_frame, ChatMessage, ClientFrame, Content, ContentPart, FrameRules, ImageUrl,
    Params, Role, ServerFrame, Stop, StreamOptions, UpstreamMessages, UpstreamRequest,
};
use serde_json::{json, Value};

fn models() -> Vec<String> {
    vec!["gpt-3.5-turbo".into(), "gpt-4".into()]
}

/// The rules of the tests: the two models, images up to 200 bytes.
fn rules(models: &[String]) -> FrameRules<'_> {
    FrameRules {
        models,
        max_image_bytes: 200,
    }
}

fn parse(v: Value) -> Result<ClientFrame, netfly::protocol::FrameError> {
    parse_client_frame(&v.to_string(), &rules(&models()))
}

fn chat(extra: Value) -> Value {
    let mut base =
        json!({"type": "chat", "id": "c1", "messages": [{"role": "user", "content": "Hi"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    base
}

/// Asserts the frame is refused with `code`, tied to `id`.
fn refused(v: Value, code: &str, id: Option<&str>) -> String {
    match parse(v.clone()) {
        Ok(f) => panic!("accepted {v}: {f:?}"),
        Err(e) => {
            assert_eq!(e.error.code().as_str(), code, "{v} → {:?}", e.error);
            assert_eq!(e.id.as_deref(), id, "{v}");
            assert!(!e.error.message().is_empty());
            e.error.message().into_owned()
        }
    }
}

#[test]
fn a_full_chat_frame_round_trips() {
    let f = parse(json!({
        "type": "chat", "id": "c1", "model": "gpt-4",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "params": {"temperature": 0.7, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 2,
                   "max_tokens": 5, "stop": ["a", "b", "c", "d"], "seed": -3}
    }))
    .expect("valid");
    let ClientFrame::Chat(c) = f else {
        panic!("not a chat")
    };
    assert_eq!(c.id, "c1");
    assert_eq!(c.model, "gpt-4");
    assert_eq!(c.messages.len(), 2);
    assert_eq!(c.messages[0].role, Role::System);
    assert_eq!(c.params.temperature, Some(0.7));
    assert_eq!(c.params.max_tokens, Some(5));
    assert_eq!(c.params.seed, Some(-3));
    assert_eq!(
        c.params.stop,
        Some(Stop::Many(vec![
            "a".into(),
            "b".into(),
            "c".into(),
            "d".into()
        ]))
    );
}

#[test]
fn model_defaults_to_the_first_configured() {
    let ClientFrame::Chat(c) = parse(chat(json!({}))).expect("valid") else {
        panic!()
    };
    assert_eq!(c.model, "gpt-3.5-turbo");
    assert_eq!(c.params, Params::default());
}

#[test]
fn cancel_parses() {
    assert_eq!(
        parse(json!({"type": "cancel", "id": "x"})).expect("valid"),
        ClientFrame::Cancel { id: "x".into() }
    );
}

#[test]
fn untied_errors_have_a_null_id() {
    for text in ["{bad", "", "[]", "42", "\"chat\"", "null"] {
        let e = parse_client_frame(text, &rules(&models())).expect_err(text);
        assert_eq!(e.error.code().as_str(), "bad_request", "{text}");
        assert_eq!(e.id, None);
    }
    refused(json!({"id": "c1"}), "bad_request", None);
    refused(json!({"type": 5, "id": "c1"}), "bad_request", None);
    let m = refused(json!({"type": "hello", "id": "c1"}), "bad_request", None);
    assert!(m.contains("hello"), "{m}");
    refused(chat(json!({"id": null})), "bad_request", None);
    refused(chat(json!({"id": 7})), "bad_request", None);
    refused(chat(json!({"id": ""})), "bad_request", None);
    refused(chat(json!({"id": "x".repeat(65)})), "bad_request", None);
    refused(chat(json!({"id": "tab\there"})), "bad_request", None);
    refused(chat(json!({"id": "é"})), "bad_request", None);
    refused(json!({"type": "cancel"}), "bad_request", None);
}

#[test]
fn ids_of_64_printable_ascii_are_fine() {
    let id = "~".repeat(64);
    assert!(parse(chat(json!({"id": id}))).is_ok());
    assert!(parse(chat(json!({"id": " a b "}))).is_ok());
}

#[test]
fn chat_field_errors_are_tied_to_the_id() {
    refused(chat(json!({"messages": []})), "bad_request", Some("c1"));
    let many: Vec<Value> = (0..257)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    refused(chat(json!({ "messages": many })), "bad_request", Some("c1"));
    let ok: Vec<Value> = (0..256)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    assert!(parse(chat(json!({ "messages": ok }))).is_ok());
    refused(
        chat(json!({"messages": [{"role": "tool", "content": "x"}]})),
        "bad_request",
        Some("c1"),
    );
    refused(
        chat(json!({"messages": [{"role": "user", "content": 5}]})),
        "bad_request",
        Some("c1"),
    );
    refused(
        chat(json!({"messages": [{"role": "user"}]})),
        "bad_request",
        Some("c1"),
    );
    refused(chat(json!({"messages": "hi"})), "bad_request", Some("c1"));
    refused(chat(json!({"model": 4})), "bad_request", Some("c1"));
    let m = refused(chat(json!({"model": "gpt-5"})), "unknown_model", Some("c1"));
    assert!(m.contains("gpt-5"), "{m}");
}

#[test]
fn params_outside_the_whitelist_or_range_are_refused() {
    let bad = [
        json!({"temperature": 2.01}),
        json!({"temperature": -0.1}),
        json!({"temperature": "hot"}),
        json!({"top_p": 1.5}),
        json!({"presence_penalty": -2.5}),
        json!({"frequency_penalty": 3}),
        json!({"max_tokens": 0}),
        json!({"max_tokens": -1}),
        json!({"max_tokens": 1.5}),
        json!({"stop": ["a", "b", "c", "d", "e"]}),
        json!({"stop": 5}),
        json!({"seed": 1.5}),
        json!({"logit_bias": {}}),
        json!({"stream": false}),
        json!({"n": 2}),
    ];
    for p in bad {
        refused(chat(json!({ "params": p })), "bad_request", Some("c1"));
    }
    for p in [
        json!({"temperature": 0}),
        json!({"temperature": 2}),
        json!({"top_p": 0}),
        json!({"stop": "END"}),
        json!({}),
        json!(null),
    ] {
        assert!(parse(chat(json!({ "params": p.clone() }))).is_ok(), "{p}");
    }
}

#[test]
fn server_frames_have_the_documented_shapes() {
    let models = models();
    let hello = ServerFrame::Hello {
        models: &models,
        default_model: "gpt-3.5-turbo",
        max_streams: 4,
        session: "0f",
        max_frame_bytes: 1024,
        max_image_bytes: 512,
    };
    assert_eq!(
        serde_json::from_str::<Value>(&hello.to_json()).expect("json"),
        json!({"type":"hello","models":["gpt-3.5-turbo","gpt-4"],"default_model":"gpt-3.5-turbo",
            "max_streams":4,"session":"0f","max_frame_bytes":1024,"max_image_bytes":512})
    );
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21});
    let cases = [
        (
            ServerFrame::Start {
                id: "c1",
                seq: 2,
                model: "gpt-4",
                upstream: "api.example.com",
                attempt: 1,
            },
            json!({"type":"start","id":"c1","seq":2,"model":"gpt-4","upstream":"api.example.com","attempt":1}),
        ),
        (
            ServerFrame::Delta {
                id: "c1",
                seq: 4,
                content: "Hel\"<lo>\n",
            },
            json!({"type":"delta","id":"c1","seq":4,"content":"Hel\"<lo>\n"}),
        ),
        (
            ServerFrame::Reasoning {
                id: "c1",
                seq: 3,
                content: "The user greets me; ",
            },
            json!({"type":"reasoning","id":"c1","seq":3,"content":"The user greets me; "}),
        ),
        (
            ServerFrame::Retry {
                id: "c1",
                seq: 1,
                attempt: 2,
                delay_ms: 412,
                reason: "connect: connection refused",
            },
            json!({"type":"retry","id":"c1","seq":1,"attempt":2,"delay_ms":412,"reason":"connect: connection refused"}),
        ),
        (
            ServerFrame::Done {
                id: "c1",
                seq: 9,
                finish_reason: "stop",
                usage: Some(&usage),
            },
            json!({"type":"done","id":"c1","seq":9,"finish_reason":"stop","usage":usage}),
        ),
        (
            ServerFrame::Done {
                id: "c1",
                seq: 5,
                finish_reason: "cancelled",
                usage: None,
            },
            json!({"type":"done","id":"c1","seq":5,"finish_reason":"cancelled","usage":null}),
        ),
        (
            ServerFrame::Error {
                id: Some("c2"),
                seq: Some(3),
                code: "upstream_broken",
                message: "cut".into(),
                retryable: true,
            },
            json!({"type":"error","id":"c2","seq":3,"code":"upstream_broken","message":"cut","retryable":true}),
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(
            serde_json::from_str::<Value>(&frame.to_json()).expect("json"),
            want
        );
    }
    let err = ChatError::Busy(netfly::error::Busy::StreamsPerSocket(4));
    assert_eq!(
        serde_json::from_str::<Value>(&ServerFrame::error(None, &err).to_json()).expect("json"),
        json!({"type":"error","id":null,"code":"busy","retryable":true,
            "message":"4 chats are already in flight on this connection; wait for one to finish"})
    );
}

#[test]
fn upstream_body_carries_only_set_params() {
    let messages = vec![ChatMessage {
        role: Role::User,
        name: None,
        content: "Hi".into(),
    }];
    let params = Params {
        temperature: Some(0.5),
        stop: Some(Stop::One("x".into())),
        ..Params::default()
    };
    let body = UpstreamRequest {
        model: "gpt-4",
        messages: UpstreamMessages {
            messages: &messages,
            developer_as_system: false,
        },
        stream: true,
        stream_options: None,
        params: &params,
    };
    assert_eq!(
        serde_json::to_value(&body).expect("json"),
        json!({"model":"gpt-4","messages":[{"role":"user","content":"Hi"}],"stream":true,"temperature":0.5,"stop":"x"})
    );
}

/// Roles, names and content parts go upstream exactly as the client sent
/// them; `developer` becomes `system` only when the upstream is said to
/// need it; `stream_options` only when asked.
#[test]
fn upstream_body_carries_parts_names_and_roles() {
    let frame = json!({"type": "chat", "id": "c1", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]},
        {"role": "assistant", "content": "A cat."}
    ]});
    let Ok(ClientFrame::Chat(request)) = parse(frame.clone()) else {
        panic!("refused {frame}");
    };
    let params = Params::default();
    for developer_as_system in [false, true] {
        let body = UpstreamRequest {
            model: "m",
            messages: UpstreamMessages {
                messages: &request.messages,
                developer_as_system,
            },
            stream: true,
            stream_options: developer_as_system.then_some(StreamOptions {
                include_usage: true,
            }),
            params: &params,
        };
        let mut want = frame["messages"].clone();
        if developer_as_system {
            want[0]["role"] = json!("system");
        }
        let got = serde_json::to_value(&body).expect("json");
        assert_eq!(got["messages"], want);
        assert_eq!(
            got.get("stream_options").cloned(),
            developer_as_system.then(|| json!({"include_usage": true}))
        );
    }
    assert_eq!(
        request.messages[1].content,
        Content::Parts(vec![
            ContentPart::Text {
                text: "What is this?".into()
            },
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "data:image/png;base64,iVBORw0KGgo=".into(),
                    detail: Some("low".into())
                }
            },
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "https://example.com/cat.png".into(),
                    detail: None
                }
            },
        ])
    );
}

/// Everything §3.1 does not allow in a message is `bad_request`, with a
/// message that says where.
#[test]
fn bad_messages_and_parts_are_refused_precisely() {
    let big = format!("data:image/png;base64,{}", "A".repeat(300));
    let cases = [
        (
            json!({"role": "tool", "content": "x"}),
            "messages[0].role: unknown variant `tool`",
        ),
        (json!({"role": "user", "content": "x", "extra": 1}), "extra"),
        (json!({"role": "user", "name": 5, "content": "x"}), "name"),
        (
            json!({"role": "user", "content": 5}),
            "messages[0].content: invalid type",
        ),
        (json!({"role": "user", "content": []}), "empty"),
        (
            json!({"role": "user", "content": [{"type": "audio", "audio": {}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "user", "content": [{"type": "text"}]}),
            "missing field `text`",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x.example/a.png"}}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "javascript:alert(1)"}}]}),
            "https:",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/html;base64,PGI+"}}]}),
            "data:image",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}),
            "base64",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}),
            "base64",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}]}),
            "200-byte limit",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "max"}}]}),
            "detail",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png", "alt": "x"}}]}),
            "alt",
        ),
    ];
    for (message, needle) in cases {
        let m = refused(
            chat(json!({"messages": [message.clone()]})),
            "bad_request",
            Some("c1"),
        );
        assert!(
            m.contains(needle),
            "{message} → {m:?} should mention {needle:?}"
        );
    }
}

#[test]
fn resume_frames_parse_and_bad_ones_are_refused() {
    let s = "ab".repeat(24);
    assert_eq!(
        parse(json!({"type": "resume", "session": s, "id": "c1", "after": 17})).expect("valid"),
        ClientFrame::Resume {
            session: s.clone(),
            id: "c1".into(),
            after: 17
        }
    );
    for bad in [
        json!({"type": "resume", "id": "c1", "after": 0}),
        json!({"type": "resume", "session": s, "id": "c1"}),
        json!({"type": "resume", "session": s, "id": "c1", "after": -1}),
        json!({"type": "resume", "session": s, "id": "c1", "after": 2.5}),
        json!({"type": "resume", "session": s, "id": "c1", "after": null}),
        json!({"type": "resume", "session": "", "id": "c1", "after": 0}),
        json!({"type": "resume", "session": "x".repeat(65), "id": "c1", "after": 0}),
    ] {
        refused(bad, "bad_request", Some("c1"));
    }
    refused(
        json!({"type": "resume", "session": s, "id": 3, "after": 0}),
        "bad_request",
        None,
    );
}
