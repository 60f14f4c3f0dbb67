//! Several instances as one (issue 13, PROTOCOL.md §1 `--resume-store`,
//! §3.3): two gateways (in-process, or one as a child process where it must
//! die) name the same real `redis-server`, started by each test on a free
//! loopback port and stopped by PID. Scripted fake upstreams, WebSocket
//! clients; every wait bounded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::resume::{assert_whole, frames_until_deltas, paced, seq, session_of, words};
use crate::support::process::ChildGateway;
use crate::support::redis_server::RedisServer;
use crate::support::*;

/// Gateway flags naming `redis` as the store (plus `extra`).
fn on(redis: &RedisServer, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--resume-store".to_owned(), redis.url()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Two gateways on the same store, both with `fake` as their upstream.
async fn two_gateways(
    fake: &FakeUpstream,
    redis: &RedisServer,
    extra: &[&str],
) -> (netfly::Gateway, netfly::Gateway) {
    let args = on(redis, extra);
    let a = gateway_for(fake, &refs(&args)).await;
    let b = gateway_for(fake, &refs(&args)).await;
    (a, b)
}

/// Starts chat `id` on `ws`, reads `n` deltas and closes the socket:
/// returns the frames read and the socket's session.
async fn start_and_leave(ws: &mut WsClient, id: &str, n: usize) -> (Vec<Value>, String) {
    ws.send_chat(id, "hi").await;
    let head = frames_until_deltas(ws, id, n).await;
    let session = session_of(ws);
    ws.close().await;
    (head, session)
}

/// The chat's keys in the store (the `{S:ID}` ones).
async fn chat_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .keys("netfly:{*")
        .await
        .into_iter()
        .filter(|k| !k.starts_with("netfly:{limits}"))
        .collect()
}

/// The core promise across instances: a chat runs on A, its socket goes
/// mid-answer, a resume on B completes it exactly; then the socket on B
/// goes and a resume on A naming B's session (the client remembers the
/// latest hello) completes it again. And the reverse direction.
#[actix_web::test]
async fn a_chat_resumes_exactly_on_another_instance_and_back() {
    let redis = RedisServer::start();
    let (w, text) = words(60);
    let fake = FakeUpstream::start(vec![paced(&w, ms(15))]);
    let (a, b) = two_gateways(&fake, &redis, &[]).await;

    // A → B → A (through the alias of B's session).
    let mut on_a = WsClient::connect(a.addr).await;
    let (head, session) = start_and_leave(&mut on_a, "c1", 5).await;
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", seq(head.last().expect("frames")))
        .await;
    let mut middle = Vec::new();
    while middle
        .iter()
        .filter(|f: &&Value| f["type"] == "delta")
        .count()
        < 10
    {
        let f = on_b.next_for("c1", WAIT).await.expect("frames on B");
        assert!(!ws::is_terminal(&f), "ended early on B: {f}");
        middle.push(f);
    }
    let session_b = session_of(&on_b);
    on_b.close().await;
    let mut again = WsClient::connect(a.addr).await;
    let after = seq(middle.last().expect("frames on B"));
    again.send_resume(&session_b, "c1", after).await;
    let tail = again.chat_until_terminal("c1", WAIT).await;
    let all: Vec<Value> = head.iter().chain(&middle).cloned().collect();
    assert_whole(&all, &tail);
    assert_eq!(format!("{}{}", content_of(&all), content_of(&tail)), text);
    expect_done(&tail);
    assert_eq!(fake.attempts(), 1, "a resume never re-asks the upstream");
    assert_eq!(fake.disconnects(), 0, "the upstream request ran to its end");
    expect_metric(b.addr, "netfly_resumes_total{result=\"ok\"} 1").await;
    expect_metric(a.addr, "netfly_resumes_total{result=\"ok\"} 1").await;

    // B → A: a chat started on B, resumed on A from 0 after it ended.
    let fake2 = FakeUpstream::start(vec![paced(&w, ms(2))]);
    let args = on(&redis, &[]);
    let c = gateway_for(&fake2, &refs(&args)).await;
    let mut on_c = WsClient::connect(c.addr).await;
    let (head, session) = start_and_leave(&mut on_c, "x", 2).await;
    assert!(fake2.wait_attempts(1, WAIT).await);
    tokio::time::sleep(ms(400)).await; // it ends while detached
    let mut on_a = WsClient::connect(a.addr).await;
    on_a.send_resume(&session, "x", 0).await;
    let all = on_a.chat_until_terminal("x", WAIT).await;
    assert_whole(&[], &all);
    assert_eq!(
        &all[..head.len()],
        &head[..],
        "the replay is the frames as sent"
    );
    assert_eq!(content_of(&all), text);
    expect_done(&all);
    check_chat_frames("x", &all);

    c.stop(false).await;
    a.stop(false).await;
    b.stop(false).await;
}

