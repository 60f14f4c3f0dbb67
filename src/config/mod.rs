//! Every flag and environment variable of PROTOCOL.md §1, in one struct.
//!
//! Each option is a long flag and a `NETFLY_*` variable; the flag wins. The
//! environment is read through a lookup function, so tests never touch the
//! process environment. A bad value is reported with the flag or variable
//! that carried it and the value itself.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;

pub mod providers;
pub mod proxy;

pub use providers::{ModelMap, PolicyOverrides, Provider, ProviderFile, UpstreamUrl};
use proxy::{NoProxy, ProxySpec};

/// Where chats are sent: the built-in demo upstream or a real URL.
#[derive(Debug, Clone)]
pub enum UpstreamSpec {
    /// `demo`: the in-process demo server of PROTOCOL.md §5.
    Demo,
    /// A chat-completions URL (`http://` or `https://`).
    Url(UpstreamUrl),
    /// A named upstream of the provider file (its proxy, if any, carries
    /// the `--no-proxy` list).
    Provider(Box<Provider>),
}

/// `demo`, the URL, or the provider's name.
impl std::fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamSpec::Demo => f.write_str("demo"),
            UpstreamSpec::Url(url) => url.fmt(f),
            UpstreamSpec::Provider(p) => f.write_str(&p.name),
        }
    }
}

/// Chats that outlive their socket: the resume window and the log bounds
/// (PROTOCOL.md §3.3, README "Resume").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeLimits {
    /// How long a chat with no socket attached keeps running, and an ended
    /// chat's log is kept (zero: no logs, a closed socket cancels).
    pub window: Duration,
    /// Bytes one chat's log may retain.
    pub per_chat: usize,
    /// Bytes all retained logs together may hold.
    pub total: usize,
}

/// Where chat logs live (`--resume-store`, PROTOCOL.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeStore {
    /// This process only (the default).
    Memory,
    /// A Redis (or Valkey) server shared by every instance naming it.
    Redis(RedisUrl),
}

/// A `redis://` or `rediss://` URL. Its password is never shown: `Display`
/// and `Debug` give the URL with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: String,
    shown: String,
}

impl RedisUrl {
    /// Checks `text` as the redis crate reads it: `redis://` or `rediss://`,
    /// a host, an optional port, password and database number.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let Some(mut url) = redis::parse_redis_url(text) else {
            return Err("not a redis:// or rediss:// URL".into());
        };
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err("expected a redis:// or rediss:// URL".into());
        }
        if url.host_str().map_or(true, str::is_empty) {
            return Err("the URL has no host".into());
        }
        redis::IntoConnectionInfo::into_connection_info(text).map_err(|e| e.to_string())?;
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        Ok(RedisUrl {
            url: text.to_owned(),
            shown: url.to_string(),
        })
    }

    /// The URL itself, password included (for the client only).
    pub fn secret(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

impl std::fmt::Display for ResumeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeStore::Memory => f.write_str("memory"),
            ResumeStore::Redis(url) => url.fmt(f),
        }
    }
}

fn parse_resume_store(raw: Option<Raw>) -> Result<ResumeStore, String> {
    let Some(raw) = raw else {
        return Ok(ResumeStore::Memory);
    };
    let text = raw.value.trim();
    if text.eq_ignore_ascii_case("memory") {
        return Ok(ResumeStore::Memory);
    }
    match RedisUrl::parse(text) {
        Ok(url) => Ok(ResumeStore::Redis(url)),
        // The value may hold a password: name the flag, not the value.
        Err(e) => Err(format!(
            "invalid {}: expected `memory` or redis://[:PASSWORD@]HOST[:PORT][/DB] (or rediss://): {e}",
            raw.name
        )),
    }
}

/// Which browser origins may open `/ws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Default: the `Origin` must name the host the request was sent to.
    SameHost,
    /// `*`: any origin.
    Any,
    /// An explicit list of `Origin` values (compared case-insensitively).
    List(Vec<String>),
}

/// Which `Host` names the gateway answers to (DNS-rebinding guard).
///
/// Loopback names and addresses and any IP-address literal are always
/// allowed (a rebinding attack needs a name it controls; a browser sends an
/// IP literal only for a page loaded from that very address); the list adds
/// the public names a deployment is reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// `*`: any `Host`.
    Any,
    /// Names besides the always-allowed ones: `chat.example.com` (any
    /// port), `.example.com` (that domain and every subdomain); lowercase,
    /// without a trailing dot.
    List(Vec<String>),
}

