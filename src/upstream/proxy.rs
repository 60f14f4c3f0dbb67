//! Upstream connections: the TCP step of awc's connector, with outbound
//! HTTP proxy support (the [`ProxySpec`]s parsed in `config/proxy.rs`) and
//! the framing guard on every plain-HTTP connection.
//!
//! awc has no proxy support of its own, but it lets the TCP step be
//! replaced: [`ProxyConnector`] is a drop-in for
//! `actix_tls::connect::Connector::default().service()` in
//! `awc::Connector::new().connector(..)`. For every connection awc asks for
//! it picks a route:
//!
//! - **direct** (no proxy, or the host is excluded): resolve and connect,
//!   as the default connector does;
//! - **`https`/`ws`/`wss` through the proxy**: connect to the proxy, send
//!   `CONNECT host:port`, require a 2xx answer, and hand the tunnel to awc,
//!   which then does TLS (and HTTP/2 if negotiated) end to end;
//! - **`http` through the proxy**: connect to the proxy; the connection
//!   carries one request, whose head is rewritten from origin-form
//!   (`POST /v1/chat/completions HTTP/1.1`) to absolute-form
//!   (`POST http://host:port/v1/chat/completions HTTP/1.1`) with
//!   `Proxy-Authorization` added when the proxy URL has credentials; the
//!   bytes after the head pass untouched, and the response is marked
//!   `connection: close` so that awc never sends a second request on it.
//!
//! Every plain-HTTP connection (direct or through the proxy) reads its
//! responses through [`ResponseFraming`], which makes awc read
//! close-delimited bodies to the close and report a body cut before its
//! end as an error (see `framing.rs`). Over TLS the guard cannot see HTTP:
//! awc does TLS above this connector.
//!
//! All connections get TCP_NODELAY. The proxy itself is always plain HTTP.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::net::{ActixStream, Ready};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::framing::ResponseFraming;
use crate::config::proxy::{host_port, ProxySpec};

/// Longest a proxy may take to answer `CONNECT` (awc's connect timeout,
/// which covers the whole connector call, is normally shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `CONNECT` response head accepted from a proxy.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;
/// Largest request head the absolute-form writer buffers.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Whether a request to `uri` goes through a `CONNECT` tunnel when
/// proxied, and speaks TLS (or WebSocket framing) over the connection:
/// everything but plain `http`.
fn tunnels(uri: &Uri) -> bool {
    !matches!(uri.scheme_str(), Some("http") | None)
}

// ---------------------------------------------------------------------------
// The connector
// ---------------------------------------------------------------------------

/// The TCP step of awc's connector, with an optional proxy. Build it with
/// [`tcp_connector`]; one awc client has one proxy (awc pools connections
/// by origin, so a per-upstream proxy needs a per-upstream client).
#[derive(Clone)]
pub struct ProxyConnector {
    proxy: Option<Arc<ProxySpec>>,
    tcp: ConnectorService,
}

/// A connector sending every connection through `proxy` (unless excluded by
/// its `NO_PROXY` list), or directly when `proxy` is `None`.
pub fn tcp_connector(proxy: Option<Arc<ProxySpec>>) -> ProxyConnector {
    ProxyConnector {
        proxy,
        tcp: actix_tls::connect::Connector::default().service(),
    }
}

impl ProxyConnector {
    /// The proxy for a connection to `host:port`, or `None` for direct.
    fn proxy_for(&self, host: &str, port: u16) -> Option<Arc<ProxySpec>> {
        self.proxy
            .as_ref()
            .filter(|p| !p.bypass(host, port))
            .cloned()
    }
}

