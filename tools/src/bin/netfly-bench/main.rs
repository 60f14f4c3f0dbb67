//! `netfly-bench`: the gateway's load benchmark (loopback only, every run
//! bounded in time).
//!
//! It hosts a fake OpenAI-compatible upstream that stamps every chunk with
//! its sequence number and CLOCK_MONOTONIC send time, then runs interleaved
//! rounds of client fleets against it:
//! - direct: SSE clients reading the upstream themselves (no gateway: the
//!   physical limit of this machine);
//! - one fleet per gateway variant: WebSocket (or `/v1`) clients running the
//!   same chats through a separate `netfly` process, whose CPU time and RSS
//!   come from /proc. Variants are the gateway binaries given (e.g. this
//!   build and an older one) and, where a scenario prices the chat log,
//!   each of them again with `--resume-window-ms 0`.
//!
//! It reports medians over rounds of throughput, per-delta latency (arrival
//! − upstream send), time to first delta, errors by code, integrity, the
//! gateway's CPU per delta and RSS, memory per detached chat, resume
//! latency, and the machine's CPU busy share, with each gateway compared
//! with direct, with itself without the log, and with the other builds.
//! The scenarios are one table (scenario.rs). See docs/PERFORMANCE.md.
//!
//! With `--resume-store-compare` each round also runs every gateway that
//! keeps a log with `--resume-store redis://…` on a redis-server this tool
//! starts, and reports it against the same gateway on the memory store:
//! delivered deltas/s, added latency, Redis commands per delta and memory
//! per chat.

mod direct;
mod fleet;
mod gateway;
mod report;
mod scenario;
mod sys;
mod upstream;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;

use crate::fleet::{run_fleet, FleetRun, GatewaySide};
use crate::gateway::{GatewayProc, RedisProc};
use crate::report::{render, round_line, summarize, Pct, Round};
use crate::scenario::{
    fleets, presets, Bin, Fleet, Kind, Mode, Scenario, BENCH_MODEL, BENCH_UPSTREAM_MODEL,
    RESUME_OFF,
};
use crate::upstream::FakeUpstream;

/// Command line.
#[derive(clap::Parser, Debug)]
#[command(
    name = "netfly-bench",
    about = "Loopback load benchmark of the netfly gateway (see docs/PERFORMANCE.md)"
)]
struct Args {
    /// Scenarios to run, comma-separated (a, b, c, d, e, f, m, r), or all
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Rounds per scenario; each round runs every fleet once, interleaved [default: 3, smoke 1]
    #[arg(long)]
    rounds: Option<usize>,
    /// Hard limit for the whole run, seconds [default: 1800, smoke 120]
    #[arg(long)]
    duration_limit: Option<u64>,
    /// Tiny sizes, a few seconds in all, no targets: exits 0 unless integrity fails
    #[arg(long)]
    smoke: bool,
    /// A gateway binary under test, `[LABEL=]PATH` (repeatable: every one runs in every round, the first is the reference) [default: `netfly` next to this binary]
    #[arg(long)]
    gateway_bin: Vec<String>,
    /// Do not also run each gateway that has a chat log with `--resume-window-ms 0` (scenarios a, b, m)
    #[arg(long)]
    no_log_off: bool,
    /// Command prefix for the gateway, e.g. "valgrind --tool=callgrind" (split on spaces); CPU and RSS are then the wrapper process's
    #[arg(long)]
    gateway_wrap: Option<String>,
    /// Extra argument for every gateway (repeatable)
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Which fleets to run: both, direct or gateway
    #[arg(long, default_value = "both")]
    modes: String,
    /// Print the results as JSON on stdout (the table goes to stderr)
    #[arg(long)]
    json: bool,
    /// Also run each gateway that keeps a log with --resume-store redis://… (a redis-server started here, from the PATH) and compare it with the memory store
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

struct Ctx {
    upstream: FakeUpstream,
    bins: Vec<Bin>,
    wrap: Vec<String>,
    extra: Vec<String>,
    /// The providers file with the bench's model map (scenario f).
    model_map: PathBuf,
    deadline: Instant,
    /// The store of the `-redis` fleets (`--resume-store-compare`).
    redis: Option<RedisProc>,
}

/// The providers file for `/v1`: one upstream (the fake) whose model map
/// renames the client's model, so the gateway has to map it back.
fn model_map_toml(url: &str) -> String {
    format!(
        "models = [\"{BENCH_MODEL}\"]\n\n[[upstream]]\nname = \"bench\"\nurl = \"{url}\"\n\
         [upstream.models]\n\"{BENCH_MODEL}\" = \"{BENCH_UPSTREAM_MODEL}\"\n"
    )
}

/// `[LABEL=]PATH`; the label defaults to `gateway` for the first binary and
/// `gwN` for the others.
fn parse_bin(spec: &str, index: usize) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((label, path)) if !label.is_empty() && !label.contains('/') => {
            (label.to_string(), PathBuf::from(path))
        }
        _ => (
            if index == 0 {
                "gateway".into()
            } else {
                format!("gw{}", index + 1)
            },
            PathBuf::from(spec),
        ),
    }
}

