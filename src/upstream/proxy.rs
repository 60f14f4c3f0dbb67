//! Upstream connections: the TCP step of awc's connector, with outbound
//! HTTP proxy support (`--proxy`, per-provider `proxy`, `NO_PROXY`-style
//! exclusions) and the framing guard on every plain-HTTP connection.
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
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::net::{ActixStream, Ready};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use futures_util::future::LocalBoxFuture;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::framing::ResponseFraming;

/// Longest a proxy may take to answer `CONNECT` (awc's connect timeout,
/// which covers the whole connector call, is normally shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `CONNECT` response head accepted from a proxy.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;
/// Largest request head the absolute-form writer buffers.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// ProxySpec and NO_PROXY
// ---------------------------------------------------------------------------

/// A parsed proxy URL (`http://[user:pass@]host[:port]`) with its
/// exclusion list.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// Host name or IP (IPv6 without brackets), lower-cased.
    host: String,
    port: u16,
    user: Option<String>,
    /// `Basic …`, precomputed, when the URL has credentials.
    authorization: Option<String>,
    no_proxy: NoProxy,
}

impl ProxySpec {
    /// Parses a proxy URL and an optional `NO_PROXY`-style list.
    ///
    /// The URL is `http://[user[:password]@]host[:port][/]`; the scheme may
    /// be left out (`host:port` means `http://host:port`); the port defaults
    /// to 80; user and password are percent-decoded. Only `http` proxies are
    /// supported (the tunnel to an `https` upstream is still end-to-end TLS).
    ///
    /// The list is comma- (or space-) separated; each entry is `*`
    /// (everything), a host name (matches it and its subdomains), `.suffix`
    /// or `*.suffix` (same), an IP address, an IP network in CIDR form
    /// (`10.0.0.0/8`), or any of these but `*` and CIDR with `:port` (then
    /// only that port matches; IPv6 as `[::1]:8080`). Matching is
    /// case-insensitive and never resolves names.
    pub fn parse(url: &str, no_proxy: Option<&str>) -> Result<ProxySpec, String> {
        let shown = redact_url(url.trim());
        let fail = |why: &str| format!("invalid proxy URL `{shown}`: {why}");
        let raw = url.trim();
        if raw.is_empty() {
            return Err("invalid proxy URL ``: empty".to_string());
        }
        let rest = match raw.split_once("://") {
            Some((scheme, rest)) => {
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(fail(&format!(
                        "scheme `{scheme}` is not supported (only http:// proxies)"
                    )));
                }
                rest
            }
            None => raw,
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !(path.is_empty() || path == "/") {
            return Err(fail("a proxy URL has no path, query or fragment"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                let user = percent_decode(user).map_err(|e| fail(&format!("user name: {e}")))?;
                if user.is_empty() {
                    return Err(fail("empty user name before `@`"));
                }
                let pass = pass
                    .map(percent_decode)
                    .transpose()
                    .map_err(|e| fail(&format!("password: {e}")))?;
                (Some(user), pass)
            }
        };
        let (host, port) = split_host_port(hostport).map_err(|e| fail(&e))?;
        let port = port.unwrap_or(80);
        if port == 0 {
            return Err(fail("port 0"));
        }
        let authorization = user.as_ref().map(|u| {
            let pair = format!("{u}:{}", password.as_deref().unwrap_or(""));
            format!("Basic {}", BASE64.encode(pair.as_bytes()))
        });
        let no_proxy = match no_proxy {
            Some(list) => NoProxy::parse(list)?,
            None => NoProxy::default(),
        };
        Ok(ProxySpec {
            host,
            port,
            user,
            authorization,
            no_proxy,
        })
    }

    /// This proxy with `no_proxy` as its exclusion list.
    pub fn with_no_proxy(mut self, no_proxy: NoProxy) -> ProxySpec {
        self.no_proxy = no_proxy;
        self
    }

    /// Whether a connection to `host:port` goes direct instead of through
    /// this proxy. `host` may be an IPv6 literal with or without brackets.
    pub fn bypass(&self, host: &str, port: u16) -> bool {
        self.no_proxy.matches(host, port)
    }

    /// The proxy's host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the proxy (IPv6 bracketed).
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// The proxy user, when the URL has credentials.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The `Proxy-Authorization` value (`Basic …`), when the URL has
    /// credentials.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

/// `http://user:***@host:port` — never shows the password.
impl fmt::Display for ProxySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "http://{u}:***@{}", self.address()),
            None => write!(f, "http://{}", self.address()),
        }
    }
}