impl fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConnector")
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl Service<ConnectInfo<Uri>> for ProxyConnector {
    type Response = Connection<Uri, ProxyStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, ConnectError>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let proxy = self.proxy_for(req.hostname(), req.port());
        let tcp = self.tcp.clone();
        Box::pin(async move {
            match proxy {
                None => {
                    let conn = tcp.call(req).await?;
                    let (io, uri) = conn.into_parts();
                    let _ = io.set_nodelay(true);
                    let stream = if tunnels(&uri) {
                        ProxyStream::direct(io)
                    } else {
                        ProxyStream::plain(io)
                    };
                    Ok(Connection::new(uri, stream))
                }
                Some(proxy) => {
                    let uri = req.request().clone();
                    let target = host_port(req.hostname(), req.port());
                    let mut io = connect_proxy(&tcp, &proxy).await?;
                    let stream = if tunnels(&uri) {
                        let leftover = tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            handshake(&mut io, &proxy, &target),
                        )
                        .await
                        .map_err(|_| {
                            proxy_error(format!(
                                "proxy {} did not answer CONNECT to {target} within {}s",
                                proxy.address(),
                                HANDSHAKE_TIMEOUT.as_secs()
                            ))
                        })??;
                        ProxyStream::tunnel(io, leftover)
                    } else {
                        ProxyStream::absolute_form(
                            io,
                            format!("http://{target}"),
                            proxy.authorization().map(str::to_string),
                        )
                    };
                    Ok(Connection::new(uri, stream))
                }
            }
        })
    }
}

fn proxy_error(msg: String) -> ConnectError {
    ConnectError::Io(io::Error::other(msg))
}

/// Resolves and connects to the proxy itself.
async fn connect_proxy(
    tcp: &ConnectorService,
    proxy: &ProxySpec,
) -> Result<TcpStream, ConnectError> {
    let info = ConnectInfo::new(proxy.address());
    match tcp.call(info).await {
        Ok(conn) => {
            let io = conn.into_parts().0;
            let _ = io.set_nodelay(true);
            Ok(io)
        }
        Err(ConnectError::Io(e)) => Err(ConnectError::Io(io::Error::new(
            e.kind(),
            format!("cannot connect to proxy {}: {e}", proxy.address()),
        ))),
        Err(e) => Err(proxy_error(format!(
            "cannot connect to proxy {}: {e}",
            proxy.address()
        ))),
    }
}

