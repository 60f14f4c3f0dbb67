//! The fake OpenAI-compatible upstream: an HTTP/1.1 keep-alive server on
//! 127.0.0.1 that answers every chat-completions POST with a chunked SSE
//! stream of `n` typical `chat.completion.chunk` events whose content is
//! `"<seq>:<mono_ns>:"` padded with `x` to `b` bytes, at `p` ms pacing
//! (0 = as fast as TCP allows). The parameters travel in the last user
//! message, `bench n=<n> b=<b> p=<p>`, so the same upstream serves direct
//! clients and the gateway without reconfiguration. Every chunk names the
//! request's `model` (as a real provider does), so a gateway that maps
//! model names can be checked for mapping them back.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::sys::now_ns;
use crate::ws::find;

const MAX_REQUEST: usize = 1024 * 1024;
/// Unpaced streams are written in batches of about this many bytes.
const BATCH: usize = 8 * 1024;

/// What one stream should look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub n: u64,
    pub b: usize,
    pub pace_ms: u64,
}

impl StreamSpec {
    /// The user message that asks for this stream.
    pub fn prompt(&self) -> String {
        format!("bench n={} b={} p={}", self.n, self.b, self.pace_ms)
    }

    fn from_body(body: &[u8]) -> Option<StreamSpec> {
        let text = std::str::from_utf8(body).ok()?;
        let at = text.rfind("bench n=")?;
        let mut words = text[at + 6..].split([' ', '"']);
        let mut num = |key: &str| -> Option<u64> { words.next()?.strip_prefix(key)?.parse().ok() };
        let n = num("n=")?;
        let b = num("b=")? as usize;
        let pace_ms = num("p=")?;
        Some(StreamSpec { n, b, pace_ms })
    }
}

/// The content of delta `seq` sent at `ns`.
pub fn content(seq: u64, ns: u64, b: usize, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "{seq}:{ns}:");
    while out.len() < b {
        out.push('x');
    }
}

/// A running fake upstream (its own thread and tokio runtime).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start() -> io::Result<FakeUpstream> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // A deep accept queue: the gateway opens up to a thousand upstream
        // connections at once, and std's default backlog (128) would turn
        // the overflow into 1 s SYN retransmits, an artifact of the bench.
        let listener = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(4096)
        })?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((s, _)) => {
                                    tokio::spawn(async move {
                                        let _ = serve(s).await;
                                    });
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                            },
                        }
                    }
                });
                // Dropping the runtime here drops every connection task.
            })?;
        Ok(FakeUpstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one keep-alive connection until the peer closes it.
async fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_REQUEST {
                return Err(io::Error::other("request head too long"));
            }
            buf.reserve(4096);
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_REQUEST);
        while buf.len() < head_end + length {
            buf.reserve(4096);
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = &buf[head_end..head_end + length];
        let spec = StreamSpec::from_body(body);
        let model = request_model(body).unwrap_or(DEFAULT_MODEL).to_owned();
        buf.drain(..head_end + length);
        match spec {
            Some(spec) => stream(&mut s, spec, &model).await?,
            None => {
                let body =
                    r#"{"error":{"message":"not a bench prompt","type":"invalid_request_error"}}"#;
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await?;
            }
        }
    }
}

/// The model named in chunks when the request names none.
const DEFAULT_MODEL: &str = "gpt-3.5-turbo";