fn run_round(ctx: &Ctx, fleet: &Fleet, sc: &Arc<Scenario>, round: usize) -> Result<Round, String> {
    let mode = fleet.mode;
    let redis = match (fleet.store, &ctx.redis) {
        (true, Some(r)) => {
            r.reset()?;
            Some(r)
        }
        (true, None) => return Err("a redis round without a redis-server".into()),
        (false, _) => None,
    };
    let used0 = redis.and_then(|r| r.used_memory());
    let gw = match mode {
        Mode::Direct => None,
        Mode::Gateway => {
            let bin = &ctx.bins[fleet.bin];
            let mut args: Vec<String> = if sc.kind.model_map() {
                vec!["--config".into(), ctx.model_map.display().to_string()]
            } else {
                vec!["--upstream".into(), ctx.upstream.url()]
            };
            args.extend(sc.gateway_args.iter().map(|a| a.to_string()));
            if fleet.resume_off {
                args.extend(RESUME_OFF.iter().map(|a| a.to_string()));
            }
            if let Some(r) = redis {
                args.extend(["--resume-store".to_string(), r.url()]);
            }
            args.extend(ctx.extra.iter().cloned());
            let g = GatewayProc::start(
                &bin.path,
                &ctx.wrap,
                &args,
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
    let side = gw.as_ref().map(|g| GatewaySide {
        pid: g.pid.clone(),
        resume_off: fleet.resume_off,
    });
    let fleet_run = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                tokio::time::timeout(limit, run_fleet(mode, addr, sc2, side))
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
        if fleet_run.is_err() {
            for line in g.log_tail() {
                eprintln!("  gateway: {line}");
            }
        }
    }
    if let Some(g) = gw {
        g.stop();
    }
    let mut run = match fleet_run {
        Ok(run) => run,
        Err(e) => {
            let mut run = FleetRun::default();
            run.tally.err("round_timeout");
            run.tally.chats_failed = (sc.sockets * sc.chats.max(1)) as u64;
            eprintln!("  {e}");
            run
        }
    };
    let t = &mut run.tally;
    let wall_s = run.wall_ns as f64 / 1e9;
    let per_s = |x: u64| if wall_s > 0.0 { x as f64 / wall_s } else { 0.0 };
    let gw_cpu_s = cpu0.zip(cpu1).map(|(a, b)| (b - a) as f64 / 1e9);
    // Per delta only where deltas are what the gateway spent its CPU on.
    let per_delta = matches!(sc.kind, Kind::Chats | Kind::V1Stream);
    let mut extra = std::mem::take(&mut run.extra);
    if let Some(c) = redis_commands.filter(|_| t.deltas > 0) {
        extra.insert(
            report::figure::REDIS_COMMANDS.into(),
            c as f64 / t.deltas as f64,
        );
    }
    if let Some((mean, _)) = redis_logs {
        extra.insert(report::figure::REDIS_LOG_BYTES.into(), mean);
    }
    if let Some((a, b)) = used0.zip(used1).filter(|_| t.chats_ok > 0) {
        extra.insert(
            report::figure::REDIS_USED_BYTES.into(),
            (b as f64 - a as f64) / t.chats_ok as f64,
        );
    }
    Ok(Round {
        fleet: fleet.label.clone(),
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
            .filter(|_| t.deltas > 0 && per_delta)
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
        extra,
    })
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
    let (direct, mut gateway) = match args.modes.as_str() {
        "both" => (true, true),
        "direct" => (true, false),
        "gateway" => (false, true),
        other => {
            eprintln!("netfly-bench: --modes must be both, direct or gateway, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let redis = if args.resume_store_compare {
        gateway = true;
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
        scenario::keys()
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
            "netfly-bench: no scenario among {:?} ({:?} or all)",
            args.scenario,
            scenario::keys()
        );
        return ExitCode::from(2);
    }
    for s in &mut scenarios {
        if let Some(v) = args.sockets {
            s.sockets = v;
        }
        if s.kind != Kind::Idle {
            s.chats = args.chats.unwrap_or(s.chats);
            s.n = args.chunks.unwrap_or(s.n);
            s.b = args.bytes.unwrap_or(s.b);
            if let Some(p) = args.pace_ms {
                s.pace_ms = p;
                if !matches!(s.kind, Kind::Detached | Kind::Resume) {
                    s.ramp_ms = p;
                }
            }
        }
        if args.no_log_off {
            s.resume_off_too = false;
        }
        // Client sockets, plus the upstream's side of each stream (direct, or
        // from the gateway); the gateway holds its own in its own process.
        let per = match s.kind {
            Kind::Idle => 1,
            Kind::Detached | Kind::Resume => 3,
            Kind::Chats | Kind::V1Stream => 2,
        };
        let need = s.sockets as u64 * per + 64;
        if need > nofile {
            eprintln!("netfly-bench: warning: ({}) needs about {need} open files, limit is {nofile} (raise `ulimit -n`)", s.key);
        }
    }
    let specs = if args.gateway_bin.is_empty() {
        vec![std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("netfly")))
            .unwrap_or_else(|| PathBuf::from("target/release/netfly"))
            .display()
            .to_string()]
    } else {
        args.gateway_bin.clone()
    };
    let mut bins: Vec<Bin> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (label, path) = parse_bin(spec, i);
        if bins.iter().any(|b| b.label == label) {
            eprintln!("netfly-bench: two gateways labelled {label:?}: name them LABEL=PATH");
            return ExitCode::from(2);
        }
        let resume = gateway::supports(&path, "--resume-window-ms");
        bins.push(Bin {
            label,
            path,
            resume,
        });
    }
    let upstream = match FakeUpstream::start() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("netfly-bench: cannot start the fake upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let model_map =
        std::env::temp_dir().join(format!("netfly-bench-{}-models.toml", std::process::id()));
    if let Err(e) = std::fs::write(&model_map, model_map_toml(&upstream.url())) {
        eprintln!("netfly-bench: cannot write {}: {e}", model_map.display());
        return ExitCode::from(2);
    }
    let ctx = Ctx {
        upstream,
        bins,
        wrap: args
            .gateway_wrap
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect(),
        extra: args.gateway_arg.clone(),
        model_map,
        deadline,
        redis,
    };
    for b in &ctx.bins {
        eprintln!(
            "netfly-bench: gateway {:?} = {}{}",
            b.label,
            b.path.display(),
            if b.resume {
                ""
            } else {
                " (no chat log: skips m and r, no -w0 variant)"
            }
        );
    }
    eprintln!(
        "netfly-bench: fake upstream {}, {} round(s), open-file limit {nofile}",
        ctx.upstream.url(),
        rounds
    );
    let (summaries, setup_failed) = run_all(&ctx, scenarios, rounds, (direct, gateway), args.smoke);
    let _ = std::fs::remove_file(&ctx.model_map);
    let mut table = String::new();
    table.push_str(&format!(
        "netfly-bench{}: {} CPU(s), {}; total {:.0} s\n",
        if args.smoke { " (smoke)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        started.elapsed().as_secs_f64()
    ));
    for b in &ctx.bins {
        table.push_str(&format!("gateway {}: {}\n", b.label, b.path.display()));
    }
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

/// Every scenario, its rounds interleaving its fleets; (summaries, whether
/// a setup error or the duration limit stopped the run).
fn run_all(
    ctx: &Ctx,
    scenarios: Vec<Scenario>,
    rounds: usize,
    (direct, gateway): (bool, bool),
    smoke: bool,
) -> (Vec<report::Summary>, bool) {
    let mut summaries = Vec::new();
    for sc in scenarios {
        let sc = Arc::new(sc);
        let fl = fleets(&sc, &ctx.bins, direct, gateway, ctx.redis.is_some());
        if fl.is_empty() {
            eprintln!("{}: no fleet to run (skipped)", sc.describe());
            continue;
        }
        eprintln!("{}", sc.describe());
        let mut results = Vec::new();
        for round in 1..=rounds {
            for fleet in &fl {
                if Instant::now() >= ctx.deadline {
                    eprintln!("netfly-bench: duration limit reached, stopping");
                    summaries.push(summarize(&sc, fl.clone(), results, smoke));
                    return (summaries, true);
                }
                match run_round(ctx, fleet, &sc, round) {
                    Ok(r) => {
                        eprintln!("  {}", round_line(&sc, &r));
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("netfly-bench: {e}");
                        summaries.push(summarize(&sc, fl.clone(), results, smoke));
                        return (summaries, true);
                    }
                }
            }
        }
        summaries.push(summarize(&sc, fl, results, smoke));
    }
    (summaries, false)
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
    use super::*;

    #[test]
    fn gateway_binaries_are_labelled_or_named_by_position() {
        assert_eq!(
            parse_bin("old=/work/x/netfly", 1),
            ("old".to_string(), PathBuf::from("/work/x/netfly"))
        );
        assert_eq!(
            parse_bin("target/release/netfly", 0),
            (
                "gateway".to_string(),
                PathBuf::from("target/release/netfly")
            )
        );
        assert_eq!(
            parse_bin("/tmp/a=b/netfly", 1),
            ("gw2".to_string(), PathBuf::from("/tmp/a=b/netfly"))
        );
    }

    #[test]
    fn the_model_map_renames_the_bench_model_upstream() {
        let toml = model_map_toml("http://127.0.0.1:9/v1/chat/completions");
        assert!(toml.contains("url = \"http://127.0.0.1:9/v1/chat/completions\""));
        assert!(toml.contains("\"bench-model\" = \"bench-upstream-model\""));
        assert!(toml.starts_with("models = [\"bench-model\"]"));
    }
}