/// Sends `CONNECT target` on `io` and reads the answer; returns the bytes
/// read past the answer's head (normally none).
async fn handshake(
    io: &mut TcpStream,
    proxy: &ProxySpec,
    target: &str,
) -> Result<Vec<u8>, ConnectError> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| proxy_error(format!("sending CONNECT to proxy {}: {e}", proxy.address())))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = io.read(&mut chunk).await.map_err(|e| {
            proxy_error(format!(
                "reading the CONNECT answer of proxy {}: {e}",
                proxy.address()
            ))
        })?;
        if n == 0 {
            return Err(proxy_error(format!(
                "proxy {} closed the connection during CONNECT to {target}",
                proxy.address()
            )));
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
            break from + i + 4;
        }
        if buf.len() > MAX_CONNECT_RESPONSE {
            return Err(proxy_error(format!(
                "proxy {} sent a CONNECT answer head over {MAX_CONNECT_RESPONSE} bytes",
                proxy.address()
            )));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let reason = parts.next().unwrap_or("").trim();
    match code {
        Some(code) if version.starts_with("HTTP/1.") && (200..300).contains(&code) => {
            Ok(buf[head_end..].to_vec())
        }
        Some(code) if version.starts_with("HTTP/1.") => Err(proxy_error(format!(
            "proxy {} refused CONNECT to {target}: {code} {reason}",
            proxy.address()
        ))),
        _ => Err(proxy_error(format!(
            "proxy {} answered CONNECT to {target} with a malformed status line `{}`",
            proxy.address(),
            status_line.chars().take(80).collect::<String>()
        ))),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------

/// A connection made by [`ProxyConnector`]: direct, a `CONNECT` tunnel, or
/// a plain-HTTP proxy connection whose first request head is rewritten to
/// absolute-form. Every plain-HTTP connection (direct or through the proxy)
/// reads its responses through the framing guard
/// ([`super::framing::ResponseFraming`]); TLS connections (direct `https`
/// and tunnels) cannot be read by it and pass bytes untouched. Generic over
/// the transport for tests.
pub struct ProxyStream<IO = TcpStream> {
    io: IO,
    /// Bytes read past the `CONNECT` answer, served first.
    prefix: VecDeque<u8>,
    /// The absolute-form rewrite of the request head, until it is written.
    request: Option<Box<AbsoluteForm>>,
    /// The framing guard of a plain-HTTP connection.
    guard: Option<Box<Guard>>,
    mode: &'static str,
}

impl<IO> ProxyStream<IO> {
    fn new(io: IO, mode: &'static str) -> Self {
        ProxyStream {
            io,
            prefix: VecDeque::new(),
            request: None,
            guard: None,
            mode,
        }
    }

    /// A direct connection whose bytes pass untouched (TLS is spoken over
    /// it).
    pub fn direct(io: IO) -> Self {
        Self::new(io, "direct")
    }

    /// A direct plain-HTTP connection: responses are read through the
    /// framing guard.
    pub fn plain(io: IO) -> Self {
        let mut s = Self::new(io, "plain");
        s.guard = Some(Box::new(Guard::new(false)));
        s
    }

    /// A `CONNECT` tunnel; `leftover`: bytes the proxy sent after its answer.
    pub fn tunnel(io: IO, leftover: Vec<u8>) -> Self {
        let mut s = Self::new(io, "tunnel");
        s.prefix = leftover.into();
        s
    }

    /// A plain-HTTP proxy connection, carrying one request: its head's
    /// origin-form target is prefixed with `origin` (`http://host:port`)
    /// and `authorization` (a `Proxy-Authorization` value) is added when
    /// the head lacks one; everything written after the head passes
    /// untouched. The response is read through the framing guard, and its
    /// final head is marked `connection: close` (its own `Connection` and
    /// `Keep-Alive` headers removed), so awc never reuses the connection:
    /// some proxies (tinyproxy) parse only the first request of a
    /// connection and relay the rest raw to the origin, which would send a
    /// second request there with the proxy credentials.
    pub fn absolute_form(io: IO, origin: String, authorization: Option<String>) -> Self {
        let mut s = Self::new(io, "absolute-form");
        s.request = Some(Box::new(AbsoluteForm {
            origin,
            authorization,
            head: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            written: false,
        }));
        s.guard = Some(Box::new(Guard::new(true)));
        s
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: fmt::Debug> fmt::Debug for ProxyStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyStream")
            .field("mode", &self.mode)
            .field("io", &self.io)
            .finish()
    }
}

/// The read side of a plain-HTTP connection: the framing machine and what
/// it produced that the reader has not taken yet.
struct Guard {
    framing: ResponseFraming,
    out: Vec<u8>,
    out_pos: usize,
    /// The transport reached EOF (or failed); nothing more is read from it.
    done: bool,
}

impl Guard {
    fn new(close_each: bool) -> Self {
        Guard {
            framing: ResponseFraming::new(close_each),
            out: Vec::new(),
            out_pos: 0,
            done: false,
        }
    }

    fn pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Reads from `io` through the framing machine into `buf`.
    fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pending() {
                let n = (self.out.len() - self.out_pos).min(buf.remaining());
                buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                if !self.pending() {
                    self.out.clear();
                    self.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if self.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let want = buf.remaining().min(READ_CHUNK);
            let mut read = |scratch: &mut Vec<u8>| {
                scratch.clear();
                scratch.reserve(want);
                // Read into spare room: nothing to zero first (this runs on
                // every poll, ready or not).
                let mut chunk = ReadBuf::uninit(&mut scratch.spare_capacity_mut()[..want]);
                match Pin::new(&mut *io).poll_read(cx, &mut chunk) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let got = chunk.filled();
                        Poll::Ready(if got.is_empty() {
                            self.done = true;
                            self.framing.end(&mut self.out)
                        } else {
                            self.framing.feed(got, &mut self.out)
                        })
                    }
                }
            };
            // (A transport that is itself a guarded stream would find the
            // scratch taken: it gets its own.)
            let fed = READ_SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => read(&mut scratch),
                Err(_) => read(&mut Vec::new()),
            });
            let fed = std::task::ready!(fed);
            if let Err(e) = fed {
                self.done = true;
                self.out.clear();
                self.out_pos = 0;
                return Poll::Ready(Err(e));
            }
        }
    }
}

