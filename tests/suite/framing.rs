//! HTTP framing of upstream answers (PROTOCOL §4, "HTTP framing is read as
//! RFC 9112 says"): what awc alone does with close-delimited and cut
//! bodies, what the framing guard of `netfly::upstream::proxy` makes of
//! them, the gateway's answer at every split of the body, keep-alive reuse,
//! and what the guard cannot do over TLS.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use netfly::upstream::framing::{awc_reads_no_body, CUT_BODY};
use netfly::upstream::proxy;

use crate::support::*;

/// One tiny content event (short, so that every split point is cheap).
fn tiny_event(content: &str) -> Vec<u8> {
    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n").into_bytes()
}

const WORDS: [&str; 3] = ["Hel", "lo", " you"];

/// The body of a whole answer: three content events and `[DONE]`.
fn body() -> Vec<u8> {
    let mut b: Vec<u8> = WORDS.iter().flat_map(|w| tiny_event(w)).collect();
    b.extend_from_slice(b"data: [DONE]\n\n");
    b
}

/// The text of the content events wholly inside the first `k` bytes.
fn text_within(k: usize) -> String {
    let mut at = 0;
    let mut text = String::new();
    for w in WORDS {
        at += tiny_event(w).len();
        if at <= k {
            text.push_str(w);
        }
    }
    text
}

// ---------------------------------------------------------------------------
// awc alone, and awc over the guarded connector
// ---------------------------------------------------------------------------

/// An awc client; `guarded`: over netfly's connector (the framing guard),
/// else awc's own.
fn awc_client(guarded: bool) -> awc::Client {
    init();
    let connector = awc::Connector::new().timeout(Duration::from_secs(5));
    let builder = awc::Client::builder().timeout(Duration::from_secs(10));
    if guarded {
        builder
            .connector(connector.connector(proxy::tcp_connector(None)))
            .finish()
    } else {
        builder.connector(connector).finish()
    }
}

/// POSTs to `url` and reads the whole body: Ok(body) when it ended cleanly,
/// Err(message) when reading it failed.
async fn fetch(client: &awc::Client, url: &str) -> Result<Vec<u8>, String> {
    let send = client.post(url).send_body("{}");
    let mut resp = tokio::time::timeout(WAIT, send)
        .await
        .map_err(|_| "no response within WAIT".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.next()).await {
            Err(_) => return Err("body did not end within WAIT".into()),
            Ok(None) => return Ok(out),
            Ok(Some(Ok(b))) => out.extend_from_slice(&b),
            Ok(Some(Err(e))) => return Err(format!("{e} / {e:?}")),
        }
    }
}

#[actix_web::test]
async fn awc_alone_misreads_framing_and_the_guard_fixes_it() {
    let full = body();
    let cut_at = tiny_event(WORDS[0]).len() + 5;
    let head = full[..cut_at].to_vec();
    let cases = [
        ("close-delimited", full.clone(), End::CloseDelimited),
        ("FIN mid-chunk", head.clone(), End::FinMidChunk),
        ("FIN after a chunk", head.clone(), End::FinAfterChunk),
        ("short Content-Length", head.clone(), End::ShortLength(7)),
    ];
    for (what, sent, end) in cases {
        let fake = FakeUpstream::start(vec![Reply::sse_bytes(&sent).with_end(end)]);
        // awc alone: every one of these reads as a clean end.
        let alone = fetch(&awc_client(false), &fake.url()).await;
        let expected_alone = if end == End::CloseDelimited {
            Vec::new() // the whole body is lost
        } else {
            sent.clone() // a cut body passes for a complete one
        };
        assert_eq!(
            alone.as_deref().map(String::from_utf8_lossy),
            Ok(String::from_utf8_lossy(&expected_alone)),
            "{what}: awc alone"
        );
        // Guarded: the body is read to the close, or the cut is an error.
        let guarded = fetch(&awc_client(true), &fake.url()).await;
        if end == End::CloseDelimited {
            assert_eq!(guarded, Ok(full.clone()), "{what}: guarded");
        } else {
            let err = guarded.expect_err(what);
            assert!(err.contains(CUT_BODY), "{what}: {err}");
        }
    }
}

