//! The scenarios, as one table (a new scenario is one more entry), and the
//! fleets each one runs: the direct clients and every gateway variant.

use serde::Serialize;

use crate::upstream::StreamSpec;

/// What a scenario's clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// WebSocket chats, one after the other per socket (direct: SSE clients
    /// on the upstream).
    Chats,
    /// Open sockets and hold them idle; no chats, no direct fleet.
    Idle,
    /// Streamed `POST /v1/chat/completions` on keep-alive connections, the
    /// gateway started with a model map (direct: the same requests to the
    /// upstream).
    V1Stream,
    /// Every socket starts a chat, reads a few deltas and vanishes; once
    /// every chat has ended, the gateway's RSS per detached chat; then each
    /// chat is resumed on a fresh socket and its replay checked.
    Detached,
    /// As `Detached`, but the resumes start as soon as the sockets are
    /// gone (answers ended or still running): the time from `resume` to the
    /// first replayed frame.
    Resume,
}

impl Kind {
    /// A direct fleet to compare with exists.
    pub fn has_direct(self) -> bool {
        matches!(self, Kind::Chats | Kind::V1Stream)
    }

    /// Only gateways that can resume chats run it.
    pub fn needs_resume(self) -> bool {
        matches!(self, Kind::Detached | Kind::Resume)
    }

    /// The gateway is started with the bench's model map (`--config`).
    pub fn model_map(self) -> bool {
        self == Kind::V1Stream
    }
}

/// One scenario's shape.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub key: char,
    pub title: &'static str,
    pub kind: Kind,
    pub sockets: usize,
    /// Sequential chats per socket (Chats, V1Stream).
    pub chats: usize,
    pub n: u64,
    pub b: usize,
    pub pace_ms: u64,
    /// Chat starts (and, for Detached/Resume, the resumes) are spread
    /// evenly over this many ms.
    pub ramp_ms: u64,
    /// Every other chat is unpaced (its answer has ended by the time it is
    /// resumed); the others are paced by `pace_ms`.
    pub pace_mix: bool,
    /// Each gateway that can resume also runs with `--resume-window-ms 0`
    /// (the chat log off), interleaved, to price the log.
    pub resume_off_too: bool,
    /// Extra gateway arguments for this scenario only.
    pub gateway_args: &'static [&'static str],
}

/// Arguments that turn the chat log off.
pub const RESUME_OFF: [&str; 2] = ["--resume-window-ms", "0"];
/// The model a `/v1` client asks for, and what the gateway's model map
/// sends upstream instead (the fake upstream names it in every chunk; the
/// gateway must map it back).
pub const BENCH_MODEL: &str = "bench-model";
pub const BENCH_UPSTREAM_MODEL: &str = "bench-upstream-model";

impl Scenario {
    /// The stream the `i`-th socket asks for.
    pub fn spec(&self, i: usize) -> StreamSpec {
        StreamSpec {
            n: self.n,
            b: self.b,
            pace_ms: if self.pace_mix && i % 2 == 0 {
                0
            } else {
                self.pace_ms
            },
        }
    }

    pub fn describe(&self) -> String {
        let pace = if self.pace_ms == 0 {
            "no pacing".to_string()
        } else if self.pace_mix {
            format!(
                "every other chat unpaced, the rest {} ms pacing",
                self.pace_ms
            )
        } else {
            format!("{} ms pacing", self.pace_ms)
        };
        let what = match self.kind {
            Kind::Idle => {
                return format!(
                    "({}) {}: {} idle sockets",
                    self.key, self.title, self.sockets
                )
            }
            Kind::Chats => format!("{} socket(s) × {} chat(s)", self.sockets, self.chats),
            Kind::V1Stream => format!(
                "{} connection(s) × {} streamed /v1 request(s)",
                self.sockets, self.chats
            ),
            Kind::Detached | Kind::Resume => format!("{} detached chat(s)", self.sockets),
        };
        format!(
            "({}) {}: {what}, {} chunks × {} B, {pace}",
            self.key, self.title, self.n, self.b
        )
    }

    /// A generous bound for one fleet run.
    pub fn round_limit(&self) -> std::time::Duration {
        let paced = self.chats.max(1) as u64 * self.n * self.pace_ms;
        std::time::Duration::from_millis(paced * 2 + self.ramp_ms * 2)
            + std::time::Duration::from_secs(90)
    }
}

/// key, title, kind, sockets, chats, n, b, pace_ms, ramp_ms, pace_mix,
/// resume_off_too, gateway_args
type Entry = (
    char,
    &'static str,
    Kind,
    usize,
    usize,
    u64,
    usize,
    u64,
    u64,
    bool,
    bool,
    &'static [&'static str],
);

