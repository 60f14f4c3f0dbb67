//! Rounds, their medians, the comparisons between fleets and the tables.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::{comparisons, Cmp, Fleet, Kind, Mode, On, Scenario, TARGETS};

/// Percentiles in µs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pct {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Pct {
    /// Nearest-rank percentiles of nanosecond samples.
    pub fn of(v: &mut [u64]) -> Option<Pct> {
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
pub struct Round {
    pub fleet: String,
    pub mode: Option<Mode>,
    pub round: usize,
    pub wall_s: f64,
    pub sockets_open: u64,
    pub deltas: u64,
    pub deltas_per_s: f64,
    pub chats_ok: u64,
    pub chats_failed: u64,
    pub chats_per_s: f64,
    pub integrity_bad: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Option<Pct>,
    pub ttfd_us: Option<Pct>,
    pub gateway_cpu_s: Option<f64>,
    pub gateway_cpu_us_per_delta: Option<f64>,
    pub gateway_rss_start_kib: Option<u64>,
    pub gateway_rss_end_kib: Option<u64>,
    pub gateway_peak_rss_kib: Option<u64>,
    pub idle_rss_kib_per_socket: Option<f64>,
    pub bench_cpu_s: f64,
    pub machine_busy: Option<f64>,
    /// Scenario-specific figures by metric name (the detached-chat scenarios).
    pub extra: BTreeMap<String, f64>,
}

impl Round {
    pub fn ok(&self) -> bool {
        self.chats_failed == 0 && self.integrity_bad == 0 && self.errors.is_empty()
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
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

/// One row of a scenario's table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub metric: String,
    /// Medians over rounds, one per fleet.
    pub values: Vec<Option<f64>>,
    /// Comparisons are ratios (else differences).
    pub ratio: bool,
    /// One per comparison column.
    pub compares: Vec<Option<f64>>,
    /// Each target's text and whether it is met (None: not judged).
    pub targets: Vec<(String, Option<bool>)>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub fleets: Vec<Fleet>,
    pub comparisons: Vec<Cmp>,
    pub rounds: Vec<Round>,
    pub rows: Vec<Row>,
    pub integrity_ok: bool,
}

/// A row's name, how to read it from a round, ratio (else difference).
type Metric = (&'static str, fn(&Round) -> Option<f64>, bool);

fn extra(r: &Round, name: &str) -> Option<f64> {
    r.extra.get(name).copied()
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

#[rustfmt::skip]
const CHAT_ROWS: &[Metric] = &[
    ("deltas/s",                    |r| Some(r.deltas_per_s), true),
    ("chats/s",                     |r| Some(r.chats_per_s), true),
    ("delta latency p50, µs",       |r| r.latency_us.as_ref().map(|p| p.p50), false),
    ("delta latency p90, µs",       |r| r.latency_us.as_ref().map(|p| p.p90), false),
    ("delta latency p99, µs",       |r| r.latency_us.as_ref().map(|p| p.p99), false),
    ("delta latency p99.9, µs",     |r| r.latency_us.as_ref().map(|p| p.p999), false),
    ("delta latency max, µs",       |r| r.latency_us.as_ref().map(|p| p.max), false),
    ("time to first delta p50, µs", |r| r.ttfd_us.as_ref().map(|p| p.p50), false),
    ("time to first delta p99, µs", |r| r.ttfd_us.as_ref().map(|p| p.p99), false),
    ("gateway CPU per delta, µs",   |r| r.gateway_cpu_us_per_delta, true),
    ("gateway CPU, s",              |r| r.gateway_cpu_s, true),
    ("gateway peak RSS, MiB",       |r| mib(r.gateway_peak_rss_kib), false),
    ("bench process CPU, s",        |r| Some(r.bench_cpu_s), false),
    (figure::REDIS_COMMANDS,        |r| extra(r, figure::REDIS_COMMANDS), false),
    (figure::REDIS_LOG_BYTES,       |r| extra(r, figure::REDIS_LOG_BYTES), false),
    (figure::REDIS_USED_BYTES,      |r| extra(r, figure::REDIS_USED_BYTES), false),
];

#[rustfmt::skip]
const IDLE_ROWS: &[Metric] = &[
    ("gateway RSS idle, MiB",                  |r| mib(r.gateway_rss_start_kib), false),
    ("gateway RSS with the sockets open, MiB", |r| mib(r.gateway_rss_end_kib), false),
    ("RSS per idle socket, KiB",               |r| r.idle_rss_kib_per_socket, false),
    ("sockets open",                           |r| Some(r.sockets_open as f64), false),
    ("sockets opened per s",                   |r| Some(r.sockets_open as f64 / r.wall_s.max(1e-9)), true),
    ("gateway CPU per socket opened, µs",      |r| r.gateway_cpu_s.map(|c| c * 1e6 / r.sockets_open.max(1) as f64), true),
];

#[rustfmt::skip]
const DETACHED_ROWS: &[Metric] = &[
    (figure::DETACHED,          |r| extra(r, figure::DETACHED), false),
    (figure::RSS_IDLE,          |r| extra(r, figure::RSS_IDLE), false),
    (figure::RSS_DETACHED,      |r| extra(r, figure::RSS_DETACHED), false),
    (figure::RSS_PER_CHAT,      |r| extra(r, figure::RSS_PER_CHAT), false),
    (figure::RETAINED_PER_CHAT, |r| extra(r, figure::RETAINED_PER_CHAT), false),
    (figure::FRAME_BYTES,       |r| extra(r, figure::FRAME_BYTES), false),
    (figure::RESUMED_EXACT,     |r| extra(r, figure::RESUMED_EXACT), false),
    ("gateway CPU, s",          |r| r.gateway_cpu_s, true),
    ("gateway peak RSS, MiB",   |r| mib(r.gateway_peak_rss_kib), false),
    (figure::REDIS_LOG_BYTES,   |r| extra(r, figure::REDIS_LOG_BYTES), false),
    (figure::REDIS_USED_BYTES,  |r| extra(r, figure::REDIS_USED_BYTES), false),
];

#[rustfmt::skip]
const RESUME_ROWS: &[Metric] = &[
    (figure::RUNNING,         |r| extra(r, figure::RUNNING), false),
    (figure::FIRST_P50,       |r| extra(r, figure::FIRST_P50), false),
    (figure::FIRST_P99,       |r| extra(r, figure::FIRST_P99), false),
    (figure::FIRST_MAX,       |r| extra(r, figure::FIRST_MAX), false),
    (figure::END_P50,         |r| extra(r, figure::END_P50), false),
    (figure::END_P99,         |r| extra(r, figure::END_P99), false),
    (figure::CPU_PER_RESUME,  |r| extra(r, figure::CPU_PER_RESUME), true),
    (figure::FRAME_BYTES,     |r| extra(r, figure::FRAME_BYTES), false),
    (figure::RESUMED_EXACT,   |r| extra(r, figure::RESUMED_EXACT), false),
    ("gateway peak RSS, MiB", |r| mib(r.gateway_peak_rss_kib), false),
    (figure::REDIS_LOG_BYTES, |r| extra(r, figure::REDIS_LOG_BYTES), false),
];

const BUSY_ROW: Metric = ("machine CPU busy share", |r| r.machine_busy, false);

fn rows_of(kind: Kind) -> &'static [Metric] {
    match kind {
        Kind::Chats | Kind::V1Stream => CHAT_ROWS,
        Kind::Idle => IDLE_ROWS,
        Kind::Detached => DETACHED_ROWS,
        Kind::Resume => RESUME_ROWS,
    }
}

/// Medians per fleet, comparisons and targets of one scenario.
pub fn summarize(sc: &Scenario, fleets: Vec<Fleet>, rounds: Vec<Round>, smoke: bool) -> Summary {
    let cmps = comparisons(&fleets);
    let first_gateway = fleets.iter().position(|f| f.mode == Mode::Gateway);
    let mut rows = Vec::new();
    for &(metric, get, ratio) in rows_of(sc.kind).iter().chain([&BUSY_ROW]) {
        let values: Vec<Option<f64>> = fleets
            .iter()
            .map(|f| {
                median(
                    rounds
                        .iter()
                        .filter(|r| r.fleet == f.label)
                        .filter_map(get)
                        .collect(),
                )
            })
            .collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let compares: Vec<Option<f64>> = cmps
            .iter()
            .map(|c| match (values[c.of], values[c.against]) {
                (Some(a), Some(b)) if ratio && b > 0.0 => Some(a / b),
                (Some(a), Some(b)) if !ratio => Some(a - b),
                _ => None,
            })
            .collect();
        // A target on a comparison this run does not make (no old build,
        // no Redis fleet) is left out.
        let targets = TARGETS
            .iter()
            .filter(|t| (t.0 == sc.key || t.0 == '*') && t.1 == metric)
            .filter(|t| t.3 == On::Value || cmps.iter().any(|c| c.on == t.3))
            .map(|&(_, _, text, on, test)| {
                let x = match on {
                    On::Value => first_gateway.and_then(|g| values[g]),
                    _ => cmps
                        .iter()
                        .position(|c| c.on == on)
                        .and_then(|i| compares[i]),
                };
                (text.to_string(), x.filter(|_| !smoke).map(test))
            })
            .collect();
        rows.push(Row {
            metric: metric.to_string(),
            values,
            ratio,
            compares,
            targets,
        });
    }
    let integrity_ok = rounds.iter().all(Round::ok);
    if !smoke && matches!(sc.key, 'b' | 'f' | 'm' | 'r') {
        rows.push(Row {
            metric: "every chat complete and exact".into(),
            values: vec![None; fleets.len()],
            ratio: false,
            compares: vec![None; cmps.len()],
            targets: vec![("all rounds".into(), Some(integrity_ok))],
        });
    }
    Summary {
        scenario: sc.clone(),
        fleets,
        comparisons: cmps,
        rounds,
        rows,
        integrity_ok,
    }
}

pub fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

pub fn render(s: &Summary, out: &mut String) {
    use std::fmt::Write;
    let rounds = s.fleets.first().map_or(0, |f| {
        s.rounds.iter().filter(|r| r.fleet == f.label).count()
    });
    let _ = writeln!(out, "\n### {}\n", s.scenario.describe());
    let _ = writeln!(out, "medians of {rounds} interleaved round(s)\n");
    let mut head = String::from("| metric |");
    let mut rule = String::from("|---|");
    for f in &s.fleets {
        let _ = write!(head, " {} |", f.label);
        rule.push_str("---:|");
    }
    for c in &s.comparisons {
        let _ = write!(head, " {} |", c.label);
        rule.push_str("---:|");
    }
    head.push_str(" target | met |");
    rule.push_str("---|---|");
    let _ = writeln!(out, "{head}\n{rule}");
    for r in &s.rows {
        let mut line = format!("| {} |", r.metric);
        for v in &r.values {
            let _ = write!(line, " {} |", fmt_num(*v));
        }
        for c in &r.compares {
            let _ = match c {
                None => write!(line, " – |"),
                Some(c) if r.ratio => write!(line, " × {c:.3} |"),
                Some(c) => write!(line, " {c:+.1} |"),
            };
        }
        let texts: Vec<&str> = r.targets.iter().map(|t| t.0.as_str()).collect();
        let met: Vec<&str> = r
            .targets
            .iter()
            .map(|t| match t.1 {
                None => "–",
                Some(true) => "yes",
                Some(false) => "**no**",
            })
            .collect();
        let _ = writeln!(line, " {} | {} |", texts.join("; "), met.join("; "));
        out.push_str(&line);
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut failed, mut bad) = (0, 0, 0);
    for r in &s.rounds {
        ok += r.chats_ok;
        failed += r.chats_failed;
        bad += r.integrity_bad;
        for (k, v) in &r.errors {
            *errors.entry(format!("{}:{k}", r.fleet)).or_default() += v;
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

pub fn round_line(sc: &Scenario, r: &Round) -> String {
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
    let extra = if r.extra.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = r
            .extra
            .iter()
            .map(|(k, v)| format!("{k} {}", fmt_num(Some(*v))))
            .collect();
        format!(", {}", parts.join(", "))
    };
    let timing: String = [lat, ttfd]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}, "))
        .collect();
    format!(
        "[{}] round {} {}: {:.2} s, {} deltas ({:.0}/s), {} ok / {} failed, {timing}gw cpu {}, gw rss {}→{} KiB (peak {}), busy {}, errors {:?}{extra}",
        sc.key,
        r.round,
        r.fleet,
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

/// Metric names of the detached-chat scenarios (rows of their tables).
pub mod figure {
    pub const RSS_IDLE: &str = "gateway RSS idle, MiB";
    pub const RSS_DETACHED: &str = "gateway RSS, chats ended and detached, MiB";
    pub const RSS_PER_CHAT: &str = "RSS per detached chat, KiB";
    pub const DETACHED: &str = "chats detached (gauge)";
    pub const RETAINED_PER_CHAT: &str = "retained log bytes per chat (gauge), KiB";
    pub const FRAME_BYTES: &str = "frame bytes per chat (as replayed), KiB";
    pub const RUNNING: &str = "chats still running when the resumes began";
    pub const FIRST_P50: &str = "resume → first replayed frame p50, µs";
    pub const FIRST_P99: &str = "resume → first replayed frame p99, µs";
    pub const FIRST_MAX: &str = "resume → first replayed frame max, µs";
    pub const END_P50: &str = "resume → terminal frame p50, µs";
    pub const END_P99: &str = "resume → terminal frame p99, µs";
    pub const CPU_PER_RESUME: &str = "gateway CPU per resumed chat (replay + live frames), µs";
    pub const RESUMED_EXACT: &str = "resumes replayed exactly";
    pub const REDIS_COMMANDS: &str = "Redis commands per delta";
    pub const REDIS_LOG_BYTES: &str = "Redis memory per chat log, bytes (MEMORY USAGE)";
    pub const REDIS_USED_BYTES: &str = "Redis used_memory per chat, bytes";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{fleets, presets, Bin};

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

    fn round(fleet: &str, cpu_per_delta: f64, deltas_per_s: f64) -> Round {
        Round {
            fleet: fleet.into(),
            gateway_cpu_us_per_delta: (fleet != "direct").then_some(cpu_per_delta),
            deltas_per_s,
            ..Round::default()
        }
    }

    #[test]
    fn the_log_cost_target_reads_the_ratio_of_medians_of_each_variant() {
        let sc = presets(false)
            .into_iter()
            .find(|s| s.key == 'a')
            .expect("a");
        let bins = vec![Bin {
            label: "new".into(),
            path: "new".into(),
            resume: true,
        }];
        let fl = fleets(&sc, &bins, true, true, false);
        let rounds = vec![
            round("direct", 0.0, 1000.0),
            round("new", 1.2, 800.0),
            round("new-w0", 1.0, 900.0),
            round("direct", 0.0, 1000.0),
            round("new", 1.4, 700.0),
            round("new-w0", 1.2, 800.0),
            round("direct", 0.0, 1000.0),
            round("new", 1.3, 750.0),
            round("new-w0", 1.1, 850.0),
        ];
        let s = summarize(&sc, fl, rounds, false);
        let cpu = s
            .rows
            .iter()
            .find(|r| r.metric == "gateway CPU per delta, µs")
            .expect("cpu row");
        assert_eq!(cpu.values, vec![None, Some(1.3), Some(1.1)]);
        // new vs direct: none (direct has no gateway CPU); new vs new-w0: 1.3/1.1
        assert_eq!(cpu.compares[0], None);
        let log = cpu.compares[1].expect("log cost");
        assert!((log - 1.3 / 1.1).abs() < 1e-9);
        assert_eq!(
            cpu.targets,
            vec![
                ("≤ 3 µs".to_string(), Some(true)),
                ("log ≤ × 1.10".to_string(), Some(false)),
            ]
        );
        let rate = s
            .rows
            .iter()
            .find(|r| r.metric == "deltas/s")
            .expect("rate");
        assert_eq!(rate.compares[0], Some(0.75));
        assert_eq!(
            rate.targets,
            vec![("≥ 0.7 × direct".to_string(), Some(true))]
        );
    }
}
