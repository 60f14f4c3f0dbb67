//! Connection and per-address limits (PROTOCOL §1): `--max-connections`
//! (503, slots freed and never leaked), `--max-connections-per-ip` (429),
//! the per-address chat budget `--max-chats-per-minute-per-ip` (`busy`),
//! and `--trusted-proxies` (the forwarded address is the one limited).

use std::time::Instant;

use crate::support::*;

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

#[actix_web::test]
async fn max_connections_refusals_do_not_leak_slots() {
    let gw = start_gateway(&["--max-connections", "3"]).await;
    let mut open: Vec<WsClient> = Vec::new();
    for _ in 0..3 {
        open.push(WsClient::connect(gw.addr).await);
    }
    for _ in 0..5 {
        assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(503));
    }
    // Free all three: three new ones fit again, the fourth does not.
    for mut ws in open.drain(..) {
        ws.close().await;
    }
    for _ in 0..3 {
        open.push(WsClient::connect_eventually(gw.addr, "/ws", &[]).await);
    }
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(503));
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"full\"} 6").await;
    drop(open);
    gw.stop(false).await;
}

#[actix_web::test]
async fn per_ip_connections_limit_is_429_and_freed_on_close() {
    let gw = start_gateway(&["--max-connections-per-ip", "2"]).await;
    let mut a = WsClient::connect(gw.addr).await;
    let _b = WsClient::connect(gw.addr).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[]).await,
        Some(429),
        "the third socket from 127.0.0.1 must get 429"
    );
    // Without a trusted proxy, X-Forwarded-For is ignored (no spoofing).
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("X-Forwarded-For", "10.9.9.9")]).await,
        Some(429),
        "an untrusted X-Forwarded-For must not give a fresh budget"
    );
    a.close().await;
    drop(a);
    let _c = WsClient::connect_eventually(gw.addr, "/ws", &[]).await;
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(429));
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"per_ip\"}").await;
    gw.stop(false).await;
}

/// An echoing fake, a gateway allowing `per_minute` chats per minute per
/// address, and one client.
async fn echo_with_chat_budget(per_minute: &str) -> (FakeUpstream, netfly::Gateway, WsClient) {
    let args = ["--max-chats-per-minute-per-ip", per_minute];
    fake_gateway_client(vec![Reply::echo(ms(0))], &args).await
}

#[actix_web::test]
async fn per_ip_chat_rate_is_busy_after_m_chats_across_sockets() {
    let (fake, gw, mut a) = echo_with_chat_budget("3").await;
    let mut b = WsClient::connect(gw.addr).await;
    for id in ["r1", "r2"] {
        let frames = a.chat(id, "fine", WAIT).await;
        expect_done(&frames);
    }
    // The budget is per address, not per socket.
    expect_done(&b.chat("r3", "fine", WAIT).await);
    for (ws, id) in [(&mut a, "r4"), (&mut b, "r5")] {
        let frames = ws.chat(id, "one too many", WAIT).await;
        let err = expect_error(&frames, "busy");
        assert_eq!(err["retryable"], true, "{err}");
        assert_eq!(frames.len(), 1, "busy is the only frame: {frames:?}");
    }
    assert_eq!(fake.attempts(), 3, "refused chats never go upstream");
    // Both sockets stay usable (cancel of unknown id is ignored; silence).
    a.send_cancel("r4").await;
    a.expect_no_frame(ms(100)).await;
    gw.stop(false).await;
}

/// The budget is per address *per minute*: closing every socket and
/// opening a new one must not refill it.
#[actix_web::test]
async fn per_ip_chat_budget_survives_reconnect() {
    let (_fake, gw, mut a) = echo_with_chat_budget("2").await;
    expect_done(&a.chat("r1", "fine", WAIT).await);
    expect_done(&a.chat("r2", "fine", WAIT).await);
    expect_error(&a.chat("r3", "too many", WAIT).await, "busy");
    a.close().await;
    drop(a);
    tokio::time::sleep(ms(300)).await;
    let mut b = WsClient::connect(gw.addr).await;
    let frames = b.chat("r4", "after reconnect", WAIT).await;
    gw.stop(false).await;
    expect_error(&frames, "busy");
}

#[actix_web::test]
async fn trusted_proxy_forwarded_address_is_the_one_limited() {
    let proxy = ["--trusted-proxies", "127.0.0.1"];
    let limits = [
        "--max-connections-per-ip",
        "1",
        "--max-chats-per-minute-per-ip",
        "2",
    ];
    let args = [&proxy[..], &limits].concat();
    let (fake, gw) = fake_gateway(vec![Reply::echo(ms(0))], &args).await;
    let xff_a: &[(&str, &str)] = &[("X-Forwarded-For", "203.0.113.7")];
    // A proxy chain: the right-most untrusted entry is the client.
    let xff_b: &[(&str, &str)] = &[("X-Forwarded-For", "198.51.100.1, 198.51.100.2, 127.0.0.1")];
    let mut a = WsClient::connect_with(gw.addr, "/ws", xff_a).await;
    let mut b = WsClient::connect_with(gw.addr, "/ws", xff_b).await;
    // One socket each: a second one from either address is 429 ...
    assert_eq!(WsClient::refusal(gw.addr, "/ws", xff_a).await, Some(429));
    let xff_c: &[(&str, &str)] = &[("X-Forwarded-For", "10.0.0.1, 198.51.100.2")];
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", xff_c).await,
        Some(429),
        "198.51.100.2 is the client of both chains"
    );
    // ... while the proxy itself (no header) is a client of its own.
    let mut direct = WsClient::connect(gw.addr).await;
    // Two chats each per minute, counted separately.
    for (ws, who) in [(&mut a, "a"), (&mut b, "b"), (&mut direct, "d")] {
        for n in 1..=2 {
            let id = format!("{who}{n}");
            let frames = ws.chat(&id, &format!("hello from {who}"), WAIT).await;
            expect_done(&frames);
            assert_eq!(content_of(&frames), format!("hello from {who}"));
        }
        let id = format!("{who}3");
        let frames = ws.chat(&id, "one too many", WAIT).await;
        assert_eq!(expect_error(&frames, "busy")["retryable"], true);
    }
    assert_eq!(fake.attempts(), 6);
    gw.stop(false).await;
}
