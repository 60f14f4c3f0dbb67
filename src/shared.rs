//! What every worker of one gateway shares: configuration, the resolved
//! upstreams, metrics and the shutdown state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use awc::http::header::{HeaderName, HeaderValue};

use tokio::sync::watch;

use std::sync::Arc;

use crate::admission::IpLimits;
use crate::config::{url_host, Config, UpstreamSpec};
use crate::metrics::Metrics;
use crate::protocol::Params;
use crate::providers::Provider;
use crate::retry::Backoff;

/// Retry and timeout policy of one upstream.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

/// One upstream chat-completions endpoint, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in logs (the provider name, or the host).
    pub name: String,
    /// The full URL POSTed to.
    pub url: String,
    /// What the client is told in `start` (host[:port], or `demo`).
    pub host: String,
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Client model → upstream model; empty = same name, every model.
    pub model_map: Vec<(String, String)>,
    /// Params applied unless the client sets them.
    pub defaults: Params,
    pub policy: Policy,
    /// Outbound proxy URL, if any.
    pub proxy: Option<String>,
}

impl Target {
    /// The upstream's name for `model`, or `None` when it is not served here.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        if self.model_map.is_empty() {
            return Some(model);
        }
        self.model_map
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, u)| u.as_str())
    }
}

/// Resolves the configured upstreams (`demo_url`: where the demo listens).
pub fn build_targets(config: &Config, demo_url: Option<&str>) -> Vec<Target> {
    let global = Policy {
        max_attempts: config.max_attempts,
        backoff: Backoff {
            base: config.backoff_base,
            cap: config.backoff_max,
        },
        connect_timeout: config.connect_timeout,
        first_byte_timeout: config.first_byte_timeout,
        idle_timeout: config.idle_timeout,
    };
    let plain = |name: String, url: String, host: String| Target {
        name,
        url,
        host,
        api_key: config.api_key.clone(),
        headers: Vec::new(),
        model_map: Vec::new(),
        defaults: Params::default(),
        policy: global.clone(),
        proxy: config.proxy.clone(),
    };
    let mut out = Vec::with_capacity(config.upstreams.len());
    for spec in &config.upstreams {
        match spec {
            UpstreamSpec::Demo => {
                if let Some(url) = demo_url {
                    let mut t = plain("demo".into(), url.to_owned(), "demo".into());
                    t.api_key = None;
                    t.proxy = None;
                    out.push(t);
                }
            }
            UpstreamSpec::Url(url) => {
                let host = url_host(url).unwrap_or_else(|| "upstream".into());
                out.push(plain(host.clone(), url.clone(), host));
            }
            UpstreamSpec::Provider(p) => out.push(from_provider(p, &global, config)),
        }
    }
    out
}

fn from_provider(p: &Provider, global: &Policy, config: &Config) -> Target {
    let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    Target {
        name: p.name.clone(),
        url: p.url.clone(),
        host: url_host(&p.url).unwrap_or_else(|| p.name.clone()),
        api_key: if p.api_key_env.is_some() {
            p.api_key.clone()
        } else {
            config.api_key.clone()
        },
        headers: p
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        model_map: p
            .models
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
        defaults: p.defaults.clone(),
        policy: Policy {
            max_attempts: p.max_attempts.unwrap_or(global.max_attempts),
            backoff: Backoff {
                base: ms(p.backoff_base_ms, global.backoff.base),
                cap: ms(p.backoff_max_ms, global.backoff.cap),
            },
            connect_timeout: ms(p.connect_timeout_ms, global.connect_timeout),
            first_byte_timeout: ms(p.first_byte_timeout_ms, global.first_byte_timeout),
            idle_timeout: ms(p.idle_timeout_ms, global.idle_timeout),
        },
        proxy: p.proxy.clone().or_else(|| config.proxy.clone()),
    }
}

/// Shared by every worker, session and chat of one gateway.
pub struct Shared {
    pub config: Config,
    pub targets: Vec<Target>,
    pub metrics: Metrics,
    pub ip_limits: Arc<IpLimits>,
    draining: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: Config, targets: Vec<Target>, metrics: Metrics) -> Shared {
        let ip_limits = Arc::new(IpLimits::new(
            config.max_connections_per_ip,
            config.max_chats_per_minute_per_ip,
        ));
        Shared {
            ip_limits,
            config,
            targets,
            metrics,
            draining: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }
    }

    /// The indices (into `targets`) of the upstreams that serve `model`, in
    /// fallback order: its route from the provider file, else every upstream
    /// that serves it.
    pub fn route(&self, model: &str) -> Vec<usize> {
        let serves = |i: &usize| self.targets[*i].upstream_model(model).is_some();
        match self.config.routes.get(model) {
            Some(names) => names
                .iter()
                .filter_map(|n| self.targets.iter().position(|t| t.name == *n))
                .filter(serves)
                .collect(),
            None => (0..self.targets.len()).filter(serves).collect(),
        }
    }

    /// Whether the gateway is shutting down (no new sockets or chats).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: new sockets and chats are refused from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Tells every socket to close now (code 1001).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when `close_all` has been called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}
