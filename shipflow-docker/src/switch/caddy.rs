//! Switching a reverse proxy's traffic from one container to another.

use crate::config::ProxyTarget;
use async_trait::async_trait;

/// A reverse proxy in front of an app whose upstream can be switched at once.
#[async_trait]
pub trait TrafficSwitch: Send + Sync {
    /// Sends all new requests to `upstream` (`host:port`); returns when the proxy
    /// has applied it. The error is the proxy's own words.
    async fn switch_to(&self, upstream: &str) -> Result<(), String>;

    /// The route switched, for messages.
    fn route(&self) -> &str;

    /// The one upstream the proxy sends traffic to now, to tell whether it needs
    /// switching; `None` when the proxy cannot tell (the default) or has other than
    /// one, and it is switched anyway.
    async fn upstream(&self) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// Caddy's admin API: `PATCH /id/<route>/handle/0/upstreams`, applied without a
/// reload (the route's first handler must be a `reverse_proxy`).
#[derive(Debug, Clone)]
pub struct CaddySwitch {
    admin: String,
    route: String,
    http: reqwest::Client,
}

impl CaddySwitch {
    /// The switch for route `@id` `route` of the Caddy whose admin API is `admin`
    /// (e.g. `http://127.0.0.1:2019`).
    pub fn new(admin: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            admin: admin.into().trim_end_matches('/').to_owned(),
            route: route.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The switch a deploy target's `proxy` section describes.
    pub fn for_target(proxy: &ProxyTarget) -> Self {
        Self::new(&proxy.caddy_admin, &proxy.route)
    }

    fn upstreams_url(&self) -> String {
        format!("{}/id/{}/handle/0/upstreams", self.admin, self.route)
    }
}

#[async_trait]
impl TrafficSwitch for CaddySwitch {
    async fn switch_to(&self, upstream: &str) -> Result<(), String> {
        let url = self.upstreams_url();
        let response = self
            .http
            .patch(&url)
            .json(&serde_json::json!([{ "dial": upstream }]))
            .send()
            .await
            .map_err(|e| format!("PATCH {url}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(format!("PATCH {url}: HTTP {status}: {}", body.trim()))
        }
    }

    fn route(&self) -> &str {
        &self.route
    }

    async fn upstream(&self) -> Result<Option<String>, String> {
        let url = self.upstreams_url();
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("GET {url}: {e}"))?;
        let upstreams: Vec<serde_json::Value> = response
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok(match upstreams.as_slice() {
            [one] => one["dial"].as_str().map(str::to_owned),
            _ => None,
        })
    }
}