/// A socket on B reads a chat A runs, longer than the resume window: A
/// must not abandon it (nobody is attached on A), and B gets it all.
#[actix_web::test]
async fn a_chat_read_on_another_instance_is_not_abandoned() {
    let redis = RedisServer::start();
    let (w, text) = words(100);
    let fake = FakeUpstream::start(vec![paced(&w, ms(25))]);
    let (a, b) = two_gateways(&fake, &redis, &["--resume-window-ms", "600"]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let (head, session) = start_and_leave(&mut on_a, "c1", 3).await;
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", seq(head.last().expect("frames")))
        .await;
    let tail = on_b.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &tail);
    expect_done(&tail);
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    assert_eq!(
        fake.disconnects(),
        0,
        "the owner abandoned a chat read elsewhere"
    );
    a.stop(false).await;
    b.stop(false).await;
}

/// `cancel` from a socket on B reaches A (pub/sub): A's upstream request is
/// dropped within 1 s, and `done cancelled` reaches B through the store.
#[actix_web::test]
async fn cancel_on_another_instance_drops_the_owners_upstream_request() {
    let redis = RedisServer::start();
    let (w, _) = words(400);
    let fake = FakeUpstream::start(vec![paced(&w, ms(20))]);
    let (a, b) = two_gateways(&fake, &redis, &[]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let (head, session) = start_and_leave(&mut on_a, "c1", 3).await;
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", seq(head.last().expect("frames")))
        .await;
    on_b.expect_type("c1", "delta", WAIT).await;
    assert_eq!(fake.disconnects(), 0);
    on_b.send_cancel("c1").await;
    let sent = Instant::now();
    fake.expect_client_disconnect("cancel on another instance")
        .await;
    eprintln!(
        "cancel across instances: the owner's upstream request dropped {:?} after the cancel",
        sent.elapsed()
    );
    let rest = on_b.chat_until_terminal("c1", WAIT).await;
    let done = expect_done(&rest);
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "done cancelled took {:?}",
        sent.elapsed()
    );
    a.stop(false).await;
    b.stop(false).await;
}

