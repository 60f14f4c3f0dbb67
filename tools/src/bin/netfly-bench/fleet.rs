//! The client fleets, all in one thread of the bench: WebSocket chats
//! through the gateway, HTTP streams (direct to the upstream, or through the
//! gateway's `/v1`), idle sockets, and detached chats that are resumed on
//! fresh sockets. Every delta is checked: sequence in order, none missing,
//! content byte-exact.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netfly::upstream::completion::{decode_event, Decoded};
use netfly::upstream::sse::Event;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::direct::{Direct, End};
use crate::report::{figure, Pct};
use crate::scenario::{Kind, Mode, Scenario, BENCH_MODEL};
use crate::sys::{self, now_ns};
use crate::upstream::{self, StreamSpec};
use crate::ws::{find, OpenError, Ws};

/// What one fleet saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub deltas: u64,
    pub chats_ok: u64,
    pub chats_failed: u64,
    /// chats that ended normally but with a missing, extra, out-of-order or altered delta
    pub integrity_bad: u64,
    pub lat_ns: Vec<u64>,
    pub ttfd_ns: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn err(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, o: Tally) {
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
pub struct Check {
    spec: StreamSpec,
    next: u64,
    bad: bool,
    first_ns: Option<u64>,
    expected: String,
}

impl Check {
    pub fn new(spec: StreamSpec) -> Check {
        Check {
            spec,
            next: 0,
            bad: false,
            first_ns: None,
            expected: String::with_capacity(spec.b + 32),
        }
    }

    pub fn delta(&mut self, content: &str, arrival_ns: u64, t: &mut Tally) {
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

    /// Something other than a delta was wrong (a frame out of sequence).
    pub fn fail(&mut self) {
        self.bad = true;
    }

    pub fn complete(&self) -> bool {
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
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    session: Option<Cow<'a, str>>,
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

/// Counts a chat's outcome (and its time to first delta, from `sent_ns`
/// when given); false when the socket is no longer usable.
pub fn settle(
    t: &mut Tally,
    check: &Check,
    sent_ns: Option<u64>,
    ended: Result<bool, &'static str>,
) -> bool {
    if let (Some(first), Some(sent)) = (check.first_ns, sent_ns) {
        t.ttfd_ns.push(first.saturating_sub(sent));
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

fn chat_frame(id: &str, spec: StreamSpec) -> String {
    format!(
        r#"{{"type":"chat","id":"{id}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        spec.prompt()
    )
}

async fn ws_client(
    mut ws: Ws,
    sc: Arc<Scenario>,
    i: usize,
    delay: Duration,
    limit: Duration,
) -> Tally {
    let mut t = Tally::default();
    tokio::time::sleep(delay).await;
    let spec = sc.spec(i);
    for k in 0..sc.chats {
        let frame = chat_frame(&format!("c{k}"), spec);
        let mut check = Check::new(spec);
        let sent = now_ns();
        let ended = match ws.send_text(&frame).await {
            Err(_) => Err("ws_io"),
            Ok(()) => match tokio::time::timeout(limit, ws_chat(&mut ws, &mut check, &mut t)).await
            {
                Ok(r) => r,
                Err(_) => Err("chat_timeout"),
            },
        };
        if !settle(&mut t, &check, Some(sent), ended) {
            t.chats_failed += (sc.chats - k - 1) as u64;
            break;
        }
    }
    ws.abort();
    t
}

/// The parts of a `/v1` chunk the fleet checks.
#[derive(Deserialize)]
struct V1Chunk<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<V1Choice<'a>>,
}

#[derive(Deserialize)]
struct V1Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<V1Delta<'a>>,
}

#[derive(Deserialize)]
struct V1Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// A `/v1` chunk: JSON, naming the model the client asked for, its content
/// (if any) checked as a delta.
fn v1_event(ev: &Event, at: u64, check: &mut Check, t: &mut Tally) -> Result<(), String> {
    let chunk: V1Chunk =
        serde_json::from_str(&ev.data).map_err(|_| "v1_chunk_not_json".to_string())?;
    if chunk.model.as_deref() != Some(BENCH_MODEL) {
        return Err("v1_model_not_mapped_back".into());
    }
    if let Some(c) = chunk
        .choices
        .first()
        .and_then(|c| c.delta.as_ref())
        .and_then(|d| d.content.as_deref())
        .filter(|c| !c.is_empty())
    {
        check.delta(c, at, t);
    }
    Ok(())
}

/// A chunk read straight from the upstream, with the gateway's decoder.
fn upstream_event(ev: &Event, at: u64, check: &mut Check, t: &mut Tally) -> Result<(), String> {
    match decode_event(ev) {
        Ok(Decoded::Chunk {
            content: Some(c), ..
        }) => {
            check.delta(&c, at, t);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(_) => Err("upstream_broken".into()),
    }
}

/// Sequential streamed chat completions on one keep-alive connection: to
/// the upstream (direct) or to the gateway's `/v1` (`v1`: the bench model,
/// checked for being mapped back in every chunk).
async fn http_client(
    mut d: Direct,
    sc: Arc<Scenario>,
    i: usize,
    v1: bool,
    delay: Duration,
    limit: Duration,
) -> Tally {
    let mut t = Tally::default();
    tokio::time::sleep(delay).await;
    let spec = sc.spec(i);
    let model = if v1 { BENCH_MODEL } else { "gpt-3.5-turbo" };
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{}"}}],"stream":true}}"#,
        spec.prompt()
    );
    for k in 0..sc.chats {
        let mut check = Check::new(spec);
        let sent = now_ns();
        let mut events = Tally::default();
        let run = d.chat(&body, |ev, at| {
            if v1 {
                v1_event(ev, at, &mut check, &mut events)
            } else {
                upstream_event(ev, at, &mut check, &mut events)
            }
        });
        let ended = match tokio::time::timeout(limit, run).await {
            Ok(Ok(End::Done)) => Ok(true),
            Ok(Ok(End::Status(s))) => {
                t.err(&format!("http_{s}"));
                Ok(false)
            }
            Ok(Ok(End::Broken(m))) => {
                t.err(&m);
                Ok(false)
            }
            Ok(Err(_)) => Err("http_io"),
            Err(_) => Err("chat_timeout"),
        };
        t.merge(events);
        if !settle(&mut t, &check, Some(sent), ended) {
            t.chats_failed += (sc.chats - k - 1) as u64;
            break;
        }
    }
    t
}

/// Connects `n` sockets, at most 256 handshakes in flight; each with its
/// `hello` text when `read_hello`.
async fn open_ws(addr: SocketAddr, n: usize, t: &mut Tally, read_hello: bool) -> Vec<(Ws, String)> {
    let sem = Arc::new(Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let open = async {
                let mut ws = Ws::connect(addr).await?;
                let mut hello = String::new();
                if read_hello {
                    match ws.next_text().await {
                        Ok(Some((text, _))) => hello.push_str(text),
                        Ok(None) => return Err(OpenError::Status(0)),
                        Err(e) => return Err(OpenError::Io(e)),
                    }
                }
                Ok((ws, hello))
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

/// The gateway's `/metrics`, unlabelled samples and labelled ones under
/// their full `name{labels}`; None if it cannot be read within 5 s.
pub async fn scrape_metrics(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let get = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .ok()??;
    let body = &buf[find(&buf, b"\r\n\r\n")? + 4..];
    Some(parse_metrics(&String::from_utf8_lossy(body)))
}

/// Prometheus text format: `name value` or `name{labels} value` per line.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.trim().rsplit_once(' ')?;
            Some((name.trim().to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One chat whose socket vanished.
struct Detached {
    /// The `session` of its socket's `hello` (none with the log off).
    session: Option<String>,
    /// The `seq` of the last frame read before vanishing.
    after: u64,
    check: Check,
    /// Bytes of the frames read before vanishing (seq 1..=after).
    frame_bytes: u64,
}

/// Starts a chat of `spec`, reads `k` deltas and vanishes (RST, nothing
/// more read).
async fn vanish(
    mut ws: Ws,
    hello: String,
    spec: StreamSpec,
    k: u64,
    delay: Duration,
    t: &mut Tally,
) -> Result<Detached, &'static str> {
    tokio::time::sleep(delay).await;
    let session = serde_json::from_str::<Frame>(&hello)
        .ok()
        .and_then(|f| f.session.map(String::from));
    ws.send_text(&chat_frame("c0", spec))
        .await
        .map_err(|_| "ws_io")?;
    let mut d = Detached {
        session,
        after: 0,
        check: Check::new(spec),
        frame_bytes: 0,
    };
    let mut read = 0;
    while read < k {
        let (text, arrival) = match ws.next_text().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("ws_closed"),
            Err(_) => return Err("ws_io"),
        };
        let frame: Frame = serde_json::from_str(text).map_err(|_| "bad_frame")?;
        if let Some(seq) = frame.seq {
            if seq != d.after + 1 {
                d.check.fail();
            }
            d.after = seq;
            d.frame_bytes += text.len() as u64;
        }
        match frame.ty.as_ref() {
            "delta" => {
                d.check
                    .delta(frame.content.as_deref().unwrap_or(""), arrival, t);
                read += 1;
            }
            "done" => break,
            "error" => {
                t.err(frame.code.as_deref().unwrap_or("error"));
                return Err("chat_error_before_detach");
            }
            _ => {}
        }
    }
    ws.abort();
    Ok(d)
}

/// What one resume saw.
#[derive(Default)]
struct Resumed {
    /// resume sent → first replayed frame, ns
    first_ns: Option<u64>,
    /// resume sent → terminal frame, ns
    end_ns: Option<u64>,
    frame_bytes: u64,
}

/// Resumes chat `c0` of `d` after `d.after` on a fresh socket and reads the
/// replay and the live frames to the terminal one: every frame's `seq`
/// follows the last, the deltas continue the chat exactly, `done` ends it.
async fn resume(mut ws: Ws, mut d: Detached, delay: Duration, t: &mut Tally) -> Resumed {
    let mut out = Resumed {
        frame_bytes: d.frame_bytes,
        ..Resumed::default()
    };
    tokio::time::sleep(delay).await;
    let Some(session) = d.session.take() else {
        t.err("no_session_in_hello");
        t.chats_failed += 1;
        return out;
    };
    let frame = format!(
        r#"{{"type":"resume","session":"{session}","id":"c0","after":{}}}"#,
        d.after
    );
    let sent = now_ns();
    if ws.send_text(&frame).await.is_err() {
        settle(t, &d.check, None, Err("ws_io"));
        return out;
    }
    let mut next = d.after + 1;
    let ended = loop {
        let (text, arrival) = match ws.next_text().await {
            Ok(Some(m)) => m,
            Ok(None) => break Err("ws_closed"),
            Err(_) => break Err("ws_io"),
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            break Err("bad_frame");
        };
        out.first_ns.get_or_insert(arrival.saturating_sub(sent));
        let Some(seq) = frame.seq else {
            // A refusal (no seq): resume_unavailable, bad_request, busy.
            t.err(frame.code.as_deref().unwrap_or("error"));
            break Ok(false);
        };
        if seq != next {
            d.check.fail();
        }
        next = seq + 1;
        out.frame_bytes += text.len() as u64;
        match frame.ty.as_ref() {
            "delta" => d
                .check
                .delta(frame.content.as_deref().unwrap_or(""), arrival, t),
            "done" => {
                out.end_ns = Some(arrival.saturating_sub(sent));
                break Ok(true);
            }
            "error" => {
                t.err(frame.code.as_deref().unwrap_or("error"));
                break Ok(false);
            }
            _ => {}
        }
    };
    settle(t, &d.check, None, ended);
    ws.abort();
    out
}

/// What one fleet run measured inside the client thread.
#[derive(Default)]
pub struct FleetRun {
    pub tally: Tally,
    pub wall_ns: u64,
    pub sockets_open: u64,
    /// (d) gateway VmRSS before and with the sockets open, KiB
    pub idle_rss: Option<(u64, u64)>,
    /// Scenario-specific figures, by metric name.
    pub extra: BTreeMap<String, f64>,
}

/// The gateway's side of a fleet run: its address is `addr`.
pub struct GatewaySide {
    pub pid: String,
    /// Started with the chat log off.
    pub resume_off: bool,
}

pub async fn run_fleet(
    mode: Mode,
    addr: SocketAddr,
    sc: Arc<Scenario>,
    gw: Option<GatewaySide>,
) -> FleetRun {
    let mut run = FleetRun::default();
    let limit = sc.round_limit();
    let ramp = Duration::from_millis(sc.ramp_ms);
    let delay = |i: usize| ramp.mul_f64(i as f64 / sc.sockets.max(1) as f64);
    match sc.kind {
        Kind::Idle => {
            let pid = gw.map(|g| g.pid).unwrap_or_default();
            let before = sys::proc_mem_kib(&pid).map(|m| m.0).unwrap_or(0);
            let t0 = now_ns();
            let open = open_ws(addr, sc.sockets, &mut run.tally, true).await;
            run.wall_ns = now_ns() - t0;
            run.sockets_open = open.len() as u64;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let with = sys::proc_mem_kib(&pid).map(|m| m.0).unwrap_or(0);
            run.idle_rss = Some((before, with));
            for (ws, _) in open {
                ws.abort();
            }
            return run;
        }
        Kind::Detached | Kind::Resume => {
            if let Some(gw) = gw {
                detach_and_resume(&mut run, addr, &sc, &gw, limit).await;
            }
            return run;
        }
        Kind::Chats | Kind::V1Stream => {}
    }
    let mut handles = Vec::with_capacity(sc.sockets);
    match (mode, sc.kind) {
        (Mode::Gateway, Kind::Chats) => {
            let open = open_ws(addr, sc.sockets, &mut run.tally, true).await;
            run.sockets_open = open.len() as u64;
            run.wall_ns = now_ns();
            for (i, (ws, _)) in open.into_iter().enumerate() {
                handles.push(tokio::spawn(ws_client(ws, sc.clone(), i, delay(i), limit)));
            }
        }
        _ => {
            let v1 = sc.kind == Kind::V1Stream;
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
                handles.push(tokio::spawn(http_client(
                    d,
                    sc.clone(),
                    i,
                    v1,
                    delay(i),
                    limit,
                )));
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

/// Reads `/metrics` until no chat is in flight (at most `limit`).
async fn until_no_chat_in_flight(
    addr: SocketAddr,
    limit: Duration,
) -> Option<BTreeMap<String, f64>> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let m = scrape_metrics(addr).await;
        let active = m
            .as_ref()
            .and_then(|m| m.get("netfly_chats_active").copied());
        if active == Some(0.0) || tokio::time::Instant::now() >= until {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenarios m and r: every socket starts a chat, reads 1–5 deltas and
/// vanishes. (m) waits until every chat has ended and reads the gateway's
/// RSS; then, unless the log is off, every chat is resumed on a fresh
/// socket after the last frame its first socket read, and the replay is
/// checked to the terminal frame.
async fn detach_and_resume(
    run: &mut FleetRun,
    addr: SocketAddr,
    sc: &Arc<Scenario>,
    gw: &GatewaySide,
    limit: Duration,
) {
    use figure::*;
    let n = sc.sockets;
    let ramp = Duration::from_millis(sc.ramp_ms);
    let delay = |i: usize| ramp.mul_f64(i as f64 / n.max(1) as f64);
    let rss = |pid: &str| sys::proc_mem_kib(pid).map(|m| m.0).unwrap_or(0);
    let idle = rss(&gw.pid);
    run.wall_ns = now_ns();
    let open = open_ws(addr, n, &mut run.tally, true).await;
    run.sockets_open = open.len() as u64;
    run.tally.chats_failed += (n - open.len()) as u64;
    let mut handles = Vec::with_capacity(n);
    for (i, (ws, hello)) in open.into_iter().enumerate() {
        let spec = sc.spec(i);
        let k = 1 + (i as u64 % 5).min(spec.n.saturating_sub(1));
        let d = delay(i);
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let r = tokio::time::timeout(limit, vanish(ws, hello, spec, k, d, &mut t)).await;
            (t, r.unwrap_or(Err("chat_timeout")))
        }));
    }
    let mut detached = Vec::with_capacity(n);
    for h in handles {
        match h.await {
            Ok((t, r)) => {
                run.tally.merge(t);
                match r {
                    Ok(d) => detached.push(d),
                    Err(code) => {
                        run.tally.err(code);
                        run.tally.chats_failed += 1;
                    }
                }
            }
            Err(_) => run.tally.err("client_panic"),
        }
    }
    if sc.kind == Kind::Detached {
        let m = until_no_chat_in_flight(addr, limit).await;
        // Let the closed sockets' and ended tasks' memory go back first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = rss(&gw.pid);
        let m = scrape_metrics(addr).await.or(m);
        let chats = detached.len().max(1) as f64;
        run.extra.insert(RSS_IDLE.into(), idle as f64 / 1024.0);
        run.extra.insert(RSS_DETACHED.into(), with as f64 / 1024.0);
        run.extra
            .insert(RSS_PER_CHAT.into(), (with as f64 - idle as f64) / chats);
        if let Some(m) = &m {
            if let Some(v) = m.get("netfly_chats_detached") {
                run.extra.insert(DETACHED.into(), *v);
            }
            // What the log counts against --resume-max-bytes (a gateway
            // older than the gauge has none).
            if let Some(v) = m.get("netfly_resume_retained_bytes") {
                run.extra
                    .insert(RETAINED_PER_CHAT.into(), v / 1024.0 / chats);
            }
        }
    }
    if gw.resume_off {
        // Nothing to resume: the chats were cancelled when their sockets went.
        run.tally.chats_ok += detached.len() as u64;
        run.wall_ns = now_ns() - run.wall_ns;
        return;
    }
    if let Some(m) = scrape_metrics(addr).await {
        if let Some(v) = m.get("netfly_chats_active") {
            run.extra.insert(RUNNING.into(), *v);
        }
    }
    let fresh = open_ws(addr, detached.len(), &mut run.tally, true).await;
    if fresh.len() < detached.len() {
        run.tally.chats_failed += (detached.len() - fresh.len()) as u64;
    }
    let cpu0 = sys::proc_cpu_ns(&gw.pid);
    let m = fresh.len();
    let mut handles = Vec::with_capacity(m);
    for (j, ((ws, _), d)) in fresh.into_iter().zip(detached).enumerate() {
        let wait = ramp.mul_f64(j as f64 / m.max(1) as f64);
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let r = tokio::time::timeout(limit, resume(ws, d, wait, &mut t)).await;
            if r.is_err() {
                t.err("resume_timeout");
                t.chats_failed += 1;
            }
            (t, r.unwrap_or_default())
        }));
    }
    let (mut first, mut end, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for h in handles {
        match h.await {
            Ok((t, r)) => {
                run.tally.merge(t);
                first.extend(r.first_ns);
                end.extend(r.end_ns);
                bytes.push(r.frame_bytes);
            }
            Err(_) => run.tally.err("client_panic"),
        }
    }
    let cpu1 = sys::proc_cpu_ns(&gw.pid);
    run.wall_ns = now_ns() - run.wall_ns;
    if let Some(p) = Pct::of(&mut first) {
        run.extra.insert(FIRST_P50.into(), p.p50);
        run.extra.insert(FIRST_P99.into(), p.p99);
        run.extra.insert(FIRST_MAX.into(), p.max);
    }
    if let Some(p) = Pct::of(&mut end) {
        run.extra.insert(END_P50.into(), p.p50);
        run.extra.insert(END_P99.into(), p.p99);
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        run.extra.insert(
            CPU_PER_RESUME.into(),
            (b - a) as f64 / 1e3 / m.max(1) as f64,
        );
    }
    if !bytes.is_empty() {
        let mean = bytes.iter().sum::<u64>() as f64 / bytes.len() as f64;
        run.extra.insert(FRAME_BYTES.into(), mean / 1024.0);
    }
    run.extra
        .insert(RESUMED_EXACT.into(), run.tally.chats_ok as f64);
}

#[cfg(test)]
mod tests {
    //! The integrity check the report rests on.

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
    fn a_frame_out_of_sequence_fails_an_exact_stream() {
        let mut t = Tally::default();
        let mut c = Check::new(SPEC);
        for k in 0..4 {
            c.delta(&sent(k, 1), 2, &mut t);
        }
        assert!(c.complete());
        c.fail();
        assert!(!c.complete());
    }

    #[test]
    fn settle_counts_a_done_chat_with_bad_deltas_as_an_integrity_failure() {
        let mut t = Tally::default();
        let mut c = Check::new(SPEC);
        c.delta(&sent(0, 1), 5, &mut t);
        assert!(settle(&mut t, &c, Some(2), Ok(true)));
        assert_eq!((t.chats_ok, t.chats_failed, t.integrity_bad), (0, 1, 1));
        assert_eq!(t.errors.get("integrity"), Some(&1));
        assert_eq!(t.ttfd_ns, vec![3]);
        // a resumed chat's first delta came long before: no time to first delta
        assert!(settle(&mut t, &c, None, Ok(false)));
        assert_eq!(t.ttfd_ns, vec![3]);
    }

    fn event(data: &str) -> Event {
        Event {
            event: String::new(),
            data: data.into(),
            error: None,
        }
    }

    #[test]
    fn a_v1_chunk_must_name_the_clients_model_and_carry_exact_content() {
        let spec = StreamSpec {
            n: 1,
            b: 24,
            pace_ms: 0,
        };
        let chunk = |model: &str, content: &str| {
            format!(
                r#"{{"id":"x","object":"chat.completion.chunk","model":"{model}","choices":[{{"index":0,"delta":{{"content":"{content}"}}}}]}}"#
            )
        };
        let mut t = Tally::default();
        let mut c = Check::new(spec);
        let role = r#"{"model":"bench-model","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(v1_event(&event(role), 1, &mut c, &mut t), Ok(()));
        assert_eq!(t.deltas, 0, "an empty content is not a delta");
        let good = chunk(BENCH_MODEL, &sent(0, 1));
        assert_eq!(v1_event(&event(&good), 2, &mut c, &mut t), Ok(()));
        assert!(c.complete());
        let upstream_name = chunk("bench-upstream-model", &sent(0, 1));
        assert_eq!(
            v1_event(&event(&upstream_name), 3, &mut c, &mut t),
            Err("v1_model_not_mapped_back".into())
        );
        assert!(v1_event(&event("{"), 4, &mut c, &mut t).is_err());
    }

    #[test]
    fn metrics_text_is_read_by_name_and_labels() {
        let text = "# HELP netfly_chats_active Chats in flight\n\
                    # TYPE netfly_chats_active gauge\n\
                    netfly_chats_active 3\n\
                    netfly_resumes_total{result=\"ok\"} 12\n\
                    netfly_upstream_first_byte_seconds_sum 0.5\n\
                    garbage\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("netfly_chats_active"), Some(&3.0));
        assert_eq!(m.get("netfly_resumes_total{result=\"ok\"}"), Some(&12.0));
        assert_eq!(m.get("netfly_upstream_first_byte_seconds_sum"), Some(&0.5));
        assert_eq!(m.len(), 3);
    }
}
