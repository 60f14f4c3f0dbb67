//! Thin OS helpers for the benchmark: a process-wide monotonic clock,
//! `/proc` readings (CPU, RSS, machine load), the open-file limit and
//! signals. Linux only; the C functions are declared against the C library
//! that std already links, so no extra crate is needed.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock's origin; call once at start-up, before any thread.
pub fn init_clock() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds on CLOCK_MONOTONIC (std's `Instant` on Linux) since the
/// process-wide origin. The fake upstream stamps chunks with it and the
/// clients, in the same process, read it on arrival: exact across threads.
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}

const RLIMIT_NOFILE: i32 = 7;
const SC_CLK_TCK: i32 = 2;
/// SIGTERM.
pub const SIGTERM: i32 = 15;

/// Raises the soft open-file limit towards `want` (never above the hard
/// limit); returns the soft limit now in force. Children inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = RLimit { cur: 0, max: 0 };
    // SAFETY: plain syscalls on a properly sized, initialised struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.cur < want {
            let new = RLimit {
                cur: want.min(lim.max),
                max: lim.max,
            };
            if setrlimit(RLIMIT_NOFILE, &new) == 0 {
                return new.cur;
            }
        }
    }
    lim.cur
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(pid as i32, sig) == 0 }
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User + system CPU time of a process (all its threads, live or exited),
/// in nanoseconds; resolution is one clock tick (usually 10 ms).
pub fn proc_cpu_ns(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' field 3 (state) is index 0: utime (14) is 11, stime (15) 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clk_tck())
}

/// (VmRSS, VmHWM) of a process in KiB.
pub fn proc_mem_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Cumulative (busy, total) jiffies of the whole machine from /proc/stat.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share of the machine's CPU time that was busy between two readings.
pub fn busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let (b0, t0) = before?;
    let (b1, t1) = after?;
    if t1 <= t0 {
        return None;
    }
    Some((b1 - b0) as f64 / (t1 - t0) as f64)
}
