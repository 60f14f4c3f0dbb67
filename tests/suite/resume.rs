//! Chats that outlive their socket (PROTOCOL.md §3.3, issue 11): the real
//! gateway, the scripted fake upstream and WebSocket clients, in-process on
//! 127.0.0.1 port 0.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake::{chunk, event};
use crate::support::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` words "w0 w1 …" and their concatenation (the upstream's text).
pub(crate) fn words(n: usize) -> (Vec<String>, String) {
    let w: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let text = w.concat();
    (w, text)
}

/// A proper stream of `words`, `gap` between events.
pub(crate) fn paced(words: &[String], gap: Duration) -> Reply {
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    Reply::sse_words_slow(&refs, gap)
}

pub(crate) fn resume_frame(session: &str, id: &str, after: u64) -> Value {
    json!({"type": "resume", "session": session, "id": id, "after": after})
}

pub(crate) fn session_of(ws: &WsClient) -> String {
    ws.hello()["session"]
        .as_str()
        .expect("hello.session is a string")
        .to_owned()
}

/// Reads the next frame for `id`: an `error` with `code` and no `seq` (a
/// refusal is not a chat frame).
pub(crate) async fn expect_refused(ws: &mut WsClient, id: &str, code: &str) {
    let err = ws.next_for(id, WAIT).await.expect("a refusal");
    assert_eq!(err["code"], code, "{err}");
    assert!(err.get("seq").is_none(), "{err}");
}

pub(crate) fn seq(frame: &Value) -> u64 {
    frame["seq"].as_u64().expect("a chat frame carries a seq")
}

/// Reads `id`'s frames until `n` deltas have arrived (keeping every frame).
pub(crate) async fn frames_until_deltas(ws: &mut WsClient, id: &str, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames
        .iter()
        .filter(|f: &&Value| f["type"] == "delta")
        .count()
        < n
    {
        let f = ws
            .next_for(id, WAIT)
            .await
            .unwrap_or_else(|| panic!("no frame for {id:?}; got {frames:#?}"));
        assert!(!ws::is_terminal(&f), "ended early: {f}");
        frames.push(f);
    }
    frames
}

/// Asserts that `head` then `tail` are one chat's frames from seq 1, each
/// exactly once and in order, ending with its terminal frame.
pub(crate) fn assert_whole(head: &[Value], tail: &[Value]) {
    let all: Vec<u64> = head.iter().chain(tail).map(seq).collect();
    let want: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, want, "seqs of the old and the new socket");
    assert!(ws::is_terminal(tail.last().expect("a tail")));
}

/// A gateway whose upstream streams `n` words `gap` apart, and a first
/// client that started chat "c1" and saw `seen` deltas of it.
async fn mid_answer(
    n: usize,
    gap: Duration,
    seen: usize,
    args: &[&str],
) -> (FakeUpstream, netfly::Gateway, WsClient, Vec<Value>, String) {
    let (w, text) = words(n);
    let (fake, gw, mut ws) = fake_gateway_client(vec![paced(&w, gap)], args).await;
    ws.send_chat("c1", "hi").await;
    let head = frames_until_deltas(&mut ws, "c1", seen).await;
    (fake, gw, ws, head, text)
}

#[actix_web::test]
async fn hello_carries_an_unguessable_session_per_socket() {
    let gw = start_gateway(&[]).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let ws = WsClient::connect(gw.addr).await;
        let s = session_of(&ws);
        assert_eq!(s.len(), 48, "{s}");
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
        assert!(seen.insert(s), "a session id was handed out twice");
    }
    gw.stop(false).await;
}

/// The core promise: the socket goes mid-answer, the upstream keeps
/// streaming (the fake sees no disconnect), and a resume on a new socket
/// completes the answer: old + new text is exactly the upstream's.
#[actix_web::test]
async fn close_mid_answer_then_resume_is_exact() {
    let (fake, gw, mut a, head, text) = mid_answer(40, ms(15), 5, &[]).await;
    let session = session_of(&a);
    a.close().await;
    drop(a);
    tokio::time::sleep(ms(150)).await;
    assert_eq!(
        fake.disconnects(),
        0,
        "closing the socket dropped the upstream"
    );
    expect_metric(gw.addr, "netfly_chats_detached 1").await;
    let mut b = WsClient::connect(gw.addr).await;
    let after = seq(head.last().expect("frames"));
    b.send_resume(&session, "c1", after).await;
    let tail = b.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &tail);
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    expect_done(&tail);
    assert_eq!(fake.disconnects(), 0);
    assert_eq!(fake.attempts(), 1, "a resume never re-asks the upstream");
    expect_metric(gw.addr, "netfly_resumes_total{result=\"ok\"} 1").await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn resume_after_zero_replays_everything() {
    let (_fake, gw, a, head, text) = mid_answer(10, ms(20), 2, &[]).await;
    let session = session_of(&a);
    drop(a);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    let all = b.chat_until_terminal("c1", WAIT).await;
    assert_whole(&[], &all);
    assert_eq!(all[0]["type"], "start");
    assert_eq!(content_of(&all), text);
    assert_eq!(
        &all[..head.len()],
        &head[..],
        "the replay is the frames as sent"
    );
    gw.stop(false).await;
}

#[actix_web::test]
async fn resume_after_the_chat_ended_while_detached() {
    let (fake, gw, a, head, text) = mid_answer(8, ms(10), 1, &[]).await;
    let session = session_of(&a);
    drop(a);
    // The answer completes with nobody attached.
    let m = gw.metrics();
    assert!(poll_until(WAIT, ms(10), || m.chats_active.get() == 0).await);
    assert_eq!(fake.disconnects(), 0);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", seq(&head[head.len() - 1]))
        .await;
    let tail = b.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &tail);
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    // At or past the terminal frame: just that frame again.
    let terminal = seq(tail.last().expect("terminal"));
    for after in [terminal, terminal + 5] {
        let mut c = WsClient::connect(gw.addr).await;
        c.send_resume(&session, "c1", after).await;
        let again = c.chat_until_terminal("c1", WAIT).await;
        assert_eq!(again.len(), 1, "{again:#?}");
        assert_eq!(&again[0], tail.last().expect("terminal"));
    }
    gw.stop(false).await;
}

#[actix_web::test]
async fn unknown_or_foreign_resumes_are_unavailable() {
    let (_fake, gw, a, _head, _text) = mid_answer(20, ms(20), 1, &[]).await;
    let session = session_of(&a);
    let mut b = WsClient::connect(gw.addr).await;
    let other = "0".repeat(48);
    for (s, id) in [
        (other.as_str(), "c1"),     // another (unknown) session
        (session.as_str(), "nope"), // an id that session never used
        ("not-a-session", "c1"),    // not even the shape of one
        (&session[..47], "c1"),     // a prefix of the real one
    ] {
        b.send_resume(s, id, 0).await;
        let err = b.next_for(id, WAIT).await.expect("an answer");
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "resume_unavailable", "{err}");
        assert_eq!(err["retryable"], false, "{err}");
        assert!(err.get("seq").is_none(), "a refusal has no seq: {err}");
    }
    // Nothing was attached: the live chat's frames reach only its socket.
    b.expect_no_frame(ms(200)).await;
    expect_metric(gw.addr, "netfly_resumes_total{result=\"unavailable\"} 4").await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn bad_resumes_are_bad_requests_and_change_nothing() {
    let (_fake, gw, mut a, head, text) = mid_answer(30, ms(20), 2, &[]).await;
    let session = session_of(&a);
    let cases = [
        (
            json!({"type": "resume", "id": "c1", "after": 0}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": session, "id": "c1"}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": session, "id": "c1", "after": -1}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": session, "id": "c1", "after": 1.5}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": session, "id": "c1", "after": "3"}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": 7, "id": "c1", "after": 0}),
            Some("c1"),
        ),
        (
            json!({"type": "resume", "session": session, "id": "", "after": 0}),
            None,
        ),
        (
            json!({"type": "resume", "session": session, "after": 0}),
            None,
        ),
        // Past the last frame of a running chat.
        (resume_frame(&session, "c1", 10_000), Some("c1")),
    ];
    let mut b = WsClient::connect(gw.addr).await;
    for (frame, id) in &cases {
        b.send_json(frame).await;
        let err = match id {
            Some(id) => b.next_for(id, WAIT).await,
            None => b.next_unattributed(WAIT).await,
        }
        .unwrap_or_else(|| panic!("no answer to {frame}"));
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame} → {err}"
        );
        assert!(err.get("seq").is_none(), "{err}");
    }
    // An id in flight on the resuming socket itself: refused with id null,
    // the running chat untouched.
    a.send_resume(&session, "c1", 0).await;
    let err = a.next_unattributed(WAIT).await.expect("refusal");
    assert_eq!(err["code"], "bad_request", "{err}");
    let tail = a.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &tail);
    assert_eq!(format!("{}{}", content_of(&head), content_of(&tail)), text);
    b.expect_no_frame(ms(100)).await;
    expect_metric(gw.addr, "netfly_resumes_total{result=\"bad_request\"} 10").await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn cancel_after_resume_drops_the_upstream_request() {
    let stalled = Reply::sse(vec![Part::Bytes(event(&chunk("Hel")))]).with_end(End::Stall);
    let (fake, gw, mut a) = fake_gateway_client(vec![stalled], &[]).await;
    let session = session_of(&a);
    a.send_chat("c1", "hi").await;
    let head = frames_until_deltas(&mut a, "c1", 1).await;
    drop(a);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", seq(&head[head.len() - 1]))
        .await;
    b.expect_no_frame(ms(100)).await;
    assert_eq!(fake.disconnects(), 0);
    b.send_cancel("c1").await;
    let tail = b.chat_until_terminal("c1", WAIT).await;
    assert_eq!(expect_done(&tail)["finish_reason"], "cancelled");
    assert_whole(&head, &tail);
    fake.expect_client_disconnect("cancel after a resume").await;
    expect_metric(gw.addr, "netfly_chats_total{outcome=\"cancelled\"} 1").await;
    gw.stop(false).await;
}

/// Two sockets attached at once (two tabs): both get the same frames, and a
/// cancel from either ends the chat for both.
#[actix_web::test]
async fn two_sockets_attached_get_the_same_frames() {
    let (_fake, gw, mut a, head, _text) = mid_answer(200, ms(10), 3, &[]).await;
    let session = session_of(&a);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    let b_head = frames_until_deltas(&mut b, "c1", 10).await;
    b.send_cancel("c1").await;
    let a_tail = a.chat_until_terminal("c1", WAIT).await;
    let b_tail = b.chat_until_terminal("c1", WAIT).await;
    assert_whole(&head, &a_tail);
    assert_whole(&b_head, &b_tail);
    let a_all: Vec<Value> = head.into_iter().chain(a_tail).collect();
    let b_all: Vec<Value> = b_head.into_iter().chain(b_tail).collect();
    assert_eq!(a_all, b_all, "both sockets saw the very same frames");
    assert_eq!(a_all.last().expect("done")["finish_reason"], "cancelled");
    gw.stop(false).await;
}

/// Nobody comes back within the window: the upstream request is dropped
/// (not before the window, and within the window + 1 s) and the chat is
/// forgotten.
#[actix_web::test]
async fn window_expiry_drops_the_upstream_and_forgets_the_chat() {
    let stalled = Reply::sse(vec![Part::Bytes(event(&chunk("Hel")))]).with_end(End::Stall);
    let (fake, gw, mut a) =
        fake_gateway_client(vec![stalled], &flags("--resume-window-ms 400")).await;
    let session = session_of(&a);
    a.send_chat("c1", "hi").await;
    frames_until_deltas(&mut a, "c1", 1).await;
    drop(a);
    let gone = Instant::now();
    assert!(
        fake.wait_client_disconnect(ms(1400)).await,
        "the upstream request outlived the window + 1 s"
    );
    let after = gone.elapsed();
    assert!(
        after >= ms(300),
        "dropped after {after:?}, before the window"
    );
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 1).await;
    expect_refused(&mut b, "c1", "resume_unavailable").await;
    expect_metric(gw.addr, "netfly_chats_total{outcome=\"abandoned\"} 1").await;
    expect_metric(gw.addr, "netfly_chats_detached 0").await;
    gw.stop(false).await;
}

/// An ended chat's log is kept for the window after its end, then forgotten.
#[actix_web::test]
async fn ended_logs_are_forgotten_after_the_window() {
    let (_fake, gw, mut a) = fake_gateway_client(
        vec![Reply::sse_words(&["a", "b"])],
        &flags("--resume-window-ms 300"),
    )
    .await;
    let session = session_of(&a);
    let frames = a.chat("c1", "hi", WAIT).await;
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    assert_eq!(b.chat_until_terminal("c1", WAIT).await, frames);
    // The retained log is counted, at least its frames' text.
    let text: usize = frames.iter().map(|f| f.to_string().len()).sum();
    let retained = metric(gw.addr, "netfly_resume_retained_bytes").await;
    assert!(retained >= text as f64, "{retained} retained for {text} B");
    tokio::time::sleep(ms(700)).await;
    b.send_resume(&session, "c1", 0).await;
    expect_refused(&mut b, "c1", "resume_unavailable").await;
    expect_metric(gw.addr, "netfly_chats_detached 0").await;
    expect_metric(gw.addr, "netfly_resume_retained_bytes 0").await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn window_zero_keeps_no_log() {
    let (_fake, gw, mut a) = fake_gateway_client(
        vec![Reply::sse_words(&["a", "b"])],
        &flags("--resume-window-ms 0"),
    )
    .await;
    let session = session_of(&a);
    a.chat("c1", "hi", WAIT).await;
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    expect_refused(&mut b, "c1", "resume_unavailable").await;
    gw.stop(false).await;
}

/// A resumed chat counts toward the socket's `max_streams`: one resume too
/// many is `busy`, and changes nothing.
#[actix_web::test]
async fn a_resume_past_max_streams_is_busy() {
    let args = flags("--max-streams-per-connection 1");
    let (_fake, gw, a, _head, _text) = mid_answer(30, ms(20), 1, &args).await;
    let session = session_of(&a);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_chat("own", "hi").await;
    b.expect_type("own", "delta", WAIT).await;
    b.send_resume(&session, "c1", 0).await;
    expect_refused(&mut b, "c1", "busy").await;
    expect_metric(gw.addr, "netfly_resumes_total{result=\"busy\"} 1").await;
    gw.stop(false).await;
}

/// Past the per-chat bound the chat keeps streaming to its socket, exactly,
/// but can no longer be resumed.
#[actix_web::test]
async fn a_log_past_its_bound_streams_on_but_is_not_resumable() {
    let (w, text) = words(300);
    let (_fake, gw, mut a) = fake_gateway_client(
        vec![paced(&w, ms(1))],
        &flags("--resume-max-chat-bytes 2000"),
    )
    .await;
    let session = session_of(&a);
    let frames = a.chat("c1", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), text);
    assert_whole(&[], &frames);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    expect_refused(&mut b, "c1", "resume_unavailable").await;
    gw.stop(false).await;
}

/// A detached chat that passes the bound can never be resumed, so it is
/// stopped at once rather than read on for nobody.
#[actix_web::test]
async fn a_detached_chat_past_its_bound_is_stopped() {
    let (fake, gw, a, _head, _text) =
        mid_answer(2000, ms(2), 1, &flags("--resume-max-chat-bytes 4000")).await;
    drop(a);
    fake.expect_client_disconnect("a detached chat past its log bound")
        .await;
    gw.stop(false).await;
}

/// The total bound is shared: a chat that would pass it stops retaining.
#[actix_web::test]
async fn the_total_bound_is_shared_by_every_log() {
    let (w, text) = words(200);
    let (_fake, gw, mut a) = fake_gateway_client(
        vec![paced(&w, ms(0))],
        &flags("--resume-max-chat-bytes 100000 --resume-max-bytes 6000"),
    )
    .await;
    let session = session_of(&a);
    let frames = a.chat("c1", "hi", WAIT).await;
    assert_eq!(content_of(&frames), text);
    let mut b = WsClient::connect(gw.addr).await;
    b.send_resume(&session, "c1", 0).await;
    expect_refused(&mut b, "c1", "resume_unavailable").await;
    // Small chats still fit.
    let small = a.chat("c2", "hi", WAIT).await;
    assert_eq!(content_of(&small), text);
    gw.stop(false).await;
}

/// The classic race: a resume while a fast stream (thousands of small
/// deltas) is being produced. Whatever the timing, every seq arrives exactly
/// once and in order, and the text is exact.
#[actix_web::test]
async fn resume_racing_a_fast_stream_never_duplicates_or_skips() {
    let (w, text) = words(3000);
    let refs: Vec<&str> = w.iter().map(String::as_str).collect();
    // Bursts of 20 events, 1 ms apart: the stream is still being produced
    // (fast) when the resume arrives.
    let bursts: Vec<Part> = crate::support::fake::sse_events(&refs)
        .chunks(20)
        .flat_map(|c| [Part::Bytes(c.concat()), Part::Delay(ms(1))])
        .collect();
    let mut mid_stream = 0;
    for (round, cut) in [1usize, 7, 50, 400].into_iter().enumerate() {
        let (fake, gw, mut a) = fake_gateway_client(vec![Reply::sse(bursts.clone())], &[]).await;
        let session = session_of(&a);
        a.send_chat("c1", "hi").await;
        let head = frames_until_deltas(&mut a, "c1", cut).await;
        // Vanish without a close frame, then resume at once.
        drop(a);
        let mut b = WsClient::connect(gw.addr).await;
        b.send_resume(&session, "c1", seq(&head[head.len() - 1]))
            .await;
        let live = gw.metrics().chats_active.get() == 1;
        mid_stream += usize::from(live);
        let tail = b.chat_until_terminal("c1", WAIT).await;
        assert_whole(&head, &tail);
        assert_eq!(
            format!("{}{}", content_of(&head), content_of(&tail)),
            text,
            "round {round}"
        );
        eprintln!("race round {round}: cut after {cut} deltas, {} frames replayed+live, chat still running at the resume: {}", tail.len(), live);
        assert_eq!(fake.attempts(), 1);
        gw.stop(false).await;
    }
    assert!(
        mid_stream > 0,
        "no resume landed while the stream was running"
    );
}

/// Shutdown drains detached chats like attached ones: one still running at
/// the end of the grace period ends (its upstream request dropped), one
/// that finishes within it completes.
#[actix_web::test]
async fn shutdown_drains_detached_chats() {
    let stalled = Reply::sse(vec![Part::Bytes(event(&chunk("Hel")))]).with_end(End::Stall);
    let (fake, gw, mut a) =
        fake_gateway_client(vec![stalled], &flags("--shutdown-grace-ms 300")).await;
    a.send_chat("c1", "hi").await;
    frames_until_deltas(&mut a, "c1", 1).await;
    drop(a);
    tokio::time::sleep(ms(100)).await;
    assert_eq!(fake.disconnects(), 0);
    let started = Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < ms(3000), "{:?}", started.elapsed());
    assert!(fake.wait_client_disconnect(ms(1000)).await);
}
