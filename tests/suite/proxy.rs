//! Outbound proxy support (`netfly::upstream::proxy`): proxy URL and `NO_PROXY`
//! parsing, the absolute-form rewrite of a proxied connection's one request,
//! and awc streaming through a
//! real forward proxy — Debian's `tinyproxy`, started by each test on a free
//! 127.0.0.1 port with its own config and log file (install it with
//! `scripts/install-proxy.sh`; the tests fail, never skip, without it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_service::Service as _;
use actix_tls::connect::ConnectInfo;
use futures_util::StreamExt as _;
use netfly::config::proxy::{NoProxy, ProxySpec};
use netfly::upstream::proxy::{self, ProxyStream};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::fake::{sse_body, CHAT_PATH};
use crate::support::*;

// ---------------------------------------------------------------------------
// ProxySpec parsing
// ---------------------------------------------------------------------------

#[test]
fn parses_plain_proxy_urls() {
    let p = ProxySpec::parse("http://127.0.0.1:3128", None).unwrap();
    assert_eq!((p.host(), p.port()), ("127.0.0.1", 3128));
    assert_eq!(p.authorization(), None);
    assert_eq!(p.to_string(), "http://127.0.0.1:3128");

    // Scheme-less means http; the port defaults to 80; a trailing slash and
    // upper case are fine.
    let p = ProxySpec::parse("proxy.corp:8080", None).unwrap();
    assert_eq!((p.host(), p.port()), ("proxy.corp", 8080));
    let p = ProxySpec::parse(" HTTP://Proxy.Corp/ ", None).unwrap();
    assert_eq!((p.host(), p.port()), ("proxy.corp", 80));

    let p = ProxySpec::parse("http://[::1]:3128", None).unwrap();
    assert_eq!(p.host(), "::1");
    assert_eq!(p.address(), "[::1]:3128");
}

#[test]
fn parses_and_percent_decodes_credentials() {
    let p = ProxySpec::parse("http://Aladdin:open%20sesame@proxy:3128", None).unwrap();
    assert_eq!(p.user(), Some("Aladdin"));
    // RFC 7617's example.
    assert_eq!(
        p.authorization(),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );

    let p = ProxySpec::parse("http://us%40er:p%3Ass@h:1", None).unwrap();
    assert_eq!(p.user(), Some("us@er"));
    assert_eq!(p.authorization(), Some("Basic dXNAZXI6cDpzcw=="));

    // No password: `user:` is encoded.
    let p = ProxySpec::parse("http://bob@h:1", None).unwrap();
    assert_eq!(p.authorization(), Some("Basic Ym9iOg=="));

    // The password never shows.
    let p = ProxySpec::parse("http://bob:hunter2@h:1", None).unwrap();
    assert_eq!(p.to_string(), "http://bob:***@h:1");
    assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
}

#[test]
fn rejects_bad_proxy_urls_naming_the_value() {
    for (url, needle) in [
        ("https://h:1", "only http"),
        ("socks5://h:1080", "socks5"),
        ("http://h:notaport", "bad port"),
        ("http://h:0", "port 0"),
        ("http://:8080", "missing host"),
        ("http://h:1/path", "no path"),
        ("http://u%zz@h:1", "percent"),
        ("http://[::1:3128", "unclosed"),
        ("", "empty"),
    ] {
        let err = ProxySpec::parse(url, None).expect_err(url);
        assert!(err.contains(needle), "{url:?}: {err}");
        assert!(err.contains(url.trim()), "error should name {url:?}: {err}");
    }
    // A rejected URL with a password is named without it.
    let err = ProxySpec::parse("http://u:hunter2@h:bad", None).unwrap_err();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("u:***@h:bad"), "{err}");
}

// ---------------------------------------------------------------------------
// NO_PROXY
// ---------------------------------------------------------------------------

