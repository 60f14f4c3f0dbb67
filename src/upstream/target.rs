//! The upstreams a gateway calls, resolved once from the configuration:
//! URL, host shown to clients, key, headers, model map, default params,
//! retry and timeout policy, proxy — and, per model, the fallback order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderMap;

use super::retry::Backoff;
use crate::config::proxy::ProxySpec;
use crate::config::{Config, ModelMap, PolicyOverrides, UpstreamSpec};
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

impl Policy {
    /// The policy of the global flags.
    pub fn global(config: &Config) -> Policy {
        Policy {
            max_attempts: config.max_attempts,
            backoff: Backoff {
                base: config.backoff_base,
                cap: config.backoff_max,
            },
            connect_timeout: config.connect_timeout,
            first_byte_timeout: config.first_byte_timeout,
            idle_timeout: config.idle_timeout,
        }
    }

    /// This policy with an upstream's own values over it.
    fn overridden(&self, o: &PolicyOverrides) -> Policy {
        Policy {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            backoff: Backoff {
                base: o.backoff_base.unwrap_or(self.backoff.base),
                cap: o.backoff_max.unwrap_or(self.backoff.cap),
            },
            connect_timeout: o.connect_timeout.unwrap_or(self.connect_timeout),
            first_byte_timeout: o.first_byte_timeout.unwrap_or(self.first_byte_timeout),
            idle_timeout: o.idle_timeout.unwrap_or(self.idle_timeout),
        }
    }
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
    pub headers: HeaderMap,
    /// Client model → upstream model.
    pub models: ModelMap,
    /// Params applied unless the client sets them.
    pub defaults: Params,
    pub policy: Policy,
    /// Outbound proxy, if any.
    pub proxy: Option<Arc<ProxySpec>>,
    /// Send `developer` messages as `system` (the upstream rejects them).
    pub developer_as_system: bool,
    /// Ask for `stream_options.include_usage` on WebSocket chats.
    pub include_usage: bool,
}

/// Every upstream of a gateway and, per configured model, the indices of
/// those that serve it in fallback order.
#[derive(Debug, Clone)]
pub struct Targets {
    list: Vec<Target>,
    routes: HashMap<String, Vec<usize>>,
}

impl Targets {
    /// Resolves the configured upstreams (`demo_url`: where the built-in
    /// demo upstream listens, when it runs) and each model's route: its
    /// `[routes]` entry from the provider file, else every upstream that
    /// serves it, in order.
    pub fn resolve(config: &Config, demo_url: Option<&str>) -> Targets {
        let global = Policy::global(config);
        let proxy = config.proxy.clone().map(Arc::new);
        let plain = |name: &str, url: &str, host: &str| Target {
            name: name.to_owned(),
            url: url.to_owned(),
            host: host.to_owned(),
            api_key: config.api_key.clone(),
            headers: HeaderMap::new(),
            models: ModelMap::default(),
            defaults: Params::default(),
            policy: global.clone(),
            proxy: proxy.clone(),
            developer_as_system: false,
            include_usage: false,
        };
        let mut list = Vec::with_capacity(config.upstreams.len());
        for spec in &config.upstreams {
            match spec {
                UpstreamSpec::Demo => {
                    if let Some(url) = demo_url {
                        list.push(Target {
                            api_key: None,
                            proxy: None,
                            ..plain("demo", url, "demo")
                        });
                    }
                }
                UpstreamSpec::Url(url) => list.push(plain(url.host(), url.as_str(), url.host())),
                UpstreamSpec::Provider(p) => list.push(Target {
                    name: p.name.clone(),
                    url: p.url.as_str().to_owned(),
                    host: p.url.host().to_owned(),
                    api_key: if p.api_key_env.is_some() {
                        p.api_key.clone()
                    } else {
                        config.api_key.clone()
                    },
                    headers: p.headers.clone(),
                    models: p.models.clone(),
                    defaults: p.defaults.clone(),
                    policy: global.overridden(&p.policy),
                    proxy: p.proxy.clone().map(Arc::new).or_else(|| proxy.clone()),
                    developer_as_system: p.developer_as_system,
                    include_usage: p.include_usage,
                }),
            }
        }
        let routes = config
            .models
            .iter()
            .map(|model| {
                let serves = |i: &usize| list[*i].models.upstream_model(model).is_some();
                let route = match config.routes.get(model) {
                    Some(names) => names
                        .iter()
                        .filter_map(|n| list.iter().position(|t| t.name == *n))
                        .filter(serves)
                        .collect(),
                    None => (0..list.len()).filter(serves).collect(),
                };
                (model.clone(), route)
            })
            .collect();
        Targets { list, routes }
    }

    /// The upstreams in configuration order.
    pub fn all(&self) -> &[Target] {
        &self.list
    }

    /// The indices of the upstreams that serve `model`, in fallback order.
    pub fn route(&self, model: &str) -> &[usize] {
        self.routes.get(model).map_or(&[], Vec::as_slice)
    }

    /// The upstream at `index` (from [`Targets::route`]).
    pub fn get(&self, index: usize) -> &Target {
        &self.list[index]
    }
}
