//! Self-checks of the harness in `support/`, so that a passing test means
//! what it says: the fake upstream's replies, ends, floods, counters,
//! connection handling and disconnect detection, seen by a plain awc client
//! or a raw TCP one.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fake::{self, chunk, ev, events_without_done, stalled_after_hel, CHAT_PATH};
use crate::support::*;

async fn post(client: &awc::Client, url: &str) -> AwcResponse {
    client
        .post(url)
        .insert_header(("accept", "text/event-stream"))
        .send_json(&json!({ "probe": true }))
        .await
        .expect("request to the fake upstream")
}

/// POSTs to the fake, reads the first piece of the streamed body, drops the
/// response and expects the fake to count a client disconnect.
async fn leave_after_the_first_event(client: &awc::Client, fake: &FakeUpstream, what: &str) {
    use futures_util::StreamExt as _;
    let before = fake.disconnects();
    let mut r = post(client, &fake.url()).await;
    let first = tokio::time::timeout(WAIT, r.next()).await.unwrap();
    assert!(first.unwrap().unwrap().starts_with(b"data: "));
    drop(r);
    assert!(
        poll_until(Duration::from_secs(1), ms(5), || fake.disconnects()
            > before)
        .await,
        "dropping {what}: no client disconnect within 1 s"
    );
}

#[actix_web::test]
async fn harness_fake_upstream_behaves() {
    init();
    let fake = FakeUpstream::start(vec![
        Reply::status(503).with_header("retry-after", "0"),
        Reply::sse_words(&["a", "b"]),
        Reply::sse(events_without_done()).with_end(End::Close),
        Reply::sse(vec![ev(&chunk("x"))]).with_end(End::Cut),
        stalled_after_hel(),
    ]);
    let client = awc::Client::default();

    let mut r = post(&client, &fake.url()).await;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "0");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    let mut r = post(&client, &fake.url()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(r.body().await.unwrap(), fake::sse_body(&["a", "b"]));
    // Requests are counted per request: both came on one kept-alive connection.
    assert_eq!((fake.attempts(), fake.connections()), (2, 1));

    // A close-delimited body is read to its end.
    let mut r = post(&client, &fake.url()).await;
    let expected: Vec<u8> = events_without_done()
        .into_iter()
        .flat_map(|p| match p {
            Part::Bytes(b) => b,
            Part::Delay(_) => Vec::new(),
            Part::Repeat { .. } => unreachable!("events_without_done repeats nothing"),
        })
        .collect();
    assert_eq!(r.body().await.unwrap(), expected);

    // A cut body is an error for the client.
    let mut r = post(&client, &fake.url()).await;
    assert!(r.body().await.is_err(), "a cut body must not look complete");
    assert_eq!(
        fake.disconnects(),
        0,
        "complete replies are not disconnects"
    );

    // Dropping a response mid-stream is seen as a client disconnect.
    leave_after_the_first_event(&client, &fake, "a response mid-stream").await;

    let req = fake.request(0);
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", CHAT_PATH)
    );
    assert_eq!(req.json(), &json!({ "probe": true }));
    assert_eq!(fake.attempts(), 5);

    // Nothing listens on closed_port_url.
    assert!(client.post(closed_port_url()).send().await.is_err());
}

/// The generated flood ([`Reply::flood`], [`Part::Repeat`]) is a proper
/// stream of the promised size; body bytes are counted per request as they
/// are written; a flood dropped half way is a client disconnect and stops.
#[actix_web::test]
async fn harness_fake_upstream_floods_and_counts() {
    init();
    const MB: u64 = 1024 * 1024;
    let fake = FakeUpstream::start(vec![
        Reply::flood(MB),
        Reply::sse_words(&["a"]),
        Reply::flood(100 * MB),
    ]);
    let client = awc::Client::default();
    assert_eq!(fake.body_written(0), 0, "nothing written before a request");

    let mut r = post(&client, &fake.url()).await;
    let body = r.body().limit(2 * MB as usize).await.unwrap();
    assert_eq!(body.len() as u64, fake.body_written(0));
    let piece = 64 * 1024;
    assert!(
        (MB..MB + piece).contains(&(body.len() as u64)),
        "a flood of 1 MB is 1 MB and less than one piece more: {}",
        body.len()
    );
    let events: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let delta = fake::event(&chunk(&"x".repeat(1000)));
    let delta = delta.strip_suffix(b"\n\n").unwrap();
    // Split at '\n': delta events, then "data: [DONE]", "", "".
    let tail = events.len() - 3;
    assert_eq!(&events[tail..], [&b"data: [DONE]"[..], b"", b""]);
    for (i, line) in events[..tail].iter().enumerate() {
        let want: &[u8] = if i % 2 == 0 { delta } else { b"" };
        assert!(*line == want, "line {i} of the flood is not a delta event");
    }

    // Each request's body is counted on its own.
    let mut r = post(&client, &fake.url()).await;
    assert_eq!(r.body().await.unwrap(), fake::sse_body(&["a"]));
    assert_eq!(fake.body_written(1), fake::sse_body(&["a"]).len() as u64);
    assert_eq!(fake.disconnects(), 0);

    // A flood dropped after its first piece: a disconnect, and the fake
    // stopped writing long before its 100 MB.
    leave_after_the_first_event(&client, &fake, "a flood").await;
    assert!(
        fake.body_written(2) < 50 * MB,
        "the flood went on after the client left: {} bytes",
        fake.body_written(2)
    );
    assert_eq!(fake.attempts(), 3);
}

/// Reads from `tcp` until the peer closes it (`true`) or `quiet` passes
/// without a byte (`false`); returns what arrived too.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(quiet, tcp.read(&mut buf)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0) | Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A reply with `connection: close` is followed by the fake closing the
/// connection; any other reply leaves it open for the next request (awc
/// would not reuse a `connection: close` connection either way, so this
/// is seen on a raw one).
#[actix_web::test]
async fn harness_fake_upstream_closes_when_the_reply_says_so() {
    let fake = FakeUpstream::start(vec![
        Reply::sse_words(&["a"]).with_header("connection", "close"),
        Reply::sse_words(&["b"]),
        Reply::status(503).with_header("Connection", "Close"),
    ]);
    for (i, closes) in [(0, true), (1, false), (2, true)] {
        let mut tcp = raw_http::raw_post(fake.addr(), &json!({ "n": i })).await;
        let (answer, closed) = read_until_closed(&mut tcp, ms(300)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(closed, closes, "reply {i}: {answer}");
        let complete = if i == 2 { "}" } else { "\r\n0\r\n\r\n" };
        assert!(
            answer.ends_with(complete),
            "reply {i} is complete: {answer}"
        );
    }
    assert_eq!((fake.attempts(), fake.connections()), (3, 3));
}
