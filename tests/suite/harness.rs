//! Self-checks of the harness in `support/`, so that a passing test means
//! what it says: the fake upstream's replies, ends, counters and
//! disconnect detection, seen by a plain awc client.

use serde_json::{json, Value};

use crate::support::fake::{self, chunk, ev, events_without_done, stalled_after_hel, CHAT_PATH};
use crate::support::*;

async fn post(client: &awc::Client, url: &str) -> awc::ClientResponse {
    client
        .post(url)
        .insert_header(("accept", "text/event-stream"))
        .send_json(&json!({ "probe": true }))
        .await
        .expect("request to the fake upstream")
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
    let mut r = post(&client, &fake.url()).await;
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(WAIT, r.next()).await.unwrap();
    assert!(first.unwrap().unwrap().starts_with(b"data: "));
    drop(r);
    fake.expect_client_disconnect("after dropping a response mid-stream")
        .await;

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