/// The request's top-level `"model":"…"` string, when it has no escapes
/// (bench model names never do). Both the gateway and the bench clients
/// write it as the first field.
fn request_model(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find(r#""model":""#)? + r#""model":""#.len();
    let len = text[at..].find(['"', '\\'])?;
    let name = &text[at..at + len];
    (text[at + len..].starts_with('"') && name.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(name)
}

/// Everything of a chunk up to its delta, for `model`.
fn chunk_head(model: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1732000000,"model":"{model}","system_fingerprint":"fp_bench","choices":[{{"index":0,"delta":"#
    )
}

/// Appends one SSE event carrying `json` as one HTTP chunk.
fn push_event(out: &mut Vec<u8>, json: &str) {
    use std::io::Write;
    let len = "data: ".len() + json.len() + 2;
    let _ = write!(out, "{len:x}\r\ndata: {json}\n\n\r\n");
}

fn delta_json(head: &str, delta: &str, finish: &str, scratch: &mut String) {
    scratch.clear();
    scratch.push_str(head);
    scratch.push_str(delta);
    scratch.push_str(r#","logprobs":null,"finish_reason":"#);
    scratch.push_str(finish);
    scratch.push_str("}]}");
}

async fn stream(s: &mut TcpStream, spec: StreamSpec, model: &str) -> io::Result<()> {
    let head = chunk_head(model);
    let mut out = Vec::with_capacity(BATCH + 512);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\n\r\n",
    );
    let mut json = String::with_capacity(512);
    let mut text = String::with_capacity(spec.b + 32);
    let mut delta = String::with_capacity(spec.b + 64);
    delta_json(
        &head,
        r#"{"role":"assistant","content":""}"#,
        "null",
        &mut json,
    );
    push_event(&mut out, &json);
    let t0 = tokio::time::Instant::now();
    let pace = Duration::from_millis(spec.pace_ms);
    for seq in 0..spec.n {
        if spec.pace_ms > 0 && seq > 0 {
            if !out.is_empty() {
                s.write_all(&out).await?;
                out.clear();
            }
            tokio::time::sleep_until(t0 + pace * seq as u32).await;
        }
        content(seq, now_ns(), spec.b, &mut text);
        delta.clear();
        delta.push_str(r#"{"content":""#);
        delta.push_str(&text);
        delta.push_str(r#""}"#);
        delta_json(&head, &delta, "null", &mut json);
        push_event(&mut out, &json);
        if spec.pace_ms > 0 || out.len() >= BATCH {
            s.write_all(&out).await?;
            out.clear();
        }
    }
    delta_json(&head, "{}", r#""stop""#, &mut json);
    push_event(&mut out, &json);
    push_event(&mut out, "[DONE]");
    out.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_survives_the_trip_through_a_request_body() {
        let spec = StreamSpec {
            n: 200,
            b: 64,
            pace_ms: 20,
        };
        // As the gateway forwards it (the prompt is the last user message;
        // an earlier "bench n=" in the body does not count).
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"bench n=1 b=1 p=1"}},{{"role":"user","content":"{}"}}],"stream":true}}"#,
            spec.prompt()
        );
        assert_eq!(StreamSpec::from_body(body.as_bytes()), Some(spec));
        for bad in [
            &b"{}"[..],
            b"bench n=3",
            b"bench n=x b=1 p=1",
            b"bench b=1 n=1 p=1",
            b"\xff bench n=1 b=1 p=1",
        ] {
            assert_eq!(StreamSpec::from_body(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunks_name_the_requested_model() {
        let body = br#"{"model":"bench-upstream","messages":[],"stream":true}"#;
        assert_eq!(request_model(body), Some("bench-upstream"));
        assert_eq!(request_model(br#"{"messages":[]}"#), None);
        assert_eq!(request_model(br#"{"model":"a\"b"}"#), None);
        assert_eq!(request_model(br#"{"model":"a b"}"#), None);
        let head = chunk_head("m-1");
        let mut json = String::new();
        delta_json(&head, r#"{"content":"hi"}"#, "null", &mut json);
        let v: serde_json::Value = serde_json::from_str(&json).expect("a chunk is JSON");
        assert_eq!(v["model"], "m-1");
        assert_eq!(v["choices"][0]["delta"]["content"], "hi");
    }

    #[test]
    fn content_is_seq_and_time_padded_to_the_size() {
        let mut s = String::new();
        content(12, 345, 10, &mut s);
        assert_eq!(s, "12:345:xxx");
        // never truncated below the header, even when b is small
        content(12, 345, 3, &mut s);
        assert_eq!(s, "12:345:");
    }
}
