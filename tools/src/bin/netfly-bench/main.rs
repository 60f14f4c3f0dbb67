//! `netfly-bench`: the gateway's load benchmark (loopback only, every run
//! bounded in time).
//!
//! It hosts a fake OpenAI-compatible upstream that stamps every chunk with
//! its sequence number and CLOCK_MONOTONIC send time, then runs interleaved
//! rounds of two client fleets against it:
//! - direct: SSE clients reading the upstream themselves (no gateway: the
//!   physical limit of this machine);
//! - gateway: WebSocket clients running the same chats through a separate
//!   `netfly` process, whose CPU time and RSS come from /proc.
//!
//! It reports medians over rounds of throughput, per-delta latency (arrival
//! − upstream send), time to first delta, errors by code, integrity, the
//! gateway's CPU per delta and RSS, and the machine's CPU busy share. See
//! docs/PERFORMANCE.md.
//!
//! With `--resume-store-compare` each round also runs the gateway with
//! `--resume-store redis://…` on a redis-server this tool starts, and
//! reports it against the `memory` gateway of the same rounds: delivered
//! deltas/s, added latency, Redis commands per delta and memory per chat.

mod direct;
mod gateway;
mod sys;
mod upstream;
mod ws;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::direct::{Direct, End};
use crate::gateway::{GatewayProc, RedisProc};
use crate::sys::now_ns;
use crate::upstream::{FakeUpstream, StreamSpec};
use crate::ws::{OpenError, Ws};

/// Command line.
#[derive(clap::Parser, Debug)]
#[command(
    name = "netfly-bench",
    about = "Loopback load benchmark of the netfly gateway (see docs/PERFORMANCE.md)"
)]
struct Args {
    /// Scenarios to run: a, b, c, d, e, comma-separated, or all
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Rounds per scenario; each round is one direct and one gateway run, interleaved [default: 3, smoke 1]
    #[arg(long)]
    rounds: Option<usize>,
    /// Hard limit for the whole run, seconds [default: 1800, smoke 120]
    #[arg(long)]
    duration_limit: Option<u64>,
    /// Tiny sizes, a few seconds in all, no targets: exits 0 unless integrity fails
    #[arg(long)]
    smoke: bool,
    /// The gateway binary [default: `netfly` next to this binary]
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Command prefix for the gateway, e.g. "valgrind --tool=callgrind" (split on spaces); CPU and RSS are then the wrapper process's
    #[arg(long)]
    gateway_wrap: Option<String>,
    /// Extra argument for the gateway (repeatable)
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Which fleets to run: both, direct or gateway
    #[arg(long, default_value = "both")]
    modes: String,
    /// Print the results as JSON on stdout (the table goes to stderr)
    #[arg(long)]
    json: bool,
    /// Also run each round's gateway with --resume-store redis://… (a redis-server started here, from the PATH) and compare it with the memory store
    #[arg(long)]
    resume_store_compare: bool,
    /// Override: sockets
    #[arg(long)]
    sockets: Option<usize>,
    /// Override: sequential chats per socket
    #[arg(long)]
    chats: Option<usize>,
    /// Override: chunks per chat
    #[arg(long)]
    chunks: Option<u64>,
    /// Override: bytes of content per chunk
    #[arg(long)]
    bytes: Option<usize>,
    /// Override: pacing between chunks, ms (0 = as fast as TCP allows)
    #[arg(long)]
    pace_ms: Option<u64>,
}

/// One scenario's shape.
#[derive(Clone, Debug, Serialize)]
struct Scenario {
    key: char,
    title: &'static str,
    sockets: usize,
    chats: usize,
    n: u64,
    b: usize,
    pace_ms: u64,
    /// Chat starts are spread evenly over this many ms.
    ramp_ms: u64,
    /// (d): open sockets and hold them idle; no chats.
    idle: bool,
}

impl Scenario {
    fn spec(&self) -> StreamSpec {
        StreamSpec {
            n: self.n,
            b: self.b,
            pace_ms: self.pace_ms,
        }
    }

    fn describe(&self) -> String {
        if self.idle {
            return format!(
                "({}) {}: {} idle sockets",
                self.key, self.title, self.sockets
            );
        }
        let pace = if self.pace_ms == 0 {
            "no pacing".to_string()
        } else {
            format!("{} ms pacing", self.pace_ms)
        };
        format!(
            "({}) {}: {} socket(s) × {} chat(s), {} chunks × {} B, {}",
            self.key, self.title, self.sockets, self.chats, self.n, self.b, pace
        )
    }

    /// A generous bound for one fleet run.
    fn round_limit(&self) -> Duration {
        let paced = self.chats as u64 * self.n * self.pace_ms;
        Duration::from_millis(paced * 2 + self.ramp_ms) + Duration::from_secs(90)
    }
}

