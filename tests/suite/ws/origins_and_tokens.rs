//! Who may open `/ws` (PROTOCOL §1 `--allowed-origins`, `--auth-tokens`):
//! the `Origin` check (same host by default, a list, `*`) and the access
//! tokens (query or bearer), the origin checked first.

use crate::support::*;

#[actix_web::test]
async fn origins_are_checked() {
    let gw = start_gateway(&["--allowed-origins", "http://good.example"]).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Some(403)
    );
    WsClient::connect_with(gw.addr, "/ws", &[("Origin", "http://good.example")]).await;
    WsClient::connect(gw.addr).await; // no Origin: not a browser, allowed
    gw.stop(false).await;

    // Default: same host only.
    let gw = start_gateway(&[]).await;
    let same = format!("http://{}", gw.addr);
    WsClient::connect_with(gw.addr, "/ws", &[("Origin", same.as_str())]).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Some(403)
    );
    gw.stop(false).await;
}

#[actix_web::test]
async fn origin_default_same_host_allows_no_origin_and_refuses_other_ports() {
    let gw = start_gateway(&[]).await;
    // No Origin: not a browser, allowed.
    WsClient::connect(gw.addr).await;
    // Same host, case differences do not matter.
    let same_upper = format!("HTTP://{}", gw.addr);
    WsClient::connect_with(gw.addr, "/ws", &[("Origin", same_upper.as_str())]).await;
    // Same IP, another port: another origin.
    let other_port = format!("http://127.0.0.1:{}", gw.addr.port().wrapping_add(1));
    for origin in [other_port.as_str(), "null", "http://localhost", "file://"] {
        assert_eq!(
            WsClient::refusal(gw.addr, "/ws", &[("Origin", origin)]).await,
            Some(403),
            "origin {origin:?} must be refused by default"
        );
    }
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"origin\"} 4").await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn origin_list_matches_any_entry_case_insensitively() {
    let gw = start_gateway(&[
        "--allowed-origins",
        "https://a.example, http://b.example:8080/",
    ])
    .await;
    for ok in [
        "https://a.example",
        "HTTPS://A.EXAMPLE",
        "http://b.example:8080",
    ] {
        WsClient::connect_with(gw.addr, "/ws", &[("Origin", ok)]).await;
    }
    for bad in [
        "http://a.example",
        "https://a.example:444",
        "http://b.example",
        "https://evil.a.example",
    ] {
        assert_eq!(
            WsClient::refusal(gw.addr, "/ws", &[("Origin", bad)]).await,
            Some(403),
            "origin {bad:?} is not in the list"
        );
    }
    // The list replaces same-host: the gateway's own host is not allowed.
    let own = format!("http://{}", gw.addr);
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("Origin", own.as_str())]).await,
        Some(403)
    );
    WsClient::connect(gw.addr).await; // still no Origin: allowed
    gw.stop(false).await;
}

#[actix_web::test]
async fn origin_star_allows_every_origin() {
    let gw = start_gateway(&["--allowed-origins", "*"]).await;
    for origin in ["http://evil.example", "null", "https://x.y:1"] {
        WsClient::connect_with(gw.addr, "/ws", &[("Origin", origin)]).await;
    }
    WsClient::connect(gw.addr).await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn auth_tokens_are_required_when_set() {
    let gw = start_gateway(&["--auth-tokens", "t1,t2"]).await;
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(401));
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws?token=wrong", &[]).await,
        Some(401)
    );
    WsClient::connect_with(gw.addr, "/ws?token=t2", &[]).await;
    WsClient::connect_with(gw.addr, "/ws", &[("Authorization", "Bearer t1")]).await;
    gw.stop(false).await;
}

#[actix_web::test]
async fn auth_refuses_near_misses_and_accepts_both_ways() {
    let gw = start_gateway(&["--auth-tokens", "tok-one,tok-two"]).await;
    let refused: &[(&str, &[(&str, &str)])] = &[
        ("/ws?token=tok-on", &[]),
        ("/ws?token=tok-one2", &[]),
        ("/ws?token=", &[]),
        ("/ws?token=tok-one%2Ctok-two", &[]),
        ("/ws", &[("Authorization", "Bearer wrong")]),
        ("/ws", &[("Authorization", "Basic dG9rLW9uZQ==")]),
        ("/ws", &[("Authorization", "tok-one")]),
        ("/ws?tok=tok-one", &[]),
    ];
    for (path, headers) in refused {
        assert_eq!(
            WsClient::refusal(gw.addr, path, headers).await,
            Some(401),
            "{path} {headers:?} must be refused"
        );
    }
    let mut a = WsClient::connect_with(gw.addr, "/ws?token=tok-one", &[]).await;
    let mut b =
        WsClient::connect_with(gw.addr, "/ws", &[("Authorization", "Bearer tok-two")]).await;
    assert_eq!(a.hello()["type"], "hello");
    assert_eq!(b.hello()["type"], "hello");
    a.close().await;
    b.close().await;
    // Origin is checked before the token: a bad origin with a good token is 403.
    let gw2 = start_gateway(&[
        "--auth-tokens",
        "tok-one",
        "--allowed-origins",
        "http://good.example",
    ])
    .await;
    let (good, evil) = ("http://good.example", "http://evil.example");
    let refused = WsClient::refusal(gw2.addr, "/ws?token=tok-one", &[("Origin", evil)]).await;
    assert_eq!(refused, Some(403));
    WsClient::connect_with(gw2.addr, "/ws?token=tok-one", &[("Origin", good)]).await;
    gw2.stop(false).await;
    gw.stop(false).await;
}
