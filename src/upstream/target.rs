//! The upstreams a gateway calls, resolved from the configuration: URL,
//! host shown to clients, key, headers, model map, default params, retry
//! and timeout policy, proxy.

use std::time::Duration;

use awc::http::header::{HeaderName, HeaderValue};

use super::retry::Backoff;
use crate::config::providers::Provider;
use crate::config::{url_host, Config, UpstreamSpec};
use crate::protocol::Params;

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
