//! Item 7: DNS rebinding and cross-site `/v1`. The `Host` must name the
//! gateway (loopback names, IP addresses, `--allowed-hosts`); `/v1` takes
//! JSON only and applies the `/ws` origin policy when an `Origin` is sent.

use serde_json::{json, Value};

use netfly::admission::{host_allowed, host_name, is_json_content_type};
use netfly::config::AllowedHosts;

use crate::support::raw_http::{exchange, request, RawAnswer};
use crate::support::*;

fn list(names: &[&str]) -> AllowedHosts {
    AllowedHosts::List(names.iter().map(|s| s.to_string()).collect())
}

#[test]
fn host_names_are_parsed_with_or_without_port() {
    for (value, name) in [
        ("localhost", Some("localhost")),
        ("LocalHost:8080", Some("localhost")),
        ("127.0.0.1:80", Some("127.0.0.1")),
        ("[::1]:8080", Some("[::1]")),
        ("[::1]", Some("[::1]")),
        ("chat.example.com.", Some("chat.example.com")),
        ("chat.example.com.:443", Some("chat.example.com")),
        ("", None),
        ("a b", None),
        ("host:port", None),
        ("host:", None),
        ("[::1]x", None),
        ("[nope]:80", None),
        ("evil.example/ws", None),
        ("user@evil.example", None),
    ] {
        assert_eq!(host_name(value).as_deref(), name, "{value:?}");
    }
}

#[test]
fn loopback_names_and_addresses_are_always_allowed() {
    let none = list(&[]);
    for ok in [
        "localhost",
        "localhost:1234",
        "127.0.0.1",
        "127.0.0.1:8080",
        "[::1]:8080",
        "10.0.0.5:8080",
        "[2001:db8::1]",
    ] {
        assert!(host_allowed(ok, &none), "{ok:?} must be allowed");
    }
    for bad in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "",
        "loca lhost",
    ] {
        assert!(!host_allowed(bad, &none), "{bad:?} must be refused");
    }
}

#[test]
fn listed_names_and_domains_are_allowed() {
    let allowed = list(&["chat.example.com", ".corp.example"]);
    for ok in [
        "chat.example.com",
        "CHAT.example.com:443",
        "corp.example",
        "a.corp.example",
        "a.b.corp.example:8443",
    ] {
        assert!(host_allowed(ok, &allowed), "{ok:?}");
    }
    for bad in [
        "example.com",
        "evilchat.example.com",
        "xcorp.example",
        "corp.example.evil",
    ] {
        assert!(!host_allowed(bad, &allowed), "{bad:?}");
    }
    assert!(host_allowed("anything.at.all", &AllowedHosts::Any));
}

#[test]
fn the_allowed_hosts_flag_is_parsed() {
    let hosts = |args: &[&str]| try_test_config(args, &[]).map(|c| c.allowed_hosts);
    assert_eq!(hosts(&[]).unwrap(), list(&[]));
    assert_eq!(
        hosts(&["--allowed-hosts", "Chat.Example.com., .corp.example"]).unwrap(),
        list(&["chat.example.com", ".corp.example"])
    );
    assert_eq!(
        hosts(&["--allowed-hosts", "a.example,*"]).unwrap(),
        AllowedHosts::Any
    );
    for bad in [
        "https://chat.example.com",
        "chat.example.com:443",
        "a/b",
        " , ",
    ] {
        let err = hosts(&["--allowed-hosts", bad]).unwrap_err();
        assert!(err.contains("--allowed-hosts"), "{err}");
    }
    let from_env = try_test_config(&[], &[("NETFLY_ALLOWED_HOSTS", "x.example")])
        .unwrap()
        .allowed_hosts;
    assert_eq!(from_env, list(&["x.example"]));
    // A --bind given as a name is allowed as a Host.
    let bound = netfly::Config::from_args(["--bind", "localhost:0"], env_lookup(&[])).unwrap();
    assert_eq!(bound.allowed_hosts, list(&["localhost"]));
}

#[test]
fn json_content_types() {
    for ok in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        " application/json ;charset=UTF-8",
    ] {
        assert!(is_json_content_type(ok), "{ok:?}");
    }
    for bad in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-seq",
        "",
    ] {
        assert!(!is_json_content_type(bad), "{bad:?}");
    }
}