fn presets(smoke: bool) -> Vec<Scenario> {
    let s = |key, title, sockets, chats, n, b, pace_ms, idle| Scenario {
        key,
        title,
        sockets,
        chats,
        n,
        b,
        pace_ms,
        ramp_ms: pace_ms,
        idle,
    };
    if smoke {
        vec![
            s('a', "throughput", 10, 2, 200, 64, 0, false),
            s('b', "paced at scale", 50, 1, 20, 64, 5, false),
            s('c', "paced latency", 20, 1, 20, 64, 5, false),
            s('d', "idle sockets", 200, 0, 0, 0, 0, true),
            s('e', "time to first delta", 1, 5, 8, 64, 5, false),
        ]
    } else {
        vec![
            s('a', "throughput", 100, 3, 1000, 64, 0, false),
            s('b', "paced at scale", 1000, 1, 200, 64, 20, false),
            s('c', "paced latency", 300, 1, 200, 64, 20, false),
            s('d', "idle sockets", 10_000, 0, 0, 0, 0, true),
            s('e', "time to first delta", 1, 50, 64, 64, 20, false),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Direct,
    Gateway,
    /// The gateway with `--resume-store redis://…`.
    Redis,
}

/// What one fleet saw.
#[derive(Default, Debug)]
struct Tally {
    deltas: u64,
    chats_ok: u64,
    chats_failed: u64,
    /// chats that ended normally but with a missing, extra, out-of-order or altered delta
    integrity_bad: u64,
    lat_ns: Vec<u64>,
    ttfd_ns: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn err(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.deltas += o.deltas;
        self.chats_ok += o.chats_ok;
        self.chats_failed += o.chats_failed;
        self.integrity_bad += o.integrity_bad;
        self.lat_ns.extend(o.lat_ns);
        self.ttfd_ns.extend(o.ttfd_ns);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// Integrity and latency of one chat's deltas.
struct Check {
    spec: StreamSpec,
    next: u64,
    bad: bool,
    first_ns: Option<u64>,
    expected: String,
}

impl Check {
    fn new(spec: StreamSpec) -> Check {
        Check {
            spec,
            next: 0,
            bad: false,
            first_ns: None,
            expected: String::with_capacity(spec.b + 32),
        }
    }

    fn delta(&mut self, content: &str, arrival_ns: u64, t: &mut Tally) {
        t.deltas += 1;
        self.first_ns.get_or_insert(arrival_ns);
        let mut parts = content.splitn(3, ':');
        let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
        let sent = parts.next().and_then(|s| s.parse::<u64>().ok());
        let (Some(seq), Some(sent)) = (seq, sent) else {
            self.bad = true;
            return;
        };
        upstream::content(seq, sent, self.spec.b, &mut self.expected);
        if seq != self.next || content != self.expected {
            self.bad = true;
        }
        self.next = seq + 1;
        t.lat_ns.push(arrival_ns.saturating_sub(sent));
    }

    fn complete(&self) -> bool {
        !self.bad && self.next == self.spec.n
    }
}

/// The fields of a gateway frame the fleet reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

/// Reads one chat's frames until its terminal frame. Ok(true) on `done`.
async fn ws_chat(ws: &mut Ws, check: &mut Check, t: &mut Tally) -> Result<bool, &'static str> {
    loop {
        let (text, arrival) = match ws.next_text().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("ws_closed"),
            Err(_) => return Err("ws_io"),
        };
        let frame: Frame = serde_json::from_str(text).map_err(|_| "bad_frame")?;
        match frame.ty.as_ref() {
            "delta" => check.delta(frame.content.as_deref().unwrap_or(""), arrival, t),
            "done" => return Ok(true),
            "error" => {
                t.err(frame.code.as_deref().unwrap_or("error"));
                return Ok(false);
            }
            _ => {} // hello, start, retry
        }
    }
}

fn settle(t: &mut Tally, check: &Check, sent_ns: u64, ended: Result<bool, &'static str>) -> bool {
    if let Some(first) = check.first_ns {
        t.ttfd_ns.push(first.saturating_sub(sent_ns));
    }
    match ended {
        Ok(true) if check.complete() => {
            t.chats_ok += 1;
            true
        }
        Ok(true) => {
            t.integrity_bad += 1;
            t.chats_failed += 1;
            t.err("integrity");
            true
        }
        Ok(false) => {
            t.chats_failed += 1;
            true
        }
        Err(code) => {
            t.err(code);
            t.chats_failed += 1;
            false
        }
    }
}

async fn ws_client(mut ws: Ws, sc: Arc<Scenario>, delay: Duration, limit: Duration) -> Tally {
    let mut t = Tally::default();
    tokio::time::sleep(delay).await;
    let prompt = sc.spec().prompt();
    for k in 0..sc.chats {
        let frame = format!(
            r#"{{"type":"chat","id":"c{k}","messages":[{{"role":"user","content":"{prompt}"}}]}}"#
        );
        let mut check = Check::new(sc.spec());
        let sent = now_ns();
        let ended = match ws.send_text(&frame).await {
            Err(_) => Err("ws_io"),
            Ok(()) => match tokio::time::timeout(limit, ws_chat(&mut ws, &mut check, &mut t)).await
            {
                Ok(r) => r,
                Err(_) => Err("chat_timeout"),
            },
        };
        if !settle(&mut t, &check, sent, ended) {
            t.chats_failed += (sc.chats - k - 1) as u64;
            break;
        }
    }
    ws.abort();
    t
}

async fn direct_client(
    mut d: Direct,
    sc: Arc<Scenario>,
    delay: Duration,
    limit: Duration,
) -> Tally {
    let mut t = Tally::default();
    tokio::time::sleep(delay).await;
    let body = format!(
        r#"{{"model":"gpt-3.5-turbo","messages":[{{"role":"user","content":"{}"}}],"stream":true}}"#,
        sc.spec().prompt()
    );
    for k in 0..sc.chats {
        let mut check = Check::new(sc.spec());
        let sent = now_ns();
        let run = d.chat(&body, |c, at| check.delta(c, at, &mut t));
        let ended = match tokio::time::timeout(limit, run).await {
            Ok(Ok(End::Done)) => Ok(true),
            Ok(Ok(End::Status(s))) => {
                t.err(&format!("http_{s}"));
                Ok(false)
            }
            Ok(Ok(End::Broken(_))) => {
                t.err("upstream_broken");
                Ok(false)
            }
            Ok(Err(_)) => Err("http_io"),
            Err(_) => Err("chat_timeout"),
        };
        if !settle(&mut t, &check, sent, ended) {
            t.chats_failed += (sc.chats - k - 1) as u64;
            break;
        }
    }
    t
}

/// Connects `n` sockets, at most 256 handshakes in flight.
async fn open_ws(addr: SocketAddr, n: usize, t: &mut Tally, read_hello: bool) -> Vec<Ws> {
    let sem = Arc::new(Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let open = async {
                let mut ws = Ws::connect(addr).await?;
                if read_hello {
                    match ws.next_text().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(OpenError::Status(0)),
                        Err(e) => return Err(OpenError::Io(e)),
                    }
                }
                Ok(ws)
            };
            tokio::time::timeout(Duration::from_secs(20), open).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for h in handles {
        match h.await {
            Ok(Ok(Ok(ws))) => out.push(ws),
            Ok(Ok(Err(OpenError::Status(s)))) => t.err(&format!("open_http_{s}")),
            Ok(Ok(Err(OpenError::Io(_)))) => t.err("open_io"),
            Ok(Err(_)) => t.err("open_timeout"),
            Err(_) => t.err("open_panic"),
        }
    }
    out
}

/// What one fleet run measured inside the client thread.
#[derive(Default)]
struct FleetRun {
    tally: Tally,
    wall_ns: u64,
    sockets_open: u64,
    /// (d) gateway VmRSS before and with the sockets open, KiB
    idle_rss: Option<(u64, u64)>,
}

async fn run_fleet(
    mode: Mode,
    addr: SocketAddr,
    sc: Arc<Scenario>,
    gw_pid: Option<String>,
) -> FleetRun {
    let mut run = FleetRun::default();
    let limit = sc.round_limit();
    let ramp = Duration::from_millis(sc.ramp_ms);
    let delay = |i: usize| ramp.mul_f64(i as f64 / sc.sockets.max(1) as f64);
    if sc.idle {
        let pid = gw_pid.unwrap_or_default();
        let before = sys::proc_mem_kib(&pid).map(|m| m.0).unwrap_or(0);
        let t0 = now_ns();
        let open = open_ws(addr, sc.sockets, &mut run.tally, true).await;
        run.wall_ns = now_ns() - t0;
        run.sockets_open = open.len() as u64;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = sys::proc_mem_kib(&pid).map(|m| m.0).unwrap_or(0);
        run.idle_rss = Some((before, with));
        for ws in open {
            ws.abort();
        }
        return run;
    }
    let mut handles = Vec::with_capacity(sc.sockets);
    match mode {
        Mode::Gateway | Mode::Redis => {
            let open = open_ws(addr, sc.sockets, &mut run.tally, true).await;
            run.sockets_open = open.len() as u64;
            run.wall_ns = now_ns();
            for (i, ws) in open.into_iter().enumerate() {
                handles.push(tokio::spawn(ws_client(ws, sc.clone(), delay(i), limit)));
            }
        }
        Mode::Direct => {
            let mut conns = Vec::with_capacity(sc.sockets);
            for _ in 0..sc.sockets {
                match Direct::connect(addr).await {
                    Ok(d) => conns.push(d),
                    Err(_) => run.tally.err("open_io"),
                }
            }
            run.sockets_open = conns.len() as u64;
            run.wall_ns = now_ns();
            for (i, d) in conns.into_iter().enumerate() {
                handles.push(tokio::spawn(direct_client(d, sc.clone(), delay(i), limit)));
            }
        }
    }
    let lost = (sc.sockets - handles.len()) * sc.chats;
    run.tally.chats_failed += lost as u64;
    for h in handles {
        match h.await {
            Ok(t) => run.tally.merge(t),
            Err(_) => run.tally.err("client_panic"),
        }
    }
    run.wall_ns = now_ns() - run.wall_ns;
    run
}

/// Percentiles in µs.
#[derive(Clone, Debug, Default, Serialize)]
struct Pct {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Pct {
    fn of(v: &mut [u64]) -> Option<Pct> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1000.0
        };
        Some(Pct {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1] as f64 / 1000.0,
        })
    }
}

