//! A hand-rolled WebSocket client on a raw TCP stream, for tests that must
//! not read: it reads only when asked to ([`RawWs::read_frame`]) and never
//! answers pings, so a test can leave the gateway's frames unread (a slow
//! or vanished browser). Everything else uses [`super::WsClient`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::WAIT;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;

/// A WebSocket on `/ws` that reads nothing unless asked to.
pub struct RawWs {
    reader: RawReader,
    writer: OwnedWriteHalf,
}

/// The reading half of a [`RawWs`] (see [`RawWs::into_split`]).
pub struct RawReader {
    read: OwnedReadHalf,
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
        Self::connect_with(addr, &[]).await
    }

    /// Like [`RawWs::connect`], with extra request header lines (`Name: value`).
    pub async fn connect_with(addr: SocketAddr, headers: &[&str]) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
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
        let (read, writer) = stream.into_split();
        RawWs {
            reader: RawReader { read, buf },
            writer,
        }
    }

    /// The two halves, to write and read at once.
    pub fn into_split(self) -> (RawReader, OwnedWriteHalf) {
        (self.reader, self.writer)
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.send_raw(&masked_frame(true, opcode, payload.len() as u64, payload))
            .await
    }

    /// Sends bytes as they are (frames built with [`masked_frame`], or
    /// parts of them).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Sends a value as one text frame; panics if the socket is unusable.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_frame(TEXT, v.to_string().as_bytes())
            .await
            .expect("send text frame");
    }

    /// See [`RawReader::read_close`].
    pub async fn read_close(
        &mut self,
        timeout: Duration,
        seen: impl FnMut(&RawFrame),
    ) -> Option<(u16, String)> {
        self.reader.read_close(timeout, seen).await
    }

    /// See [`RawReader::read_frame`].
    pub async fn read_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        self.reader.read_frame(timeout).await
    }
}

impl RawReader {
    /// Reads frames until a close frame (`Some((code, reason))`; code 0
    /// when it carries none) or EOF/`timeout` (`None`); other frames are
    /// handed to `seen`.
    pub async fn read_close(
        &mut self,
        timeout: Duration,
        mut seen: impl FnMut(&RawFrame),
    ) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read_frame(left).await?;
            if frame.opcode == CLOSE {
                let p = &frame.payload;
                if p.len() < 2 {
                    return Some((0, String::new()));
                }
                let reason = String::from_utf8_lossy(&p[2..]).into_owned();
                return Some((u16::from_be_bytes([p[0], p[1]]), reason));
            }
            seen(&frame);
        }
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
            match tokio::time::timeout_at(deadline, self.read.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    }
}

/// A masked client frame: FIN as given, `opcode`, a header declaring
/// `declared` payload bytes (7-, 16- or 64-bit as it needs), then `payload`
/// masked (which may be shorter than declared: the rest is sent later, or
/// never).
pub fn masked_frame(fin: bool, opcode: u8, declared: u64, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    if declared < 126 {
        f.push(0x80 | declared as u8);
    } else if declared <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(declared as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&declared.to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opcode of a continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Opcode of a ping frame.
pub const PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const PONG: u8 = 0xA;

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
