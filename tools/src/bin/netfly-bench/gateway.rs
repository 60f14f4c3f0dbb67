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
    /// Starts `wrap… bin --bind 127.0.0.1:0 --upstream url extra…` and waits
    /// (at most `timeout`) for its `listening on http://ADDR` line.
    pub fn start(
        bin: &Path,
        wrap: &[String],
        upstream: &str,
        extra: &[String],
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
        cmd.args(["--bind", "127.0.0.1:0", "--upstream", upstream])
            .args(["--max-connections", "20000"])
            .args(["--shutdown-grace-ms", "500"])
            .args(["--allowed-origins", "*"])
            .args(extra)
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

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
