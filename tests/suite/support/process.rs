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
use std::sync::{Arc, Mutex};
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
    stderr: Arc<Stderr>,
}

/// What the child wrote on stderr: every byte counted, the first lines kept
/// (each clipped) for a test to read.
#[derive(Default)]
struct Stderr {
    bytes: AtomicU64,
    lines: Mutex<Vec<String>>,
}

/// Lines of the child's stderr kept, and bytes kept of each.
const KEPT_LINES: usize = 2000;
const KEPT_LINE_BYTES: usize = 4096;

/// How a [`ChildGateway`] is started besides its flags.
pub struct ChildOptions<'a> {
    /// `RUST_LOG` of the child.
    pub rust_log: &'a str,
    /// A limit on the child's open files (`ulimit -n`), if any.
    pub max_open_files: Option<u32>,
}

impl Default for ChildOptions<'_> {
    fn default() -> Self {
        ChildOptions {
            rust_log: "warn",
            max_open_files: None,
        }
    }
}

impl ChildGateway {
    /// Starts the binary and waits (at most 20 s) for its
    /// `listening on http://ADDR` line on stderr.
    pub fn start(args: &[&str]) -> ChildGateway {
        Self::start_with(args, ChildOptions::default())
    }

    /// Like [`ChildGateway::start`], with a log level and an open-file
    /// limit (set by `sh`, which then `exec`s the binary under the same PID).
    pub fn start_with(args: &[&str], opts: ChildOptions<'_>) -> ChildGateway {
        let bin = env!("CARGO_BIN_EXE_netfly");
        let mut cmd = match opts.max_open_files {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        let mut child = cmd
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", opts.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the netfly binary");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let seen = Arc::new(Stderr::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = seen.clone();
        // Reads stderr until the process ends (keeps the pipe drained).
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                sink.bytes.fetch_add(line.len() as u64, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&line);
                if let Some(addr) = text.trim_end().strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut kept = sink.lines.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() < KEPT_LINES {
                    let end = text.len().min(KEPT_LINE_BYTES);
                    let end = (0..=end)
                        .rev()
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(0);
                    kept.push(text[..end].trim_end().to_owned());
                }
                line.clear();
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
            stderr: seen,
        }
    }

    /// Bytes the child has written on stderr so far.
    pub fn stderr_bytes(&self) -> u64 {
        self.stderr.bytes.load(Ordering::SeqCst)
    }

    /// The first lines the child wrote on stderr (each clipped to 4 KiB).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
pub async fn plateau<T: PartialEq + Copy>(
    timeout: Duration,
    quiet: Duration,
    f: impl Fn() -> T,
) -> Option<T> {
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