/// One fleet run's figures.
#[derive(Clone, Debug, Default, Serialize)]
struct Round {
    mode: Option<Mode>,
    round: usize,
    wall_s: f64,
    sockets_open: u64,
    deltas: u64,
    deltas_per_s: f64,
    chats_ok: u64,
    chats_failed: u64,
    chats_per_s: f64,
    integrity_bad: u64,
    errors: BTreeMap<String, u64>,
    latency_us: Option<Pct>,
    ttfd_us: Option<Pct>,
    gateway_cpu_s: Option<f64>,
    gateway_cpu_us_per_delta: Option<f64>,
    gateway_rss_start_kib: Option<u64>,
    gateway_rss_end_kib: Option<u64>,
    gateway_peak_rss_kib: Option<u64>,
    idle_rss_kib_per_socket: Option<f64>,
    bench_cpu_s: f64,
    machine_busy: Option<f64>,
    /// (redis) commands the server ran during the round
    redis_commands: Option<u64>,
    redis_commands_per_delta: Option<f64>,
    /// (redis) mean MEMORY USAGE of a chat's log after the round
    redis_log_bytes_per_chat: Option<f64>,
    /// (redis) used_memory grown during the round, per chat
    redis_used_bytes_per_chat: Option<f64>,
}

impl Round {
    fn ok(&self) -> bool {
        self.chats_failed == 0 && self.integrity_bad == 0 && self.errors.is_empty()
    }
}