/// The gateway's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub upstreams: Vec<UpstreamSpec>,
    /// Fallback order per model (upstream names), from the provider file.
    pub routes: std::collections::BTreeMap<String, Vec<String>>,
    /// Outbound proxy for every upstream without its own (`--proxy`), with
    /// the `--no-proxy` exclusions.
    pub proxy: Option<ProxySpec>,
    pub api_key: Option<String>,
    pub models: Vec<String>,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub allowed_origins: AllowedOrigins,
    pub auth_tokens: Vec<String>,
    pub max_connections: usize,
    pub max_streams_per_connection: usize,
    pub max_frame_bytes: usize,
    /// Longest image data URL one content part may carry.
    pub max_image_bytes: usize,
    /// Sockets open at once from one client address (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Chats started per minute from one client address (0 = no limit).
    pub max_chats_per_minute_per_ip: u32,
    /// Longest SSE line, and longest event data, read from an upstream.
    pub max_upstream_event_bytes: usize,
    /// Largest whole (non-streamed) body read from an upstream.
    pub max_upstream_body_bytes: usize,
    /// Chats started per minute with one auth token (0 = no limit).
    pub max_chats_per_minute_per_token: u32,
    /// Chats in flight at once with one auth token (0 = no limit).
    pub max_concurrent_chats_per_token: usize,
    /// Proxies whose `X-Forwarded-For` names the real client address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    pub demo_word_delay: Duration,
    pub shutdown_grace: Duration,
    /// Worker threads (each with its own sessions and upstream client).
    pub workers: usize,
    /// Chats outliving their socket: the window and the log bounds.
    pub resume: ResumeLimits,
    /// `Host` names answered (`--allowed-hosts`, plus the `--bind` name).
    pub allowed_hosts: AllowedHosts,
    /// Longest wait for a `/v1` request body (`--client-body-timeout-ms`).
    pub client_body_timeout: Duration,
    /// A listener of its own for `/metrics` (`--metrics-bind`); the main
    /// listener then answers 404 there.
    pub metrics_bind: Option<SocketAddr>,
    /// Where chat logs live; with Redis, the chat limits are shared too.
    pub resume_store: ResumeStore,
    /// Test-only fault injection (no flag or variable sets it): a chat
    /// whose text contains `netfly-fault:panic-session` or
    /// `netfly-fault:panic-chat` panics in its session or its chat task, to
    /// prove that a panic stays contained.
    pub fault_injection: bool,
}

