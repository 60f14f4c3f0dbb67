//! Outbound HTTP proxy support for upstream requests (`--proxy`, per-provider
//! `proxy`, `NO_PROXY`-style exclusions).
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
//! - **`http` through the proxy**: connect to the proxy and return a stream
//!   that rewrites every request head awc writes from origin-form
//!   (`POST /v1/chat/completions HTTP/1.1`) to absolute-form
//!   (`POST http://host:port/v1/chat/completions HTTP/1.1`) and adds
//!   `Proxy-Authorization` when the proxy URL has credentials. The writer
//!   follows HTTP/1.1 message framing (`Content-Length`, chunked), so a
//!   kept-alive connection carrying several requests is rewritten correctly.
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
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

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
            format!("Basic {}", base64(pair.as_bytes()))
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
    Net {
        addr: IpAddr,
        prefix: u8,
    },
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
            if let Some((net, bits)) = entry.split_once('/') {
                let addr: IpAddr = net
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| fail("not an IP network"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = bits
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| fail("bad prefix length"))?;
                out.entries.push(Exclusion::Net { addr, prefix });
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
            Exclusion::Net { addr, prefix } => ip.is_some_and(|ip| in_network(ip, *addr, *prefix)),
        })
    }

    /// Whether the list excludes nothing.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.entries.is_empty()
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
        let prefix = u32::from(prefix);
        if prefix == 0 {
            0
        } else {
            bits >> (width - prefix)
        }
    }
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            masked(u32::from(a).into(), 32, prefix) == masked(u32::from(b).into(), 32, prefix)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            masked(u128::from(a), 128, prefix) == masked(u128::from(b), 128, prefix)
        }
        _ => false,
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

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad percent-escape".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".to_string())
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether a request to `uri` goes through a `CONNECT` tunnel (everything
/// but plain `http`).
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
                    Ok(Connection::new(uri, ProxyStream::direct(io)))
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
/// a plain-HTTP proxy connection whose request heads are rewritten to
/// absolute-form. Generic over the transport for tests.
pub struct ProxyStream<IO = TcpStream> {
    io: IO,
    /// Bytes read past the `CONNECT` answer, served first.
    prefix: VecDeque<u8>,
    rewrite: Option<Box<AbsoluteForm>>,
    /// A response head being collected, to be marked `connection: close`.
    response: Option<Vec<u8>>,
    mode: &'static str,
}

impl<IO> ProxyStream<IO> {
    /// A direct connection.
    pub fn direct(io: IO) -> Self {
        ProxyStream {
            io,
            prefix: VecDeque::new(),
            rewrite: None,
            response: None,
            mode: "direct",
        }
    }

    /// A `CONNECT` tunnel; `leftover`: bytes the proxy sent after its answer.
    pub fn tunnel(io: IO, leftover: Vec<u8>) -> Self {
        ProxyStream {
            io,
            prefix: leftover.into(),
            rewrite: None,
            response: None,
            mode: "tunnel",
        }
    }

    /// A plain-HTTP proxy connection: every origin-form request target
    /// written is prefixed with `origin` (`http://host:port`), and
    /// `authorization` (a `Proxy-Authorization` value) is added to every
    /// request head that lacks one.
    ///
    /// The connection carries one request: the first final response head
    /// read is marked `connection: close` (its own `Connection` and
    /// `Keep-Alive` headers removed), so awc never reuses it. Some proxies
    /// (tinyproxy) only parse the first request of a connection and relay
    /// the rest raw to the origin, which would send a second request there
    /// with the proxy credentials.
    pub fn absolute_form(io: IO, origin: String, authorization: Option<String>) -> Self {
        ProxyStream {
            io,
            prefix: VecDeque::new(),
            rewrite: Some(Box::new(AbsoluteForm {
                origin,
                authorization,
                state: Framing::Head,
                head: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
            })),
            response: Some(Vec::new()),
            mode: "absolute-form",
        }
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

impl<IO: AsyncRead + Unpin> AsyncRead for ProxyStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.prefix.is_empty() {
                let n = this.prefix.len().min(buf.remaining());
                let (a, b) = this.prefix.as_slices();
                let from_a = n.min(a.len());
                buf.put_slice(&a[..from_a]);
                buf.put_slice(&b[..n - from_a]);
                this.prefix.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let Some(head) = this.response.as_mut() else {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            };
            let mut chunk = [0u8; 4096];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = chunk_buf.filled();
            if got.is_empty() {
                // EOF inside a head: hand over what there is; awc reports it.
                this.prefix.extend(head.drain(..));
                this.response = None;
                if this.prefix.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            head.extend_from_slice(got);
            match close_response_heads(head, &mut this.prefix) {
                Ok(true) => {
                    this.prefix.extend(head.drain(..));
                    this.response = None;
                }
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Moves every complete response head at the start of `held` to `out`:
/// interim (1xx) heads as they are, the final head with its `Connection`,
/// `Keep-Alive` and `Proxy-Connection` headers replaced by
/// `connection: close`. Returns whether the final head was seen (or a 101,
/// after which the bytes are not HTTP).
fn close_response_heads(held: &mut Vec<u8>, out: &mut VecDeque<u8>) -> io::Result<bool> {
    loop {
        let Some(end) = find(held, b"\r\n\r\n").map(|i| i + 4) else {
            if held.len() > MAX_REQUEST_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("response head over {MAX_REQUEST_HEAD} bytes"),
                ));
            }
            return Ok(false);
        };
        let head: Vec<u8> = held.drain(..end).collect();
        let line_end = find(&head, b"\r\n").unwrap_or(head.len());
        let status = std::str::from_utf8(&head[..line_end])
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        match status {
            Some(code) if (100..200).contains(&code) => {
                out.extend(head);
                if code == 101 {
                    return Ok(true);
                }
            }
            _ => {
                out.extend(&head[..line_end + 2]);
                for line in head[line_end + 2..head.len() - 2].split_inclusive(|b| *b == b'\n') {
                    let name = line.iter().position(|b| *b == b':').map(|c| {
                        String::from_utf8_lossy(&line[..c])
                            .trim()
                            .to_ascii_lowercase()
                    });
                    if !matches!(
                        name.as_deref(),
                        Some("connection" | "keep-alive" | "proxy-connection")
                    ) {
                        out.extend(line);
                    }
                }
                out.extend(b"connection: close\r\n\r\n");
                return Ok(true);
            }
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
        match this.rewrite.as_mut() {
            None => Pin::new(&mut this.io).poll_write(cx, buf),
            Some(rw) => rw.poll_write(&mut this.io, cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rw) = this.rewrite.as_mut() {
            // Rewritten bytes still buffered go out first.
            std::task::ready!(rw.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rw) = this.rewrite.as_mut() {
            // Rewritten bytes still buffered go out first.
            std::task::ready!(rw.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: ActixStream> ActixStream for ProxyStream<IO> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        self.io.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.io.poll_write_ready(cx)
    }
}

/// Where the absolute-form writer is in the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Collecting a request head.
    Head,
    /// A `Content-Length` body with this many bytes left.
    Body(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// After an upgrade / CONNECT: bytes pass through untouched.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: bool },
    Ext { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

impl Framing {
    /// Advances over `data`, which belongs to the current body; returns how
    /// many leading bytes of `data` belong to it (the state is `Head` when
    /// the body ended there).
    fn advance(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < data.len() {
            match self {
                Framing::Head => return Ok(i),
                Framing::Raw => return Ok(data.len()),
                Framing::Body(left) => {
                    let take = (data.len() - i).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    i += take;
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Framing::Head;
                    }
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let take = (data.len() - i).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    i += take;
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Framing::Chunked(Chunk::DataCr);
                    }
                }
                Framing::Chunked(c) => {
                    let b = data[i];
                    i += 1;
                    let bad =
                        || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
                    *self = match *c {
                        Chunk::Size { value, digits } => match b {
                            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                                let value = value
                                    .checked_mul(16)
                                    .and_then(|v| v.checked_add(d))
                                    .ok_or_else(bad)?;
                                Framing::Chunked(Chunk::Size {
                                    value,
                                    digits: true,
                                })
                            }
                            b';' | b' ' | b'\t' if digits => Framing::Chunked(Chunk::Ext { value }),
                            b'\r' if digits => Framing::Chunked(Chunk::SizeLf { value }),
                            _ => return Err(bad()),
                        },
                        Chunk::Ext { value } => match b {
                            b'\r' => Framing::Chunked(Chunk::SizeLf { value }),
                            _ => Framing::Chunked(Chunk::Ext { value }),
                        },
                        Chunk::SizeLf { value } => match (b, value) {
                            (b'\n', 0) => Framing::Chunked(Chunk::TrailerStart),
                            (b'\n', n) => Framing::Chunked(Chunk::Data(n)),
                            _ => return Err(bad()),
                        },
                        Chunk::DataCr if b == b'\r' => Framing::Chunked(Chunk::DataLf),
                        Chunk::DataLf if b == b'\n' => Framing::Chunked(Chunk::Size {
                            value: 0,
                            digits: false,
                        }),
                        Chunk::TrailerStart if b == b'\r' => Framing::Chunked(Chunk::FinalLf),
                        Chunk::TrailerStart | Chunk::TrailerLine => match b {
                            b'\r' => Framing::Chunked(Chunk::TrailerLf),
                            _ => Framing::Chunked(Chunk::TrailerLine),
                        },
                        Chunk::TrailerLf if b == b'\n' => Framing::Chunked(Chunk::TrailerStart),
                        Chunk::FinalLf if b == b'\n' => Framing::Head,
                        _ => return Err(bad()),
                    };
                }
            }
        }
        Ok(i)
    }
}

/// The write side of an absolute-form connection.
struct AbsoluteForm {
    origin: String,
    authorization: Option<String>,
    state: Framing,
    /// The request head being collected.
    head: Vec<u8>,
    /// A rewritten head not yet written to the transport.
    out: Vec<u8>,
    out_pos: usize,
}

impl AbsoluteForm {
    fn pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes the pending rewritten head to `io`.
    fn poll_drain<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending() {
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.out_pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.out_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.poll_drain(io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            match self.state {
                Framing::Raw => return Pin::new(&mut *io).poll_write(cx, buf),
                Framing::Head => {
                    let taken = match self.take_head(buf) {
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    // Start sending a completed head now; whatever is left
                    // goes out on the next write or flush.
                    if let Poll::Ready(Err(e)) = self.poll_drain(io, cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(taken));
                }
                Framing::Body(_) | Framing::Chunked(_) => {
                    let mut probe = self.state;
                    let mine = match probe.advance(buf) {
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    if mine == 0 {
                        // Cannot happen (a body state always takes a byte),
                        // but never spin.
                        self.state = Framing::Head;
                        continue;
                    }
                    return match Pin::new(&mut *io).poll_write(cx, &buf[..mine]) {
                        Poll::Ready(Ok(n)) => match self.state.advance(&buf[..n]) {
                            Ok(_) => Poll::Ready(Ok(n)),
                            Err(e) => Poll::Ready(Err(e)),
                        },
                        other => other,
                    };
                }
            }
        }
    }

    /// Takes bytes of a request head from `buf` (stopping at its end);
    /// when the head is complete, rewrites it into `out` and sets the body
    /// state. Returns how many bytes were taken.
    fn take_head(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Look for the end of the head in what is held plus `buf`, without
        // taking bytes past it.
        let from = self.head.len().saturating_sub(3);
        let held = self.head.len() - from;
        let mut joined = self.head[from..].to_vec();
        let window = buf.len().min(MAX_REQUEST_HEAD + 4);
        joined.extend_from_slice(&buf[..window]);
        let taken = match find(&joined, b"\r\n\r\n") {
            Some(i) => i + 4 - held,
            None => window,
        };
        self.head.extend_from_slice(&buf[..taken]);
        if !self.head.ends_with(b"\r\n\r\n") {
            if self.head.len() > MAX_REQUEST_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request head over {MAX_REQUEST_HEAD} bytes"),
                ));
            }
            return Ok(taken);
        }
        let head = std::mem::take(&mut self.head);
        self.out = self.rewrite_head(&head)?;
        self.out_pos = 0;
        Ok(taken)
    }

    fn rewrite_head(&mut self, head: &[u8]) -> io::Result<Vec<u8>> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let line_end = find(head, b"\r\n").ok_or_else(|| bad("request line without CRLF"))?;
        let line =
            std::str::from_utf8(&head[..line_end]).map_err(|_| bad("request line not UTF-8"))?;
        let mut parts = line.splitn(3, ' ');
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m, t, v),
            _ => return Err(bad("malformed request line")),
        };
        let mut framing = Framing::Body(0);
        let mut has_auth = false;
        let mut upgrade = method.eq_ignore_ascii_case("CONNECT");
        let headers = &head[line_end + 2..];
        for raw in headers.split(|b| *b == b'\n') {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let Some(colon) = raw.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = String::from_utf8_lossy(&raw[..colon])
                .trim()
                .to_ascii_lowercase();
            let value = String::from_utf8_lossy(&raw[colon + 1..])
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                // Chunked wins over a length (RFC 9112 §6.3).
                "content-length" if !matches!(framing, Framing::Chunked(_)) => {
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| bad("bad Content-Length"))?;
                    framing = Framing::Body(n);
                }
                "transfer-encoding" if value.contains("chunked") => {
                    framing = Framing::Chunked(Chunk::Size {
                        value: 0,
                        digits: false,
                    });
                }
                "upgrade" => upgrade = true,
                "proxy-authorization" => has_auth = true,
                _ => {}
            }
        }
        self.state = match framing {
            _ if upgrade => Framing::Raw,
            Framing::Body(0) => Framing::Head,
            f => f,
        };
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
