//! The gateway under test, run as a separate process (the release binary)
//! so that its CPU time and RSS, read from /proc, are its own.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// The pid of the gateway running now (0 = none), for the watchdog.
pub static RUNNING: AtomicU32 = AtomicU32::new(0);

/// A running gateway process.
pub struct GatewayProc {
    child: Child,
    pub addr: SocketAddr,
    pub pid: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl GatewayProc {
    /// Starts `wrap… bin --bind 127.0.0.1:0 … args…` (`args` name the
    /// upstream: `--upstream URL` or `--config FILE`) and waits (at most
    /// `timeout`) for its `listening on http://ADDR` line.
    pub fn start(
        bin: &Path,
        wrap: &[String],
        args: &[String],
        timeout: Duration,
    ) -> Result<GatewayProc, String> {
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--bind", "127.0.0.1:0"])
            .args(["--max-connections", "20000"])
            .args(["--shutdown-grace-ms", "500"])
            .args(["--allowed-origins", "*"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        RUNNING.store(child.id(), Ordering::SeqCst);
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line
                        .split("listening on http://")
                        .nth(1)
                        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_back(line);
                        if l.len() > 30 {
                            l.pop_front();
                        }
                    }
                }
            });
        }
        let pid = child.id().to_string();
        match rx.recv_timeout(timeout) {
            Ok(addr) => Ok(GatewayProc {
                child,
                addr,
                pid,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                RUNNING.store(0, Ordering::SeqCst);
                let tail = log
                    .lock()
                    .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                Err(format!(
                    "gateway did not report `listening on` within {timeout:?}:\n{tail}"
                ))
            }
        }
    }

    pub fn cpu_ns(&self) -> u64 {
        sys::proc_cpu_ns(&self.pid).unwrap_or(0)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn mem_kib(&self) -> (u64, u64) {
        sys::proc_mem_kib(&self.pid).unwrap_or((0, 0))
    }

    /// The last lines it logged.
    pub fn log_tail(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            RUNNING.store(0, Ordering::SeqCst);
            return;
        }
        // Under a wrapper (strace, perf…) the gateway is the wrapper's child,
        // and a wrapper may detach on SIGTERM and leave it running: signal
        // the children first, then the wrapper.
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            sys::signal(child, sys::SIGTERM);
        }
        if !children.trim().is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        sys::signal(pid, sys::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                RUNNING.store(0, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        RUNNING.store(0, Ordering::SeqCst);
    }
}

/// Whether the gateway binary knows `flag` (its `--help` names it): the
/// resume scenarios need `--resume-window-ms`, which older builds lack.
pub fn supports(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A `redis-server` for the `--resume-store-compare` rounds: Debian's
/// binary on a free loopback port, its own config and directory, nothing
/// persisted; stopped by PID when dropped. Read through `redis-cli`.
pub struct RedisProc {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisProc {
    /// Starts `redis-server` (from the PATH) and waits up to 10 s for PONG.
    pub fn start() -> Result<RedisProc, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for redis-server: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("netfly-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("redis.conf");
        let text = format!(
            "bind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n",
            dir.display(),
            dir.join("redis.log").display()
        );
        std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let child = Command::new("redis-server")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (scripts/install-redis.sh): {e}"))?;
        let redis = RedisProc { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis.cli(&["ping"]).is_ok_and(|p| p.trim() == "PONG") {
                return Ok(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server on port {port} did not answer within 10 s"
        ))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One `redis-cli` command; its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Empties the server and its command statistics (before a round).
    pub fn reset(&self) -> Result<(), String> {
        self.cli(&["flushall"])?;
        self.cli(&["config", "resetstat"])?;
        Ok(())
    }

    /// Commands executed since the last reset (INFO commandstats).
    pub fn commands(&self) -> Option<u64> {
        let stats = self.cli(&["info", "commandstats"]).ok()?;
        Some(
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum(),
        )
    }

    /// `used_memory` in bytes.
    pub fn used_memory(&self) -> Option<u64> {
        let info = self.cli(&["info", "memory"]).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The mean `MEMORY USAGE` of up to `sample` chat logs, and how many
    /// there are in all.
    pub fn log_memory(&self, sample: usize) -> Option<(f64, u64)> {
        let keys = self.cli(&["--scan", "--pattern", "netfly:{*:log"]).ok()?;
        let keys: Vec<&str> = keys
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        let mut sum = 0u64;
        let mut n = 0u64;
        for k in keys.iter().take(sample) {
            if let Some(m) = self
                .cli(&["memory", "usage", k])
                .ok()
                .and_then(|m| m.trim().parse::<u64>().ok())
            {
                sum += m;
                n += 1;
            }
        }
        (n > 0).then(|| (sum as f64 / n as f64, keys.len() as u64))
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