/// The full-size scenarios. `ramp_ms` 0 = as the pacing.
#[rustfmt::skip]
const FULL: &[Entry] = &[
    // key  title                       kind             sockets chats  n     b   pace ramp  mix    log-off gateway args
    ('a', "throughput",                 Kind::Chats,     100,    3,     1000, 64, 0,   0,    false, true,  &[]),
    ('b', "paced at scale",             Kind::Chats,     1000,   1,     200,  64, 20,  0,    false, true,  &[]),
    ('c', "paced latency",              Kind::Chats,     300,    1,     200,  64, 20,  0,    false, false, &[]),
    ('d', "idle sockets",               Kind::Idle,      10_000, 0,     0,    0,  0,   0,    false, false, &[]),
    ('e', "time to first delta",        Kind::Chats,     1,      50,    64,   64, 20,  0,    false, false, &[]),
    ('f', "/v1 streaming",              Kind::V1Stream,  100,    3,     1000, 64, 0,   0,    false, false, &[]),
    ('m', "memory per detached chat",   Kind::Detached,  1000,   1,     200,  64, 5,   1000, false, true,  &[]),
    ('r', "resume latency",             Kind::Resume,    1000,   1,     200,  64, 20,  1000, true,  false, &[]),
];

/// The same, tiny: a few seconds in all.
#[rustfmt::skip]
const SMOKE: &[Entry] = &[
    ('a', "throughput",                 Kind::Chats,     10,     2,     200,  64, 0,   0,    false, true,  &[]),
    ('b', "paced at scale",             Kind::Chats,     50,     1,     20,   64, 5,   0,    false, true,  &[]),
    ('c', "paced latency",              Kind::Chats,     20,     1,     20,   64, 5,   0,    false, false, &[]),
    ('d', "idle sockets",               Kind::Idle,      200,    0,     0,    0,  0,   0,    false, false, &[]),
    ('e', "time to first delta",        Kind::Chats,     1,      5,     8,    64, 5,   0,    false, false, &[]),
    ('f', "/v1 streaming",              Kind::V1Stream,  10,     2,     200,  64, 0,   0,    false, false, &[]),
    ('m', "memory per detached chat",   Kind::Detached,  50,     1,     20,   64, 5,   100,  false, true,  &[]),
    ('r', "resume latency",             Kind::Resume,    50,     1,     20,   64, 5,   100,  true,  false, &[]),
];

pub fn presets(smoke: bool) -> Vec<Scenario> {
    let table = if smoke { SMOKE } else { FULL };
    table
        .iter()
        .map(
            |&(key, title, kind, sockets, chats, n, b, pace_ms, ramp_ms, pace_mix, off, args)| {
                Scenario {
                    key,
                    title,
                    kind,
                    sockets,
                    chats,
                    n,
                    b,
                    pace_ms,
                    ramp_ms: if ramp_ms == 0 { pace_ms } else { ramp_ms },
                    pace_mix,
                    resume_off_too: off,
                    gateway_args: args,
                }
            },
        )
        .collect()
}

/// The scenario keys, in table order.
pub fn keys() -> Vec<char> {
    FULL.iter().map(|e| e.0).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Gateway,
}

/// A gateway binary under test.
#[derive(Clone, Debug, Serialize)]
pub struct Bin {
    pub label: String,
    pub path: std::path::PathBuf,
    /// It knows `--resume-window-ms`.
    pub resume: bool,
}

/// One fleet of a round: the direct clients, or one gateway variant.
#[derive(Clone, Debug, Serialize)]
pub struct Fleet {
    pub label: String,
    pub mode: Mode,
    /// Index into the binaries (gateway only).
    pub bin: usize,
    /// Started with `--resume-window-ms 0`.
    pub resume_off: bool,
    /// Started with `--resume-store redis://…` on the bench's redis-server.
    pub store: bool,
}

impl Fleet {
    fn gateway(label: String, bin: usize, resume_off: bool, store: bool) -> Fleet {
        Fleet {
            label,
            mode: Mode::Gateway,
            bin,
            resume_off,
            store,
        }
    }
}

/// The fleets of `sc`, in the order each round runs them: direct (when
/// there is one to compare with), then each binary, each followed by its
/// log-off variant when the scenario prices the log, and by its Redis
/// store variant when `redis` (`--resume-store-compare`; not for idle
/// sockets nor `/v1`, which keeps no log).
pub fn fleets(sc: &Scenario, bins: &[Bin], direct: bool, gateway: bool, redis: bool) -> Vec<Fleet> {
    let mut out = Vec::new();
    if direct && sc.kind.has_direct() {
        out.push(Fleet {
            label: "direct".into(),
            mode: Mode::Direct,
            bin: 0,
            resume_off: false,
            store: false,
        });
    }
    if !gateway {
        return out;
    }
    for (i, b) in bins.iter().enumerate() {
        if sc.kind.needs_resume() && !b.resume {
            continue;
        }
        out.push(Fleet::gateway(b.label.clone(), i, false, false));
        if sc.resume_off_too && b.resume {
            out.push(Fleet::gateway(format!("{}-w0", b.label), i, true, false));
        }
        if redis && b.resume && !matches!(sc.kind, Kind::Idle | Kind::V1Stream) {
            out.push(Fleet::gateway(format!("{}-redis", b.label), i, false, true));
        }
    }
    out
}

