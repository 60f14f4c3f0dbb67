//! Unit tests of the pure retry policy (src/retry.rs).

use std::time::Duration;

use netfly::error::{Busy, ChatError, Fault};
use netfly::upstream::redact::UpstreamMessage;
use netfly::upstream::retry::{
    classify, exhausted, parse_retry_after, AttemptError, Backoff, Verdict,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An upstream message with no key to redact.
fn msg(text: &str) -> UpstreamMessage {
    UpstreamMessage::new(text, None)
}

fn status(code: u16) -> AttemptError {
    AttemptError::Status {
        status: code,
        message: UpstreamMessage::new(&format!("m{code}"), None),
        retry_after: None,
    }
}

#[test]
fn ceiling_doubles_from_base_and_stops_at_cap() {
    let b = Backoff {
        base: ms(500),
        cap: ms(8000),
    };
    let got: Vec<u64> = (1..=7).map(|k| b.ceiling(k).as_millis() as u64).collect();
    assert_eq!(got, vec![500, 1000, 2000, 4000, 8000, 8000, 8000]);
    // Huge k never overflows.
    assert_eq!(b.ceiling(u32::MAX), ms(8000));
}

#[test]
fn delay_is_a_full_jitter_draw_within_the_ceiling() {
    let b = Backoff {
        base: ms(100),
        cap: ms(1000),
    };
    assert_eq!(b.delay_for(1, 0.0, None), ms(0));
    assert_eq!(b.delay_for(1, 1.0, None), ms(100));
    assert_eq!(b.delay_for(3, 0.5, None), ms(200));
    assert_eq!(b.delay_for(9, 1.0, None), ms(1000));
    // Out-of-range draws are clamped, never exceed the ceiling.
    assert_eq!(b.delay_for(2, 7.0, None), ms(200));
    for i in 0..100 {
        let d = b.delay_for(4, f64::from(i) / 100.0, None);
        assert!(d <= ms(800), "{d:?}");
    }
}

#[test]
fn retry_after_below_cap_replaces_the_draw_above_cap_is_ignored() {
    let b = Backoff {
        base: ms(100),
        cap: ms(1000),
    };
    assert_eq!(b.delay_for(1, 0.0, Some(ms(700))), ms(700));
    assert_eq!(b.delay_for(1, 0.0, Some(ms(0))), ms(0));
    assert_eq!(b.delay_for(1, 1.0, Some(ms(5000))), ms(100));
}

#[test]
fn retry_after_parses_seconds_only() {
    assert_eq!(parse_retry_after("2"), Some(ms(2000)));
    assert_eq!(parse_retry_after(" 0 "), Some(ms(0)));
    assert_eq!(parse_retry_after("1.5"), Some(ms(1500)));
    assert_eq!(parse_retry_after("-1"), None);
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    assert_eq!(parse_retry_after(""), None);
}

#[test]
fn transient_failures_are_retried_before_the_commit_point() {
    for err in [
        status(500),
        status(502),
        status(503),
        status(408),
        status(429),
        AttemptError::Connect("connection refused".into()),
        AttemptError::FirstByteTimeout(ms(10)),
        AttemptError::IdleTimeout(ms(10)),
        AttemptError::Broken("reset".into()),
        AttemptError::StreamError(msg("overloaded")),
    ] {
        assert_eq!(classify(&err, false), Verdict::Retry, "{err:?}");
    }
}

#[test]
fn permanent_4xx_are_never_retried() {
    for code in [400, 401, 403, 404, 413, 422] {
        match classify(&status(code), false) {
            Verdict::Fail(ChatError::UpstreamRejected(fault)) => {
                let m = fault.to_string();
                assert!(m.contains(&format!("m{code}")), "{m}")
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    assert!(matches!(
        classify(&AttemptError::RejectedBody(msg("bad key")), false),
        Verdict::Fail(ChatError::UpstreamRejected(_))
    ));
    assert!(matches!(
        classify(&AttemptError::UnusableBody("html".into()), false),
        Verdict::Fail(ChatError::UpstreamBroken(_))
    ));
}

#[test]
fn after_the_commit_point_everything_is_upstream_broken() {
    for err in [
        status(503),
        AttemptError::IdleTimeout(ms(10)),
        AttemptError::Broken("reset".into()),
        AttemptError::StreamError(msg("boom")),
        AttemptError::Connect("x".into()),
    ] {
        match classify(&err, true) {
            Verdict::Fail(e) => {
                assert_eq!(e.code().as_str(), "upstream_broken");
                assert!(e.retryable());
            }
            Verdict::Retry => panic!("{err:?} retried after commit"),
        }
    }
}

#[test]
fn exhaustion_code_follows_the_last_failure() {
    assert_eq!(
        exhausted(&status(503), 5).code().as_str(),
        "upstream_unavailable"
    );
    assert_eq!(
        exhausted(&AttemptError::Connect("refused".into()), 5)
            .code()
            .as_str(),
        "upstream_unavailable"
    );
    assert_eq!(
        exhausted(&AttemptError::FirstByteTimeout(ms(5)), 5)
            .code()
            .as_str(),
        "upstream_timeout"
    );
    assert_eq!(
        exhausted(&AttemptError::IdleTimeout(ms(5)), 5)
            .code()
            .as_str(),
        "upstream_timeout"
    );
    assert_eq!(
        exhausted(&AttemptError::StreamError(msg("e")), 5)
            .code()
            .as_str(),
        "upstream_broken"
    );
    let e = exhausted(&status(429), 3);
    assert!(e.message().contains("after 3 attempts"), "{}", e.message());
    assert!(e.retryable());
}

#[test]
fn error_codes_and_retryability_match_the_protocol_table() {
    let table = [
        (ChatError::BadRequest(String::new()), "bad_request", false),
        (
            ChatError::UnknownModel {
                model: String::new(),
                available: Vec::new(),
            },
            "unknown_model",
            false,
        ),
        (ChatError::Busy(Busy::Draining), "busy", true),
        (
            ChatError::UpstreamRejected(Fault::Internal),
            "upstream_rejected",
            false,
        ),
        (
            ChatError::UpstreamUnavailable(Fault::Internal),
            "upstream_unavailable",
            true,
        ),
        (
            ChatError::UpstreamBroken(Fault::Internal),
            "upstream_broken",
            true,
        ),
        (
            ChatError::UpstreamTimeout(Fault::Internal),
            "upstream_timeout",
            true,
        ),
    ];
    for (err, code, retryable) in table {
        assert_eq!(err.code().as_str(), code);
        assert_eq!(err.retryable(), retryable, "{code}");
    }
}

#[test]
fn redact_removes_every_copy_of_the_key() {
    let out = netfly::error::redact("bad key sk-123 (sk-123)", Some("sk-123"));
    assert_eq!(out, "bad key [redacted] ([redacted])");
    assert_eq!(netfly::error::redact("fine", None), "fine");
}

#[test]
fn upstream_messages_are_redacted_before_they_are_clipped() {
    // The key straddles the 500-char clip: clipping first (as before) left
    // "…sk-test-SECRE…" in the message, which redaction no longer matched.
    let key = "sk-test-SECRET1234567890";
    for at in 470..=500 {
        let raw = format!("{}{key}{}", "x".repeat(at), "y".repeat(100));
        let m = UpstreamMessage::new(&raw, Some(key));
        for k in 6..=key.len() {
            assert!(!m.as_str().contains(&key[..k]), "at {at}: {m}");
        }
        assert!(m.as_str().chars().count() <= 500, "at {at}");
        assert!(m.as_str().ends_with('…'), "at {at}: {m}");
    }
    // A quoted payload (100 chars) likewise.
    for at in 80..=100 {
        let raw = format!("{}{key}", "z".repeat(at));
        let m = UpstreamMessage::quoting("invalid JSON in stream", &raw, Some(key));
        assert!(!m.as_str().contains("sk-test"), "at {at}: {m}");
        assert!(m.as_str().starts_with("invalid JSON in stream: zzz"), "{m}");
    }
    // Clipping respects characters; without a key the text is kept.
    let m = UpstreamMessage::new(&"é".repeat(600), None);
    assert_eq!(m.as_str().chars().count(), 500);
    assert_eq!(UpstreamMessage::new(" fine ", None).as_str(), "fine");
    assert_eq!(UpstreamMessage::new("sk-x", Some("")).as_str(), "sk-x");
}

#[test]
fn redirects_are_rejected_not_retried() {
    for code in [301, 302, 307, 308] {
        let err = AttemptError::Status {
            status: code,
            message: UpstreamMessage::new("redirect to https://x/ not followed", None),
            retry_after: None,
        };
        match classify(&err, false) {
            Verdict::Fail(ChatError::UpstreamRejected(fault)) => {
                let m = fault.to_string();
                assert!(
                    m.contains(&code.to_string()) && m.contains("not followed"),
                    "{m}"
                )
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    let bare = AttemptError::Status {
        status: 302,
        message: UpstreamMessage::default(),
        retry_after: None,
    };
    assert!(matches!(
        classify(&bare, false),
        Verdict::Fail(ChatError::UpstreamRejected(f)) if f.to_string().contains("redirect")
    ));
}

#[test]
fn too_large_answers_are_not_retried() {
    let err = AttemptError::TooLarge("an SSE line over 1024 bytes".into());
    for committed in [false, true] {
        assert!(matches!(
            classify(&err, committed),
            Verdict::Fail(ChatError::UpstreamBroken(f)) if f.to_string().contains("over 1024 bytes")
        ));
    }
}

/// An upstream failure is kept as data (status, the upstream's redacted
/// message, the attempt count) and worded only when shown.
#[test]
fn upstream_failures_are_data_until_shown() {
    let secret = "sk-secret-123";
    let refused = AttemptError::Status {
        status: 401,
        message: UpstreamMessage::new(&format!("bad key {secret}"), Some(secret)),
        retry_after: None,
    };
    match classify(&refused, false) {
        Verdict::Fail(ChatError::UpstreamRejected(Fault::Refused { status, message })) => {
            assert_eq!(status, 401);
            assert_eq!(message.as_str(), "bad key [redacted]");
        }
        other => panic!("{other:?}"),
    }
    let e = exhausted(&AttemptError::Connect("refused".into()), 4);
    assert_eq!(
        e,
        ChatError::UpstreamUnavailable(Fault::Attempt {
            cause: AttemptError::Connect("refused".into()),
            attempts: Some(4),
        })
    );
    assert_eq!(e.message(), "connect: refused (after 4 attempts)");
    assert_eq!(
        ChatError::UpstreamBroken(Fault::AnswerTooLarge { max: 10 }).to_string(),
        "upstream_broken: the streamed answer passed 10 bytes (--max-upstream-body-bytes)"
    );
}