struct Ctx {
    upstream: FakeUpstream,
    gateway_bin: PathBuf,
    wrap: Vec<String>,
    extra: Vec<String>,
    deadline: Instant,
    /// The store of the `redis` rounds (`--resume-store-compare`).
    redis: Option<RedisProc>,
}

fn run_round(ctx: &Ctx, mode: Mode, sc: &Arc<Scenario>, round: usize) -> Result<Round, String> {
    let redis = match (mode, &ctx.redis) {
        (Mode::Redis, Some(r)) => {
            r.reset()?;
            Some(r)
        }
        (Mode::Redis, None) => return Err("a redis round without a redis-server".into()),
        _ => None,
    };
    let used0 = redis.and_then(|r| r.used_memory());
    let gw = match mode {
        Mode::Direct => None,
        Mode::Gateway | Mode::Redis => {
            let mut extra = ctx.extra.clone();
            if let Some(r) = redis {
                extra.extend(["--resume-store".to_string(), r.url()]);
            }
            let g = GatewayProc::start(
                &ctx.gateway_bin,
                &ctx.wrap,
                &ctx.upstream.url(),
                &extra,
                Duration::from_secs(if ctx.wrap.is_empty() { 15 } else { 120 }),
            )?;
            std::thread::sleep(Duration::from_millis(300));
            Some(g)
        }
    };
    let addr = gw.as_ref().map_or(ctx.upstream.addr, |g| g.addr);
    let rss_start = gw.as_ref().map(|g| g.mem_kib().0);
    let cpu0 = gw.as_ref().map(|g| g.cpu_ns());
    let self_pid = std::process::id().to_string();
    let self0 = sys::proc_cpu_ns(&self_pid).unwrap_or(0);
    let mach0 = sys::machine_jiffies();
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let limit = sc.round_limit().min(left);
    let sc2 = sc.clone();
    let pid = gw.as_ref().map(|g| g.pid.clone());
    let fleet = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                tokio::time::timeout(limit, run_fleet(mode, addr, sc2, pid))
                    .await
                    .map_err(|_| format!("round exceeded its time limit of {limit:?}"))
            })
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "fleet thread panicked".to_string())?;
    let mach1 = sys::machine_jiffies();
    let self1 = sys::proc_cpu_ns(&self_pid).unwrap_or(0);
    let cpu1 = gw.as_ref().map(|g| g.cpu_ns());
    let (rss_end, hwm) = gw.as_ref().map(|g| g.mem_kib()).unzip();
    // The store as the round left it (chats ended, their logs kept for the
    // resume window), before the gateway stops.
    let redis_commands = redis.and_then(|r| r.commands());
    let redis_logs = redis.and_then(|r| r.log_memory(200));
    let used1 = redis.and_then(|r| r.used_memory());
    if let Some(g) = &gw {
        if fleet.is_err() {
            for line in g.log_tail() {
                eprintln!("  gateway: {line}");
            }
        }
    }
    if let Some(g) = gw {
        g.stop();
    }
    let mut run = match fleet {
        Ok(run) => run,
        Err(e) => {
            let mut run = FleetRun::default();
            run.tally.err("round_timeout");
            run.tally.chats_failed = (sc.sockets * sc.chats) as u64;
            eprintln!("  {e}");
            run
        }
    };
    let t = &mut run.tally;
    let wall_s = run.wall_ns as f64 / 1e9;
    let per_s = |x: u64| if wall_s > 0.0 { x as f64 / wall_s } else { 0.0 };
    let gw_cpu_s = cpu0.zip(cpu1).map(|(a, b)| (b - a) as f64 / 1e9);
    Ok(Round {
        mode: Some(mode),
        round,
        wall_s,
        sockets_open: run.sockets_open,
        deltas: t.deltas,
        deltas_per_s: per_s(t.deltas),
        chats_ok: t.chats_ok,
        chats_failed: t.chats_failed,
        chats_per_s: per_s(t.chats_ok),
        integrity_bad: t.integrity_bad,
        errors: std::mem::take(&mut t.errors),
        latency_us: Pct::of(&mut t.lat_ns),
        ttfd_us: Pct::of(&mut t.ttfd_ns),
        gateway_cpu_s: gw_cpu_s,
        gateway_cpu_us_per_delta: gw_cpu_s
            .filter(|_| t.deltas > 0)
            .map(|c| c * 1e6 / t.deltas as f64),
        gateway_rss_start_kib: rss_start,
        gateway_rss_end_kib: run.idle_rss.map(|r| r.1).or(rss_end),
        gateway_peak_rss_kib: hwm,
        idle_rss_kib_per_socket: run
            .idle_rss
            .filter(|_| run.sockets_open > 0)
            .map(|(b, w)| (w as f64 - b as f64) / run.sockets_open as f64),
        bench_cpu_s: (self1 - self0) as f64 / 1e9,
        machine_busy: sys::busy_share(mach0, mach1),
        redis_commands,
        redis_commands_per_delta: redis_commands
            .filter(|_| t.deltas > 0)
            .map(|c| c as f64 / t.deltas as f64),
        redis_log_bytes_per_chat: redis_logs.map(|(mean, _)| mean),
        redis_used_bytes_per_chat: used0
            .zip(used1)
            .filter(|_| t.chats_ok > 0)
            .map(|(a, b)| (b as f64 - a as f64) / t.chats_ok as f64),
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The medians over rounds of one mode.
fn med(rounds: &[Round], mode: Mode, f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter(|r| r.mode == Some(mode))
            .filter_map(&f)
            .collect(),
    )
}

/// A target's text and its test on (gateway vs direct, gateway).
type Target<'a> = Option<(&'a str, &'a dyn Fn(f64, f64) -> bool)>;

/// One row of a scenario's table.
#[derive(Debug, Serialize)]
struct Row {
    metric: String,
    direct: Option<f64>,
    gateway: Option<f64>,
    /// gateway/direct for rates, gateway − direct for times
    compare: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
}

/// One row of the memory vs redis table (`--resume-store-compare`).
#[derive(Debug, Serialize)]
struct StoreRow {
    metric: String,
    memory: Option<f64>,
    redis: Option<f64>,
    /// redis/memory for rates, redis − memory for times
    compare: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Summary {
    scenario: Scenario,
    rounds: Vec<Round>,
    rows: Vec<Row>,
    /// The gateway with the Redis store against the memory one.
    store_rows: Vec<StoreRow>,
    integrity_ok: bool,
}

/// The memory vs redis rows of a scenario's rounds (none without redis
/// rounds).
fn store_rows(sc: &Scenario, rounds: &[Round], smoke: bool) -> Vec<StoreRow> {
    use Mode::*;
    let mut rows = Vec::new();
    if !rounds.iter().any(|r| r.mode == Some(Redis)) || sc.idle {
        return rows;
    }
    let mut row =
        |metric: &str, f: &dyn Fn(&Round) -> Option<f64>, ratio: bool, target: Target<'_>| {
            let m = med(rounds, Gateway, f);
            let r = med(rounds, Redis, f);
            let compare = match (m, r) {
                (Some(m), Some(r)) if ratio && m > 0.0 => Some(r / m),
                (Some(m), Some(r)) if !ratio => Some(r - m),
                _ => None,
            };
            let met = match (target, compare, r) {
                (Some(_), _, _) if smoke => None,
                (Some((_, ok)), c, Some(r)) => Some(ok(c.unwrap_or(f64::NAN), r)),
                _ => None,
            };
            rows.push(StoreRow {
                metric: metric.to_string(),
                memory: m,
                redis: r,
                compare,
                target: target.map(|t| t.0.to_string()),
                met,
            });
        };
    let lat = |f: fn(&Pct) -> f64| move |r: &Round| r.latency_us.as_ref().map(f);
    row(
        "deltas/s delivered",
        &|r| Some(r.deltas_per_s),
        true,
        Some(("≥ 0.9 × memory", &|c, _| c >= 0.9)),
    );
    row("delta latency p50, µs", &lat(|p| p.p50), false, None);
    row(
        "delta latency p99, µs",
        &lat(|p| p.p99),
        false,
        Some(("≤ +1000 µs", &|c, _| c <= 1000.0)),
    );
    row(
        "time to first delta p99, µs",
        &|r| r.ttfd_us.as_ref().map(|p| p.p99),
        false,
        None,
    );
    row(
        "gateway CPU per delta, µs",
        &|r| r.gateway_cpu_us_per_delta,
        false,
        None,
    );
    row(
        "gateway peak RSS, MiB",
        &|r| r.gateway_peak_rss_kib.map(|k| k as f64 / 1024.0),
        false,
        None,
    );
    row(
        "Redis commands per delta",
        &|r| r.redis_commands_per_delta,
        false,
        None,
    );
    row(
        "Redis memory per chat log, bytes (MEMORY USAGE)",
        &|r| r.redis_log_bytes_per_chat,
        false,
        None,
    );
    row(
        "Redis used_memory per chat, bytes",
        &|r| r.redis_used_bytes_per_chat,
        false,
        None,
    );
    row("machine CPU busy share", &|r| r.machine_busy, false, None);
    rows
}

fn summarize(sc: &Scenario, rounds: Vec<Round>, smoke: bool) -> Summary {
    use Mode::*;
    let mut rows = Vec::new();
    let mut row =
        |metric: &str, f: &dyn Fn(&Round) -> Option<f64>, ratio: bool, target: Target<'_>| {
            let d = med(&rounds, Direct, f);
            let g = med(&rounds, Gateway, f);
            let compare = match (d, g) {
                (Some(d), Some(g)) if ratio && d > 0.0 => Some(g / d),
                (Some(d), Some(g)) if !ratio => Some(g - d),
                _ => None,
            };
            let met = match (target, compare, g) {
                (Some(_), _, _) if smoke => None,
                (Some((_, ok)), c, Some(g)) => Some(ok(c.unwrap_or(f64::NAN), g)),
                _ => None,
            };
            rows.push(Row {
                metric: metric.to_string(),
                direct: d,
                gateway: g,
                compare,
                target: target.map(|t| t.0.to_string()),
                met,
            });
        };
    let lat = |f: fn(&Pct) -> f64| move |r: &Round| r.latency_us.as_ref().map(f);
    let ttfd = |f: fn(&Pct) -> f64| move |r: &Round| r.ttfd_us.as_ref().map(f);
    if sc.idle {
        row(
            "gateway RSS idle, MiB",
            &|r| r.gateway_rss_start_kib.map(|k| k as f64 / 1024.0),
            false,
            Some(("≤ 20 MB (19.07 MiB)", &|_, g| g * 1048576.0 <= 20e6)),
        );
        row(
            "gateway RSS with the sockets open, MiB",
            &|r| r.gateway_rss_end_kib.map(|k| k as f64 / 1024.0),
            false,
            None,
        );
        row(
            "RSS per idle socket, KiB",
            &|r| r.idle_rss_kib_per_socket,
            false,
            Some(("≤ 12 KiB", &|_, g| g <= 12.0)),
        );
        row(
            "sockets open",
            &|r| Some(r.sockets_open as f64),
            false,
            None,
        );
        row(
            "sockets opened per s",
            &|r| Some(r.sockets_open as f64 / r.wall_s.max(1e-9)),
            false,
            None,
        );
        row(
            "gateway CPU per socket opened, µs",
            &|r| {
                r.gateway_cpu_s
                    .map(|c| c * 1e6 / r.sockets_open.max(1) as f64)
            },
            false,
            None,
        );
    } else {
        let ratio_target: Target<'_> = match sc.key {
            'a' => Some(("≥ 0.7 × direct", &|c, _| c >= 0.7)),
            'b' => Some(("≥ 0.95 × direct", &|c, _| c >= 0.95)),
            _ => None,
        };
        row("deltas/s", &|r| Some(r.deltas_per_s), true, ratio_target);
        row("chats/s", &|r| Some(r.chats_per_s), true, None);
        let p50_target: Target<'_> = match sc.key {
            'c' => Some(("added ≤ 100 µs", &|c, _| c <= 100.0)),
            _ => None,
        };
        let p99_target: Target<'_> = match sc.key {
            'c' => Some(("added ≤ 1000 µs", &|c, _| c <= 1000.0)),
            _ => None,
        };
        row("delta latency p50, µs", &lat(|p| p.p50), false, p50_target);
        row("delta latency p90, µs", &lat(|p| p.p90), false, None);
        row("delta latency p99, µs", &lat(|p| p.p99), false, p99_target);
        row("delta latency p99.9, µs", &lat(|p| p.p999), false, None);
        row("delta latency max, µs", &lat(|p| p.max), false, None);
        row("time to first delta p50, µs", &ttfd(|p| p.p50), false, None);
        let ttfd_target: Target<'_> = match sc.key {
            'e' => Some(("added ≤ 1000 µs", &|c, _| c <= 1000.0)),
            _ => None,
        };
        row(
            "time to first delta p99, µs",
            &ttfd(|p| p.p99),
            false,
            ttfd_target,
        );
        let cpu_target: Target<'_> = match sc.key {
            'a' => Some(("≤ 3 µs", &|_, g| g <= 3.0)),
            _ => None,
        };
        row(
            "gateway CPU per delta, µs",
            &|r| r.gateway_cpu_us_per_delta,
            false,
            cpu_target,
        );
        row("gateway CPU, s", &|r| r.gateway_cpu_s, false, None);
        row(
            "gateway peak RSS, MiB",
            &|r| r.gateway_peak_rss_kib.map(|k| k as f64 / 1024.0),
            false,
            None,
        );
        row(
            "bench process CPU, s",
            &|r| Some(r.bench_cpu_s),
            false,
            None,
        );
    }
    row("machine CPU busy share", &|r| r.machine_busy, false, None);
    let integrity_ok = rounds.iter().all(Round::ok);
    if sc.key == 'b' && !smoke {
        rows.push(Row {
            metric: "every chat complete and exact".into(),
            direct: None,
            gateway: None,
            compare: None,
            target: Some("all rounds".into()),
            met: Some(integrity_ok),
        });
    }
    Summary {
        scenario: sc.clone(),
        store_rows: store_rows(sc, &rounds, smoke),
        rounds,
        rows,
        integrity_ok,
    }
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

