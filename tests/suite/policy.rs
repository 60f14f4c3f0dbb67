//! Unit tests of the pure retry policy (src/retry.rs).

use std::time::Duration;

use netfly::error::{Busy, ChatError};
use netfly::upstream::retry::{
    classify, exhausted, parse_retry_after, AttemptError, Backoff, Verdict,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: u16) -> AttemptError {
    AttemptError::Status {
        status: code,
        message: format!("m{code}"),
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
        AttemptError::StreamError("overloaded".into()),
    ] {
        assert_eq!(classify(&err, false), Verdict::Retry, "{err:?}");
    }
}

#[test]
fn permanent_4xx_are_never_retried() {
    for code in [400, 401, 403, 404, 413, 422] {
        match classify(&status(code), false) {
            Verdict::Fail(ChatError::UpstreamRejected(m)) => {
                assert!(m.contains(&format!("m{code}")), "{m}")
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    assert!(matches!(
        classify(&AttemptError::RejectedBody("bad key".into()), false),
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
        AttemptError::StreamError("boom".into()),
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
        exhausted(&AttemptError::StreamError("e".into()), 5)
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
            ChatError::UpstreamRejected(String::new()),
            "upstream_rejected",
            false,
        ),
        (
            ChatError::UpstreamUnavailable(String::new()),
            "upstream_unavailable",
            true,
        ),
        (
            ChatError::UpstreamBroken(String::new()),
            "upstream_broken",
            true,
        ),
        (
            ChatError::UpstreamTimeout(String::new()),
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
fn redacted_attempt_errors_keep_everything_but_the_key() {
    let key = Some("sk-secret");
    let err = AttemptError::Status {
        status: 401,
        message: "bad key sk-secret".into(),
        retry_after: Some(ms(5)),
    }
    .redacted(key);
    assert_eq!(
        err,
        AttemptError::Status {
            status: 401,
            message: "bad key [redacted]".into(),
            retry_after: Some(ms(5)),
        }
    );
    for (made, want) in [
        (
            AttemptError::Connect("x sk-secret".into()),
            AttemptError::Connect("x [redacted]".into()),
        ),
        (
            AttemptError::StreamError("sk-secret".into()),
            AttemptError::StreamError("[redacted]".into()),
        ),
        (
            AttemptError::Broken("sk-secret".into()),
            AttemptError::Broken("[redacted]".into()),
        ),
        (
            AttemptError::RejectedBody("sk-secret".into()),
            AttemptError::RejectedBody("[redacted]".into()),
        ),
        (
            AttemptError::IdleTimeout(ms(3)),
            AttemptError::IdleTimeout(ms(3)),
        ),
    ] {
        assert_eq!(made.redacted(key), want);
    }
    assert_eq!(
        AttemptError::Connect("sk-secret".into()).redacted(None),
        AttemptError::Connect("sk-secret".into())
    );
}
