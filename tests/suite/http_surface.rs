//! The HTTP surface besides the two front ends (PROTOCOL §2, §5, §6):
//! `/healthz`, `/metrics`, and the built-in demo upstream that answers
//! when no `--upstream` is given.

use crate::support::*;

#[actix_web::test]
async fn healthz_and_metrics() {
    let (_fake, gw) = fake_gateway(vec![Reply::sse_words(&["ok"])], &[]).await;
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
