//! A hand-rolled WebSocket client on a raw TCP stream, for tests that must
//! not read: it reads only when asked to ([`RawWs::read_frame`]) and never
//! answers pings, so a test can leave the gateway's frames unread (a slow
//! or vanished browser). Everything else uses [`super::WsClient`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;

/// A WebSocket on `/ws` that reads nothing unless asked to.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame from the gateway: opcode and payload.
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Upgrades `ws://addr/ws` (bounded by [`WAIT`]); panics unless the
    /// gateway answers `101`. The `hello` frame is left unread.
    pub async fn connect(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return p;
                }
                let mut tmp = [0u8; 1024];
                let n = stream.read(&mut tmp).await.expect("read upgrade answer");
                assert!(n > 0, "gateway closed during the upgrade");
                buf.extend_from_slice(&tmp[..n]);
            }
        })
        .await
        .expect("upgrade answer in time");
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..head_end + 4);
        RawWs { stream, buf }
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await
    }

    /// Sends a value as one text frame; panics if the socket is unusable.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_frame(TEXT, v.to_string().as_bytes())
            .await
            .expect("send text frame");
    }

    /// Reads one whole frame, or `None` on EOF/timeout.
    pub async fn read_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut tmp = vec![0u8; 256 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    }
}

/// Parses one unmasked server frame at the start of `buf`.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    Some((RawFrame { opcode, payload }, at + len))
}
