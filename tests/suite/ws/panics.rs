//! Panic isolation (`Config::fault_injection`): a panicking session closes
//! only its socket (1011), a panicking chat ends only that chat
//! (`upstream_broken`), and everything else goes on exactly.

use std::time::Instant;

use crate::support::*;

#[actix_web::test]
async fn panics_stay_inside_their_socket_or_chat() {
    let words: Vec<String> = (0..30).map(|i| format!("w{i} ")).collect();
    let slow: String = words.concat();
    let fake = FakeUpstream::start(vec![Reply::echo(ms(100))]);
    let url = fake.url();
    let mut config = test_config(&["--upstream", url.as_str()]);
    config.fault_injection = true;
    let gw = start_gateway_with(config).await;

    // A: a 3 s stream in flight the whole time.
    let mut a = WsClient::connect(gw.addr).await;
    a.send_chat("a1", &slow).await;
    let first = a.expect_type("a1", "delta", WAIT).await;
    let a_started = Instant::now();

    // B: its session panics -> B (only) is closed with 1011.
    let mut b = WsClient::connect(gw.addr).await;
    b.send_chat("b1", "please netfly-fault:panic-session now")
        .await;
    assert!(b.wait_closed(WAIT).await, "the panicking socket stays open");
    assert_eq!(b.close_code(), Some(1011), "backlog {:?}", b.backlog());

    // The gateway keeps serving: /healthz and a new socket.
    let (status, body) = http_get(gw.addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut c = WsClient::connect(gw.addr).await;
    let frames = c.chat("c1", "still here", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "still here");

    // D: its chat task panics -> that chat ends with an error, D lives on.
    let mut d = WsClient::connect(gw.addr).await;
    let frames = d.chat("d1", "netfly-fault:panic-chat", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(
        err["message"].as_str().unwrap().contains("internal error"),
        "{err}"
    );
    let frames = d.chat("d2", "after the panic", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "after the panic");
    // A panicking chat on one socket does not disturb another chat of it.
    d.send_chat("d3", "x y z").await;
    let frames = d.chat("d4", "netfly-fault:panic-chat", WAIT).await;
    expect_error(&frames, "upstream_broken");
    let frames = d.chat_until_terminal("d3", WAIT).await;
    assert_eq!(content_of(&frames), "x y z");

    // All of that happened while A was mid-stream; A is exact.
    assert!(
        a_started.elapsed() < ms(2800),
        "the checks took too long to be mid-stream: {:?}",
        a_started.elapsed()
    );
    let rest = a.chat_until_terminal("a1", WAIT).await;
    expect_done(&rest);
    assert_eq!(
        format!(
            "{}{}",
            first["content"].as_str().unwrap(),
            content_of(&rest)
        ),
        slow
    );
    expect_metric(gw.addr, "netfly_ws_connections 3").await;
    gw.stop(false).await;
}
