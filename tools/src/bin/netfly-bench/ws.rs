//! A minimal WebSocket client (RFC 6455) over a tokio `TcpStream`: just what
//! the fleet needs, with the arrival time of every read for exact latency.
//! Text frames only; pings are answered; client frames are masked.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sys::now_ns;

/// Largest handshake answer accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted from the gateway.
const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// One client socket.
/// Drops the consumed prefix `..*start` of `buf`, then reads more bytes
/// into it; returns the read's CLOCK_MONOTONIC time (EOF is an error).
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
) -> io::Result<u64> {
    if *start > 0 {
        buf.drain(..*start);
        *start = 0;
    }
    buf.reserve(16 * 1024);
    let n = stream.read_buf(buf).await?;
    let at = now_ns();
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(at)
}

pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being reassembled.
    frag: Vec<u8>,
    /// `frag` holds a complete message to hand out.
    msg: Vec<u8>,
    /// CLOCK_MONOTONIC ns (see `sys::now_ns`) when the last read returned.
    pub last_read_ns: u64,
}

/// Where the next message lies.
enum At {
    Buf(usize, usize),
    Msg,
}

/// Why a socket could not be opened: the HTTP status, or an I/O error.
#[derive(Debug)]
pub enum OpenError {
    Status(u16),
    Io(#[allow(dead_code)] io::Error),
}

impl Ws {
    /// TCP connect + upgrade on `/ws`; the `hello` frame is left unread.
    pub async fn connect(addr: SocketAddr) -> Result<Ws, OpenError> {
        let stream = TcpStream::connect(addr).await.map_err(OpenError::Io)?;
        stream.set_nodelay(true).map_err(OpenError::Io)?;
        let mut ws = Ws {
            stream,
            buf: Vec::with_capacity(4096),
            start: 0,
            frag: Vec::new(),
            msg: Vec::new(),
            last_read_ns: 0,
        };
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bmV0Zmx5LWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream
            .write_all(req.as_bytes())
            .await
            .map_err(OpenError::Io)?;
        let end = loop {
            if let Some(p) = find(&ws.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if ws.buf.len() > MAX_HEAD {
                return Err(OpenError::Io(io::Error::other("handshake answer too long")));
            }
            ws.read_more().await.map_err(OpenError::Io)?;
        };
        let status = std::str::from_utf8(&ws.buf[..end])
            .ok()
            .and_then(|h| h.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if status != 101 {
            return Err(OpenError::Status(status));
        }
        ws.start = end;
        Ok(ws)
    }

    async fn read_more(&mut self) -> io::Result<()> {
        self.last_read_ns = read_more(&mut self.stream, &mut self.buf, &mut self.start).await?;
        Ok(())
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        let payload = text.as_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x81);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = fastrand::u32(..).to_be_bytes();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await
    }

    async fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let len = payload.len().min(125);
        let key = fastrand::u32(..).to_be_bytes();
        let mut frame = vec![0x80 | opcode, 0x80 | len as u8];
        frame.extend_from_slice(&key);
        frame.extend(
            payload[..len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4]),
        );
        self.stream.write_all(&frame).await
    }

    /// The next text message and the time its last bytes were read;
    /// `None` on a close frame. Answers pings.
    pub async fn next_text(&mut self) -> io::Result<Option<(&str, u64)>> {
        let at = loop {
            match parse_header(&self.buf[self.start..]) {
                Some((fin, opcode, masked, head, len))
                    if self.buf.len() - self.start >= head + len =>
                {
                    let s = self.start + head;
                    let e = s + len;
                    self.start = e;
                    if let Some(key) = masked {
                        for (i, b) in self.buf[s..e].iter_mut().enumerate() {
                            *b ^= key[i % 4];
                        }
                    }
                    match opcode {
                        0x1 if fin && self.frag.is_empty() => break At::Buf(s, e),
                        0x1 | 0x0 => {
                            let part = self.buf[s..e].to_vec();
                            self.frag.extend_from_slice(&part);
                            if self.frag.len() > MAX_MESSAGE {
                                return Err(io::Error::other("message too large"));
                            }
                            if fin {
                                self.msg = std::mem::take(&mut self.frag);
                                break At::Msg;
                            }
                        }
                        0x8 => return Ok(None),
                        0x9 => {
                            let payload = self.buf[s..e].to_vec();
                            self.send_control(0xA, &payload).await?;
                        }
                        0xA => {}
                        _ => return Err(io::Error::other(format!("unexpected opcode {opcode}"))),
                    }
                }
                Some((_, _, _, head, len)) if head + len > MAX_MESSAGE => {
                    return Err(io::Error::other("frame too large"));
                }
                _ => self.read_more().await?,
            }
        };
        let bytes = match at {
            At::Buf(s, e) => &self.buf[s..e],
            At::Msg => &self.msg[..],
        };
        let at = self.last_read_ns;
        std::str::from_utf8(bytes)
            .map(|t| Some((t, at)))
            .map_err(|_| io::Error::other("text frame is not UTF-8"))
    }

    /// Drops the connection at once (RST, no TIME_WAIT left behind).
    pub fn abort(self) {
        let _ = self.stream.set_zero_linger();
    }
}

/// (fin, opcode, mask key, header length, payload length).
type Header = (bool, u8, Option<[u8; 4]>, usize, usize);

/// The frame header at the start of `b`, when all of it is there.
fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    let masked = b[1] & 0x80 != 0;
    let (len, mut head) = match b[1] & 0x7F {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(b.get(2..10)?);
            (u64::from_be_bytes(l) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let key = if masked {
        let k = b.get(head..head + 4)?;
        head += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Some((fin, opcode, key, head, len))
}

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_of_each_length_form() {
        // unmasked text, 5 bytes, fin
        assert_eq!(parse_header(&[0x81, 5]), Some((true, 1, None, 2, 5)));
        // continuation without fin, 16-bit length
        assert_eq!(
            parse_header(&[0x00, 126, 0x01, 0x00]),
            Some((false, 0, None, 4, 256))
        );
        // 64-bit length
        let mut h = vec![0x82, 127];
        h.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&h), Some((true, 2, None, 10, 70_000)));
        // masked (client → server), key after the length
        assert_eq!(
            parse_header(&[0x89, 0x80 | 2, 1, 2, 3, 4]),
            Some((true, 9, Some([1, 2, 3, 4]), 6, 2))
        );
    }

    #[test]
    fn an_incomplete_header_waits_for_more_bytes() {
        for partial in [
            &[][..],
            &[0x81],
            &[0x81, 126, 1],
            &[0x81, 127, 0, 0, 0],
            &[0x81, 0x85, 1, 2],
        ] {
            assert_eq!(parse_header(partial), None, "{partial:?}");
        }
    }

    #[test]
    fn find_locates_the_first_match() {
        assert_eq!(find(b"ab\r\n\r\ncd\r\n\r\n", b"\r\n\r\n"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
    }
}