#[derive(Parser, Debug, Default)]
#[command(
    name = "netfly",
    version,
    about = "Real-time LLM chat gateway: WebSocket clients in, OpenAI-compatible streaming upstreams out.",
    after_help = "Every option can also be set through the NETFLY_* variable named in its help; the flag wins. Durations are milliseconds."
)]
struct Flags {
    /// TOML provider file: named upstreams, keys by env var, headers, model maps, defaults [env: NETFLY_CONFIG]
    #[arg(long)]
    config: Option<String>,
    /// Outbound HTTP proxy for upstream requests, http://[user:pass@]host:port [env: NETFLY_PROXY]
    #[arg(long)]
    proxy: Option<String>,
    /// Comma-separated hosts/domains that bypass the proxy [env: NETFLY_NO_PROXY]
    #[arg(long)]
    no_proxy: Option<String>,
    /// Listen address; port 0 picks a free port [env: NETFLY_BIND] [default: 127.0.0.1:8080]
    #[arg(long)]
    bind: Option<String>,
    /// Chat-completions URL(s), comma-separated, tried in order; `demo` = built-in demo upstream [env: NETFLY_UPSTREAM] [default: demo]
    #[arg(long)]
    upstream: Option<String>,
    /// Sent upstream as `Authorization: Bearer …` [env: NETFLY_API_KEY]
    #[arg(long)]
    api_key: Option<String>,
    /// Models a client may ask for; the first is the default [env: NETFLY_MODELS] [default: gpt-3.5-turbo,gpt-4]
    #[arg(long)]
    models: Option<String>,
    /// Attempts per upstream before falling back / failing [env: NETFLY_MAX_ATTEMPTS] [default: 5]
    #[arg(long)]
    max_attempts: Option<String>,
    /// Backoff base delay in ms [env: NETFLY_BACKOFF_BASE_MS] [default: 500]
    #[arg(long)]
    backoff_base_ms: Option<String>,
    /// Backoff cap in ms [env: NETFLY_BACKOFF_MAX_MS] [default: 8000]
    #[arg(long)]
    backoff_max_ms: Option<String>,
    /// TCP+TLS connect timeout to the upstream, ms [env: NETFLY_CONNECT_TIMEOUT_MS] [default: 10000]
    #[arg(long)]
    connect_timeout_ms: Option<String>,
    /// Request sent → response headers, ms [env: NETFLY_FIRST_BYTE_TIMEOUT_MS] [default: 60000]
    #[arg(long)]
    first_byte_timeout_ms: Option<String>,
    /// Longest silence between two reads of the body, ms [env: NETFLY_IDLE_TIMEOUT_MS] [default: 60000]
    #[arg(long)]
    idle_timeout_ms: Option<String>,
    /// Comma-separated Origin values allowed to open /ws; `*` = any [env: NETFLY_ALLOWED_ORIGINS] [default: same host]
    #[arg(long)]
    allowed_origins: Option<String>,
    /// Comma-separated tokens; when set /ws needs one as ?token= or Bearer [env: NETFLY_AUTH_TOKENS]
    #[arg(long)]
    auth_tokens: Option<String>,
    /// Open WebSockets at once [env: NETFLY_MAX_CONNECTIONS] [default: 10000]
    #[arg(long)]
    max_connections: Option<String>,
    /// Chats in flight on one socket [env: NETFLY_MAX_STREAMS_PER_CONNECTION] [default: 4]
    #[arg(long)]
    max_streams_per_connection: Option<String>,
    /// Largest client frame in bytes; larger closes the socket with 1009 [env: NETFLY_MAX_FRAME_BYTES] [default: 1048576]
    #[arg(long)]
    max_frame_bytes: Option<String>,
    /// Sockets at once from one client address; 0 = no limit [env: NETFLY_MAX_CONNECTIONS_PER_IP] [default: 0]
    #[arg(long)]
    max_connections_per_ip: Option<String>,
    /// Chats per minute from one client address; 0 = no limit [env: NETFLY_MAX_CHATS_PER_MINUTE_PER_IP] [default: 0]
    #[arg(long)]
    max_chats_per_minute_per_ip: Option<String>,
    /// Longest SSE line or event an upstream may send; longer ends the chat with upstream_broken [env: NETFLY_MAX_UPSTREAM_EVENT_BYTES] [default: 1048576]
    #[arg(long)]
    max_upstream_event_bytes: Option<String>,
    /// Largest whole (non-streamed) answer body an upstream may send [env: NETFLY_MAX_UPSTREAM_BODY_BYTES] [default: 16777216]
    #[arg(long)]
    max_upstream_body_bytes: Option<String>,
    /// Comma-separated proxy IPs whose X-Forwarded-For is trusted for the client address [env: NETFLY_TRUSTED_PROXIES]
    #[arg(long)]
    trusted_proxies: Option<String>,
    /// Ping interval to clients, ms [env: NETFLY_HEARTBEAT_INTERVAL_MS] [default: 10000]
    #[arg(long)]
    heartbeat_interval_ms: Option<String>,
    /// A client silent this long is dropped, ms [env: NETFLY_CLIENT_TIMEOUT_MS] [default: 30000]
    #[arg(long)]
    client_timeout_ms: Option<String>,
    /// Pause per word of the demo upstream, ms [env: NETFLY_DEMO_WORD_DELAY_MS] [default: 40]
    #[arg(long)]
    demo_word_delay_ms: Option<String>,
    /// Grace period for chats in flight on shutdown, ms [env: NETFLY_SHUTDOWN_GRACE_MS] [default: 10000]
    #[arg(long)]
    shutdown_grace_ms: Option<String>,
    /// Worker threads; default = number of CPU cores [env: NETFLY_WORKERS]
    #[arg(long)]
    workers: Option<String>,
    /// Longest image data URL a content part may carry, bytes [env: NETFLY_MAX_IMAGE_BYTES] [default: 1048576]
    #[arg(long)]
    max_image_bytes: Option<String>,
    /// How long a chat whose socket went away keeps running and stays resumable, ms; 0 = a closed socket cancels its chats [env: NETFLY_RESUME_WINDOW_MS] [default: 60000]
    #[arg(long)]
    resume_window_ms: Option<String>,
    /// Bytes of frames one chat's log may keep for resumes [env: NETFLY_RESUME_MAX_CHAT_BYTES] [default: 4194304]
    #[arg(long)]
    resume_max_chat_bytes: Option<String>,
    /// Bytes of frames all chat logs together may keep [env: NETFLY_RESUME_MAX_BYTES] [default: 268435456]
    #[arg(long)]
    resume_max_bytes: Option<String>,
    /// Host names the gateway answers to besides loopback names and IP addresses, comma-separated; `.example.com` = that domain and its subdomains; `*` = any. Behind a reverse proxy list the public name [env: NETFLY_ALLOWED_HOSTS]
    #[arg(long)]
    allowed_hosts: Option<String>,
    /// Longest wait for a /v1 request body, ms; then 408 and the connection is closed [env: NETFLY_CLIENT_BODY_TIMEOUT_MS] [default: 10000]
    #[arg(long)]
    client_body_timeout_ms: Option<String>,
    /// Serve /metrics only on this address (the main listener answers 404 there); unset = /metrics on the main listener, public [env: NETFLY_METRICS_BIND]
    #[arg(long)]
    metrics_bind: Option<String>,
    /// Where chat logs live: `memory` or redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS), shared by every instance naming it [env: NETFLY_RESUME_STORE] [default: memory]
    #[arg(long)]
    resume_store: Option<String>,
    /// Chats per minute with one auth token; 0 = no limit [env: NETFLY_MAX_CHATS_PER_MINUTE_PER_TOKEN] [default: 0]
    #[arg(long)]
    max_chats_per_minute_per_token: Option<String>,
    /// Chats in flight at once with one auth token; 0 = no limit [env: NETFLY_MAX_CONCURRENT_CHATS_PER_TOKEN] [default: 0]
    #[arg(long)]
    max_concurrent_chats_per_token: Option<String>,
}