fn render(s: &Summary, out: &mut String) {
    use std::fmt::Write;
    let n = s
        .rounds
        .iter()
        .filter(|r| r.mode == Some(Mode::Gateway))
        .count();
    let _ = writeln!(out, "\n### {}\n", s.scenario.describe());
    let _ = writeln!(out, "medians of {n} interleaved round(s)\n");
    let _ = writeln!(
        out,
        "| metric | direct | gateway | gateway vs direct | target | met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    for r in &s.rows {
        let cmp = match r.compare {
            None => "–".to_string(),
            Some(c) if r.metric.contains("/s") => format!("× {c:.3}"),
            Some(c) => format!("{c:+.1}"),
        };
        let met = match r.met {
            None => "",
            Some(true) => "yes",
            Some(false) => "**no**",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.metric,
            fmt_num(r.direct),
            fmt_num(r.gateway),
            cmp,
            r.target.as_deref().unwrap_or(""),
            met
        );
    }
    if !s.store_rows.is_empty() {
        let _ = writeln!(
            out,
            "\nthe gateway with --resume-store redis://… vs the memory store, same rounds:\n"
        );
        let _ = writeln!(
            out,
            "| metric | memory | redis | redis vs memory | target | met |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        for r in &s.store_rows {
            let cmp = match r.compare {
                None => "–".to_string(),
                Some(c) if r.metric.contains("/s") => format!("× {c:.3}"),
                Some(c) => format!("{c:+.1}"),
            };
            let met = match r.met {
                None => "",
                Some(true) => "yes",
                Some(false) => "**no**",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.metric,
                fmt_num(r.memory),
                fmt_num(r.redis),
                cmp,
                r.target.as_deref().unwrap_or(""),
                met
            );
        }
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut failed, mut bad) = (0, 0, 0);
    for r in &s.rounds {
        ok += r.chats_ok;
        failed += r.chats_failed;
        bad += r.integrity_bad;
        for (k, v) in &r.errors {
            *errors
                .entry(format!(
                    "{}:{k}",
                    match r.mode {
                        Some(Mode::Direct) => "direct",
                        Some(Mode::Redis) => "redis",
                        _ => "gateway",
                    }
                ))
                .or_default() += v;
        }
    }
    let _ = writeln!(
        out,
        "\nall rounds: {ok} chats ok, {failed} failed, {bad} with bad integrity; errors: {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            format!("{errors:?}")
        }
    );
}