/// An upgrade with `Host` and `Origin` headers, answered by the gateway.
async fn upgrade(addr: std::net::SocketAddr, host: &str, origin: Option<&str>) -> RawAnswer {
    let origin = origin.map(|o| format!("Origin: {o}"));
    let mut headers = vec![
        format!("Host: {host}"),
        "Upgrade: websocket".into(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".into(),
        "Sec-WebSocket-Version: 13".into(),
    ];
    headers.extend(origin);
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    // `request` adds `Connection: close`; an upgrade needs `Upgrade` too.
    let req =
        request("GET", "/ws", &headers, None).replace("Connection: close", "Connection: Upgrade");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, req.as_bytes())
        .await
        .unwrap();
    crate::support::raw_http::read_head(&mut tcp, WAIT)
        .await
        .expect("an answer to the upgrade")
}

/// The rebinding attack of the issue: a page on `evil.example` resolving to
/// 127.0.0.1 sends `Host: evil.example` and a matching `Origin`. Before: 101.
#[actix_web::test]
async fn a_rebound_host_cannot_open_a_websocket() {
    let gw = start_gateway(&[]).await;
    let evil = upgrade(gw.addr, "evil.example", Some("http://evil.example")).await;
    assert_eq!(evil.status, 403, "{}", evil.head);
    let evil = upgrade(gw.addr, "evil.example:8080", None).await;
    assert_eq!(evil.status, 403, "{}", evil.head);
    // The gateway's own names still work, with a same-host Origin.
    let own = gw.addr.to_string();
    let origin = format!("http://{own}");
    assert_eq!(upgrade(gw.addr, &own, Some(&origin)).await.status, 101);
    let local = format!("localhost:{}", gw.addr.port());
    let origin = format!("http://{local}");
    assert_eq!(upgrade(gw.addr, &local, Some(&origin)).await.status, 101);
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"host\"} 2").await;
    gw.stop(false).await;
}

/// Every route a browser uses refuses a foreign `Host` (`/v1` with an
/// OpenAI-style error); `/healthz` and `/metrics` answer whatever the name.
#[actix_web::test]
async fn every_browser_route_refuses_a_foreign_host() {
    let (fake, gw) = fake_gateway(vec![Reply::sse_words(&["ok"])], &[]).await;
    let evil = ["Host: evil.example"];
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    let post = |host: &str| {
        request(
            "POST",
            "/v1/chat/completions",
            &[host, "Content-Type: application/json"],
            Some(&body),
        )
    };
    let a = exchange(gw.addr, &post("Host: evil.example")).await;
    assert_eq!(a.status, 403, "{}", a.head);
    let v: Value = serde_json::from_slice(&a.rest).expect("JSON error");
    assert_eq!(v["error"]["code"], "host_not_allowed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--allowed-hosts")),
        "{v}"
    );
    for path in ["/v1/models", "/", "/static/app.js"] {
        let a = exchange(gw.addr, &request("GET", path, &evil, None)).await;
        assert_eq!(a.status, 403, "{path}: {}", a.head);
        assert!(a.body_text().contains("--allowed-hosts"), "{path}");
    }
    for path in ["/healthz", "/metrics"] {
        let a = exchange(gw.addr, &request("GET", path, &evil, None)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.head);
    }
    assert_eq!(fake.attempts(), 0, "nothing went upstream");
    // The same request with the gateway's own name is served.
    let own = format!("Host: {}", gw.addr);
    let a = exchange(gw.addr, &post(&own)).await;
    assert_eq!(a.status, 200, "{} {}", a.head, a.body_text());
    gw.stop(false).await;
}