/// One raw option value and the name (flag or variable) it came from.
struct Raw {
    name: String,
    value: String,
}

impl Raw {
    fn err(&self, expected: &str) -> String {
        format!("invalid {}={:?}: {expected}", self.name, self.value)
    }
}

fn pick(flag: Option<String>, long: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<Raw> {
    if let Some(value) = flag {
        return Some(Raw {
            name: format!("--{long}"),
            value,
        });
    }
    let env = format!("NETFLY_{}", long.replace('-', "_").to_ascii_uppercase());
    lookup(&env).map(|value| Raw { name: env, value })
}

fn int<T: std::str::FromStr + PartialOrd + Copy>(
    raw: Option<Raw>,
    default: T,
    min: T,
    what: &str,
) -> Result<T, String> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.value.trim().parse::<T>() {
            Ok(v) if v >= min => Ok(v),
            _ => Err(raw.err(what)),
        },
    }
}

/// A count that must be at least 1.
fn at_least_one<T: std::str::FromStr + PartialOrd + Copy + From<u8>>(
    raw: Option<Raw>,
    default: T,
) -> Result<T, String> {
    int(raw, default, T::from(1), "expected a whole number ≥ 1")
}

/// An optional limit: a whole number, 0 (the default) meaning none.
fn limit<T: std::str::FromStr + PartialOrd + Copy + From<u8>>(
    raw: Option<Raw>,
) -> Result<T, String> {
    int(
        raw,
        T::from(0),
        T::from(0),
        "expected a whole number (0 = no limit)",
    )
}

/// A size in bytes, at least `min`.
fn bytes(raw: Option<Raw>, default: usize, min: usize) -> Result<usize, String> {
    int(
        raw,
        default,
        min,
        &format!("expected a whole number of bytes ≥ {min}"),
    )
}

fn millis(raw: Option<Raw>, default: u64, min: u64) -> Result<Duration, String> {
    let what = if min == 0 {
        "expected a whole number of milliseconds"
    } else {
        "expected a positive whole number of milliseconds"
    };
    int(raw, default, min, what).map(Duration::from_millis)
}

/// Splits a comma-separated list, trimming blanks; empty items are dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_bind(raw: Option<Raw>) -> Result<SocketAddr, String> {
    let Some(raw) = raw else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 8080)));
    };
    parse_addr(&raw)
}