fn round_line(sc: &Scenario, r: &Round) -> String {
    let lat = r
        .latency_us
        .as_ref()
        .map(|p| format!("lat p50 {:.0} p99 {:.0} max {:.0} µs", p.p50, p.p99, p.max))
        .unwrap_or_default();
    let ttfd = r
        .ttfd_us
        .as_ref()
        .map(|p| format!("ttfd p50 {:.0} p99 {:.0} µs", p.p50, p.p99))
        .unwrap_or_default();
    format!(
        "[{}] round {} {:?}: {:.2} s, {} deltas ({:.0}/s), {} ok / {} failed, {lat}, {ttfd}, gw cpu {}, gw rss {}→{} KiB (peak {}), busy {}, errors {:?}",
        sc.key,
        r.round,
        r.mode.unwrap_or(Mode::Direct),
        r.wall_s,
        r.deltas,
        r.deltas_per_s,
        r.chats_ok,
        r.chats_failed,
        r.gateway_cpu_s.map(|c| format!("{c:.2} s")).unwrap_or("–".into()),
        r.gateway_rss_start_kib.map(|k| k.to_string()).unwrap_or("–".into()),
        r.gateway_rss_end_kib.map(|k| k.to_string()).unwrap_or("–".into()),
        r.gateway_peak_rss_kib.map(|k| k.to_string()).unwrap_or("–".into()),
        r.machine_busy.map(|b| format!("{:.0}%", b * 100.0)).unwrap_or("–".into()),
        r.errors
    )
}

