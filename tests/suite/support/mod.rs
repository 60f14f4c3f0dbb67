//! Shared test harness, the one place for fakes and clients:
//!
//! * this file: start the real gateway in-process, and helpers that read
//!   chat frames and check their invariants (PROTOCOL §3);
//! * [`fake`]: the scripted fake upstream (the only one: status sequences,
//!   byte-exact split SSE, delays, stalls, cuts, generated floods) and the
//!   OpenAI body pieces scripts are made of;
//! * [`ws`]: the WebSocket client ([`WsClient`]); [`raw_ws`]: a raw one
//!   that reads only when asked ([`raw_ws::RawWs`]); [`raw_http`]: a raw
//!   HTTP/1.1 client that can vanish mid-answer;
//! * [`chat`]: one chat start to finish, the set-up most `/ws` tests share;
//! * [`process`]: the gateway as a child process, its memory sampled;
//! * [`redis_server`]: a real `redis-server` per test, killed by PID.
//!
//! Everything listens on `127.0.0.1:0`; every wait is bounded.

#![allow(dead_code)]

pub mod chat;
pub mod fake;
pub mod process;
pub mod raw_http;
pub mod raw_ws;
pub mod redis_server;
pub mod temp_file;
pub mod ws;

use std::collections::HashMap;
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use chat::*;
pub use fake::{closed_port_url, End, FakeUpstream, Part, Reply};
pub use ws::WsClient;

/// A generous bound for one chat to finish in tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Defaults added to every test gateway unless the test sets the flag
/// itself: quick backoff so retry tests take milliseconds.
pub const TEST_DEFAULTS: &[(&str, &str)] =
    &[("--backoff-base-ms", "10"), ("--backoff-max-ms", "50")];

/// Process-wide set-up the harness needs once: the rustls crypto provider
/// (awc's connector panics without one).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An environment for `Config::from_args` holding only `vars` (tests never
/// touch the process environment).
pub fn env_lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| vars.get(k).cloned()
}

/// The gateway config for `args` (after `--bind 127.0.0.1:0` and the
/// [`TEST_DEFAULTS`] the args do not override) in the environment `env`,
/// or the reason it is refused.
pub fn try_test_config(args: &[&str], env: &[(&str, &str)]) -> Result<netfly::Config, String> {
    let mut full: Vec<&str> = vec!["--bind", "127.0.0.1:0"];
    for (flag, value) in TEST_DEFAULTS {
        if !args.contains(flag) {
            full.extend([*flag, *value]);
        }
    }
    full.extend_from_slice(args);
    netfly::Config::from_args(full, env_lookup(env))
}

/// Builds the gateway config for `args` (see [`try_test_config`]) with an
/// empty environment; panics when it is refused.
pub fn test_config(args: &[&str]) -> netfly::Config {
    try_test_config(args, &[]).unwrap_or_else(|e| panic!("gateway config {args:?} rejected: {e}"))
}

/// Starts the real gateway in-process (see [`test_config`]). Stop it with
/// `gateway.stop(false).await` at the end of the test.
pub async fn start_gateway(args: &[&str]) -> netfly::Gateway {
    init();
    netfly::Gateway::start(test_config(args))
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start with {args:?}: {e}"))
}

/// Starts the real gateway in-process with a config the test built or
/// changed itself.
pub async fn start_gateway_with(config: netfly::Config) -> netfly::Gateway {
    init();
    netfly::Gateway::start(config)
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"))
}

/// A gateway whose only upstream is `fake`, with extra `args`.
pub async fn gateway_for(fake: &FakeUpstream, args: &[&str]) -> netfly::Gateway {
    gateway_to(&fake.url(), args).await
}

/// A gateway whose only upstream is `url`, with extra `args`.
pub async fn gateway_to(url: &str, args: &[&str]) -> netfly::Gateway {
    start_gateway(&[&["--upstream", url][..], args].concat()).await
}

/// Gateway flags for a quick heartbeat: a ping every 100 ms, a client
/// silent for 500 ms is dropped.
pub const FAST_HEARTBEAT: &[&str] = &[
    "--heartbeat-interval-ms",
    "100",
    "--client-timeout-ms",
    "500",
];

/// Gateway flags written as one string: `flags("--max-attempts 5")`.
pub fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A fake upstream playing `script` and a gateway (with `args`) whose only
/// upstream it is.
pub async fn fake_gateway(script: Vec<Reply>, args: &[&str]) -> (FakeUpstream, netfly::Gateway) {
    let fake = FakeUpstream::start(script);
    let gw = gateway_for(&fake, args).await;
    (fake, gw)
}

/// [`fake_gateway`] and a WebSocket client connected to the gateway.
pub async fn fake_gateway_client(
    script: Vec<Reply>,
    args: &[&str],
) -> (FakeUpstream, netfly::Gateway, WsClient) {
    let (fake, gw) = fake_gateway(script, args).await;
    let ws = WsClient::connect(gw.addr).await;
    (fake, gw, ws)
}

/// Evaluates `cond` every `every` until it holds (`true`) or `timeout`
/// passes (`false`).
pub async fn poll_until(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The `message` of an error frame (or OpenAI error object) as text.
pub fn message_of(err: &Value) -> &str {
    err["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no string message in {err}"))
}

