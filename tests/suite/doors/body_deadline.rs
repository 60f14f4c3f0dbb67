//! Item 2: a `/v1` request body has a deadline (`--client-body-timeout-ms`),
//! and `Expect: 100-continue` with a body over the limit gets 413 before
//! any `100 Continue`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::process::{ChildGateway, ChildOptions};
use crate::support::raw_http::{read_answer, read_head};
use crate::support::*;

/// A `/v1` request head announcing `len` body bytes (and `extra` header
/// lines), for a raw connection.
fn v1_head(addr: std::net::SocketAddr, len: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
}

/// Opens a connection that announces a 100000-byte body and sends one byte
/// of it.
async fn held_body(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("{}{{", v1_head(addr, 100_000, "")).as_bytes())
        .await?;
    Ok(tcp)
}

/// A body held open gets 408 (OpenAI-style JSON) at the deadline and the
/// connection is closed. Before: no answer, ever.
#[actix_web::test]
async fn a_held_body_gets_408_at_the_deadline_and_the_connection_closes() {
    let (fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &["--client-body-timeout-ms", "500"],
    )
    .await;
    let started = Instant::now();
    let mut tcp = held_body(gw.addr).await.expect("connect");
    let answer = read_answer(&mut tcp, Duration::from_secs(5))
        .await
        .expect("an answer within 5 s");
    let took = started.elapsed();
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(
        took >= ms(450) && took < ms(2000),
        "408 after {took:?} (deadline 500 ms)"
    );
    assert!(answer.closed, "the gateway closes the connection");
    let body = answer.body_text();
    let json_start = body.find('{').expect("a JSON body");
    let v: Value = serde_json::from_str(body[json_start..].trim_end_matches(['\r', '\n', '0']))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(fake.attempts(), 0, "nothing went upstream");
    gw.stop(false).await;
}

/// A body sent in full before the deadline, slowly, is served.
#[actix_web::test]
async fn a_slow_body_within_the_deadline_is_served() {
    let (_fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &["--client-body-timeout-ms", "2000"],
    )
    .await;
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = v1_head(gw.addr, body.len(), "Connection: close\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    for part in body.as_bytes().chunks(body.len() / 3 + 1) {
        tokio::time::sleep(ms(200)).await;
        tcp.write_all(part).await.unwrap();
    }
    let answer = read_answer(&mut tcp, WAIT).await.expect("answer");
    assert_eq!(answer.status, 200, "{} {}", answer.head, answer.body_text());
    gw.stop(false).await;
}

/// Many held bodies do not stop the gateway: with its open files limited
/// to 128, 300 connections holding bodies would take every descriptor
/// for ever; with the deadline they are answered and closed in turn, and
/// `/healthz` answers. Before: `/healthz` never answered.
#[actix_web::test]
async fn many_held_bodies_do_not_stop_healthz() {
    let gw = ChildGateway::start_with(
        &[
            "--upstream",
            &closed_port_url(),
            "--workers",
            "1",
            "--client-body-timeout-ms",
            "1000",
        ],
        ChildOptions {
            max_open_files: Some(128),
            ..ChildOptions::default()
        },
    );
    let mut held = Vec::new();
    for _ in 0..300 {
        // The kernel completes the handshakes the gateway cannot accept yet.
        match tokio::time::timeout(ms(2000), held_body(gw.addr)).await {
            Ok(Ok(tcp)) => held.push(tcp),
            other => panic!("connection {} failed: {other:?}", held.len()),
        }
    }
    let started = Instant::now();
    let healthz = async {
        let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        );
        tcp.write_all(req.as_bytes()).await.expect("send");
        read_answer(&mut tcp, Duration::from_secs(20)).await
    };
    let answer = healthz.await.expect("/healthz answered within 20 s");
    eprintln!(
        "/healthz behind 300 held bodies: {} after {:?}",
        answer.status,
        started.elapsed()
    );
    assert_eq!(answer.status, 200);
    // Every held connection got its 408 and was closed.
    let mut timed_out = 0;
    for mut tcp in held {
        if let Some(a) = read_answer(&mut tcp, ms(3000)).await {
            if a.status == 408 && a.closed {
                timed_out += 1;
            }
        }
    }
    assert_eq!(timed_out, 300, "held connections answered 408 and closed");
}

/// `Expect: 100-continue` announcing a body over the limit: 413 at once,
/// never `100 Continue`. Before: `100 Continue` came first.
#[actix_web::test]
async fn expect_continue_over_the_limit_gets_413_not_100() {
    let (fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &["--max-frame-bytes", "1000"],
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = v1_head(gw.addr, 1001, "Expect: 100-continue\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut tcp, ms(2000))
        .await
        .expect("an answer without sending the body");
    assert!(
        !answer.head.contains("100 Continue"),
        "100 Continue sent: {}",
        answer.head
    );
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{}",
        answer.head
    );
    assert_eq!(fake.attempts(), 0);
    gw.stop(false).await;
}

/// `Expect: 100-continue` within the limit still gets `100 Continue`, then
/// its answer.
#[actix_web::test]
async fn expect_continue_within_the_limit_continues() {
    let (_fake, gw) = fake_gateway(vec![Reply::sse_words(&["ok"])], &[]).await;
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = v1_head(
        gw.addr,
        body.len(),
        "Expect: 100-continue\r\nConnection: close\r\n",
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let cont = read_head(&mut tcp, ms(2000)).await.expect("100 Continue");
    assert_eq!(cont.status, 100, "{}", cont.head);
    tcp.write_all(body.as_bytes()).await.unwrap();
    let answer = read_answer(&mut tcp, WAIT).await.expect("answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    gw.stop(false).await;
}