#[test]
fn no_proxy_matches_hosts_domains_ips_and_ports() {
    let list = "localhost, .example.com,*.corp.net  plain.org,10.1.2.3, internal:8443, \
                [::1]:9000, 192.168.0.0/16, fd00::/8, 2001:db8::1";
    let p = ProxySpec::parse("http://proxy:3128", Some(list)).unwrap();
    let yes = [
        ("localhost", 80),
        ("LOCALHOST.", 443),
        ("example.com", 443),
        ("api.example.com", 443),
        ("a.b.corp.net", 80),
        ("corp.net", 80),
        ("plain.org", 80),
        ("www.plain.org", 80),
        ("10.1.2.3", 1234),
        ("internal", 8443),
        ("[::1]", 9000),
        ("::1", 9000),
        ("192.168.77.1", 80),
        ("[fd12::5]", 443),
        ("2001:db8::1", 80),
    ];
    for (host, port) in yes {
        assert!(p.bypass(host, port), "{host}:{port} should bypass");
    }
    let no = [
        ("badexample.com", 443),
        ("example.org", 443),
        ("notcorp.net", 80),
        ("10.1.2.4", 80),
        ("internal", 443),
        ("::1", 9001),
        ("192.169.0.1", 80),
        ("fe80::1", 80),
        ("api.openai.com", 443),
    ];
    for (host, port) in no {
        assert!(!p.bypass(host, port), "{host}:{port} should use the proxy");
    }

    // Without a list, nothing bypasses; `*` bypasses everything.
    let p = ProxySpec::parse("http://proxy:3128", None).unwrap();
    assert!(!p.bypass("localhost", 80));
    let p = ProxySpec::parse("http://proxy:3128", Some("*")).unwrap();
    assert!(p.bypass("anything.at.all", 443));
    assert!(NoProxy::parse(" , ").unwrap().is_empty());
}

#[test]
fn no_proxy_rejects_bad_entries_naming_them() {
    for (list, entry) in [
        ("ok.com, host:xx", "host:xx"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("nonsense/8", "nonsense/8"),
        ("a*b.com", "a*b.com"),
    ] {
        let err = ProxySpec::parse("http://p:1", Some(list)).expect_err(list);
        assert!(err.contains(entry), "{list:?}: {err}");
    }
}

// ---------------------------------------------------------------------------
// The absolute-form rewrite
// ---------------------------------------------------------------------------

/// Writes `input` through an absolute-form stream in pieces of the given
/// sizes (cycled), flushes, and returns what reached the transport.
async fn rewrite(input: &[u8], sizes: &[usize], auth: Option<&str>) -> Vec<u8> {
    let (near, mut far) = tokio::io::duplex(1 << 20);
    let mut stream = ProxyStream::absolute_form(
        near,
        "http://api.example:8080".to_string(),
        auth.map(str::to_string),
    );
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= input.len() {
            break;
        }
        let end = (at + size).min(input.len());
        stream.write_all(&input[at..end]).await.unwrap();
        at = end;
    }
    stream.flush().await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, far.read_to_end(&mut out))
        .await
        .expect("rewritten bytes")
        .unwrap();
    out
}

