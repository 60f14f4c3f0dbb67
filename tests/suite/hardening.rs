//! Hardening (issue 4): who may open `/ws` (origins, tokens, global and
//! per-address limits, trusted proxies), the API key never reaching a
//! browser, backpressure against a client that never reads, vanished peers
//! and panic isolation. Origin/token/max-connection basics live in
//! `gateway.rs`; this file adds what those tests do not cover.
//!
//! Some tests here need what the scripted [`FakeUpstream`] cannot do (stream
//! 200 MB without holding it, a WebSocket client that never reads), so the
//! file has two small raw-TCP helpers of its own: [`FloodUpstream`] and
//! [`RawWs`]. Everything is on 127.0.0.1, port 0, and every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::support::fake::{chunk, completion, done_event, event, openai_error, read_request};
use crate::support::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// --allowed-origins (what gateway.rs does not already cover)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// --auth-tokens (what gateway.rs does not already cover)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// --max-connections: a refused socket does not leak a slot
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn max_connections_refusals_do_not_leak_slots() {
    let gw = start_gateway(&["--max-connections", "3"]).await;
    let mut open: Vec<WsClient> = Vec::new();
    for _ in 0..3 {
        open.push(WsClient::connect(gw.addr).await);
    }
    for _ in 0..5 {
        assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(503));
    }
    // Free all three: three new ones fit again, the fourth does not.
    for mut ws in open.drain(..) {
        ws.close().await;
    }
    for _ in 0..3 {
        open.push(WsClient::connect_eventually(gw.addr, "/ws", &[]).await);
    }
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(503));
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"full\"} 6").await;
    drop(open);
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Per-address limits and trusted proxies
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn per_ip_connections_limit_is_429_and_freed_on_close() {
    let gw = start_gateway(&["--max-connections-per-ip", "2"]).await;
    let mut a = WsClient::connect(gw.addr).await;
    let _b = WsClient::connect(gw.addr).await;
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[]).await,
        Some(429),
        "the third socket from 127.0.0.1 must get 429"
    );
    // Without a trusted proxy, X-Forwarded-For is ignored (no spoofing).
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", &[("X-Forwarded-For", "10.9.9.9")]).await,
        Some(429),
        "an untrusted X-Forwarded-For must not give a fresh budget"
    );
    a.close().await;
    drop(a);
    let _c = WsClient::connect_eventually(gw.addr, "/ws", &[]).await;
    assert_eq!(WsClient::refusal(gw.addr, "/ws", &[]).await, Some(429));
    expect_metric(gw.addr, "netfly_ws_refused_total{reason=\"per_ip\"}").await;
    gw.stop(false).await;
}

/// An echoing fake, a gateway allowing `per_minute` chats per minute per
/// address, and one client.
async fn echo_with_chat_budget(per_minute: &str) -> (FakeUpstream, netfly::Gateway, WsClient) {
    let args = ["--max-chats-per-minute-per-ip", per_minute];
    fake_gateway_client(vec![Reply::echo(ms(0))], &args).await
}

#[actix_web::test]
async fn per_ip_chat_rate_is_busy_after_m_chats_across_sockets() {
    let (fake, gw, mut a) = echo_with_chat_budget("3").await;
    let mut b = WsClient::connect(gw.addr).await;
    for id in ["r1", "r2"] {
        let frames = a.chat(id, "fine", WAIT).await;
        expect_done(&frames);
    }
    // The budget is per address, not per socket.
    expect_done(&b.chat("r3", "fine", WAIT).await);
    for (ws, id) in [(&mut a, "r4"), (&mut b, "r5")] {
        let frames = ws.chat(id, "one too many", WAIT).await;
        let err = expect_error(&frames, "busy");
        assert_eq!(err["retryable"], true, "{err}");
        assert_eq!(frames.len(), 1, "busy is the only frame: {frames:?}");
    }
    assert_eq!(fake.attempts(), 3, "refused chats never go upstream");
    // Both sockets stay usable (cancel of unknown id is ignored; silence).
    a.send_cancel("r4").await;
    a.expect_no_frame(ms(100)).await;
    gw.stop(false).await;
}