/// `--allowed-hosts` adds public names (behind a reverse proxy: the name
/// users type); `*` allows every name.
#[actix_web::test]
async fn allowed_hosts_add_names_and_star_allows_all() {
    let gw = start_gateway(&["--allowed-hosts", "chat.example.com,.corp.example"]).await;
    for (host, status) in [
        ("chat.example.com", 200),
        ("chat.example.com:443", 200),
        ("a.corp.example", 200),
        ("evil.example", 403),
        ("127.0.0.1", 200),
    ] {
        let a = exchange(
            gw.addr,
            &request("GET", "/", &[&format!("Host: {host}")], None),
        )
        .await;
        assert_eq!(a.status, status, "Host {host}: {}", a.head);
    }
    let ws = upgrade(
        gw.addr,
        "chat.example.com",
        Some("https://chat.example.com"),
    )
    .await;
    assert_eq!(ws.status, 101, "{}", ws.head);
    gw.stop(false).await;

    let gw = start_gateway(&["--allowed-hosts", "*"]).await;
    let a = exchange(gw.addr, &request("GET", "/", &["Host: evil.example"], None)).await;
    assert_eq!(a.status, 200);
    gw.stop(false).await;
}

/// `POST /v1/chat/completions` of `body` with header lines `headers`.
async fn v1(addr: std::net::SocketAddr, headers: &[&str], body: &str) -> RawAnswer {
    let host = format!("Host: {addr}");
    let mut all = vec![host.as_str()];
    all.extend_from_slice(headers);
    exchange(
        addr,
        &request("POST", "/v1/chat/completions", &all, Some(body)),
    )
    .await
}

fn error_code(a: &RawAnswer) -> String {
    let v: Value = serde_json::from_slice(&a.rest)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body_text()));
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// What a cross-site page can send without asking (a form, `text/plain`,
/// a body with no type) is refused with 415 and never reaches the
/// upstream. Before: each was a chat on the operator's key.
#[actix_web::test]
async fn v1_takes_json_only() {
    let (fake, gw) = fake_gateway(vec![Reply::sse_words(&["ok"])], &[]).await;
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    for headers in [
        &["Content-Type: text/plain"][..],
        &["Content-Type: application/x-www-form-urlencoded"],
        &["Content-Type: multipart/form-data; boundary=x"],
        &[],
    ] {
        let a = v1(gw.addr, headers, &body).await;
        assert_eq!(a.status, 415, "{headers:?}: {}", a.head);
        assert_eq!(error_code(&a), "unsupported_media_type");
    }
    assert_eq!(fake.attempts(), 0);
    let a = v1(
        gw.addr,
        &["Content-Type: application/json; charset=utf-8"],
        &body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body_text());
    gw.stop(false).await;
}

/// With an `Origin` (a browser page), `/v1` applies the `/ws` origin
/// policy: same host by default, the list when given. Without one (an SDK,
/// curl) it is not asked. Before: any origin was served.
#[actix_web::test]
async fn v1_applies_the_origin_policy_to_browsers() {
    let (fake, gw) = fake_gateway(vec![Reply::sse_words(&["ok"])], &[]).await;
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    let json = "Content-Type: application/json";
    let a = v1(gw.addr, &[json, "Origin: http://evil.example"], &body).await;
    assert_eq!(a.status, 403, "{}", a.head);
    assert_eq!(error_code(&a), "origin_not_allowed");
    assert_eq!(fake.attempts(), 0);
    let same = format!("Origin: http://{}", gw.addr);
    let a = v1(gw.addr, &[json, &same], &body).await;
    assert_eq!(a.status, 200, "{}", a.body_text());
    let a = v1(gw.addr, &[json], &body).await;
    assert_eq!(a.status, 200, "{}", a.body_text());
    gw.stop(false).await;

    let (_fake, gw) = fake_gateway(
        vec![Reply::sse_words(&["ok"])],
        &["--allowed-origins", "https://app.example"],
    )
    .await;
    let a = v1(gw.addr, &[json, "Origin: https://app.example"], &body).await;
    assert_eq!(a.status, 200, "{}", a.body_text());
    let a = v1(gw.addr, &[json, &same], &body).await;
    assert_eq!(a.status, 403, "{}", a.head);
    gw.stop(false).await;
}

/// A declared body over the limit is refused before it is read.
#[actix_web::test]
async fn v1_refuses_a_declared_body_over_the_limit_at_once() {
    let gw = start_gateway(&["--max-frame-bytes", "1000"]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 5000\r\n\r\n",
        gw.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
        .await
        .unwrap();
    let a = crate::support::raw_http::read_answer(&mut tcp, ms(2000))
        .await
        .expect("an answer before the body");
    assert_eq!(a.status, 413, "{}", a.head);
    assert_eq!(error_code(&a), "bad_request");
    gw.stop(false).await;
}