/// What a comparison column compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// The first gateway's value itself (no comparison).
    Value,
    /// The first gateway against the direct fleet.
    VsDirect,
    /// A gateway with its chat log against itself with the log off.
    LogCost,
    /// The reference build against another build, both with the log off
    /// where they have one (the house change alone).
    House,
    /// A gateway on the Redis resume store against itself on the memory
    /// store.
    Store,
}

/// One comparison column: fleet `of` against fleet `against`.
#[derive(Clone, Debug, Serialize)]
pub struct Cmp {
    pub on: On,
    pub label: String,
    pub of: usize,
    pub against: usize,
}

/// The comparison columns for `fleets`: the first gateway vs direct; each
/// gateway vs its log-off variant; each gateway on Redis vs on memory; the
/// reference build (the first binary, log off if it ran so) vs each other
/// binary.
pub fn comparisons(fleets: &[Fleet]) -> Vec<Cmp> {
    let mut out = Vec::new();
    let label = |a: usize, b: usize| format!("{} vs {}", fleets[a].label, fleets[b].label);
    let gateways: Vec<usize> = (0..fleets.len())
        .filter(|&i| fleets[i].mode == Mode::Gateway)
        .collect();
    let direct = fleets.iter().position(|f| f.mode == Mode::Direct);
    if let (Some(d), Some(&g)) = (direct, gateways.first()) {
        out.push(Cmp {
            on: On::VsDirect,
            label: label(g, d),
            of: g,
            against: d,
        });
    }
    // The variant of `v`'s binary with neither the log off nor Redis.
    let plain = |v: usize| {
        gateways
            .iter()
            .copied()
            .find(|&i| fleets[i].bin == fleets[v].bin && !fleets[i].resume_off && !fleets[i].store)
    };
    for &off in gateways.iter().filter(|&&i| fleets[i].resume_off) {
        if let Some(on) = plain(off) {
            out.push(Cmp {
                on: On::LogCost,
                label: label(on, off),
                of: on,
                against: off,
            });
        }
    }
    for &redis in gateways.iter().filter(|&&i| fleets[i].store) {
        if let Some(memory) = plain(redis) {
            out.push(Cmp {
                on: On::Store,
                label: label(redis, memory),
                of: redis,
                against: memory,
            });
        }
    }
    let Some(&first) = gateways.first() else {
        return out;
    };
    let first_bin = fleets[first].bin;
    let reference = gateways
        .iter()
        .copied()
        .find(|&i| fleets[i].bin == first_bin && fleets[i].resume_off)
        .unwrap_or(first);
    for &other in gateways
        .iter()
        .filter(|&&i| fleets[i].bin != first_bin && !fleets[i].resume_off && !fleets[i].store)
    {
        out.push(Cmp {
            on: On::House,
            label: label(reference, other),
            of: reference,
            against: other,
        });
    }
    out
}

/// A target: scenario key (`*` = every scenario), metric, text, which
/// column it reads, its test.
pub type Target = (char, &'static str, &'static str, On, fn(f64) -> bool);