/// The budget is per address *per minute*: closing every socket and
/// opening a new one must not refill it.
///
/// KNOWN GAP (reported to the lead): `IpPermit::drop` removes the address's
/// entry, token bucket included, when its last socket closes, so a client
/// that reconnects gets a full budget again. Unignore once fixed.
#[actix_web::test]
async fn per_ip_chat_budget_survives_reconnect() {
    let (_fake, gw, mut a) = echo_with_chat_budget("2").await;
    expect_done(&a.chat("r1", "fine", WAIT).await);
    expect_done(&a.chat("r2", "fine", WAIT).await);
    expect_error(&a.chat("r3", "too many", WAIT).await, "busy");
    a.close().await;
    drop(a);
    tokio::time::sleep(ms(300)).await;
    let mut b = WsClient::connect(gw.addr).await;
    let frames = b.chat("r4", "after reconnect", WAIT).await;
    gw.stop(false).await;
    expect_error(&frames, "busy");
}

#[actix_web::test]
async fn trusted_proxy_forwarded_address_is_the_one_limited() {
    let fake = FakeUpstream::start(vec![Reply::echo(ms(0))]);
    let proxy = ["--trusted-proxies", "127.0.0.1"];
    let limits = [
        "--max-connections-per-ip",
        "1",
        "--max-chats-per-minute-per-ip",
        "2",
    ];
    let gw = gateway_for(&fake, &[&proxy[..], &limits].concat()).await;
    let xff_a: &[(&str, &str)] = &[("X-Forwarded-For", "203.0.113.7")];
    // A proxy chain: the right-most untrusted entry is the client.
    let xff_b: &[(&str, &str)] = &[("X-Forwarded-For", "198.51.100.1, 198.51.100.2, 127.0.0.1")];
    let mut a = WsClient::connect_with(gw.addr, "/ws", xff_a).await;
    let mut b = WsClient::connect_with(gw.addr, "/ws", xff_b).await;
    // One socket each: a second one from either address is 429 ...
    assert_eq!(WsClient::refusal(gw.addr, "/ws", xff_a).await, Some(429));
    let xff_c: &[(&str, &str)] = &[("X-Forwarded-For", "10.0.0.1, 198.51.100.2")];
    assert_eq!(
        WsClient::refusal(gw.addr, "/ws", xff_c).await,
        Some(429),
        "198.51.100.2 is the client of both chains"
    );
    // ... while the proxy itself (no header) is a client of its own.
    let mut direct = WsClient::connect(gw.addr).await;
    // Two chats each per minute, counted separately.
    for (ws, who) in [(&mut a, "a"), (&mut b, "b"), (&mut direct, "d")] {
        for n in 1..=2 {
            let id = format!("{who}{n}");
            let frames = ws.chat(&id, &format!("hello from {who}"), WAIT).await;
            expect_done(&frames);
            assert_eq!(content_of(&frames), format!("hello from {who}"));
        }
        let id = format!("{who}3");
        let frames = ws.chat(&id, "one too many", WAIT).await;
        assert_eq!(expect_error(&frames, "busy")["retryable"], true);
    }
    assert_eq!(fake.attempts(), 6);
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// The upstream API key never reaches a browser
// ---------------------------------------------------------------------------

const KEY: &str = "sk-proj-LEAKCHECK-9f8e7d6c5b4a3210";

/// Every way an upstream can echo the key back, chosen by the message text.
fn echoing_upstream() -> FakeUpstream {
    FakeUpstream::start(vec![Reply::dynamic(|req| {
        let msg = format!("Incorrect API key provided: {KEY}; check {KEY}");
        let err_event = event(&openai_error(&msg));
        match req.last_message().as_str() {
            "status401" => Reply::error_json(401, &msg),
            "status500" => Reply::error_json(500, &msg),
            "plain500" => Reply::body(500, "text/plain", msg.as_bytes()),
            "mid" => Reply::sse(vec![
                Part::Bytes(event(&chunk("Hel"))),
                Part::Bytes(err_event),
            ]),
            "first" => Reply::sse(vec![Part::Bytes(err_event)]),
            "field" => Reply::sse(vec![
                Part::Bytes(event(&chunk("Hel"))),
                Part::bytes(format!("error: {msg}\n\n")),
            ]),
            "named" => Reply::sse(vec![
                Part::Bytes(event(&chunk("Hel"))),
                Part::bytes(format!("event: error\ndata: {msg}\n\n")),
            ]),
            "garbage" => Reply::sse(vec![
                Part::Bytes(event(&chunk("Hel"))),
                Part::bytes(format!("data: not json {KEY}\n\n")),
            ]),
            "whole" => Reply::json(200, &openai_error(&msg)),
            other => panic!("unexpected message {other:?}"),
        }
    })])
}

#[actix_web::test]
async fn api_key_echoed_by_the_upstream_is_redacted_everywhere() {
    let fake = echoing_upstream();
    let gw = gateway_for(&fake, &["--api-key", KEY, "--max-attempts", "2"]).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let cases = [
        ("status401", "upstream_rejected", true),
        ("status500", "upstream_unavailable", true),
        ("plain500", "upstream_unavailable", true),
        ("mid", "upstream_broken", true),
        ("first", "upstream_broken", true),
        ("field", "upstream_broken", true),
        ("named", "upstream_broken", true),
        ("garbage", "upstream_broken", true),
        ("whole", "upstream_rejected", true),
    ];
    let mut everything = ws.hello().to_string();
    for (i, (what, code, says_redacted)) in cases.iter().enumerate() {
        let id = format!("k{i}");
        let frames = ws.chat(&id, what, WAIT).await;
        let text = serde_json::to_string(&frames).unwrap();
        everything.push_str(&text);
        assert!(
            !text.contains("LEAKCHECK"),
            "{what}: the API key reached the browser: {text}"
        );
        let err = expect_error(&frames, code);
        if *says_redacted {
            assert!(
                err["message"].as_str().unwrap().contains("[redacted]"),
                "{what}: the echoed key is replaced by [redacted]: {err}"
            );
        }
    }
    assert!(!everything.contains(KEY));
    // Every attempt did carry the key upstream.
    for req in fake.requests() {
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Raw helpers: a WebSocket client that need never read, and a flooding
// upstream that never holds its body in memory
// ---------------------------------------------------------------------------

/// A hand-rolled WebSocket client on a raw TCP stream: it reads only when
/// asked to, so a test can leave the gateway's frames unread.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame from the gateway: opcode and payload.
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return p;
                }
                let mut tmp = [0u8; 1024];
                let n = stream.read(&mut tmp).await.expect("read upgrade answer");
                assert!(n > 0, "gateway closed during the upgrade");
                buf.extend_from_slice(&tmp[..n]);
            }
        })
        .await
        .expect("upgrade answer in time");
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..head_end + 4);
        RawWs { stream, buf }
    }

    /// Sends one masked frame.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await
    }

    async fn send_json(&mut self, v: &Value) {
        self.send_frame(0x1, v.to_string().as_bytes())
            .await
            .expect("send text frame");
    }

    /// Reads one whole frame, or `None` on EOF/timeout.
    async fn read_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut tmp = vec![0u8; 256 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    }
}

