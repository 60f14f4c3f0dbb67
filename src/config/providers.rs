//! The provider file (`--config FILE`, TOML): named upstreams with their
//! URL, the variable holding their key (never the key itself), extra
//! headers, a model map, default params, retry/timeout overrides and proxy,
//! plus a fallback order per model. See `examples/netfly.toml`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::protocol::Params;

/// One named upstream of the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub url: String,
    /// Name of the environment variable holding this upstream's API key.
    pub api_key_env: Option<String>,
    /// The key read from `api_key_env` at start-up (never from the file).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Extra request headers (e.g. browser-like headers some APIs expect).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Client-facing model → the upstream's model name, in file order.
    /// Empty: serves every configured model under its own name.
    #[serde(default)]
    pub models: toml::Table,
    #[serde(default)]
    /// Sampling params applied unless the client sets them: the same
    /// whitelist and ranges as a client's `params`.
    pub defaults: Params,
    /// Outbound HTTP proxy for this upstream (`http://[user:pass@]host:port`).
    pub proxy: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Models clients may choose, the first being the default. When absent,
    /// the union of the upstreams' model maps, in file order.
    pub models: Option<Vec<String>>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Provider>,
    /// Fallback order per model: model → upstream names. Models without a
    /// route use every upstream that serves them, in file order.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<String>>,
}

impl Provider {
    /// The upstream's name for the client-facing `model`, or `None` when
    /// this upstream does not serve it.
    pub fn upstream_model(&self, model: &str) -> Option<String> {
        if self.models.is_empty() {
            return Some(model.to_owned());
        }
        self.models
            .get(model)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
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
        let file: ProviderFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), String> {
        if self.upstreams.is_empty() {
            return Err("no [[upstream]] defined".into());
        }
        let mut names = HashSet::new();
        for p in &self.upstreams {
            if p.name.trim().is_empty() {
                return Err("an upstream has an empty name".into());
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("upstream name {:?} is used twice", p.name));
            }
            if crate::config::url_host(&p.url).is_none() {
                return Err(format!(
                    "upstream {:?}: url {:?} is not an http:// or https:// URL",
                    p.name, p.url
                ));
            }
            if p.max_attempts == Some(0) {
                return Err(format!("upstream {:?}: max_attempts must be ≥ 1", p.name));
            }
            for (what, v) in [
                ("connect_timeout_ms", p.connect_timeout_ms),
                ("first_byte_timeout_ms", p.first_byte_timeout_ms),
                ("idle_timeout_ms", p.idle_timeout_ms),
            ] {
                if v == Some(0) {
                    return Err(format!("upstream {:?}: {what} must be ≥ 1", p.name));
                }
            }
            for (k, v) in &p.headers {
                let name_ok = awc::http::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
                let value_ok = awc::http::header::HeaderValue::from_str(v).is_ok();
                if !name_ok || !value_ok {
                    return Err(format!("upstream {:?}: invalid header {k:?}", p.name));
                }
            }
            p.defaults
                .validate()
                .map_err(|e| format!("upstream {:?}: defaults: {e}", p.name))?;
            for (k, v) in &p.models {
                if !v.is_str() {
                    return Err(format!(
                        "upstream {:?}: models.{k} must be a string (the upstream's model name)",
                        p.name
                    ));
                }
            }
            if let Some(var) = &p.api_key_env {
                if var.trim().is_empty() {
                    return Err(format!("upstream {:?}: api_key_env is empty", p.name));
                }
            }
        }
        for (model, route) in &self.routes {
            if route.is_empty() {
                return Err(format!("route for {model:?} names no upstream"));
            }
            for name in route {
                if !names.contains(name.as_str()) {
                    return Err(format!(
                        "route for {model:?} names unknown upstream {name:?}"
                    ));
                }
            }
        }
        if let Some(models) = &self.models {
            if models.is_empty() {
                return Err("models is empty".into());
            }
        }
        Ok(())
    }

    /// The client-facing models: `models`, else the union of the model maps
    /// in file order, else `None` (keep the flag/env/default list).
    pub fn derived_models(&self) -> Option<Vec<String>> {
        if let Some(m) = &self.models {
            return Some(m.clone());
        }
        let mut out: Vec<String> = Vec::new();
        for p in &self.upstreams {
            for m in p.models.keys() {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}
