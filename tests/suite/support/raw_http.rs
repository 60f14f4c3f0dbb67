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