/// A chat request as awc writes it, with a body that looks like a request
/// line (it must never be rewritten).
fn one_request(target_prefix: &str, auth: Option<&str>) -> Vec<u8> {
    let auth_line = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    let body =
        br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"POST / HTTP/1.1"}]}"#;
    let mut out = format!(
        "POST {target_prefix}/v1/chat/completions?x=1 HTTP/1.1\r\n{auth_line}host: api.example:8080\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[actix_web::test]
async fn absolute_form_rewrites_the_request_head_on_split_writes() {
    let input = one_request("", None);
    let with_auth = one_request("http://api.example:8080", Some("Basic dTpw"));
    let without_auth = one_request("http://api.example:8080", None);
    // One write, byte by byte, and assorted cuts through the request line.
    for sizes in [&[usize::MAX][..], &[1], &[2, 3, 5], &[7, 1, 13], &[40, 1]] {
        let sizes: Vec<usize> = sizes.iter().map(|s| (*s).min(input.len())).collect();
        assert_eq!(
            String::from_utf8_lossy(&rewrite(&input, &sizes, None).await),
            String::from_utf8_lossy(&without_auth),
            "sizes {sizes:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&rewrite(&input, &sizes, Some("Basic dTpw")).await),
            String::from_utf8_lossy(&with_auth),
            "sizes {sizes:?}"
        );
    }
}

#[actix_web::test]
async fn absolute_form_passes_everything_after_the_first_head_untouched() {
    // The connection carries one request: whatever is written after its
    // head (the body, or anything else) goes out as it is.
    let mut input = one_request("", None);
    let first = input.len();
    input.extend_from_slice(b"GET /second HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut expected = one_request("http://api.example:8080", Some("Basic dTpw"));
    expected.extend_from_slice(&input[first..]);
    for sizes in [&[usize::MAX][..], &[1], &[3, 17]] {
        let sizes: Vec<usize> = sizes.iter().map(|s| (*s).min(input.len())).collect();
        assert_eq!(
            String::from_utf8_lossy(&rewrite(&input, &sizes, Some("Basic dTpw")).await),
            String::from_utf8_lossy(&expected),
            "sizes {sizes:?}"
        );
    }
}

#[actix_web::test]
async fn absolute_form_leaves_absolute_targets_existing_auth_and_upgrades_alone() {
    // Already absolute, already authorized: untouched.
    let input = b"GET http://other/x HTTP/1.1\r\nProxy-Authorization: Basic eHg=\r\n\r\n";
    assert_eq!(
        rewrite(input, &[3], Some("Basic dTpw")).await,
        input.to_vec()
    );

    // After an upgrade request, bytes pass through untouched.
    let input = b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    let expected =
        b"GET http://api.example:8080/ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(
        String::from_utf8_lossy(&rewrite(input, &[5], None).await),
        String::from_utf8_lossy(expected)
    );
}

#[actix_web::test]
async fn absolute_form_marks_the_final_response_head_connection_close() {
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let mut stream = ProxyStream::absolute_form(near, "http://h:1".to_string(), None);
    // The guard reads responses only to a request.
    stream
        .write_all(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let response: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\
        Keep-Alive: timeout=5\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nHTTP/\r\n0\r\n\r\n";
    let expected =
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nHTTP/\r\n0\r\n\r\n";
    let writer = async move {
        for piece in response.chunks(7) {
            far.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // `far` drops here: EOF.
    };
    let reader = async {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), out) = tokio::time::timeout(WAIT, futures_util::future::join(writer, reader))
        .await
        .expect("response read");
    assert_eq!(String::from_utf8_lossy(&out), expected);
}

// ---------------------------------------------------------------------------
// Direct connections and NO_PROXY bypass (no proxy process needed)
// ---------------------------------------------------------------------------

fn client_via(spec: Option<ProxySpec>) -> awc::Client {
    init();
    let connector = awc::Connector::new()
        .connector(proxy::tcp_connector(spec.map(Arc::new)))
        .timeout(Duration::from_secs(5));
    awc::Client::builder()
        .connector(connector)
        .timeout(Duration::from_secs(10))
        .disable_redirects()
        .finish()
}

fn chat_body() -> serde_json::Value {
    json!({
        "model": "m",
        "stream": true,
        "messages": [{ "role": "user", "content": "through the proxy" }]
    })
}

/// POSTs a chat to `url` and reads the whole streamed body (bounded);
/// returns the status, the body and how many body pieces arrived.
async fn stream_chat(client: &awc::Client, url: &str) -> Result<(u16, Vec<u8>, usize), String> {
    let send = client.post(url).send_json(&chat_body());
    let mut resp = tokio::time::timeout(WAIT, send)
        .await
        .map_err(|_| "no response within WAIT".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut pieces = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.next()).await {
            Err(_) => return Err("body did not finish within WAIT".to_string()),
            Ok(None) => break,
            Ok(Some(Ok(bytes))) => {
                pieces += 1;
                body.extend_from_slice(&bytes);
            }
            Ok(Some(Err(e))) => return Err(format!("body: {e}")),
        }
    }
    Ok((status, body, pieces))
}

#[actix_web::test]
async fn direct_and_no_proxy_connections_skip_the_proxy() {
    let words = ["direct", " ", "line"];
    let fake = FakeUpstream::start(vec![Reply::sse_words(&words)]);
    // A proxy where nothing listens: only a bypassed host can work.
    let dead = closed_port_url();
    let dead = dead.trim_end_matches(CHAT_PATH);

    let (status, body, _) = stream_chat(&client_via(None), &fake.url()).await.unwrap();
    assert_eq!((status, body), (200, sse_body(&words)));

    let spec = ProxySpec::parse(dead, Some("localhost,127.0.0.0/8")).unwrap();
    let (status, body, _) = stream_chat(&client_via(Some(spec)), &fake.url())
        .await
        .unwrap();
    assert_eq!((status, body), (200, sse_body(&words)));
    assert_eq!(fake.attempts(), 2);

    // Not bypassed: the dead proxy is named in the error.
    let spec = ProxySpec::parse(dead, Some("example.com")).unwrap();
    let err = stream_chat(&client_via(Some(spec)), &fake.url())
        .await
        .unwrap_err();
    assert!(err.contains("send"), "{err}");
    assert_eq!(fake.attempts(), 2, "nothing may reach the upstream");

    let spec = ProxySpec::parse(dead, None).unwrap();
    let svc = proxy::tcp_connector(Some(Arc::new(spec)));
    let uri: awc::http::Uri = fake.url().parse().unwrap();
    let err = svc.call(ConnectInfo::new(uri)).await.unwrap_err();
    let msg = format!("{err}: {:?}", err);
    assert!(msg.contains("cannot connect to proxy 127.0.0.1:"), "{msg}");
}

// ---------------------------------------------------------------------------
// Through a real tinyproxy
// ---------------------------------------------------------------------------

/// A foreground `tinyproxy` on a free 127.0.0.1 port, killed on drop.
struct Tinyproxy {
    child: Child,
    dir: PathBuf,
    port: u16,
}

fn tinyproxy_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tinyproxy"))
                .collect()
        })
        .unwrap_or_default();
    candidates.extend(["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"].map(PathBuf::from));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tinyproxy not found (PATH, /usr/bin, /usr/sbin): the proxy tests need it; \
                 install it with scripts/install-proxy.sh"
            )
        })
}