impl fmt::Debug for ProxySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySpec")
            .field("url", &self.to_string())
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// A `NO_PROXY`-style exclusion list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    everything: bool,
    entries: Vec<Exclusion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Exclusion {
    /// A domain: matches itself and every subdomain.
    Domain {
        name: String,
        port: Option<u16>,
    },
    Ip {
        addr: IpAddr,
        port: Option<u16>,
    },
    Net(IpNet),
}

impl NoProxy {
    /// Parses a comma/space-separated list (see [`ProxySpec::parse`]).
    pub fn parse(list: &str) -> Result<NoProxy, String> {
        let mut out = NoProxy::default();
        for raw in list.split([',', ' ', '\t', '\n']) {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            let fail = |why: &str| format!("invalid NO_PROXY entry `{entry}`: {why}");
            if entry == "*" {
                out.everything = true;
                continue;
            }
            if entry.contains('/') {
                let net: IpNet = entry
                    .replace(['[', ']'], "")
                    .parse()
                    .map_err(|_| fail("not an IP network with a valid prefix length"))?;
                out.entries.push(Exclusion::Net(net));
                continue;
            }
            // A bare IPv6 literal has several colons and no port.
            if let Ok(addr) = entry.parse::<IpAddr>() {
                out.entries.push(Exclusion::Ip { addr, port: None });
                continue;
            }
            let (host, port) = split_host_port(entry).map_err(|e| fail(&e))?;
            if let Ok(addr) = host.parse::<IpAddr>() {
                out.entries.push(Exclusion::Ip { addr, port });
                continue;
            }
            let name = host
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_string();
            if name.is_empty() || name.contains('*') {
                return Err(fail("not a host name or domain"));
            }
            out.entries.push(Exclusion::Domain { name, port });
        }
        Ok(out)
    }

    /// Whether `host:port` is excluded.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = normalize_host(host);
        let ip: Option<IpAddr> = host.parse().ok();
        self.entries.iter().any(|e| match e {
            Exclusion::Domain { name, port: p } => {
                ip.is_none()
                    && p.map_or(true, |p| p == port)
                    && (host == *name
                        || (host.len() > name.len()
                            && host.ends_with(name.as_str())
                            && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
            }
            Exclusion::Ip { addr, port: p } => ip == Some(*addr) && p.map_or(true, |p| p == port),
            Exclusion::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
        })
    }

    /// Whether the list excludes nothing.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.entries.is_empty()
    }
}

/// Lower-case, no brackets, no trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Splits `host[:port]` / `[v6][:port]`; the host comes back normalized.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in IPv6 address".to_string())?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{p}` after IPv6 address"))?,
            ),
        };
        (v6, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?),
    };
    let host = normalize_host(host);
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '*');
    if !host.chars().all(ok) {
        return Err(format!("`{host}` is not a valid host"));
    }
    Ok((host, port))
}

/// `host:port`, bracketing IPv6 literals.
fn host_port(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The URL with any password replaced by `***` (for error messages).
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// Percent-decodes a user name or password; every `%` must start an
/// escape (the decoder would pass a stray one through).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let escapes_ok = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Err("bad percent-escape".to_string());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| "not UTF-8 after percent-decoding".to_string())
}

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
            let mut chunk = [0u8; READ_CHUNK];
            let want = buf.remaining().min(READ_CHUNK);
            let mut chunk_buf = ReadBuf::new(&mut chunk[..want]);
            std::task::ready!(Pin::new(&mut *io).poll_read(cx, &mut chunk_buf))?;
            let got = chunk_buf.filled();
            let fed = if got.is_empty() {
                self.done = true;
                self.framing.end(&mut self.out)
            } else {
                self.framing.feed(got, &mut self.out)
            };
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