/// Most bytes the guard reads from the transport at once.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where the guard reads before the framing machine copies the bytes
    /// out (one per thread: no buffer per connection).
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<IO: AsyncRead + Unpin> AsyncRead for ProxyStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let (a, b) = this.prefix.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            this.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match this.guard.as_mut() {
            Some(guard) => guard.poll_read(&mut this.io, cx, buf),
            None => Pin::new(&mut this.io).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ProxyStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match this.request.as_mut() {
            Some(rw) if !rw.written => rw.poll_write(&mut this.io, cx, buf),
            _ => Pin::new(&mut this.io).poll_write(cx, buf),
        };
        if let (Poll::Ready(Ok(n)), Some(guard)) = (&written, this.guard.as_mut()) {
            if *n > 0 {
                guard.framing.request_sent();
            }
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rw) = this.request.as_mut() {
            // A rewritten head still buffered goes out first.
            std::task::ready!(rw.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rw) = this.request.as_mut() {
            // A rewritten head still buffered goes out first.
            std::task::ready!(rw.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: ActixStream> ActixStream for ProxyStream<IO> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        let guard_has_more = self.guard.as_ref().is_some_and(|g| g.pending() || g.done);
        if !self.prefix.is_empty() || guard_has_more {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        self.io.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.io.poll_write_ready(cx)
    }
}

/// The write side of an absolute-form connection: collects the request
/// head, writes it rewritten, then gets out of the way.
struct AbsoluteForm {
    origin: String,
    authorization: Option<String>,
    /// The request head being collected.
    head: Vec<u8>,
    /// The rewritten head not yet written to the transport.
    out: Vec<u8>,
    out_pos: usize,
    /// The head has been rewritten; later bytes pass untouched.
    written: bool,
}

impl AbsoluteForm {
    /// Writes the pending rewritten head to `io`.
    fn poll_drain<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.out_pos..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.out_pos += n,
            }
        }
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes bytes of the request head from `buf` (never past its end);
    /// when the head is complete, rewrites it and starts writing it.
    fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let from = self.head.len().saturating_sub(3);
        let held = self.head.len();
        self.head.extend_from_slice(buf);
        let taken = match find(&self.head[from..], b"\r\n\r\n") {
            Some(i) => {
                let end = from + i + 4;
                self.head.truncate(end);
                end - held
            }
            None if self.head.len() > MAX_REQUEST_HEAD => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request head over {MAX_REQUEST_HEAD} bytes"),
                )));
            }
            None => return Poll::Ready(Ok(buf.len())),
        };
        let head = std::mem::take(&mut self.head);
        self.out = self.rewrite_head(&head)?;
        self.written = true;
        // Start sending the head now; what is left goes out on the next
        // write or flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn rewrite_head(&self, head: &[u8]) -> io::Result<Vec<u8>> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let line_end = find(head, b"\r\n").ok_or_else(|| bad("request line without CRLF"))?;
        let line =
            std::str::from_utf8(&head[..line_end]).map_err(|_| bad("request line not UTF-8"))?;
        let mut parts = line.splitn(3, ' ');
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m, t, v),
            _ => return Err(bad("malformed request line")),
        };
        let headers = &head[line_end + 2..];
        let has_auth = headers
            .split(|b| *b == b'\n')
            .any(|l| l.len() >= 20 && l[..20].eq_ignore_ascii_case(b"proxy-authorization:"));
        let mut out = Vec::with_capacity(head.len() + self.origin.len() + 64);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        if target.starts_with('/') {
            out.extend_from_slice(self.origin.as_bytes());
        }
        out.extend_from_slice(target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let (Some(auth), false) = (&self.authorization, has_auth) {
            out.extend_from_slice(b"Proxy-Authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(headers);
        Ok(out)
    }
}
