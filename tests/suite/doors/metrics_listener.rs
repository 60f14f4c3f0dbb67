//! Item 9: `/metrics` on a listener of its own (`--metrics-bind`); without
//! it, `/metrics` stays on the main listener (documented as public).

use crate::support::raw_http::{exchange, request};
use crate::support::*;

/// With `--metrics-bind`, the main listener answers 404 for `/metrics` and
/// the metrics listener serves it (and nothing else). Before: the flag did
/// not exist and `/metrics` was open to whoever reached the gateway.
#[actix_web::test]
async fn metrics_bind_moves_metrics_to_its_own_listener() {
    let gw = start_gateway(&["--metrics-bind", "127.0.0.1:0", "--auth-tokens", "t1"]).await;
    let metrics = gw.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics, gw.addr);
    let (status, body) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("netfly_ws_connections"), "{body}");
    for path in ["/", "/healthz", "/ws", "/v1/models"] {
        let (status, _) = http_get(metrics, path).await;
        assert_eq!(status, 404, "{path} on the metrics listener");
    }
    // The main listener still serves everything else.
    let (status, _) = http_get(gw.addr, "/healthz").await;
    assert_eq!(status, 200);
    let _ws = WsClient::connect_with(gw.addr, "/ws?token=t1", &[]).await;
    // The metrics listener counts what the main one serves.
    let (_, body) = http_get(metrics, "/metrics").await;
    assert!(body.contains("netfly_ws_connections 1"), "{body}");
    gw.stop(false).await;
}

/// Without the flag `/metrics` is served on the main listener, tokens or
/// not (the README says so), and answers HEAD.
#[actix_web::test]
async fn without_metrics_bind_metrics_stay_on_the_main_listener() {
    let gw = start_gateway(&["--auth-tokens", "t1"]).await;
    assert!(gw.metrics_addr.is_none());
    let (status, body) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("netfly_chats_active"), "{body}");
    let host = format!("Host: {}", gw.addr);
    let head = exchange(gw.addr, &request("HEAD", "/metrics", &[&host], None)).await;
    assert_eq!(head.status, 200);
    assert!(head.rest.is_empty());
    gw.stop(false).await;
}

#[test]
fn metrics_bind_is_parsed() {
    let c = try_test_config(&["--metrics-bind", "127.0.0.1:9100"], &[]).unwrap();
    assert_eq!(c.metrics_bind, Some("127.0.0.1:9100".parse().unwrap()));
    let c = try_test_config(&[], &[("NETFLY_METRICS_BIND", "127.0.0.1:0")]).unwrap();
    assert_eq!(c.metrics_bind, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(try_test_config(&[], &[]).unwrap().metrics_bind, None);
    let err = try_test_config(&["--metrics-bind", "nowhere"], &[]).unwrap_err();
    assert!(err.contains("--metrics-bind"), "{err}");
}
