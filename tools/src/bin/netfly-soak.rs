//! `netfly-soak`: a bounded, loopback-only soak test of the real gateway
//! binary (see docs/SOAK.md).
//!
//! It starts a fault-injecting fake OpenAI upstream in-process, starts the
//! gateway as a child process pointing at a closed port (refused connects)
//! and then at the fake, and keeps N WebSockets chatting for the given time.
//! The fake answers each request, at random, with a normal stream (split
//! into random TCP writes), a 503, an accept-then-close, a reset in the
//! middle of the stream, or a stall past the gateway's idle timeout.
//!
//! Every chat asks for a tag; the fake's text for a tag is a pure function
//! of it, so the client knows what was sent: a `done` chat must have
//! received exactly that text, and any failed chat an exact prefix of it
//! (never a repeated fragment). The tool exits non-zero when a fragment was
//! lost or duplicated or a chat never ended.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "\
usage: netfly-soak [--gateway-bin PATH] [--sockets N] [--minutes M | --seconds S] [--seed X]
                   [--report-secs R]

  --gateway-bin  the netfly binary to start (default target/release/netfly)
  --sockets      WebSockets chatting at once (default 200)
  --minutes      how long to chat (default 10)
  --seconds      how long to chat, in seconds (overrides --minutes)
  --seed         seed of the fault choices (default: random)
  --report-secs  a progress line (chats, gateway RSS) every R seconds (default 60)

The gateway inherits the environment (e.g. NETFLY_RESUME_MAX_BYTES).
Loopback only. Exits 1 when a fragment was lost or duplicated or a chat
never ended, 2 on a setup error.";

/// Longest a chat may take before it counts as stuck.
const CHAT_TIMEOUT: Duration = Duration::from_secs(60);

struct Args {
    gateway_bin: String,
    sockets: usize,
    duration: Duration,
    seed: u64,
    report_every: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        gateway_bin: "target/release/netfly".into(),
        sockets: 200,
        duration: Duration::from_secs(600),
        seed: fastrand::u64(..),
        report_every: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--gateway-bin" => args.gateway_bin = value,
            "--sockets" => {
                args.sockets = usize::try_from(num(&value)?).map_err(|e| e.to_string())?
            }
            "--minutes" => args.duration = Duration::from_secs(num(&value)? * 60),
            "--seconds" => args.duration = Duration::from_secs(num(&value)?),
            "--seed" => args.seed = num(&value)?,
            "--report-secs" => args.report_every = Duration::from_secs(num(&value)?.max(1)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.sockets == 0 || args.sockets > 5000 {
        return Err("--sockets must be 1–5000".into());
    }
    if args.duration.is_zero() || args.duration > Duration::from_secs(24 * 3600) {
        return Err("the duration must be 1 s – 24 h".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// The text of a tag (shared by the fake and the checker)
// ---------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "alpha ",
    "beta ",
    "gamma ",
    "delta ",
    "naïve ",
    "café ",
    "✓ ",
    "数据 ",
    "rust ",
    "stream ",
    "🙂 ",
    "a",
    "b ",
    "\"quoted\" ",
    "back\\slash ",
    "new\nline ",
];

/// A small deterministic hash (FNV-1a), so text depends only on the tag.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fragments the fake sends for `tag`: 3–42 words.
fn fragments(tag: &str) -> Vec<&'static str> {
    let mut rng = fastrand::Rng::with_seed(fnv(tag));
    let n = rng.usize(3..43);
    (0..n).map(|_| WORDS[rng.usize(..WORDS.len())]).collect()
}

fn text_of(tag: &str) -> String {
    fragments(tag).concat()
}

// ---------------------------------------------------------------------------
// The fault-injecting fake upstream
// ---------------------------------------------------------------------------

#[derive(Default)]
struct FakeStats {
    requests: AtomicU64,
    normal: AtomicU64,
    status_503: AtomicU64,
    close: AtomicU64,
    cut: AtomicU64,
    stall: AtomicU64,
}

/// Faults in percent; the rest are normal streams.
const P_503: u64 = 8;
const P_CLOSE: u64 = 5;
const P_CUT: u64 = 7;
const P_STALL: u64 = 5;

async fn fake_upstream(listener: TcpListener, stats: Arc<FakeStats>, seed: u64, stall: Duration) {
    let mut n = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        n += 1;
        let rng = fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        actix_rt::spawn(serve_fake(stream, stats.clone(), rng, stall));
    }
}

/// Reads one request; returns its last message's content (the tag).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        read_more(stream, buf).await?;
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let json: Value = serde_json::from_slice(&body).ok()?;
    json["messages"]
        .as_array()?
        .last()?
        .get("content")?
        .as_str()
        .map(str::to_owned)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = [0u8; 8192];
    match tokio::time::timeout(Duration::from_secs(120), stream.read(&mut tmp)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&tmp[..n]);
            Some(())
        }
        _ => None,
    }
}