/// Every target the report checks (never enforced: the exit status is
/// about integrity only).
#[rustfmt::skip]
pub const TARGETS: &[Target] = &[
    ('a', "deltas/s",                    "≥ 0.7 × direct",      On::VsDirect, |c| c >= 0.7),
    ('a', "gateway CPU per delta, µs",   "≤ 3 µs",              On::Value,    |g| g <= 3.0),
    ('a', "gateway CPU per delta, µs",   "log ≤ × 1.10",        On::LogCost,  |c| c <= 1.10),
    ('b', "deltas/s",                    "≥ 0.95 × direct",     On::VsDirect, |c| c >= 0.95),
    ('b', "gateway CPU per delta, µs",   "log ≤ × 1.10",        On::LogCost,  |c| c <= 1.10),
    ('c', "delta latency p50, µs",       "added ≤ 100 µs",      On::VsDirect, |c| c <= 100.0),
    ('c', "delta latency p99, µs",       "added ≤ 1000 µs",     On::VsDirect, |c| c <= 1000.0),
    ('d', "gateway RSS idle, MiB",       "≤ 20 MB (19.07 MiB)", On::Value,    |g| g * 1048576.0 <= 20e6),
    ('d', "RSS per idle socket, KiB",    "≤ 12 KiB",            On::Value,    |g| g <= 12.0),
    ('e', "time to first delta p99, µs", "added ≤ 1000 µs",     On::VsDirect, |c| c <= 1000.0),
    ('f', "gateway CPU per delta, µs",   "≤ the old build",     On::House,    |c| c <= 1.0),
    ('*', "deltas/s",                    "redis ≥ 0.9 × memory", On::Store,   |c| c >= 0.9),
    ('*', "delta latency p99, µs",       "redis ≤ +1000 µs",    On::Store,    |c| c <= 1000.0),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(resume: &[bool]) -> Vec<Bin> {
        let names = ["new", "old", "third"];
        resume
            .iter()
            .enumerate()
            .map(|(i, &r)| Bin {
                label: names[i].into(),
                path: names[i].into(),
                resume: r,
            })
            .collect()
    }

    fn scenario(key: char) -> Scenario {
        presets(false)
            .into_iter()
            .find(|s| s.key == key)
            .expect("a preset")
    }

    fn labels(f: &[Fleet]) -> Vec<&str> {
        f.iter().map(|f| f.label.as_str()).collect()
    }

    #[test]
    fn the_log_is_priced_only_where_asked_and_only_on_builds_that_have_it() {
        let b = bins(&[true, false]);
        let a = fleets(&scenario('a'), &b, true, true, false);
        assert_eq!(labels(&a), ["direct", "new", "new-w0", "old"]);
        let c = fleets(&scenario('c'), &b, true, true, false);
        assert_eq!(labels(&c), ["direct", "new", "old"]);
        // resume scenarios: no direct fleet, no build without resume
        let m = fleets(&scenario('m'), &b, true, true, false);
        assert_eq!(labels(&m), ["new", "new-w0"]);
        let r = fleets(&scenario('r'), &b, true, true, false);
        assert_eq!(labels(&r), ["new"]);
        let d = fleets(&scenario('d'), &b, true, true, false);
        assert_eq!(labels(&d), ["new", "old"]);
        assert_eq!(
            labels(&fleets(&scenario('a'), &b, true, false, false)),
            ["direct"]
        );
    }

    #[test]
    fn comparisons_separate_the_log_from_the_house_change() {
        let b = bins(&[true, false]);
        let a = fleets(&scenario('a'), &b, true, true, false);
        let cmp: Vec<(On, String, usize, usize)> = comparisons(&a)
            .into_iter()
            .map(|c| (c.on, c.label, c.of, c.against))
            .collect();
        assert_eq!(
            cmp,
            [
                (On::VsDirect, "new vs direct".to_string(), 1, 0),
                (On::LogCost, "new vs new-w0".to_string(), 1, 2),
                (On::House, "new-w0 vs old".to_string(), 2, 3),
            ]
        );
        // without a log-off variant, the house compares the builds as run
        let c = fleets(&scenario('c'), &b, true, true, false);
        let house: Vec<String> = comparisons(&c)
            .into_iter()
            .filter(|c| c.on == On::House)
            .map(|c| c.label)
            .collect();
        assert_eq!(house, ["new vs old"]);
    }

    #[test]
    fn the_redis_store_runs_beside_memory_where_a_log_is_kept() {
        let b = bins(&[true, false]);
        let a = fleets(&scenario('a'), &b, true, true, true);
        assert_eq!(labels(&a), ["direct", "new", "new-w0", "new-redis", "old"]);
        let cmp: Vec<(On, String)> = comparisons(&a)
            .into_iter()
            .map(|c| (c.on, c.label))
            .collect();
        assert_eq!(
            cmp,
            [
                (On::VsDirect, "new vs direct".to_string()),
                (On::LogCost, "new vs new-w0".to_string()),
                (On::Store, "new-redis vs new".to_string()),
                (On::House, "new-w0 vs old".to_string()),
            ]
        );
        let r = fleets(&scenario('r'), &b, true, true, true);
        assert_eq!(labels(&r), ["new", "new-redis"]);
        for key in ['d', 'f'] {
            let f = fleets(&scenario(key), &b, true, true, true);
            assert!(!labels(&f).iter().any(|l| l.ends_with("-redis")), "{key}");
        }
    }

    #[test]
    fn pace_mix_alternates_unpaced_and_paced_answers() {
        let r = scenario('r');
        assert_eq!((r.spec(0).pace_ms, r.spec(1).pace_ms), (0, 20));
        let b = scenario('b');
        assert_eq!((b.spec(0).pace_ms, b.spec(1).pace_ms), (20, 20));
    }

    #[test]
    fn every_target_names_a_scenario_of_the_table() {
        let keys = keys();
        for t in TARGETS {
            assert!(t.0 == '*' || keys.contains(&t.0), "{t:?}", t = (t.0, t.1));
        }
        let mut k = keys.clone();
        k.dedup();
        assert_eq!(k.len(), keys.len(), "scenario keys are unique");
    }
}
