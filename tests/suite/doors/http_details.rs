//! Item 12 (HTTP side): invalid UTF-8 in a single text frame closes with
//! 1007; a `Sec-WebSocket-Version` other than 13 gets 426 naming 13; `HEAD`
//! answers like `GET` without a body; a method a route does not take gets
//! 405 with `Allow`.

use crate::support::raw_http::{exchange, request};
use crate::support::raw_ws::{masked_frame, RawWs, CONTINUATION, TEXT};
use crate::support::*;

/// Invalid UTF-8 in one text frame: 1007 (RFC 6455 §8.1), as for a
/// fragmented message. Before: 1002. This also pins how actix-web-actors
/// reports it (`ws_guard::close_for_decoder_error` reads its message).
#[actix_web::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let gw = start_gateway(&[]).await;
    for bytes in [
        masked_frame(true, TEXT, 2, &[0xff, 0xfe]),
        masked_frame(true, TEXT, 3, b"a\xc3("),
        // Cut inside a character.
        masked_frame(true, TEXT, 2, b"\xe2\x82"),
        // The fragmented path, for comparison.
        [
            masked_frame(false, TEXT, 1, b"\xe2"),
            masked_frame(true, CONTINUATION, 1, b"\x82"),
        ]
        .concat(),
    ] {
        let mut ws = RawWs::connect(gw.addr).await;
        ws.read_frame(WAIT).await.expect("hello");
        ws.send_raw(&bytes).await.unwrap();
        let close = ws.read_close(WAIT, |_| {}).await;
        assert_eq!(close.map(|c| c.0), Some(1007), "{bytes:?}");
    }
    // Valid UTF-8 across the frame is fine.
    let mut ws = RawWs::connect(gw.addr).await;
    ws.read_frame(WAIT).await.expect("hello");
    ws.send_frame(TEXT, "\"é\"".as_bytes()).await.unwrap();
    let answer = ws.read_frame(WAIT).await.expect("an answer");
    let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(v["code"], "bad_request", "{v}");
    gw.stop(false).await;
}

/// A version other than 13 gets 426 with `Sec-WebSocket-Version: 13`.
/// Before: 400 without it.
#[actix_web::test]
async fn another_websocket_version_gets_426_naming_13() {
    let gw = start_gateway(&[]).await;
    let host = format!("Host: {}", gw.addr);
    for version in ["8", "12", "14", "13, 8"] {
        let version = format!("Sec-WebSocket-Version: {version}");
        let headers = [
            host.as_str(),
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            version.as_str(),
        ];
        let req = request("GET", "/ws", &headers, None)
            .replace("Connection: close", "Connection: Upgrade");
        let a = exchange(gw.addr, &req).await;
        assert_eq!(a.status, 426, "{version}: {}", a.head);
        assert_eq!(a.header("sec-websocket-version"), Some("13"), "{}", a.head);
    }
    // 13 is served.
    RawWs::connect(gw.addr).await;
    gw.stop(false).await;
}

/// `HEAD` on `/`, `/healthz`, `/static/*` answers like `GET`: same status,
/// type and length, no body. Before: 404.
#[actix_web::test]
async fn head_answers_like_get_without_a_body() {
    let gw = start_gateway(&[]).await;
    let host = format!("Host: {}", gw.addr);
    for path in [
        "/",
        "/healthz",
        "/static/app.js",
        "/static/style.css",
        "/static/nope.js",
    ] {
        let get = exchange(gw.addr, &request("GET", path, &[&host], None)).await;
        let head = exchange(gw.addr, &request("HEAD", path, &[&host], None)).await;
        assert_eq!(head.status, get.status, "{path}: {}", head.head);
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        assert_eq!(
            head.header("content-length"),
            Some(get.rest.len().to_string().as_str()),
            "{path}: {}",
            head.head
        );
        assert!(head.rest.is_empty(), "{path}: HEAD sent a body");
        assert!(head.closed);
    }
    gw.stop(false).await;
}

/// A method a route does not take: 405 with `Allow`. Before: 404.
#[actix_web::test]
async fn unknown_methods_on_known_routes_get_405_with_allow() {
    let gw = start_gateway(&[]).await;
    let host = format!("Host: {}", gw.addr);
    for (method, path, allow) in [
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("PUT", "/static/app.js", "GET, HEAD"),
        ("POST", "/ws", "GET"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
    ] {
        let a = exchange(gw.addr, &request(method, path, &[&host], Some(""))).await;
        assert_eq!(a.status, 405, "{method} {path}: {}", a.head);
        assert_eq!(
            a.header("allow"),
            Some(allow),
            "{method} {path}: {}",
            a.head
        );
    }
    // An unknown route is still 404.
    let a = exchange(gw.addr, &request("GET", "/nope", &[&host], None)).await;
    assert_eq!(a.status, 404);
    gw.stop(false).await;
}
