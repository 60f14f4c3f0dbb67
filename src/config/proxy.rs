//! Outbound proxy settings (`--proxy`, per-provider `proxy`, `--no-proxy`),
//! parsed once at start-up: a [`ProxySpec`] (the proxy's address and
//! credentials) carrying its [`NoProxy`] exclusions. The connector that
//! uses them is `upstream/proxy.rs`.

use std::fmt;
use std::net::IpAddr;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use ipnet::IpNet;

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
pub(crate) fn host_port(host: &str, port: u16) -> String {
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