fn sse_event(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

fn delta_chunk(content: &str) -> Value {
    json!({
        "id": "chatcmpl-soak", "object": "chat.completion.chunk", "model": "soak",
        "choices": [{ "index": 0, "delta": { "content": content }, "finish_reason": null }]
    })
}

/// Writes `bytes` in 1–4 random pieces (split anywhere, even inside a UTF-8
/// character), each its own chunk.
async fn write_split(stream: &mut TcpStream, bytes: &[u8], rng: &mut fastrand::Rng) -> bool {
    let pieces = rng.usize(1..5);
    let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.usize(0..=bytes.len())).collect();
    cuts.sort_unstable();
    let mut from = 0;
    for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
        if c > from {
            if stream
                .write_all(&http_chunk(&bytes[from..c]))
                .await
                .is_err()
            {
                return false;
            }
            from = c;
        }
    }
    true
}

async fn serve_fake(
    mut stream: TcpStream,
    stats: Arc<FakeStats>,
    mut rng: fastrand::Rng,
    stall: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(tag) = read_request(&mut stream, &mut buf).await {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let roll = rng.u64(0..100);
        if roll < P_503 {
            stats.status_503.fetch_add(1, Ordering::Relaxed);
            let body = json!({"error": {"message": "soak: overloaded", "type": "server_error"}})
                .to_string();
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if roll < P_503 + P_CLOSE {
            stats.close.fetch_add(1, Ordering::Relaxed);
            return; // accept, read the request, close without a byte
        }
        let frags = fragments(&tag);
        let (cut_at, stall_at) = if roll < P_503 + P_CLOSE + P_CUT {
            stats.cut.fetch_add(1, Ordering::Relaxed);
            (Some(rng.usize(0..frags.len())), None)
        } else if roll < P_503 + P_CLOSE + P_CUT + P_STALL {
            stats.stall.fetch_add(1, Ordering::Relaxed);
            (None, Some(rng.usize(0..frags.len())))
        } else {
            stats.normal.fetch_add(1, Ordering::Relaxed);
            (None, None)
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let role =
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
        if !write_split(&mut stream, &sse_event(&role), &mut rng).await {
            return;
        }
        for (i, frag) in frags.iter().enumerate() {
            if cut_at == Some(i) {
                // Let the gateway read what was sent, then reset.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = stream.set_zero_linger();
                return;
            }
            if stall_at == Some(i) {
                // Silence past the idle timeout, until the gateway gives up.
                let mut tmp = [0u8; 1024];
                let _ = tokio::time::timeout(stall, stream.read(&mut tmp)).await;
                return;
            }
            if !write_split(&mut stream, &sse_event(&delta_chunk(frag)), &mut rng).await {
                return;
            }
            if rng.u8(..) < 64 {
                tokio::time::sleep(Duration::from_millis(rng.u64(1..8))).await;
            }
        }
        let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let mut tail = sse_event(&finish);
        tail.extend_from_slice(b"data: [DONE]\n\n");
        if !write_split(&mut stream, &tail, &mut rng).await
            || stream.write_all(b"0\r\n\r\n").await.is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway child process
// ---------------------------------------------------------------------------

struct GatewayProc {
    child: Child,
    addr: SocketAddr,
    log_lines: Arc<AtomicU64>,
    warn_lines: Arc<AtomicU64>,
}

fn start_gateway(bin: &str, upstreams: &str) -> Result<GatewayProc, String> {
    let mut child = Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1:0",
            "--upstream",
            upstreams,
            "--max-attempts",
            "2",
            "--backoff-base-ms",
            "20",
            "--backoff-max-ms",
            "200",
            "--connect-timeout-ms",
            "1000",
            "--first-byte-timeout-ms",
            "2000",
            "--idle-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "2000",
            "--client-timeout-ms",
            "10000",
            "--shutdown-grace-ms",
            "2000",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e} (build it with `cargo build --release`)"))?;
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        return Err("no stderr pipe".into());
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let log_lines = Arc::new(AtomicU64::new(0));
    let warn_lines = Arc::new(AtomicU64::new(0));
    let (ll, wl) = (log_lines.clone(), warn_lines.clone());
    // Drains the child's stderr for its whole life (the pipe must never fill).
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            ll.fetch_add(1, Ordering::Relaxed);
            if (line.contains(" WARN ") || line.contains(" ERROR "))
                && wl.fetch_add(1, Ordering::Relaxed) < 5
            {
                eprintln!("gateway: {line}");
            }
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    if let Ok(addr) = addr.parse() {
                        // Stop buffering lines nobody reads.
                        drop(rx);
                        return Ok(GatewayProc {
                            child,
                            addr,
                            log_lines,
                            warn_lines,
                        });
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("the gateway did not print `listening on http://…` within 15 s".into())
}

impl GatewayProc {
    /// VmRSS of the gateway process, in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM (graceful drain), then SIGKILL after 15 s.
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("the gateway did not exit 15 s after SIGTERM: killed");
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    chats: u64,
    done: u64,
    errors: BTreeMap<String, u64>,
    lost_or_duplicated: u64,
    stuck: u64,
    sockets_opened: u64,
    sockets_lost: u64,
    connect_failures: u64,
    delta_bytes: u64,
    first_violation: Option<String>,
}

type Shared = Rc<std::cell::RefCell<Tally>>;

async fn client(addr: SocketAddr, index: usize, until: Instant, tally: Shared) {
    let mut chat_no = 0u64;
    while Instant::now() < until {
        let ws = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish()
            .ws(format!("ws://{addr}/ws"))
            .max_frame_size(1 << 20)
            .connect()
            .await;
        let mut io = match ws {
            Ok((_, io)) => io,
            Err(_) => {
                tally.borrow_mut().connect_failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tally.borrow_mut().sockets_opened += 1;
        'socket: while Instant::now() < until {
            chat_no += 1;
            let id = format!("c{chat_no}");
            let tag = format!("s{index}-{chat_no}");
            let frame = json!({"type": "chat", "id": id,
                               "messages": [{"role": "user", "content": tag}]});
            if io
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                tally.borrow_mut().sockets_lost += 1;
                break 'socket;
            }
            tally.borrow_mut().chats += 1;
            let deadline = Instant::now() + CHAT_TIMEOUT;
            let mut got = String::new();
            let outcome: Result<Option<String>, &str> = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let frame = match tokio::time::timeout(left, io.next()).await {
                    Err(_) => break Err("stuck"),
                    Ok(None) | Ok(Some(Err(_))) => break Err("socket"),
                    Ok(Some(Ok(f))) => f,
                };
                let bytes = match frame {
                    Frame::Text(b) => b,
                    Frame::Ping(p) => {
                        let _ = io.send(Message::Pong(p)).await;
                        continue;
                    }
                    Frame::Close(_) => break Err("socket"),
                    _ => continue,
                };
                let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                    break Err("socket");
                };
                if v["id"] != id.as_str() {
                    continue; // hello
                }
                match v["type"].as_str() {
                    Some("delta") => got.push_str(v["content"].as_str().unwrap_or("")),
                    Some("done") => break Ok(None),
                    Some("error") => break Ok(Some(v["code"].as_str().unwrap_or("?").to_owned())),
                    _ => {}
                }
            };
            {
                let expected = text_of(&tag);
                let mut t = tally.borrow_mut();
                t.delta_bytes += got.len() as u64;
                let exact = match &outcome {
                    Ok(None) => {
                        t.done += 1;
                        got == expected
                    }
                    Ok(Some(code)) => {
                        *t.errors.entry(code.clone()).or_default() += 1;
                        expected.starts_with(&got)
                    }
                    Err(kind) => {
                        if *kind == "stuck" {
                            t.stuck += 1;
                        } else {
                            t.sockets_lost += 1;
                        }
                        expected.starts_with(&got)
                    }
                };
                if !exact {
                    t.lost_or_duplicated += 1;
                    if t.first_violation.is_none() {
                        t.first_violation = Some(format!(
                            "tag {tag} outcome {outcome:?}: expected {expected:?}, got {got:?}"
                        ));
                    }
                }
            }
            if outcome.is_err() {
                break 'socket;
            }
            // A little think time between chats.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..100))).await;
        }
        let _ = io.close().await;
    }
}

fn run(args: Args) -> Result<bool, String> {
    actix_rt::System::new().block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind fake upstream: {e}"))?;
        let fake_addr = listener
            .local_addr()
            .map_err(|e| format!("fake upstream address: {e}"))?;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("probe port: {e}"))?;
        let stats = Arc::new(FakeStats::default());
        // Stalls last past the gateway's 1 s idle timeout.
        let fake = actix_rt::spawn(fake_upstream(
            listener,
            stats.clone(),
            args.seed,
            Duration::from_secs(5),
        ));
        let upstreams = format!(
            "http://127.0.0.1:{}/v1/chat/completions,http://{fake_addr}/v1/chat/completions",
            closed.port()
        );
        let gw = start_gateway(&args.gateway_bin, &upstreams)?;
        let rss_start = gw.rss_kib().unwrap_or(0);
        println!(
            "netfly-soak: gateway pid {} on {}, {} sockets for {} s, seed {}",
            gw.child.id(),
            gw.addr,
            args.sockets,
            args.duration.as_secs(),
            args.seed
        );
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("NETFLY_RESUME")) {
            println!("netfly-soak: gateway environment {k}={v}");
        }
        let began = Instant::now();
        let until = began + args.duration;
        let tally: Shared = Shared::default();
        let mut tasks = Vec::with_capacity(args.sockets);
        for i in 0..args.sockets {
            tasks.push(actix_rt::spawn(client(gw.addr, i, until, tally.clone())));
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut rss_peak = rss_start;
        let mut peak_at = 0;
        let mut next_report = began + args.report_every;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = gw.rss_kib().unwrap_or(0);
            if rss > rss_peak {
                rss_peak = rss;
                peak_at = began.elapsed().as_secs();
            }
            if Instant::now() >= next_report {
                next_report += args.report_every;
                let t = tally.borrow();
                println!(
                    "  {:>4} s: {} chats, {} done, rss {} KiB, lost/dup {}",
                    began.elapsed().as_secs(),
                    t.chats,
                    t.done,
                    rss,
                    t.lost_or_duplicated
                );
            }
        }
        // Chats in flight get up to CHAT_TIMEOUT to end.
        let _ = tokio::time::timeout(
            CHAT_TIMEOUT + Duration::from_secs(15),
            futures_util::future::join_all(tasks),
        )
        .await;
        let elapsed = began.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_end = gw.rss_kib().unwrap_or(0);
        let (log_lines, warn_lines) = (
            gw.log_lines.load(Ordering::Relaxed),
            gw.warn_lines.load(Ordering::Relaxed),
        );
        let exit = gw.stop();
        fake.abort();

        let t = tally.borrow();
        let s = &stats;
        let errored: u64 = t.errors.values().sum();
        println!("netfly-soak results ({:.0} s):", elapsed.as_secs_f64());
        println!(
            "  chats          {} ({:.1}/s), done {}, errored {}, stuck {}",
            t.chats,
            t.chats as f64 / elapsed.as_secs_f64(),
            t.done,
            errored,
            t.stuck
        );
        for (code, n) in &t.errors {
            println!("    error {code:<22} {n}");
        }
        println!("  lost/duplicated {}", t.lost_or_duplicated);
        if let Some(v) = &t.first_violation {
            println!("    first: {v}");
        }
        println!(
            "  sockets        opened {}, lost mid-chat {}, connect failures {}",
            t.sockets_opened, t.sockets_lost, t.connect_failures
        );
        println!(
            "  delta bytes    {:.1} MB",
            t.delta_bytes as f64 / 1_048_576.0
        );
        println!(
            "  upstream       {} requests: normal {}, 503 {}, close {}, cut {}, stall {} \
             (plus refused connects to :{})",
            s.requests.load(Ordering::Relaxed),
            s.normal.load(Ordering::Relaxed),
            s.status_503.load(Ordering::Relaxed),
            s.close.load(Ordering::Relaxed),
            s.cut.load(Ordering::Relaxed),
            s.stall.load(Ordering::Relaxed),
            closed.port()
        );
        println!(
            "  gateway RSS    start {rss_start} KiB, peak {rss_peak} KiB (at {peak_at} s), end {rss_end} KiB"
        );
        println!(
            "  gateway log    {log_lines} lines ({warn_lines} warn/error); exit {}",
            exit.map_or("unknown".into(), |s| s.to_string())
        );
        let ok = t.lost_or_duplicated == 0 && t.stuck == 0;
        println!("  verdict        {}", if ok { "PASS" } else { "FAIL" });
        Ok(ok)
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("netfly-soak: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("netfly-soak: {e}");
            ExitCode::from(2)
        }
    }
}