/// A `chat` frame with one user message and no model/params.
pub fn chat_frame(id: &str, content: &str) -> Value {
    json!({
        "type": "chat",
        "id": id,
        "messages": [{ "role": "user", "content": content }]
    })
}

/// Concatenation of the `delta` contents among `frames`.
pub fn content_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "delta")
        .map(|f| f["content"].as_str().expect("delta content is a string"))
        .collect()
}

/// The frames of one type.
pub fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == ty).collect()
}

/// The terminal (last) frame of a chat.
pub fn terminal(frames: &[Value]) -> &Value {
    let last = frames.last().expect("no frames");
    assert!(ws::is_terminal(last), "last frame is not terminal: {last}");
    last
}

/// Asserts the chat ended with `done` and returns that frame.
pub fn expect_done(frames: &[Value]) -> &Value {
    let t = terminal(frames);
    assert_eq!(t["type"], "done", "expected done, frames: {frames:#?}");
    t
}

/// Asserts the chat ended with `error` of `code` and returns that frame.
pub fn expect_error<'a>(frames: &'a [Value], code: &str) -> &'a Value {
    let t = terminal(frames);
    assert_eq!(
        (t["type"].as_str(), t["code"].as_str()),
        (Some("error"), Some(code)),
        "expected error {code:?}, frames: {frames:#?}"
    );
    assert!(
        t["message"].is_string(),
        "error frames carry a string message: {t}"
    );
    assert!(
        t["retryable"].is_boolean(),
        "error frames carry a boolean retryable: {t}"
    );
    t
}

/// The per-chat invariants of PROTOCOL §3, checked on every collected chat:
/// a refused chat is one `error` without `seq`; otherwise all frames carry
/// the id and a `seq` above the frame before it (strictly one more unless
/// the test took frames out itself); exactly one terminal frame and it is
/// last; at most one
/// `start`, before every `delta` (unless the frames are a resumed tail, which
/// begins after seq 1); deltas and reasoning are non-empty strings.
pub fn check_chat_frames(id: &str, frames: &[Value]) {
    if let [only] = frames {
        if only["type"] == "error" && only.get("seq").is_none() {
            assert_eq!(only["id"], id, "refusal for another id: {only}");
            return;
        }
    }
    let tail = frames
        .first()
        .and_then(|f| f["seq"].as_u64())
        .is_some_and(|s| s > 1);
    let mut seen_start = false;
    let mut prev_seq: Option<u64> = None;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["id"], id, "frame for another id in {id:?}: {f}");
        let seq = f["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("chat frame without a seq for {id:?}: {f}"));
        if let Some(p) = prev_seq {
            assert!(
                seq > p,
                "seq repeat or out of order for {id:?}: {frames:#?}"
            );
        }
        prev_seq = Some(seq);
        let last = i + 1 == frames.len();
        assert_eq!(
            ws::is_terminal(f),
            last,
            "exactly one terminal frame, last, for {id:?}: {frames:#?}"
        );
        match f["type"].as_str() {
            Some("start") => {
                assert!(!seen_start, "two start frames for {id:?}: {frames:#?}");
                seen_start = true;
                assert!(f["upstream"].is_string(), "start.upstream: {f}");
                assert!(f["attempt"].is_u64(), "start.attempt: {f}");
                assert!(f["model"].is_string(), "start.model: {f}");
            }
            Some(kind @ ("delta" | "reasoning")) => {
                assert!(
                    seen_start || tail,
                    "{kind} before start for {id:?}: {frames:#?}"
                );
                let c = f["content"].as_str().expect("content is a string");
                assert!(!c.is_empty(), "empty {kind} for {id:?}: {f}");
            }
            Some("retry") => {
                assert!(f["attempt"].is_u64(), "retry.attempt: {f}");
                assert!(f["delay_ms"].is_u64(), "retry.delay_ms: {f}");
                assert!(f["reason"].is_string(), "retry.reason: {f}");
            }
            Some("done") => {
                assert!(f["finish_reason"].is_string(), "done.finish_reason: {f}");
                assert!(
                    f.get("usage").is_some(),
                    "done.usage must be present (object or null): {f}"
                );
            }
            Some("error") => {}
            other => panic!("unexpected frame type {other:?} for {id:?}: {f}"),
        }
    }
}

/// An `http://addr/path` GET with a plain awc client: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    init();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut resp = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} failed: {e}"));
    let body = read_body(&mut resp, 4 * 1024 * 1024, &format!("GET {path}")).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Asserts that the gateway's `/metrics` page contains `needle`.
pub async fn expect_metric(addr: std::net::SocketAddr, needle: &str) {
    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {metrics}");
    assert!(
        metrics.contains(needle),
        "{needle:?} not in /metrics:\n{metrics}"
    );
}

/// A series' value on a gateway's /metrics page (0 when absent).
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// What awc's `send` resolves to (its body decoded per `Content-Encoding`).
pub type AwcResponse = awc::ClientResponse<actix_http::encoding::Decoder<actix_http::Payload>>;

/// The whole body of an awc response (at most `limit` bytes); panics naming
/// `what` when it cannot be read.
pub async fn read_body(resp: &mut AwcResponse, limit: usize, what: &str) -> Vec<u8> {
    resp.body()
        .limit(limit)
        .await
        .unwrap_or_else(|e| panic!("{what} body failed: {e}"))
        .to_vec()
}
