//! A real `redis-server` (Debian's package; `scripts/install-redis.sh`
//! installs it) for one test: its own config and directory under the temp
//! dir, a free loopback port picked with port 0, no persistence; stopped
//! by PID when dropped (or killed by the test, and restarted on the same
//! port). Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static N: AtomicU32 = AtomicU32::new(0);

/// The `redis-server` binary: on the PATH or where Debian puts it.
fn binary() -> String {
    for candidate in ["redis-server", "/usr/bin/redis-server"] {
        let found = Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return candidate.to_owned();
        }
    }
    panic!("redis-server not found: run `bash scripts/install-redis.sh` (the test command does)");
}

/// A running redis-server, stopped when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with `extra` config lines (e.g. `requirepass x`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let probe = TcpListener::bind("127.0.0.1:0").expect("probe a free port");
        let port = probe.local_addr().expect("probe addr").port();
        drop(probe);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("netfly-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("redis.conf");
        let mut text = format!(
            "bind 127.0.0.1\nport {}\nprotected-mode yes\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n",
            self.port,
            self.dir.display(),
            self.dir.join("redis.log").display()
        );
        for line in &self.extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).expect("write redis.conf");
        let child = Command::new(binary())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer within 10 s; its log:\n{log}",
            self.port
        );
    }

    /// Whether the server answers `PING` (or asks for a password).
    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
            Err(_) => false,
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client connection for the test's own checks.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Keys matching `pattern` (`KEYS`: a test server holds few).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.conn().await;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }

    /// One `INFO` section as `name:value` pairs.
    pub async fn info(&self, section: &str) -> Vec<(String, String)> {
        let mut conn = self.conn().await;
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .expect("INFO");
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