/// The instance running a chat is SIGKILLed mid-answer: a resume on
/// another instance replays everything that was logged, then ends with
/// `upstream_broken` (retryable, the next seq) within 10 s of the death.
#[actix_web::test]
async fn owner_death_ends_the_resumed_chat_upstream_broken_within_10_s() {
    let redis = RedisServer::start();
    let (w, text) = words(400);
    let fake = FakeUpstream::start(vec![paced(&w, ms(20))]);
    let args = on(&redis, &["--upstream", &fake.url()]);
    let owner = ChildGateway::start(&refs(&args));
    let mut on_a = WsClient::connect(owner.addr).await;
    on_a.send_chat("c1", "hi").await;
    let head = frames_until_deltas(&mut on_a, "c1", 8).await;
    let session = session_of(&on_a);
    let after = seq(head.last().expect("frames"));
    // The owner writes a burst to the store right after sending it here;
    // give it that moment, so the store holds every frame this client saw.
    tokio::time::sleep(ms(100)).await;
    let killed = Instant::now();
    drop(owner); // SIGKILL, by PID
    let b = gateway_for(&fake, &refs(&on(&redis, &[]))).await;
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", after).await;
    let tail = on_b
        .chat_until_terminal("c1", Duration::from_secs(12))
        .await;
    let took = killed.elapsed();
    eprintln!("owner death: upstream_broken reached the resumed socket {took:?} after the kill");
    let last = expect_error(&tail, "upstream_broken");
    assert_eq!(last["retryable"], true, "{last}");
    assert!(
        took < Duration::from_secs(10),
        "upstream_broken came {took:?} after the kill"
    );
    assert_whole(&head, &tail);
    let got = format!("{}{}", content_of(&head), content_of(&tail));
    assert!(
        text.starts_with(&got),
        "the replay is a prefix of the answer: {got:?}"
    );
    assert_eq!(
        tail.len() as u64,
        seq(last) - after,
        "everything logged after {after}, then the terminal frame"
    );
    // A second reader gets the very same ending.
    let mut other = WsClient::connect(b.addr).await;
    other.send_resume(&session, "c1", 0).await;
    let all = other.chat_until_terminal("c1", WAIT).await;
    assert_eq!(all.last(), tail.last());
    b.stop(false).await;
}

