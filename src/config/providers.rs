//! The provider file (`--config FILE`, TOML): named upstreams with their
//! URL, the variable holding their key (never the key itself), extra
//! headers, a model map, default params, retry/timeout overrides and proxy,
//! plus a fallback order per model. See `examples/netfly.toml`.
//!
//! The file is read once, at start-up, straight into typed values: a URL
//! with its host, a `HeaderMap`, an ordered model map. Nothing downstream
//! parses any of it again.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use awc::http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::proxy::ProxySpec;
use crate::protocol::Params;

/// An `http://` or `https://` URL with a host: where an upstream is POSTed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    url: String,
    /// `host[:port]`, without user info, path or query (what clients see).
    host: String,
}

impl UpstreamUrl {
    /// Parses `url`; `None` when it is not http(s) or has no host.
    pub fn parse(url: &str) -> Option<UpstreamUrl> {
        let uri: awc::http::Uri = url.parse().ok()?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return None,
        }
        let host = uri.host().filter(|h| !h.is_empty())?;
        let host = match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Some(UpstreamUrl {
            url: url.to_owned(),
            host,
        })
    }

    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Client-facing model → the upstream's model name, in file order. Empty:
/// every model is served under its own name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap(Vec<(String, String)>);

impl ModelMap {
    /// The upstream's name for `model`, or `None` when it is not served.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        if self.0.is_empty() {
            return Some(model);
        }
        self.0
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, u)| u.as_str())
    }

    /// The client-facing models, in file order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(m, _)| m.as_str())
    }

    /// Whether every model is served under its own name.
    pub fn is_identity(&self) -> bool {
        self.0.is_empty()
    }
}

/// Retry and timeout values an upstream sets for itself (the global flags
/// apply where these are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    pub max_attempts: Option<u32>,
    pub backoff_base: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub first_byte_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// One named upstream of the file, validated.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub url: UpstreamUrl,
    /// Name of the environment variable holding this upstream's API key.
    pub api_key_env: Option<String>,
    /// The key read from `api_key_env` at start-up (never from the file).
    pub api_key: Option<String>,
    /// Extra request headers (e.g. browser-like headers some APIs expect).
    pub headers: HeaderMap,
    pub models: ModelMap,
    /// Sampling params applied unless the client sets them.
    pub defaults: Params,
    /// Outbound HTTP proxy for this upstream (the `--no-proxy` list is
    /// added when the configuration is resolved).
    pub proxy: Option<ProxySpec>,
    /// The upstream rejects the `developer` role: send it as `system`.
    pub developer_as_system: bool,
    /// The upstream supports `stream_options.include_usage`: WebSocket
    /// chats ask for it, so their `done` carries the usage.
    pub include_usage: bool,
    pub policy: PolicyOverrides,
}

/// The whole file, validated.
#[derive(Debug, Clone)]
pub struct ProviderFile {
    /// Models clients may choose, the first being the default, when the
    /// file lists them.
    pub models: Option<Vec<String>>,
    pub upstreams: Vec<Provider>,
    /// Fallback order per model: model → upstream names.
    pub routes: BTreeMap<String, Vec<String>>,
}

// ---- the file as written ---------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderToml {
    name: String,
    url: String,
    api_key_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    models: toml::Table,
    #[serde(default)]
    defaults: Params,
    proxy: Option<String>,
    #[serde(default)]
    developer_as_system: bool,
    #[serde(default)]
    include_usage: bool,
    max_attempts: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    models: Option<Vec<String>>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<ProviderToml>,
    #[serde(default)]
    routes: BTreeMap<String, Vec<String>>,
}

impl ProviderToml {
    fn into_provider(self) -> Result<Provider, String> {
        let name = self.name;
        let fail = |what: String| format!("upstream {name:?}: {what}");
        if name.trim().is_empty() {
            return Err("an upstream has an empty name".into());
        }
        let url = UpstreamUrl::parse(&self.url).ok_or_else(|| {
            fail(format!(
                "url {:?} is not an http:// or https:// URL",
                self.url
            ))
        })?;
        if self.max_attempts == Some(0) {
            return Err(fail("max_attempts must be ≥ 1".into()));
        }
        for (what, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == Some(0) {
                return Err(fail(format!("{what} must be ≥ 1")));
            }
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let (Ok(hn), Ok(hv)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                return Err(fail(format!("invalid header {k:?}")));
            };
            headers.insert(hn, hv);
        }
        self.defaults
            .validate()
            .map_err(|e| fail(format!("defaults: {e}")))?;
        let mut models = Vec::with_capacity(self.models.len());
        for (k, v) in self.models {
            match v.as_str() {
                Some(u) => models.push((k, u.to_owned())),
                None => {
                    return Err(fail(format!(
                        "models.{k} must be a string (the upstream's model name)"
                    )))
                }
            }
        }
        if let Some(var) = &self.api_key_env {
            if var.trim().is_empty() {
                return Err(fail("api_key_env is empty".into()));
            }
        }
        let proxy = match &self.proxy {
            None => None,
            Some(url) => {
                Some(ProxySpec::parse(url, None).map_err(|e| fail(format!("proxy: {e}")))?)
            }
        };
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        Ok(Provider {
            url,
            api_key_env: self.api_key_env,
            api_key: None,
            headers,
            models: ModelMap(models),
            defaults: self.defaults,
            proxy,
            developer_as_system: self.developer_as_system,
            include_usage: self.include_usage,
            policy: PolicyOverrides {
                max_attempts: self.max_attempts,
                backoff_base: ms(self.backoff_base_ms),
                backoff_max: ms(self.backoff_max_ms),
                connect_timeout: ms(self.connect_timeout_ms),
                first_byte_timeout: ms(self.first_byte_timeout_ms),
                idle_timeout: ms(self.idle_timeout_ms),
            },
            name,
        })
    }
}

impl ProviderFile {
    /// Reads and validates `path`; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<ProviderFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<ProviderFile, String> {
        let file: FileToml = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.upstreams.is_empty() {
            return Err("no [[upstream]] defined".into());
        }
        let mut upstreams = Vec::with_capacity(file.upstreams.len());
        let mut names = HashSet::new();
        for p in file.upstreams {
            let p = p.into_provider()?;
            if !names.insert(p.name.clone()) {
                return Err(format!("upstream name {:?} is used twice", p.name));
            }
            upstreams.push(p);
        }
        for (model, route) in &file.routes {
            if route.is_empty() {
                return Err(format!("route for {model:?} names no upstream"));
            }
            if let Some(name) = route.iter().find(|n| !names.contains(*n)) {
                return Err(format!(
                    "route for {model:?} names unknown upstream {name:?}"
                ));
            }
        }
        if file.models.as_ref().is_some_and(Vec::is_empty) {
            return Err("models is empty".into());
        }
        Ok(ProviderFile {
            models: file.models,
            upstreams,
            routes: file.routes,
        })
    }

    /// The client-facing models: `models`, else the union of the model maps
    /// in file order, else `None` (keep the flag/env/default list).
    pub fn derived_models(&self) -> Option<Vec<String>> {
        if let Some(m) = &self.models {
            return Some(m.clone());
        }
        let mut out: Vec<String> = Vec::new();
        for p in &self.upstreams {
            for m in p.models.models() {
                if !out.iter().any(|o| o == m) {
                    out.push(m.to_owned());
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}