fn parse_addr(raw: &Raw) -> Result<SocketAddr, String> {
    let text = raw.value.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(addr)) => Ok(addr),
        _ => Err(raw.err("expected HOST:PORT, e.g. 127.0.0.1:8080")),
    }
}

/// The host name `--bind` was given as, when it is a name (an IP address
/// is allowed as a `Host` anyway).
fn bind_name(raw: Option<&Raw>) -> Option<String> {
    let text = raw?.value.trim();
    let (host, _port) = text.rsplit_once(':')?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty() && host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['))
        .then_some(host)
}

/// `--allowed-hosts`: `*`, or names (any port) and `.domain` suffixes.
fn parse_hosts(raw: Option<Raw>, bind_name: Option<String>) -> Result<AllowedHosts, String> {
    let mut names: Vec<String> = bind_name.into_iter().collect();
    let Some(raw) = raw else {
        return Ok(AllowedHosts::List(names));
    };
    let items = list(&raw.value);
    if items.is_empty() {
        return Err(raw.err("expected `*` or comma-separated host names like chat.example.com"));
    }
    if items.iter().any(|i| i == "*") {
        return Ok(AllowedHosts::Any);
    }
    for item in items {
        let name = item.trim_end_matches('.').to_ascii_lowercase();
        let body = name.strip_prefix('.').unwrap_or(&name);
        let valid = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(raw.err(&format!(
                "{item:?} is not a host name (give the name alone: no scheme, port or path)"
            )));
        }
        names.push(name);
    }
    Ok(AllowedHosts::List(names))
}

fn parse_upstreams(raw: Option<Raw>) -> Result<Vec<UpstreamSpec>, String> {
    let Some(raw) = raw else {
        return Ok(vec![UpstreamSpec::Demo]);
    };
    let items = list(&raw.value);
    if items.is_empty() {
        return Err(raw.err("expected at least one URL or `demo`"));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if item.eq_ignore_ascii_case("demo") {
            out.push(UpstreamSpec::Demo);
            continue;
        }
        match UpstreamUrl::parse(&item) {
            Some(url) => out.push(UpstreamSpec::Url(url)),
            None => {
                return Err(raw.err(&format!(
                    "{item:?} is not an http:// or https:// URL with a host"
                )))
            }
        }
    }
    Ok(out)
}

fn parse_origins(raw: Option<Raw>) -> Result<AllowedOrigins, String> {
    let Some(raw) = raw else {
        return Ok(AllowedOrigins::SameHost);
    };
    let items = list(&raw.value);
    if items.is_empty() {
        return Err(
            raw.err("expected `*` or comma-separated origins like https://chat.example.com")
        );
    }
    if items.iter().any(|i| i == "*") {
        return Ok(AllowedOrigins::Any);
    }
    for item in &items {
        if !(item.starts_with("http://") || item.starts_with("https://")) {
            return Err(raw.err(&format!("{item:?} is not an origin (scheme://host[:port])")));
        }
    }
    Ok(AllowedOrigins::List(
        items
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    ))
}

impl Config {
    /// Parses flags (`args` without the program name) over the environment
    /// seen through `lookup`. Errors name the flag or variable and the value.
    pub fn from_args<I, S>(
        args: I,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString> + Clone,
    {
        let argv = std::iter::once(OsString::from("netfly"))
            .chain(args.into_iter().map(Into::into))
            .collect::<Vec<_>>();
        let flags = Flags::try_parse_from(argv).map_err(|e| e.to_string())?;
        Self::resolve(flags, &lookup)
    }

    /// The binary's entry: real argv and real environment. Prints help or the
    /// error and exits (non-zero on error).
    pub fn from_env_and_args() -> Config {
        let flags = Flags::parse();
        match Self::resolve(flags, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("netfly: {e}");
                std::process::exit(2);
            }
        }
    }

