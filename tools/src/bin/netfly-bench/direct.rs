//! The HTTP client: an HTTP/1.1 keep-alive connection that POSTs chat
//! completions and reads the chunked SSE answer with the gateway's own SSE
//! parser. Against the fake upstream it is the direct fleet, the physical
//! limit the gateway is compared with (same upstream, same parsing, no
//! gateway in the path); against the gateway's `/v1/chat/completions` it is
//! the `/v1` fleet.

use std::io;
use std::net::SocketAddr;

use netfly::upstream::sse::{Event, Parser};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::ws::{find, read_more};

const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection to the upstream or the gateway.
pub struct Direct {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    start: usize,
    last_read_ns: u64,
    parser: Parser,
    events: Vec<Event>,
}

/// How a chat ended.
pub enum End {
    /// `[DONE]` seen and the body read to its end.
    Done,
    /// The upstream answered with another status.
    Status(u16),
    /// An event was refused by the caller (its message), or the stream
    /// ended without `[DONE]`.
    Broken(#[allow(dead_code)] String),
}

impl Direct {
    pub async fn connect(addr: SocketAddr) -> io::Result<Direct> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Direct {
            stream,
            addr,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
            last_read_ns: 0,
            parser: Parser::new(),
            events: Vec::new(),
        })
    }

    async fn read_more(&mut self) -> io::Result<()> {
        self.last_read_ns = read_more(&mut self.stream, &mut self.buf, &mut self.start).await?;
        Ok(())
    }

    /// Index just past the next CRLF-terminated line, reading as needed.
    async fn line_end(&mut self) -> io::Result<usize> {
        loop {
            if let Some(p) = find(&self.buf[self.start..], b"\r\n") {
                return Ok(self.start + p + 2);
            }
            if self.buf.len() - self.start > MAX_HEAD {
                return Err(io::Error::other("line too long"));
            }
            self.read_more().await?;
        }
    }

    /// POSTs one chat and streams its answer; `on_event(event, arrival_ns)`
    /// runs for every event but the final `[DONE]`, and its `Err` marks the
    /// stream broken (the rest is still read, to keep the connection).
    pub async fn chat(
        &mut self,
        body: &str,
        mut on_event: impl FnMut(&Event, u64) -> Result<(), String>,
    ) -> io::Result<End> {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             accept: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        let head_end = loop {
            if let Some(p) = find(&self.buf[self.start..], b"\r\n\r\n") {
                break self.start + p + 4;
            }
            if self.buf.len() - self.start > MAX_HEAD {
                return Err(io::Error::other("response head too long"));
            }
            self.read_more().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[self.start..head_end]).to_ascii_lowercase();
        self.start = head_end;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if !head.contains("transfer-encoding: chunked") {
            return Err(io::Error::other("upstream answer is not chunked"));
        }
        let mut done = false;
        let mut broken = None;
        loop {
            let end = self.line_end().await?;
            let size_text = std::str::from_utf8(&self.buf[self.start..end - 2]).unwrap_or("");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            self.start = end;
            while self.buf.len() - self.start < size + 2 {
                self.read_more().await?;
            }
            let data = &self.buf[self.start..self.start + size];
            self.start += size + 2;
            if size == 0 {
                break;
            }
            if status != 200 {
                continue;
            }
            self.events.clear();
            self.parser.push(data, &mut self.events);
            for ev in &self.events {
                if ev.data.trim() == "[DONE]" {
                    done = true;
                } else if let Err(e) = on_event(ev, self.last_read_ns) {
                    broken.get_or_insert(e);
                }
            }
        }
        self.parser.finish();
        Ok(match (status, broken, done) {
            (200, None, true) => End::Done,
            (200, Some(m), _) => End::Broken(m),
            (200, None, false) => End::Broken("stream ended without [DONE]".into()),
            (s, _, _) => End::Status(s),
        })
    }
}