/// Parses one unmasked server frame at the start of `buf`.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    Some((RawFrame { opcode, payload }, at + len))
}

/// An upstream on raw TCP. A chat whose last message starts with `flood`
/// gets an endless-as-possible SSE stream (generated, never held: 64 KiB
/// per write, up to `FLOOD_BYTES`); any other chat gets its message echoed
/// word by word. Every reply is `connection: close`.
struct FloodUpstream {
    addr: SocketAddr,
    /// Body bytes of flood replies written so far (all connections).
    written: Arc<AtomicU64>,
    /// Flood replies that ended because the client went away.
    disconnects: Arc<AtomicUsize>,
    /// Flood replies that started.
    floods: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

const FLOOD_BYTES: u64 = 200 * 1024 * 1024;
/// Content of one flood delta (ASCII, so bytes = chars).
const FLOOD_DELTA: usize = 1000;

impl FloodUpstream {
    async fn start() -> FloodUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind flood");
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let disconnects = Arc::new(AtomicUsize::new(0));
        let floods = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (w, d, f, t) = (
            written.clone(),
            disconnects.clone(),
            floods.clone(),
            tasks.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let task = tokio::spawn(serve_raw(stream, w.clone(), d.clone(), f.clone()));
                t.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        FloodUpstream {
            addr,
            written,
            disconnects,
            floods,
            tasks,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    fn disconnects(&self) -> usize {
        self.disconnects.load(Ordering::SeqCst)
    }

    fn floods(&self) -> usize {
        self.floods.load(Ordering::SeqCst)
    }
}

impl Drop for FloodUpstream {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

async fn serve_raw(
    mut stream: TcpStream,
    written: Arc<AtomicU64>,
    disconnects: Arc<AtomicUsize>,
    floods: Arc<AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    let Some(request) = read_request(&mut stream, &mut Vec::new()).await else {
        return;
    };
    let message = request.last_message();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if !message.starts_with("flood") {
        let mut body = Vec::new();
        for word in message.split_inclusive(' ') {
            body.extend(http_chunk(&event(&chunk(word))));
        }
        body.extend(http_chunk(&done_event()));
        body.extend_from_slice(b"0\r\n\r\n");
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
        return;
    }
    floods.fetch_add(1, Ordering::SeqCst);
    // One 64 KiB HTTP chunk of ~64 delta events, built once and rewritten.
    let one = event(&chunk(&"x".repeat(FLOOD_DELTA)));
    let per_chunk = (64 * 1024) / one.len();
    let block = http_chunk(&one.repeat(per_chunk));
    let body_len = (one.len() * per_chunk) as u64;
    let (mut rd, mut wr) = stream.split();
    let gone = async {
        let mut tmp = [0u8; 1024];
        loop {
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let flood = async {
        let mut sent = 0u64;
        while sent < FLOOD_BYTES {
            if wr.write_all(&block).await.is_err() {
                return false;
            }
            sent += body_len;
            written.fetch_add(body_len, Ordering::SeqCst);
        }
        let mut end = http_chunk(&done_event());
        end.extend_from_slice(b"0\r\n\r\n");
        wr.write_all(&end).await.is_ok()
    };
    let completed = tokio::select! {
        ok = flood => ok,
        () = gone => false,
    };
    if !completed {
        disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

/// This process's resident set size in bytes (the gateway runs in-process,
/// so this is an upper bound of what it uses).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples the RSS every 20 ms until dropped; `max()` is the peak seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: at most 10 minutes even if never stopped.
            for _ in 0..30_000 {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                p.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                std::thread::sleep(ms(20));
            }
        });
        RssSampler { peak, stop }
    }

    fn max(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

const MB: u64 = 1024 * 1024;

/// The RSS measured is the whole test process's: tests of this file that
/// allocate a lot (the 6 MB delta) never overlap the one that measures.
static MEMORY_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `f()` has not changed for `quiet`; returns the value, or
/// `None` if it kept changing until `timeout`.
async fn plateau(timeout: Duration, quiet: Duration, f: impl Fn() -> u64) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = f();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(ms(50)).await;
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Some(now);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------

/// A client that never reads while the upstream streams as fast as it can:
/// the gateway stops reading that upstream (the fake's writes plateau far
/// below 200 MB), memory stays bounded, and another socket is served
/// exactly meanwhile.
#[actix_web::test]
async fn non_reading_client_pauses_its_upstream_and_memory_stays_bounded() {
    let _alone = MEMORY_HEAVY.lock().await;
    let up = FloodUpstream::start().await;
    let url = up.url();
    // The gateway runs as its own process (the real binary) so that its
    // memory is measured alone, whatever the other tests are doing.
    let gw = ChildGateway::start(&["--upstream", url.as_str()]);
    let sampler = RssSampler::start(gw.pid);
    let rss_start = rss_bytes(gw.pid);

    let mut stalled = RawWs::connect(gw.addr).await;
    stalled.send_json(&chat_frame("f1", "flood please")).await;
    assert!(
        poll_until(WAIT, ms(20), || up.written() > 2 * MB).await,
        "the flood never started (written {})",
        up.written()
    );
    let plateau_at = plateau(Duration::from_secs(20), ms(1000), || up.written()).await;
    let Some(plateau_at) = plateau_at else {
        panic!(
            "the upstream kept being read for 20 s ({} MB written): no backpressure",
            up.written() / MB
        );
    };
    eprintln!(
        "backpressure: upstream writes plateaued at {:.1} MB (of a {} MB flood)",
        plateau_at as f64 / MB as f64,
        FLOOD_BYTES / MB
    );
    assert!(
        plateau_at < 64 * MB,
        "the gateway read {plateau_at} bytes for a client that reads nothing"
    );

    // Meanwhile a normal socket is served exactly.
    let mut normal = WsClient::connect(gw.addr).await;
    let text = "the other socket is not slowed down by the stalled one";
    let frames = normal.chat("n1", text, WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), text);

    // Still stalled (nothing more read), and nothing disconnected yet.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        up.written(),
        plateau_at,
        "the stalled stream was read further"
    );
    assert_eq!(up.disconnects(), 0);
    assert_eq!(up.floods(), 1);

    let peak = sampler.max();
    eprintln!(
        "backpressure: gateway RSS start {:.1} MB, peak {:.1} MB",
        rss_start as f64 / MB as f64,
        peak as f64 / MB as f64
    );
    assert!(rss_start > 0, "could not read the gateway's RSS");
    assert!(peak < 150 * MB, "gateway RSS reached {} MB", peak / MB);
    drop(stalled);
    drop(gw);
}

/// The real `netfly` binary as a child process, killed on drop.
struct ChildGateway {
    child: std::process::Child,
    pid: u32,
    addr: std::net::SocketAddr,
}

impl ChildGateway {
    fn start(args: &[&str]) -> ChildGateway {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netfly"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the netfly binary");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stderr until the process ends (keeps the pipe drained).
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the netfly binary did not print its ready line");
            }
        };
        ChildGateway {
            child,
            pid,
            addr: addr.parse().expect("ready line names an address"),
        }
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stalled (non-reading, silent) client is dropped, and its paused
/// upstream request is closed with it. The Session actor runs only while
/// actix-http can write to the socket, so the heartbeat cannot see this
/// client; the kernel can: the gateway sets TCP_USER_TIMEOUT to the client
/// timeout, and data stuck behind a closed window past it aborts the
/// connection, which ends the session and cancels its chat.
#[actix_web::test]
async fn stalled_client_dropped_by_heartbeat_closes_its_paused_upstream() {
    let up = FloodUpstream::start().await;
    let heartbeat = [
        "--heartbeat-interval-ms",
        "200",
        "--client-timeout-ms",
        "1000",
    ];
    let gw = gateway_to(&up.url(), &heartbeat).await;
    let mut stalled = RawWs::connect(gw.addr).await;
    stalled.send_json(&chat_frame("f1", "flood please")).await;
    let sent_at = Instant::now();
    assert!(
        poll_until(WAIT, ms(20), || up.written() > MB).await,
        "the flood never started"
    );
    assert!(
        poll_until(ms(4000), ms(20), || up.disconnects() == 1).await,
        "the stalled client's upstream request was not closed in time \
         (written {} MB)",
        up.written() / MB
    );
    let took = sent_at.elapsed();
    eprintln!(
        "heartbeat: stalled client's upstream closed {took:?} after its chat, \
         after {:.1} MB",
        up.written() as f64 / MB as f64
    );
    assert!(
        took >= ms(900),
        "dropped before --client-timeout-ms: {took:?}"
    );
    let (status, _) = http_get(gw.addr, "/healthz").await;
    assert_eq!(status, 200);
    drop(stalled);
    gw.stop(false).await;
}

/// One enormous delta (a 6 MB whole completion) to a client that is not
/// reading: it is over the high-water mark at once. What happens is
/// reported on stderr; either the socket is closed with 1008 after the
/// frame, or the frame is delivered once and the chat ends with `done`.
/// Never is the content duplicated or mangled.
#[actix_web::test]
async fn enormous_single_delta_to_a_non_reader() {
    let _alone = MEMORY_HEAVY.lock().await;
    const SIZE: usize = 6 * 1024 * 1024;
    let content: String = "abcdefghij".repeat(SIZE / 10);
    let fake = FakeUpstream::start(vec![Reply::json(
        200,
        &completion(&content, "stop", &Value::Null),
    )]);
    let gw = gateway_for(&fake, &[]).await;
    let mut raw = RawWs::connect(gw.addr).await;
    raw.send_json(&chat_frame("big", "one huge answer please"))
        .await;
    // Not reading for a while: the frame sits in the gateway.
    assert!(fake.wait_attempts(1, WAIT).await);
    tokio::time::sleep(ms(1500)).await;
    let mut frames: Vec<Value> = Vec::new();
    let mut close_code = None;
    let mut texts = 0;
    loop {
        let Some(frame) = raw.read_frame(Duration::from_secs(5)).await else {
            break;
        };
        match frame.opcode {
            0x1 => {
                texts += 1;
                frames.push(serde_json::from_slice(&frame.payload).expect("json frame"));
            }
            0x8 => {
                if frame.payload.len() >= 2 {
                    close_code = Some(u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                }
                break;
            }
            _ => {}
        }
        if frames.last().is_some_and(|f| f["type"] == "done") {
            break;
        }
    }
    let chat: Vec<&Value> = frames.iter().filter(|f| f["id"] == "big").collect();
    let got: String = chat
        .iter()
        .filter(|f| f["type"] == "delta")
        .map(|f| f["content"].as_str().unwrap())
        .collect();
    let kinds: Vec<&str> = chat.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let slow_closed = gw.metrics().ws_slow_consumer_closed_total.get();
    eprintln!(
        "enormous delta: {texts} text frames, chat frames {kinds:?}, delta bytes {}, \
         close code {close_code:?}, slow-consumer closes {slow_closed}",
        got.len()
    );
    assert!(
        got.is_empty() || got == content,
        "the 6 MB delta arrived altered ({} bytes)",
        got.len()
    );
    let closed_1008 = close_code == Some(1008);
    let delivered = kinds.last() == Some(&"done") && got == content;
    assert!(
        closed_1008 || delivered,
        "expected a 1008 close or the whole delta and done; got {kinds:?}, close {close_code:?}"
    );
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Vanished peer
// ---------------------------------------------------------------------------

/// A raw client that neither reads nor answers pings (its host vanished):
/// dropped by the heartbeat, and (with `--resume-window-ms 0`) its chat's
/// upstream request dropped too, within about 2 s.
#[actix_web::test]
async fn vanished_raw_peer_is_dropped_with_its_upstream_request() {
    let fake = FakeUpstream::start(vec![
        Reply::sse(vec![Part::Bytes(event(&chunk("Hel")))]).with_end(End::Stall)
    ]);
    let args = [FAST_HEARTBEAT, &flags("--resume-window-ms 0")].concat();
    let gw = gateway_for(&fake, &args).await;
    let mut raw = RawWs::connect(gw.addr).await;
    raw.send_json(&chat_frame("v1", "hi")).await;
    assert!(fake.wait_attempts(1, WAIT).await);
    let t0 = Instant::now();
    assert!(
        fake.wait_client_disconnect(ms(2500)).await,
        "the vanished peer's upstream request is still open after 2.5 s"
    );
    eprintln!(
        "vanished peer: upstream dropped {:?} after the request",
        t0.elapsed()
    );
    // The socket itself was closed: reading now finds the end (close frame
    // or EOF) after the queued frames.
    let mut ended = false;
    for _ in 0..50 {
        match raw.read_frame(ms(2000)).await {
            None => {
                ended = true;
                break;
            }
            Some(f) if f.opcode == 0x8 => {
                ended = true;
                break;
            }
            Some(_) => {}
        }
    }
    assert!(ended, "the vanished peer's socket was not closed");
    expect_metric(gw.addr, "netfly_ws_connections 0").await;
    gw.stop(false).await;
}

// ---------------------------------------------------------------------------
// Panic isolation
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn panics_stay_inside_their_socket_or_chat() {
    let words: Vec<String> = (0..30).map(|i| format!("w{i} ")).collect();
    let slow: String = words.concat();
    let fake = FakeUpstream::start(vec![Reply::echo(ms(100))]);
    let url = fake.url();
    let mut config = test_config(&["--upstream", url.as_str()]);
    config.fault_injection = true;
    init();
    let gw = netfly::Gateway::start(config).await.expect("gateway");

    // A: a 3 s stream in flight the whole time.
    let mut a = WsClient::connect(gw.addr).await;
    a.send_chat("a1", &slow).await;
    let first = a.expect_type("a1", "delta", WAIT).await;
    let a_started = Instant::now();

    // B: its session panics -> B (only) is closed with 1011.
    let mut b = WsClient::connect(gw.addr).await;
    b.send_chat("b1", "please netfly-fault:panic-session now")
        .await;
    assert!(b.wait_closed(WAIT).await, "the panicking socket stays open");
    assert_eq!(b.close_code(), Some(1011), "backlog {:?}", b.backlog());

    // The gateway keeps serving: /healthz and a new socket.
    let (status, body) = http_get(gw.addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut c = WsClient::connect(gw.addr).await;
    let frames = c.chat("c1", "still here", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "still here");

    // D: its chat task panics -> that chat ends with an error, D lives on.
    let mut d = WsClient::connect(gw.addr).await;
    let frames = d.chat("d1", "netfly-fault:panic-chat", WAIT).await;
    let err = expect_error(&frames, "upstream_broken");
    assert!(
        err["message"].as_str().unwrap().contains("internal error"),
        "{err}"
    );
    let frames = d.chat("d2", "after the panic", WAIT).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "after the panic");
    // A panicking chat on one socket does not disturb another chat of it.
    d.send_chat("d3", "x y z").await;
    let frames = d.chat("d4", "netfly-fault:panic-chat", WAIT).await;
    expect_error(&frames, "upstream_broken");
    let frames = d.chat_until_terminal("d3", WAIT).await;
    assert_eq!(content_of(&frames), "x y z");

    // All of that happened while A was mid-stream; A is exact.
    assert!(
        a_started.elapsed() < ms(2800),
        "the checks took too long to be mid-stream: {:?}",
        a_started.elapsed()
    );
    let rest = a.chat_until_terminal("a1", WAIT).await;
    expect_done(&rest);
    assert_eq!(
        format!(
            "{}{}",
            first["content"].as_str().unwrap(),
            content_of(&rest)
        ),
        slow
    );
    expect_metric(gw.addr, "netfly_ws_connections 3").await;
    gw.stop(false).await;
}
