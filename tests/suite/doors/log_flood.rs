//! Item 8: logs an attacker cannot flood. Client-controlled values are
//! clipped in log lines (`logsafe::clip`) and refusal lines are written at
//! most once per second per reason, with a count of those suppressed.

use std::time::{Duration, Instant};

use netfly::logsafe::{clip, clip_at, RefusalLimiter, CLIP_CHARS};
use tokio::io::AsyncWriteExt;

use crate::support::process::{ChildGateway, ChildOptions};
use crate::support::raw_http::read_head;
use crate::support::*;

#[test]
fn clip_keeps_short_values_and_cuts_long_ones_on_a_char_boundary() {
    assert_eq!(clip("http://a.example").to_string(), "\"http://a.example\"");
    // Control characters are escaped: a value cannot forge a line.
    assert_eq!(clip("a\nb").to_string(), "\"a\\nb\"");
    let long = "é".repeat(1000);
    let shown = clip(&long).to_string();
    assert!(shown.chars().count() < CLIP_CHARS + 30, "{shown}");
    assert!(
        shown.starts_with(&format!("\"{}", "é".repeat(CLIP_CHARS))),
        "{shown}"
    );
    assert!(shown.ends_with("\"… (2000 bytes)"), "{shown}");
    assert_eq!(clip_at("aé", 1), Some(1));
    assert_eq!(clip_at("éa", 1), Some(2));
    assert_eq!(clip_at("ab", 2), None);
}

#[test]
fn refusal_lines_are_limited_per_reason_per_second() {
    let mut limiter = RefusalLimiter::new();
    let t0 = Instant::now();
    assert_eq!(limiter.admit("origin", t0), Some(0));
    for i in 1..=99 {
        assert_eq!(
            limiter.admit("origin", t0 + Duration::from_millis(i * 9)),
            None
        );
    }
    // Another reason has its own budget.
    assert_eq!(
        limiter.admit("host", t0 + Duration::from_millis(5)),
        Some(0)
    );
    // A second later: one line, carrying the 99 suppressed.
    assert_eq!(
        limiter.admit("origin", t0 + Duration::from_millis(1000)),
        Some(99)
    );
    assert_eq!(
        limiter.admit("origin", t0 + Duration::from_millis(1001)),
        None
    );
    assert_eq!(
        limiter.admit("origin", t0 + Duration::from_millis(2500)),
        Some(1)
    );
}

/// A raw request line and headers (with `Host`) for `path`, `extra` added.
fn raw_get(addr: std::net::SocketAddr, path: &str, host: &str, extra: &str) -> String {
    let host = if host.is_empty() {
        addr.to_string()
    } else {
        host.to_owned()
    };
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}\r\n")
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
}

/// Sends `n` copies of `request`, ten connections at a time, and returns
/// the statuses.
async fn flood(addr: std::net::SocketAddr, request: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n / 10 {
        let batch = (0..10).map(|_| async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("send");
            read_head(&mut tcp, WAIT).await.map_or(0, |a| a.status)
        });
        statuses.extend(futures_util::future::join_all(batch).await);
    }
    statuses
}

/// 500 upgrades refused for a 60 KB `Origin`, then 500 requests refused for
/// a 60 KB `Host`, against the real binary at `RUST_LOG=info`: its stderr
/// grows by a few lines, each short. Before: every refusal logged the whole
/// origin (30 MB for the 500).
#[actix_web::test]
async fn a_flood_of_refusals_writes_a_few_short_lines() {
    let gw = ChildGateway::start_with(
        &["--upstream", &closed_port_url()],
        ChildOptions {
            rust_log: "info",
            ..ChildOptions::default()
        },
    );
    tokio::time::sleep(ms(200)).await;
    let before = gw.stderr_bytes();
    let lines_before = gw.stderr_lines().len();
    let started = Instant::now();

    let origin = format!("Origin: http://{}.example", "o".repeat(60 * 1024));
    let upgrade = format!(
        "{origin}\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13"
    );
    let req =
        raw_get(gw.addr, "/ws", "", &upgrade).replace("Connection: close", "Connection: Upgrade");
    let statuses = flood(gw.addr, &req, 500).await;
    assert!(statuses.iter().all(|&s| s == 403), "{statuses:?}");

    let host = format!("{}.example", "h".repeat(60 * 1024));
    let req = raw_get(gw.addr, "/", &host, "");
    let statuses = flood(gw.addr, &req, 500).await;
    assert!(statuses.iter().all(|&s| s == 403), "{statuses:?}");
    let took = started.elapsed();

    tokio::time::sleep(ms(300)).await;
    let grew = gw.stderr_bytes() - before;
    let lines = gw.stderr_lines();
    let new_lines = &lines[lines_before.min(lines.len())..];
    eprintln!(
        "1000 refusals in {took:?}: stderr grew by {grew} bytes, {} lines:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains("origin") && l.contains('…')),
        "an origin refusal is logged, clipped"
    );
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains("Host") && l.contains('…')),
        "a host refusal is logged, clipped"
    );
    assert!(
        new_lines.iter().all(|l| l.len() < 512),
        "every line is short"
    );
    // One line per reason per second (the run takes a few seconds).
    let budget = 2 * (took.as_secs() + 2) * 512;
    assert!(
        grew < budget.min(8 * 1024),
        "stderr grew by {grew} bytes (budget {budget})"
    );
}