impl Tinyproxy {
    /// Starts tinyproxy allowing 127.0.0.1, logging at Info to a file,
    /// with `extra` config lines.
    fn start(extra: &str) -> Tinyproxy {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let binary = tinyproxy_binary();
        let dir = std::env::temp_dir().join(format!(
            "netfly-tinyproxy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut last_error = String::new();
        // The port is free when probed; another process could take it before
        // tinyproxy binds, so try a few.
        for _ in 0..3 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = probe.local_addr().unwrap().port();
            drop(probe);
            let conf = dir.join("tinyproxy.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\n\
                     Allow 127.0.0.1\nMaxClients 16\nDisableViaHeader Yes\n{extra}\n",
                    dir.join("tinyproxy.log").display()
                ),
            )
            .unwrap();
            let out = std::fs::File::create(dir.join("stdout")).unwrap();
            let err = out.try_clone().unwrap();
            let child = Command::new(&binary)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut child = child;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "tinyproxy exited ({status}): {}",
                        std::fs::read_to_string(dir.join("stdout")).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Tinyproxy { child, dir, port };
                }
                if Instant::now() >= deadline {
                    last_error = "tinyproxy did not listen within 5s".to_string();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start tinyproxy: {last_error}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spec(&self) -> ProxySpec {
        ProxySpec::parse(&self.url(), None).unwrap()
    }

    fn spec_with(&self, userinfo: &str) -> ProxySpec {
        ProxySpec::parse(&format!("http://{userinfo}@127.0.0.1:{}", self.port), None).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`; returns the log.
    async fn wait_log(&self, needle: &str) -> String {
        self.wait_log_n(needle, 1).await
    }

    /// Waits (bounded) until the log contains `needle` `n` times.
    async fn wait_log_n(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_web::test]
async fn chat_streams_through_tinyproxy_as_absolute_form() {
    let proxy = Tinyproxy::start("");
    let words = ["Hel", "lo", " through", " the", " proxy"];
    let fake = FakeUpstream::start(vec![Reply::sse_words_slow(
        &words,
        Duration::from_millis(40),
    )]);
    let client = client_via(Some(proxy.spec()));

    let started = Instant::now();
    let (status, body, pieces) = stream_chat(&client, &fake.url()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&sse_body(&words))
    );
    // It streamed: the events came as separate pieces, not one buffered blob.
    assert!(pieces >= 3, "only {pieces} body pieces in {took:?}");

    let req = fake.request(0);
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", CHAT_PATH)
    );
    assert_eq!(req.json()["messages"][0]["content"], "through the proxy");
    let line = format!("POST http://{}{CHAT_PATH} HTTP/1.1", fake.host());
    let log = proxy.wait_log(&line).await;
    assert!(log.contains(&line), "tinyproxy log lacks {line:?}:\n{log}");

    // The same client again: a proxied plain-HTTP connection carries one
    // request (tinyproxy would relay a second one raw, unparsed), so this
    // is a fresh connection, parsed and logged again by the proxy.
    let (status, body, _) = stream_chat(&client, &fake.url()).await.unwrap();
    assert_eq!((status, body), (200, sse_body(&words)));
    assert_eq!(fake.attempts(), 2);
    assert_eq!(fake.connections(), 2);
    let log = proxy.wait_log_n(&line, 2).await;
    assert_eq!(log.matches(&line).count(), 2, "{log}");
}

/// Opens a tunnel to the fake through `svc` (an `https` URI, so CONNECT)
/// and speaks plain HTTP over it; returns the raw response.
async fn http_over_tunnel(
    svc: &proxy::ProxyConnector,
    fake: &FakeUpstream,
) -> Result<String, String> {
    let uri: awc::http::Uri = format!("https://{}{CHAT_PATH}", fake.host())
        .parse()
        .unwrap();
    let conn = tokio::time::timeout(WAIT, svc.call(ConnectInfo::new(uri)))
        .await
        .map_err(|_| "CONNECT took over WAIT".to_string())?
        .map_err(|e| match e {
            actix_tls::connect::ConnectError::Io(e) => e.to_string(),
            other => other.to_string(),
        })?;
    let (mut io, _) = conn.into_parts();
    let body = chat_body().to_string();
    let request = format!(
        "POST {CHAT_PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        fake.host(),
        body.len()
    );
    io.write_all(request.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    // Read until the chunked body ends (the fake keeps the connection).
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !out.ends_with(b"\r\n0\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, io.read(&mut chunk))
            .await
            .map_err(|_| "response did not end within WAIT".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[actix_web::test]
async fn https_uris_tunnel_through_connect() {
    let words = ["tun", "nel"];
    let fake = FakeUpstream::start(vec![Reply::sse_words(&words)]);
    let proxy = Tinyproxy::start(&format!("ConnectPort {}", fake.addr().port()));
    let svc = proxy::tcp_connector(Some(Arc::new(proxy.spec())));

    let response = http_over_tunnel(&svc, &fake).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"tun\""), "{response}");
    assert!(response.contains("data: [DONE]"), "{response}");
    let req = fake.request(0);
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", CHAT_PATH)
    );
    let line = format!("CONNECT {} HTTP/1.1", fake.host());
    let log = proxy.wait_log(&line).await;
    assert!(log.contains(&line), "tinyproxy log lacks {line:?}:\n{log}");

    // A port the proxy does not allow: the refusal is reported with its
    // status, and nothing reaches the upstream.
    let other = FakeUpstream::start(vec![Reply::sse_words(&words)]);
    let err = http_over_tunnel(&svc, &other).await.unwrap_err();
    assert!(err.contains("refused CONNECT to 127.0.0.1:"), "{err}");
    assert!(err.contains("403"), "{err}");
    assert_eq!(other.attempts(), 0);
}

#[actix_web::test]
async fn proxy_basic_auth_is_sent_and_required() {
    let words = ["auth", "ed"];
    let fake = FakeUpstream::start(vec![Reply::sse_words(&words)]);
    let proxy = Tinyproxy::start(&format!(
        "BasicAuth proxyuser s3cret\nConnectPort {}",
        fake.addr().port()
    ));

    // Plain http (absolute-form with Proxy-Authorization).
    let good = proxy.spec_with("proxyuser:s3cret");
    let (status, body, _) = stream_chat(&client_via(Some(good.clone())), &fake.url())
        .await
        .unwrap();
    assert_eq!((status, body), (200, sse_body(&words)));
    // The proxy consumes Proxy-Authorization; the upstream never sees it.
    assert_eq!(fake.request(0).header("proxy-authorization"), None);

    // Without credentials the proxy answers 407 (tinyproxy answers wrong
    // ones with 401). It closes with the request body unread, so reading
    // its body may fail with a reset: only the status is checked.
    for (spec, expected) in [
        (proxy.spec(), &[407][..]),
        (proxy.spec_with("proxyuser:wrong"), &[401, 407][..]),
    ] {
        let send = client_via(Some(spec.clone()))
            .post(fake.url())
            .send_json(&chat_body());
        let resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        assert!(expected.contains(&status), "{spec}: {status}");
    }
    assert_eq!(fake.attempts(), 1);

    // CONNECT with and without credentials.
    let response = http_over_tunnel(&proxy::tcp_connector(Some(Arc::new(good))), &fake)
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(fake.attempts(), 2);
    let err = http_over_tunnel(&proxy::tcp_connector(Some(Arc::new(proxy.spec()))), &fake)
        .await
        .unwrap_err();
    assert!(
        err.contains("refused CONNECT") && err.contains("407"),
        "{err}"
    );
    assert_eq!(fake.attempts(), 2);
}

// ---------------------------------------------------------------------------
// The gateway (needs `--proxy` wired into upstream::build_client)
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn gateway_chats_stream_through_the_proxy_unless_excluded() {
    let proxy = Tinyproxy::start("");
    let words = ["via", " the", " gateway"];
    let fake = FakeUpstream::start(vec![Reply::sse_words_slow(
        &words,
        Duration::from_millis(20),
    )]);
    let proxy_url = proxy.url();
    let line = format!("POST http://{}{CHAT_PATH} HTTP/1.1", fake.host());

    let gw = gateway_for(&fake, &["--proxy", &proxy_url]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    for id in ["c1", "c2"] {
        let frames = ws.chat(id, "hello", WAIT).await;
        check_chat_frames(id, &frames);
        expect_done(&frames);
        assert_eq!(content_of(&frames), "via the gateway");
    }
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 2);
    assert_eq!(fake.request(1).last_message(), "hello");
    let log = proxy.wait_log_n(&line, 2).await;
    assert_eq!(log.matches(&line).count(), 2, "{log}");

    // Excluded by --no-proxy: straight to the upstream, not in the log.
    let gw = gateway_for(
        &fake,
        &["--proxy", &proxy_url, "--no-proxy", "localhost,127.0.0.1"],
    )
    .await;
    let mut ws = WsClient::connect(gw.addr).await;
    let frames = ws.chat("c3", "hello", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "via the gateway");
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.log().matches(&line).count(), 2);
}

#[actix_web::test]
async fn framing_is_read_the_same_through_the_proxy() {
    // A close-delimited answer ends normally; a chunked one cut after the
    // first delta is upstream_broken, through tinyproxy as directly.
    let proxy = Tinyproxy::start("");
    let words = ["prox", "ied"];
    let body = sse_body(&words);
    let first_delta = crate::support::fake::sse_events(&words)[..2].concat();
    let fake = FakeUpstream::start(vec![
        Reply::sse_bytes(&body).with_end(End::CloseDelimited),
        Reply::sse(vec![
            Part::bytes(&first_delta),
            Part::bytes(b"data: {\"cho"),
        ])
        .with_end(End::FinAfterChunk),
    ]);
    let proxy_url = proxy.url();
    let gw = gateway_for(&fake, &["--proxy", &proxy_url, "--max-attempts", "1"]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let frames = ws.chat("whole", "hello", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "proxied");
    let frames = ws.chat("cut", "hello", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(
        message_of(err).contains(netfly::upstream::framing::CUT_BODY),
        "{err}"
    );
    assert_eq!(content_of(&frames), "prox");
    gw.stop(false).await;
    assert_eq!(fake.attempts(), 2);
    let line = format!("POST http://{}{CHAT_PATH} HTTP/1.1", fake.host());
    let log = proxy.wait_log_n(&line, 2).await;
    assert_eq!(log.matches(&line).count(), 2, "{log}");
}