#[actix_web::test]
async fn keep_alive_connections_are_reused_through_the_guard() {
    let reply = Reply::sse_bytes(body());
    let (fake, gw, mut ws) = fake_gateway_client(vec![reply], &[]).await;
    for id in ["a", "b", "c"] {
        let frames = ws.chat(id, "hi", WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), WORDS.concat());
    }
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 3);
    assert_eq!(
        fake.connections(),
        1,
        "three chats on one kept-alive connection"
    );

    // And with awc directly: two sized and chunked answers on one connection.
    let fake = FakeUpstream::start(vec![
        Reply::body(200, "text/plain", "sized"),
        Reply::sse_bytes(body()),
    ]);
    let client = awc_client(true);
    assert_eq!(fetch(&client, &fake.url()).await, Ok(b"sized".to_vec()));
    assert_eq!(fetch(&client, &fake.url()).await, Ok(body()));
    assert_eq!(fake.connections(), 1);
}

// ---------------------------------------------------------------------------
// The gateway at every split
// ---------------------------------------------------------------------------

/// Gateway flags: no backoff (the retries below are many), one retry.
const QUICK_RETRY: &[&str] = &[
    "--backoff-base-ms",
    "0",
    "--backoff-max-ms",
    "0",
    "--max-attempts",
    "2",
];

#[actix_web::test]
async fn close_delimited_bodies_end_normally_at_every_split() {
    let full = body();
    let reply = Reply::dynamic(|req| {
        let k: usize = req.last_message().parse().unwrap_or(0);
        let full = body();
        Reply::sse(vec![
            Part::bytes(&full[..k]),
            Part::Delay(Duration::from_millis(1)),
            Part::bytes(&full[k..]),
        ])
        .with_end(End::CloseDelimited)
    });
    let (fake, gw, mut ws) = fake_gateway_client(vec![reply], QUICK_RETRY).await;
    for k in 0..=full.len() {
        let frames = ws.chat(&format!("c{k}"), &k.to_string(), WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), WORDS.concat(), "split at {k}");
        assert!(of_type(&frames, "retry").is_empty(), "split at {k}");
    }
    // Without [DONE], the close ends the body normally too.
    let fake2 = FakeUpstream::start(vec![
        Reply::sse_bytes(&full[..full.len() - 14]).with_end(End::CloseDelimited)
    ]);
    let gw2 = gateway_for(&fake2, QUICK_RETRY).await;
    let mut ws2 = WsClient::connect(gw2.addr).await;
    let frames = ws2.chat("x", "hi", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), WORDS.concat());
    gw2.stop(false).await;
    gw.stop(false).await;
    assert_eq!(fake.attempts(), full.len() + 1, "never retried");
}

/// A fake whose first answer to each message `k` is the body cut after `k`
/// bytes (ending as `end`), and whose retry of it is the whole body.
fn cut_once(end: fn(usize) -> End) -> Reply {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    Reply::dynamic(move |req| {
        let msg = req.last_message();
        let k: usize = msg.parse().unwrap_or(0);
        let full = body();
        if seen.lock().unwrap().insert(msg) {
            Reply::sse(vec![Part::bytes(&full[..k])]).with_end(end(full.len() - k))
        } else {
            Reply::sse_bytes(&full)
        }
    })
}

/// Runs one chat per cut point `1..len` against `cut_once(end)`: before the
/// first delta the cut attempt is retried (and the retry succeeds); after
/// it the chat ends `upstream_broken` with exactly the text before the cut.
async fn check_cuts(what: &str, end: fn(usize) -> End) {
    let full = body();
    let (fake, gw, mut ws) = fake_gateway_client(vec![cut_once(end)], QUICK_RETRY).await;
    let mut retried = 0;
    let mut broken = 0;
    for k in 1..full.len() {
        let frames = ws.chat(&format!("c{k}"), &k.to_string(), WAIT).await;
        let before_cut = text_within(k);
        if before_cut.is_empty() {
            // Nothing had reached the client: the attempt is retried.
            expect_done(&frames);
            assert_eq!(content_of(&frames), WORDS.concat(), "{what} at {k}");
            let retries = of_type(&frames, "retry");
            assert_eq!(retries.len(), 1, "{what} at {k}: {frames:#?}");
            let reason = retries[0]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains(CUT_BODY), "{what} at {k}: {reason}");
            retried += 1;
        } else {
            let err = expect_error(&frames, "upstream_broken");
            assert!(message_of(err).contains(CUT_BODY), "{what} at {k}: {err}");
            assert_eq!(content_of(&frames), before_cut, "{what} at {k}");
            assert!(of_type(&frames, "retry").is_empty(), "{what} at {k}");
            broken += 1;
        }
    }
    gw.stop(false).await;
    assert!(retried > 10 && broken > 10, "{what}: {retried} {broken}");
    assert_eq!(fake.attempts(), full.len() - 1 + retried);
}

