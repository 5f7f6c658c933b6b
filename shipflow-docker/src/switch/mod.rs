//! Switching a reverse proxy's traffic from one container to another.

mod caddy;
mod haproxy;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::caddy::CaddySwitch;
pub use self::haproxy::{HaproxyAdmin, HaproxySwitch};
use crate::config::ProxyTarget;

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

    /// Returns once no request is in flight to `upstream`, which traffic was
    /// switched away from, so that its container can stop without cutting one.
    /// A proxy that can tell waits for that, up to its own drain timeout; one that
    /// cannot (the default) waits `wait`, the deployer's fixed drain.
    async fn drain(&self, upstream: &str, wait: Duration) -> Result<(), String> {
        let _ = upstream;
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// The switch a deploy target's `proxy` section describes.
pub(crate) fn for_target(proxy: &ProxyTarget) -> Arc<dyn TrafficSwitch> {
    match &proxy.haproxy_admin {
        Some(admin) => Arc::new(HaproxySwitch::for_target(admin, proxy)),
        None => Arc::new(CaddySwitch::for_target(proxy)),
    }
}
