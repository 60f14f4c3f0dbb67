//! A raw HTTP/1.1 client on a TCP stream, for tests that must control the
//! connection itself (read part of an answer, then vanish). Everything else
//! uses awc.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// Sends a raw HTTP/1.1 `POST /v1/chat/completions` of `body`.
pub async fn raw_post(addr: SocketAddr, body: &Value) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Sends a raw HTTP/1.1 POST and reads (bounded by [`WAIT`]) until `until`
/// appears in the answer; returns the stream and what was read.
pub async fn raw_post_until(addr: SocketAddr, body: &Value, until: &str) -> (TcpStream, String) {
    let mut tcp = raw_post(addr, body).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&seen).contains(until) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {until:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{until:?} never came: {}", String::from_utf8_lossy(&seen)));
    (tcp, String::from_utf8_lossy(&seen).into_owned())
}

/// An answer read off a raw connection: status, head (status line and
/// headers), the bytes after the head, and whether the gateway closed the
/// connection (EOF) before the read stopped.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub rest: Vec<u8>,
    pub closed: bool,
}

impl RawAnswer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The bytes after the head, as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.rest).into_owned()
    }
}

/// Reads from `tcp` until the gateway closes it or `timeout` passes, and
/// splits off the first answer's head. `None` when no whole head came.
pub async fn read_answer(tcp: &mut TcpStream, timeout: std::time::Duration) -> Option<RawAnswer> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    parse_answer(&seen, closed)
}

/// Reads from `tcp` until one whole answer head arrived (or `timeout`).
pub async fn read_head(tcp: &mut TcpStream, timeout: std::time::Duration) -> Option<RawAnswer> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            Ok(_) => return parse_answer(&seen, true),
            Err(_) => return None,
        }
    }
    parse_answer(&seen, false)
}

fn parse_answer(seen: &[u8], closed: bool) -> Option<RawAnswer> {
    let end = seen.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(RawAnswer {
        status,
        head,
        rest: seen[end + 4..].to_vec(),
        closed,
    })
}

/// Sends `request` (a whole raw HTTP/1.1 request) on a new connection and
/// reads the answer until the gateway closes the connection or [`WAIT`]
/// passes; panics when no answer head came.
pub async fn exchange(addr: SocketAddr, request: &str) -> RawAnswer {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to gateway");
    tcp.write_all(request.as_bytes())
        .await
        .expect("send request");
    read_answer(&mut tcp, WAIT)
        .await
        .unwrap_or_else(|| panic!("no answer to {request:?}"))
}

/// A request of `method` for `path` with `headers` (each `Name: value`) and
/// `Connection: close`, and an optional body (with its `Content-Length`).
pub fn request(method: &str, path: &str, headers: &[&str], body: Option<&str>) -> String {
    let mut out = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if let Some(body) = body {
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        out.push_str("\r\n");
    }
    out
}