#[actix_web::test]
async fn a_fin_mid_chunk_is_a_failure_at_every_split() {
    check_cuts("FIN mid-chunk", |_| End::FinMidChunk).await;
}

#[actix_web::test]
async fn a_fin_between_chunks_is_a_failure_at_every_split() {
    check_cuts("FIN after a chunk", |_| End::FinAfterChunk).await;
}

#[actix_web::test]
async fn a_short_content_length_is_a_failure_at_every_split() {
    check_cuts("short Content-Length", End::ShortLength).await;
}

// ---------------------------------------------------------------------------
// TLS: the guard cannot read HTTP there
// ---------------------------------------------------------------------------

const CERT: &[u8] = include_bytes!("fixtures/test-upstream.cert.der");
const KEY: &[u8] = include_bytes!("fixtures/test-upstream.key.der");

/// A one-connection TLS server on 127.0.0.1 (a thread) that reads a
/// request, writes `response`, and then either closes the TLS session
/// properly (`close_notify`) or just drops the TCP connection.
fn tls_upstream(response: Vec<u8>, close_notify: bool) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    init();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(KEY.to_vec()));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(CERT.to_vec())], key)
        .expect("test certificate");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(conn) = rustls::ServerConnection::new(Arc::new(config)) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // The request: its head and a small body.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tls.write_all(&response);
        let _ = tls.flush();
        if close_notify {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        // Dropping `tls` closes the TCP connection (FIN).
    });
    addr
}

fn tls_client() -> awc::Client {
    use rustls::pki_types::CertificateDer;
    init();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(CERT.to_vec()))
        .expect("test root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = awc::Connector::new()
        .rustls_0_23(Arc::new(config))
        .connector(proxy::tcp_connector(None))
        .timeout(Duration::from_secs(5));
    awc::Client::builder()
        .connector(connector)
        .timeout(Duration::from_secs(10))
        .finish()
}

#[actix_web::test]
async fn over_tls_a_cut_body_is_an_error_and_an_unframed_one_is_flagged() {
    let client = tls_client();
    let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
    // A chunked body cut without close_notify: rustls reports the missing
    // close_notify, so awc's body read fails (never a clean end).
    for cut in [&chunked[..], &chunked[..chunked.len() - 4]] {
        let addr = tls_upstream(cut.to_vec(), false);
        let err = fetch(&client, &format!("https://127.0.0.1:{}/", addr.port()))
            .await
            .expect_err("cut body over TLS");
        assert!(err.contains("close_notify"), "{err}");
    }
    // A short Content-Length likewise.
    let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec();
    let addr = tls_upstream(sized, false);
    let err = fetch(&client, &format!("https://127.0.0.1:{}/", addr.port()))
        .await
        .expect_err("short body over TLS");
    assert!(err.contains("close_notify"), "{err}");

    // A close-delimited HTTP/1.1 body, even closed properly: awc reads no
    // body at all. The chat task recognises the head and fails the attempt
    // with a clear message instead of "closed before any chunk".
    let unframed =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: x\n\n".to_vec();
    let addr = tls_upstream(unframed, true);
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let resp = tokio::time::timeout(WAIT, client.post(&url).send_body("{}"))
        .await
        .expect("answer")
        .expect("response head");
    assert!(awc_reads_no_body(
        resp.version(),
        resp.status(),
        resp.headers()
    ));
    let mut resp = resp;
    let first = tokio::time::timeout(WAIT, resp.next())
        .await
        .expect("body end");
    assert!(first.is_none(), "awc reads it as empty: {first:?}");
}

#[test]
fn only_unframed_http11_successes_are_flagged() {
    use awc::http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
    use awc::http::{StatusCode, Version};
    let none = HeaderMap::new();
    let mut sized = HeaderMap::new();
    sized.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
    let mut chunked = HeaderMap::new();
    chunked.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    let ok = StatusCode::OK;
    assert!(awc_reads_no_body(Version::HTTP_11, ok, &none));
    assert!(!awc_reads_no_body(Version::HTTP_11, ok, &sized));
    assert!(!awc_reads_no_body(Version::HTTP_11, ok, &chunked));
    assert!(!awc_reads_no_body(Version::HTTP_10, ok, &none));
    assert!(!awc_reads_no_body(Version::HTTP_2, ok, &none));
    assert!(!awc_reads_no_body(
        Version::HTTP_11,
        StatusCode::NO_CONTENT,
        &none
    ));
}