/// Keys carry the resume window after the end: then they are gone, and a
/// resume anywhere is `resume_unavailable`.
#[actix_web::test]
async fn keys_expire_with_the_window_then_resume_is_unavailable() {
    let redis = RedisServer::start();
    let (w, _) = words(5);
    let fake = FakeUpstream::start(vec![paced(&w, ms(1))]);
    let (a, b) = two_gateways(&fake, &redis, &["--resume-window-ms", "1000"]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let frames = on_a.chat("c1", "hi", WAIT).await;
    expect_done(&frames);
    let session = session_of(&on_a);
    let ended = Instant::now();
    let mut found = Vec::new();
    for _ in 0..50 {
        found = chat_keys(&redis).await;
        if found.iter().any(|k| k.ends_with(":log")) {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(
        found.iter().any(|k| k.ends_with(":log")),
        "the chat's log is in the store: {found:?}"
    );
    assert!(
        !found.iter().any(|k| k.ends_with(":lease")),
        "an ended chat holds no lease: {found:?}"
    );
    // Within the window: resumable on B.
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", 0).await;
    expect_done(&on_b.chat_until_terminal("c1", WAIT).await);
    // After it: gone everywhere.
    let mut gone = false;
    for _ in 0..100 {
        if chat_keys(&redis).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(gone, "keys left: {:?}", chat_keys(&redis).await);
    assert!(ended.elapsed() >= ms(900), "keys went before the window");
    tokio::time::sleep(ms(1200)).await; // B forgets its copy too
    for gw in [&a, &b] {
        let mut ws = WsClient::connect(gw.addr).await;
        ws.send_resume(&session, "c1", 0).await;
        let err = ws.next_for("c1", WAIT).await.expect("an answer");
        assert_eq!(err["code"], "resume_unavailable", "{err}");
        assert!(err.get("seq").is_none(), "{err}");
    }
    a.stop(false).await;
    b.stop(false).await;
}

/// A client a burst ahead of the store waits for it (bounded); one that
/// claims frames nobody sent, while the owner lives, is `bad_request`.
#[actix_web::test]
async fn an_after_beyond_the_log_is_a_bad_request_while_the_owner_lives() {
    let redis = RedisServer::start();
    let (w, _) = words(300);
    let fake = FakeUpstream::start(vec![paced(&w, ms(20))]);
    let (a, b) = two_gateways(&fake, &redis, &[]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let (head, session) = start_and_leave(&mut on_a, "c1", 2).await;
    let after = seq(head.last().expect("frames")) + 1000;
    let mut on_b = WsClient::connect(b.addr).await;
    let asked = Instant::now();
    on_b.send_resume(&session, "c1", after).await;
    let err = on_b.next_for("c1", WAIT).await.expect("an answer");
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(err.get("seq").is_none(), "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "refused after {:?}",
        asked.elapsed()
    );
    // It changed nothing: a proper resume still works.
    on_b.send_resume(&session, "c1", seq(head.last().expect("frames")))
        .await;
    on_b.expect_type("c1", "delta", WAIT).await;
    a.stop(false).await;
    b.stop(false).await;
}

/// A chat-completions POST, answered whole; its HTTP status.
async fn v1_status(addr: std::net::SocketAddr, token: &str) -> u16 {
    init();
    let client = awc::Client::builder().timeout(WAIT).finish();
    let body = json!({"messages": [{"role": "user", "content": "x"}], "stream": false});
    let mut resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(token)
        .send_json(&body)
        .await
        .expect("POST /v1/chat/completions");
    let _ = read_body(&mut resp, 1 << 20, "/v1").await;
    resp.status().as_u16()
}

/// The per-minute budgets are the cluster's, not each instance's: N in
/// total across A and B (and /v1 spends from the same budget).
#[actix_web::test]
async fn per_minute_budgets_are_shared_by_every_instance() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start(vec![Reply::sse_words(&["ok"])]);
    let (a, b) = two_gateways(&fake, &redis, &["--max-chats-per-minute-per-ip", "3"]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let mut on_b = WsClient::connect(b.addr).await;
    expect_done(&on_a.chat("a1", "x", WAIT).await);
    expect_done(&on_b.chat("b1", "x", WAIT).await);
    expect_done(&on_a.chat("a2", "x", WAIT).await);
    for (ws, id) in [(&mut on_b, "b2"), (&mut on_a, "a3")] {
        let frames = ws.chat(id, "x", WAIT).await;
        let err = expect_error(&frames, "busy");
        assert!(
            message_of(err).contains("per minute from your address"),
            "{err}"
        );
    }
    a.stop(false).await;
    b.stop(false).await;

    // Per token: /ws (?token=) and /v1 (Bearer) alike.
    let args = [
        "--auth-tokens",
        "t1,t2",
        "--max-chats-per-minute-per-token",
        "2",
    ];
    let (a, b) = two_gateways(&fake, &redis, &args).await;
    let mut t1_a = WsClient::connect_with(a.addr, "/ws?token=t1", &[]).await;
    expect_done(&t1_a.chat("a1", "x", WAIT).await);
    assert_eq!(v1_status(b.addr, "t1").await, 200);
    assert_eq!(
        v1_status(b.addr, "t1").await,
        429,
        "a third chat in the minute"
    );
    let frames = t1_a.chat("a2", "x", WAIT).await;
    assert!(message_of(expect_error(&frames, "busy")).contains("with your token"));
    let mut t2_b = WsClient::connect_with(b.addr, "/ws?token=t2", &[]).await;
    expect_done(&t2_b.chat("b1", "x", WAIT).await);
    // Tokens never reach Redis in clear (keys name them by a hash).
    let keys = redis.keys("*").await;
    assert!(keys.iter().any(|k| k.contains(":tok:")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains(":t1") || k.contains(":t2")),
        "{keys:?}"
    );
    a.stop(false).await;
    b.stop(false).await;
}

/// `--max-concurrent-chats-per-token` counts chats in flight on every
/// instance together; a slot is free again when its chat ends.
#[actix_web::test]
async fn per_token_concurrency_is_shared_by_every_instance() {
    let redis = RedisServer::start();
    let (w, _) = words(500);
    let fake = FakeUpstream::start(vec![paced(&w, ms(20))]);
    let args = [
        "--auth-tokens",
        "t1,t2",
        "--max-concurrent-chats-per-token",
        "2",
    ];
    let (a, b) = two_gateways(&fake, &redis, &args).await;
    let mut t1_a = WsClient::connect_with(a.addr, "/ws?token=t1", &[]).await;
    let mut t1_b = WsClient::connect_with(b.addr, "/ws?token=t1", &[]).await;
    t1_a.send_chat("a1", "x").await;
    t1_a.expect_type("a1", "delta", WAIT).await;
    t1_b.send_chat("b1", "x").await;
    t1_b.expect_type("b1", "delta", WAIT).await;
    t1_a.send_chat("a2", "x").await;
    let err = t1_a.next_for("a2", WAIT).await.expect("an answer");
    assert_eq!(err["code"], "busy", "{err}");
    assert!(
        message_of(&err).contains("in flight with your token"),
        "{err}"
    );
    assert_eq!(v1_status(b.addr, "t1").await, 429);
    let mut t2_b = WsClient::connect_with(b.addr, "/ws?token=t2", &[]).await;
    t2_b.send_chat("c", "x").await;
    t2_b.expect_type("c", "delta", WAIT).await;
    // One ends (cancelled on B): its slot is free for a chat on A.
    t1_b.send_cancel("b1").await;
    expect_done(&t1_b.chat_until_terminal("b1", WAIT).await);
    let mut admitted = false;
    for i in 0..20 {
        let id = format!("a3-{i}");
        t1_a.send_chat(&id, "x").await;
        let f = t1_a.next_for(&id, WAIT).await.expect("an answer");
        if f["type"] != "error" {
            admitted = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(admitted, "the slot of the ended chat was never freed");
    a.stop(false).await;
    b.stop(false).await;
}

/// Redis dies mid-run: the streams in flight finish exactly, new chats
/// still work (not resumable elsewhere), errors are counted, nothing
/// panics; Redis comes back: new chats are resumable on the other
/// instance again.
#[actix_web::test]
async fn redis_lost_and_back() {
    let mut redis = RedisServer::start();
    let (w, text) = words(80);
    let fake = FakeUpstream::start(vec![paced(&w, ms(15))]);
    let (a, b) = two_gateways(&fake, &redis, &[]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    on_a.send_chat("c1", "hi").await;
    let head = frames_until_deltas(&mut on_a, "c1", 5).await;
    redis.kill();
    let tail = on_a.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &tail);
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    // New chats work, on both instances.
    let frames = on_a.chat("c2", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), text);
    let mut on_b = WsClient::connect(b.addr).await;
    expect_done(&on_b.chat("c3", "hi", WAIT).await);
    assert!(
        metric(a.addr, "netfly_resume_store_errors_total").await > 0.0,
        "errors are counted"
    );
    // A resume elsewhere of a chat the store lost is refused, not hung.
    let session = session_of(&on_a);
    on_b.send_resume(&session, "c2", 0).await;
    let err = on_b.next_for("c2", WAIT).await.expect("an answer");
    assert_eq!(err["code"], "resume_unavailable", "{err}");

    redis.restart();
    // Back: within a few seconds a new chat is resumable on B again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("p{n}");
        let mut ws = WsClient::connect(a.addr).await;
        let (head, session) = start_and_leave(&mut ws, &id, 3).await;
        let mut other = WsClient::connect(b.addr).await;
        other
            .send_resume(&session, &id, seq(head.last().expect("frames")))
            .await;
        let first = other.next_for(&id, WAIT).await.expect("an answer");
        if first.get("seq").is_some() {
            let mut tail = vec![first];
            if !ws::is_terminal(&tail[0]) {
                tail.extend(other.chat_until_terminal(&id, WAIT).await);
            }
            assert_whole(&head, &tail);
            assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
            break;
        }
        assert_eq!(first["code"], "resume_unavailable", "{first}");
        assert!(
            Instant::now() < deadline,
            "chats still not resumable elsewhere 15 s after Redis came back"
        );
        tokio::time::sleep(ms(300)).await;
    }
    a.stop(false).await;
    b.stop(false).await;
}

/// An unreachable store stops the start, with a message naming the store
/// and never its password; a malformed URL names the flag, not the value.
#[actix_web::test]
async fn an_unreachable_store_fails_the_start_without_showing_the_password() {
    let url = closed_port_url();
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .expect("a port")
        .to_owned();
    let store = format!("redis://:sekret@127.0.0.1:{port}/0");
    let config = test_config(&["--resume-store", &store]);
    init();
    let started = Instant::now();
    let err = match netfly::Gateway::start(config).await {
        Ok(gw) => {
            gw.stop(false).await;
            panic!("a gateway started with an unreachable store");
        }
        Err(e) => e.to_string(),
    };
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("resume store"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("sekret"), "the password leaked: {err}");

    let bad = try_test_config(&["--resume-store", "redis:/:sekret@"], &[]).unwrap_err();
    assert!(bad.contains("--resume-store"), "{bad}");
    assert!(!bad.contains("sekret"), "{bad}");
    let env = try_test_config(&[], &[("NETFLY_RESUME_STORE", "postgres://x")]).unwrap_err();
    assert!(env.contains("NETFLY_RESUME_STORE"), "{env}");
    let ok = test_config(&["--resume-store", "rediss://:pw@cache.example:6380/2"]);
    assert_eq!(
        ok.resume_store.to_string(),
        "rediss://:***@cache.example:6380/2"
    );
    assert!(
        !format!("{ok:?}").contains(":pw@"),
        "Debug shows the password"
    );
    assert_eq!(
        test_config(&[]).resume_store,
        netfly::config::ResumeStore::Memory
    );
}

/// A password in the URL is used (and a server that wants one, refused
/// without it, stops the start).
#[actix_web::test]
async fn a_password_in_the_url_is_used() {
    let redis = RedisServer::start_with(&["requirepass sekret"]);
    let without = test_config(&["--resume-store", &redis.url()]);
    init();
    match netfly::Gateway::start(without).await {
        Ok(gw) => {
            gw.stop(false).await;
            panic!("started without the password");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let with = format!("redis://:sekret@127.0.0.1:{}/0", redis.port);
    let (w, text) = words(20);
    let fake = FakeUpstream::start(vec![paced(&w, ms(10))]);
    let a = gateway_for(&fake, &["--resume-store", &with]).await;
    let b = gateway_for(&fake, &["--resume-store", &with]).await;
    let mut on_a = WsClient::connect(a.addr).await;
    let (head, session) = start_and_leave(&mut on_a, "c1", 2).await;
    let mut on_b = WsClient::connect(b.addr).await;
    on_b.send_resume(&session, "c1", seq(head.last().expect("frames")))
        .await;
    let tail = on_b.chat_until_terminal("c1", WAIT).await;
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    a.stop(false).await;
    b.stop(false).await;
}

/// The memory store keeps per-instance counting and implements the new
/// per-token flags locally.
#[actix_web::test]
async fn memory_store_counts_per_token_limits_locally() {
    let (w, _) = words(300);
    let fake = FakeUpstream::start(vec![paced(&w, ms(20))]);
    let gw = gateway_for(
        &fake,
        &[
            "--auth-tokens",
            "t1,t2",
            "--max-concurrent-chats-per-token",
            "1",
            "--max-chats-per-minute-per-token",
            "2",
        ],
    )
    .await;
    let mut t1 = WsClient::connect_with(gw.addr, "/ws?token=t1", &[]).await;
    t1.send_chat("a", "x").await;
    t1.expect_type("a", "delta", WAIT).await;
    t1.send_chat("b", "x").await;
    let err = t1.next_for("b", WAIT).await.expect("an answer");
    assert!(
        message_of(&err).contains("in flight with your token"),
        "{err}"
    );
    t1.send_cancel("a").await;
    expect_done(&t1.chat_until_terminal("a", WAIT).await);
    t1.send_chat("c", "x").await;
    t1.expect_type("c", "delta", WAIT).await;
    t1.send_cancel("c").await;
    expect_done(&t1.chat_until_terminal("c", WAIT).await);
    t1.send_chat("d", "x").await;
    let err = t1.next_for("d", WAIT).await.expect("an answer");
    assert!(
        message_of(&err).contains("per minute with your token"),
        "{err}"
    );
    let mut t2 = WsClient::connect_with(gw.addr, "/ws?token=t2", &[]).await;
    t2.send_chat("e", "x").await;
    t2.expect_type("e", "delta", WAIT).await;
    gw.stop(false).await;
}
