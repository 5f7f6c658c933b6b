//! [`CaddySwitch`]: Caddy's admin API.

use async_trait::async_trait;

use super::TrafficSwitch;
use crate::config::ProxyTarget;

/// Caddy's admin API: `PATCH /id/<route>/handle/0/upstreams` (the route's first
/// handler must be a `reverse_proxy`).
///
/// Caddy applies every config change by starting its servers anew, which closes
/// idle kept-alive client connections: a client that sends its next request on one
/// of them just then sees it fail (about 8 of 1,400 requests of 8 kept-alive
/// connections polling every 10 ms, per switch). Clients that open a connection per
/// request, or retry, see none. [`HaproxySwitch`](super::HaproxySwitch) switches
/// without that. Caddy's own way around a reload is `dynamic_upstreams`, which
/// re-reads A or SRV records: switched by a hosts entry with a 500 ms refresh, the
/// same clients saw no failed request over 13 switches, but a deployer would have
/// to own the DNS name and give each revision its own address, which shipflow does
/// not.
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

    /// The switch a deploy target's `proxy` section describes (`caddy_admin`,
    /// `route`).
    pub fn for_target(proxy: &ProxyTarget) -> Self {
        Self::new(
            proxy.caddy_admin.as_deref().unwrap_or_default(),
            proxy.route.as_deref().unwrap_or_default(),
        )
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