fn main() -> ExitCode {
    sys::init_clock();
    let args = Args::parse();
    let started = Instant::now();
    let limit =
        Duration::from_secs(
            args.duration_limit
                .unwrap_or(if args.smoke { 120 } else { 1800 }),
        );
    let deadline = started + limit;
    // Watchdog: whatever happens, the run ends shortly after its limit.
    std::thread::spawn(move || {
        std::thread::sleep(limit + Duration::from_secs(30));
        eprintln!("netfly-bench: duration limit {limit:?} exceeded, aborting");
        let pid = gateway::RUNNING.load(std::sync::atomic::Ordering::SeqCst);
        if pid != 0 {
            sys::signal(pid, 9);
        }
        std::process::exit(3);
    });
    let nofile = sys::raise_nofile(65_536);
    let rounds = args.rounds.unwrap_or(if args.smoke { 1 } else { 3 }).max(1);
    let mut modes: Vec<Mode> = match args.modes.as_str() {
        "both" => vec![Mode::Direct, Mode::Gateway],
        "direct" => vec![Mode::Direct],
        "gateway" => vec![Mode::Gateway],
        other => {
            eprintln!("netfly-bench: --modes must be both, direct or gateway, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let redis = if args.resume_store_compare {
        if !modes.contains(&Mode::Gateway) {
            modes.push(Mode::Gateway);
        }
        modes.push(Mode::Redis);
        match RedisProc::start() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("netfly-bench: --resume-store-compare: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let wanted: Vec<char> = if args.scenario == "all" {
        vec!['a', 'b', 'c', 'd', 'e']
    } else {
        args.scenario
            .split(',')
            .filter_map(|s| s.trim().chars().next())
            .collect()
    };
    let mut scenarios: Vec<Scenario> = presets(args.smoke)
        .into_iter()
        .filter(|s| wanted.contains(&s.key))
        .collect();
    if scenarios.is_empty() {
        eprintln!(
            "netfly-bench: no scenario among {:?} (a, b, c, d, e, all)",
            args.scenario
        );
        return ExitCode::from(2);
    }
    for s in &mut scenarios {
        if let Some(v) = args.sockets {
            s.sockets = v;
        }
        if !s.idle {
            s.chats = args.chats.unwrap_or(s.chats);
            s.n = args.chunks.unwrap_or(s.n);
            s.b = args.bytes.unwrap_or(s.b);
            if let Some(p) = args.pace_ms {
                s.pace_ms = p;
                s.ramp_ms = p;
            }
        }
        // Client sockets, plus the upstream's side of each stream (direct, or
        // from the gateway); the gateway holds its own in its own process.
        let need = s.sockets as u64 * if s.idle { 1 } else { 2 } + 64;
        if need > nofile {
            eprintln!("netfly-bench: warning: ({}) needs about {need} open files, limit is {nofile} (raise `ulimit -n`)", s.key);
        }
    }
    let gateway_bin = args.gateway_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("netfly")))
            .unwrap_or_else(|| PathBuf::from("target/release/netfly"))
    });
    let upstream = match FakeUpstream::start() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("netfly-bench: cannot start the fake upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx {
        upstream,
        gateway_bin,
        wrap: args
            .gateway_wrap
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect(),
        extra: args.gateway_arg.clone(),
        deadline,
        redis,
    };
    eprintln!(
        "netfly-bench: gateway {}, fake upstream {}, {} round(s), open-file limit {nofile}",
        ctx.gateway_bin.display(),
        ctx.upstream.url(),
        rounds
    );
    let mut summaries = Vec::new();
    let mut setup_failed = false;
    'scenarios: for sc in scenarios {
        let sc = Arc::new(sc);
        eprintln!("{}", sc.describe());
        let mut results = Vec::new();
        for round in 1..=rounds {
            for &mode in &modes {
                if sc.idle && mode != Mode::Gateway {
                    continue; // nothing to compare an idle gateway with
                }
                if Instant::now() >= deadline {
                    eprintln!("netfly-bench: duration limit reached, stopping");
                    setup_failed = true;
                    break 'scenarios;
                }
                match run_round(&ctx, mode, &sc, round) {
                    Ok(r) => {
                        eprintln!("  {}", round_line(&sc, &r));
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("netfly-bench: {e}");
                        setup_failed = true;
                        break 'scenarios;
                    }
                }
            }
        }
        summaries.push(summarize(&sc, results, args.smoke));
    }
    let mut table = String::new();
    table.push_str(&format!(
        "netfly-bench{}: {} CPU(s), {}; total {:.0} s\n",
        if args.smoke { " (smoke)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        started.elapsed().as_secs_f64()
    ));
    for s in &summaries {
        render(s, &mut table);
    }
    if args.json {
        eprint!("{table}");
        match serde_json::to_string_pretty(&summaries) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("netfly-bench: {e}"),
        }
    } else {
        print!("{table}");
    }
    if setup_failed {
        return ExitCode::from(2);
    }
    if summaries.iter().all(|s| s.integrity_ok) {
        ExitCode::SUCCESS
    } else {
        eprintln!("netfly-bench: some chats failed or were not exact (see errors above)");
        ExitCode::FAILURE
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    //! The integrity check and the statistics the report rests on.

    use super::*;

    const SPEC: StreamSpec = StreamSpec {
        n: 4,
        b: 24,
        pace_ms: 0,
    };

    /// The content the fake upstream sends for delta `seq` at `ns`.
    fn sent(seq: u64, ns: u64) -> String {
        let mut s = String::new();
        upstream::content(seq, ns, SPEC.b, &mut s);
        s
    }

    /// Feeds `contents` to a fresh check; (complete, tally).
    fn run(contents: &[String]) -> (bool, Tally) {
        let mut t = Tally::default();
        let mut c = Check::new(SPEC);
        for (i, content) in contents.iter().enumerate() {
            c.delta(content, 1_000 + i as u64, &mut t);
        }
        (c.complete(), t)
    }

    #[test]
    fn an_exact_stream_is_complete_with_latencies() {
        let all: Vec<String> = (0..4).map(|k| sent(k, 100 * k)).collect();
        let (complete, t) = run(&all);
        assert!(complete);
        assert_eq!(t.deltas, 4);
        // arrival 1000 + i, sent 100·i
        assert_eq!(t.lat_ns, vec![1000, 901, 802, 703]);
    }

    #[test]
    fn a_missing_repeated_reordered_or_altered_delta_is_caught() {
        let d: Vec<String> = (0..4).map(|k| sent(k, 7)).collect();
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("short", d[..3].to_vec()),
            ("gap", vec![d[0].clone(), d[2].clone(), d[3].clone()]),
            (
                "repeat",
                vec![
                    d[0].clone(),
                    d[1].clone(),
                    d[1].clone(),
                    d[2].clone(),
                    d[3].clone(),
                ],
            ),
            (
                "swap",
                vec![d[0].clone(), d[2].clone(), d[1].clone(), d[3].clone()],
            ),
            ("extra", [d.clone(), vec![sent(4, 7)]].concat()),
            ("padding", {
                let mut v = d.clone();
                v[2].push('x');
                v
            }),
            ("byte", {
                let mut v = d.clone();
                v[1] = v[1].replacen('x', "y", 1);
                v
            }),
            ("garbage", {
                let mut v = d.clone();
                v[0] = "not a bench delta".into();
                v
            }),
        ];
        for (name, contents) in cases {
            assert!(!run(&contents).0, "{name}: accepted");
        }
    }

    #[test]
    fn settle_counts_a_done_chat_with_bad_deltas_as_an_integrity_failure() {
        let mut t = Tally::default();
        let mut c = Check::new(SPEC);
        c.delta(&sent(0, 1), 5, &mut t);
        assert!(settle(&mut t, &c, 2, Ok(true)));
        assert_eq!((t.chats_ok, t.chats_failed, t.integrity_bad), (0, 1, 1));
        assert_eq!(t.errors.get("integrity"), Some(&1));
        assert_eq!(t.ttfd_ns, vec![3]);
    }

    #[test]
    fn percentiles_are_nearest_rank_in_microseconds() {
        // 1..=1000 µs, shuffled
        let mut v: Vec<u64> = (1..=1000u64).rev().map(|us| us * 1000).collect();
        let p = Pct::of(&mut v).expect("non-empty");
        assert_eq!(
            (p.n, p.p50, p.p90, p.p99, p.p999, p.max),
            (1000, 500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        let one = Pct::of(&mut [2500]).expect("non-empty");
        assert_eq!((one.p50, one.p999, one.max), (2.5, 2.5, 2.5));
        assert!(Pct::of(&mut []).is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
