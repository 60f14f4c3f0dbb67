//! The gateway as a child process, and what tests measure of a process:
//! its resident memory (sampled), and a value that stops changing.
//!
//! A gateway started with [`super::start_gateway`] shares this test
//! process with every other test; one whose memory is measured runs as its
//! own process ([`ChildGateway`]), started by the test and killed (by PID)
//! when dropped.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One mebibyte.
pub const MB: u64 = 1024 * 1024;

/// Tests that move hundreds of megabytes or allocate large answers take
/// turns: on two shared cores, two of them at once would slow each other
/// past their time bounds. Hold the guard for the whole test.
pub static MEMORY_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real `netfly` binary as a child process (`--bind 127.0.0.1:0` and
/// `args`), killed on drop.
pub struct ChildGateway {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl ChildGateway {
    /// Starts the binary and waits (at most 20 s) for its
    /// `listening on http://ADDR` line on stderr.
    pub fn start(args: &[&str]) -> ChildGateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_netfly"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
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

/// The resident set size of process `pid` in bytes (0 when it cannot be
/// read).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples the RSS of a process every 20 ms (on a thread of its own) until
/// dropped; `max()` is the peak seen.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
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
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { peak, stop }
    }

    pub fn max(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until `f()` has not changed for `quiet`; returns the value, or
/// `None` if it kept changing until `timeout`.
pub async fn plateau(timeout: Duration, quiet: Duration, f: impl Fn() -> u64) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = f();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
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