    fn resolve(f: Flags, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        // A duration flag: its value, default and minimum (ms).
        let ms = |flag: Option<String>, name: &str, default: u64, min: u64| {
            millis(pick(flag, name, lookup), default, min)
        };
        let bind_raw = pick(f.bind, "bind", lookup);
        let bind_host = bind_name(bind_raw.as_ref());
        let bind = parse_bind(bind_raw)?;
        let file = match pick(f.config, "config", lookup) {
            None => None,
            Some(raw) => Some(ProviderFile::load(std::path::Path::new(raw.value.trim()))?),
        };
        let no_proxy = match pick(f.no_proxy, "no-proxy", lookup) {
            None => NoProxy::default(),
            Some(raw) => NoProxy::parse(&raw.value)
                .map_err(|e| format!("invalid --no-proxy / NETFLY_NO_PROXY: {e}"))?,
        };
        let proxy = match pick(f.proxy, "proxy", lookup) {
            Some(raw) if !raw.value.trim().is_empty() => Some(
                ProxySpec::parse(raw.value.trim(), None)
                    .map_err(|e| format!("invalid --proxy / NETFLY_PROXY: {e}"))?
                    .with_no_proxy(no_proxy.clone()),
            ),
            _ => None,
        };
        let derived_models = file.as_ref().and_then(ProviderFile::derived_models);
        let upstream_raw = pick(f.upstream, "upstream", lookup);
        let mut routes = std::collections::BTreeMap::new();
        let upstreams = match (file, upstream_raw) {
            // The file gives the upstreams unless --upstream overrides them.
            (Some(file), None) => {
                routes = file.routes;
                file.upstreams
                    .into_iter()
                    .map(|mut p| {
                        p.proxy = p.proxy.map(|spec| spec.with_no_proxy(no_proxy.clone()));
                        if let Some(var) = &p.api_key_env {
                            p.api_key = lookup(var)
                                .map(|k| k.trim().to_owned())
                                .filter(|k| !k.is_empty());
                            if p.api_key.is_none() {
                                log::warn!(
                                    "upstream {:?}: {var} is not set; calling it without a key",
                                    p.name
                                );
                            }
                        }
                        UpstreamSpec::Provider(Box::new(p))
                    })
                    .collect()
            }
            (_, raw) => parse_upstreams(raw)?,
        };
        let api_key = pick(f.api_key, "api-key", lookup)
            .map(|r| r.value.trim().to_owned())
            .filter(|k| !k.is_empty());
        if let Some(key) = &api_key {
            if key.chars().any(|c| c.is_control()) {
                return Err(
                    "invalid API key (--api-key / NETFLY_API_KEY): it contains control characters"
                        .into(),
                );
            }
        }
        let models = match pick(f.models, "models", lookup) {
            None => derived_models
                .unwrap_or_else(|| vec!["gpt-3.5-turbo".to_owned(), "gpt-4".to_owned()]),
            Some(raw) => {
                let models = list(&raw.value);
                if models.is_empty() {
                    return Err(raw.err("expected at least one model name"));
                }
                let mut seen = std::collections::HashSet::new();
                for m in &models {
                    if !seen.insert(m.as_str()) {
                        return Err(raw.err(&format!("model {m:?} is listed twice")));
                    }
                }
                models
            }
        };
        let max_attempts = at_least_one(pick(f.max_attempts, "max-attempts", lookup), 5u32)?;
        let backoff_base = ms(f.backoff_base_ms, "backoff-base-ms", 500, 0)?;
        let backoff_max = ms(f.backoff_max_ms, "backoff-max-ms", 8000, 0)?;
        let connect_timeout = ms(f.connect_timeout_ms, "connect-timeout-ms", 10_000, 1)?;
        let first_byte_timeout = ms(f.first_byte_timeout_ms, "first-byte-timeout-ms", 60_000, 1)?;
        let idle_timeout = ms(f.idle_timeout_ms, "idle-timeout-ms", 60_000, 1)?;
        let allowed_origins = parse_origins(pick(f.allowed_origins, "allowed-origins", lookup))?;
        let auth_tokens = pick(f.auth_tokens, "auth-tokens", lookup)
            .map(|r| list(&r.value))
            .unwrap_or_default();
        let max_connections = at_least_one(
            pick(f.max_connections, "max-connections", lookup),
            10_000usize,
        )?;
        let max_streams_per_connection = at_least_one(
            pick(
                f.max_streams_per_connection,
                "max-streams-per-connection",
                lookup,
            ),
            4usize,
        )?;
        let max_frame_bytes = bytes(
            pick(f.max_frame_bytes, "max-frame-bytes", lookup),
            1 << 20,
            128,
        )?;
        let max_image_bytes = at_least_one(
            pick(f.max_image_bytes, "max-image-bytes", lookup),
            1_048_576usize,
        )?;
        let max_connections_per_ip = limit(pick(
            f.max_connections_per_ip,
            "max-connections-per-ip",
            lookup,
        ))?;
        let max_chats_per_minute_per_ip = limit(pick(
            f.max_chats_per_minute_per_ip,
            "max-chats-per-minute-per-ip",
            lookup,
        ))?;
        let max_upstream_event_bytes = bytes(
            pick(
                f.max_upstream_event_bytes,
                "max-upstream-event-bytes",
                lookup,
            ),
            1 << 20,
            1024,
        )?;
        let max_upstream_body_bytes = bytes(
            pick(f.max_upstream_body_bytes, "max-upstream-body-bytes", lookup),
            16 << 20,
            1024,
        )?;
        let max_chats_per_minute_per_token = limit(pick(
            f.max_chats_per_minute_per_token,
            "max-chats-per-minute-per-token",
            lookup,
        ))?;
        let max_concurrent_chats_per_token = limit(pick(
            f.max_concurrent_chats_per_token,
            "max-concurrent-chats-per-token",
            lookup,
        ))?;
        let resume_store = parse_resume_store(pick(f.resume_store, "resume-store", lookup))?;
        let trusted_proxies = match pick(f.trusted_proxies, "trusted-proxies", lookup) {
            None => Vec::new(),
            Some(raw) => {
                let mut out = Vec::new();
                for item in list(&raw.value) {
                    match item.parse() {
                        Ok(ip) => out.push(ip),
                        Err(_) => return Err(raw.err(&format!("{item:?} is not an IP address"))),
                    }
                }
                out
            }
        };
        let heartbeat_interval = ms(f.heartbeat_interval_ms, "heartbeat-interval-ms", 10_000, 1)?;
        let client_timeout = ms(f.client_timeout_ms, "client-timeout-ms", 30_000, 1)?;
        let demo_word_delay = ms(f.demo_word_delay_ms, "demo-word-delay-ms", 40, 0)?;
        let shutdown_grace = ms(f.shutdown_grace_ms, "shutdown-grace-ms", 10_000, 0)?;
        for model in &models {
            let served = upstreams.iter().any(|u| match u {
                UpstreamSpec::Provider(p) => p.models.upstream_model(model).is_some(),
                _ => true,
            });
            if !served {
                return Err(format!("no upstream serves model {model:?}: add it to an upstream's models or remove it from the model list"));
            }
        }
        let resume = ResumeLimits {
            window: ms(f.resume_window_ms, "resume-window-ms", 60_000, 0)?,
            per_chat: at_least_one(
                pick(f.resume_max_chat_bytes, "resume-max-chat-bytes", lookup),
                4 * 1024 * 1024usize,
            )?,
            total: at_least_one(
                pick(f.resume_max_bytes, "resume-max-bytes", lookup),
                256 * 1024 * 1024usize,
            )?,
        };
        let allowed_hosts = parse_hosts(pick(f.allowed_hosts, "allowed-hosts", lookup), bind_host)?;
        let client_body_timeout = ms(
            f.client_body_timeout_ms,
            "client-body-timeout-ms",
            10_000,
            1,
        )?;
        let metrics_bind = match pick(f.metrics_bind, "metrics-bind", lookup) {
            Some(raw) if !raw.value.trim().is_empty() => Some(parse_addr(&raw)?),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = at_least_one(pick(f.workers, "workers", lookup), cores)?;
        Ok(Config {
            bind,
            upstreams,
            routes,
            proxy,
            api_key,
            models,
            max_attempts,
            backoff_base,
            backoff_max,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            allowed_origins,
            auth_tokens,
            max_connections,
            max_streams_per_connection,
            max_frame_bytes,
            max_image_bytes,
            max_connections_per_ip,
            max_chats_per_minute_per_ip,
            max_upstream_event_bytes,
            max_upstream_body_bytes,
            max_chats_per_minute_per_token,
            max_concurrent_chats_per_token,
            trusted_proxies,
            heartbeat_interval,
            client_timeout,
            demo_word_delay,
            shutdown_grace,
            workers,
            resume,
            allowed_hosts,
            client_body_timeout,
            metrics_bind,
            resume_store,
            fault_injection: false,
        })
    }

    /// What a client's chat frame is checked against.
    pub fn frame_rules(&self) -> crate::protocol::FrameRules<'_> {
        crate::protocol::FrameRules {
            models: &self.models,
            max_image_bytes: self.max_image_bytes,
        }
    }

    /// The default model (the first of `--models`).
    pub fn default_model(&self) -> &str {
        &self.models[0]
    }
}
