//! This crate's sections of `shipflow.toml`: `deploy.docker` and
//! `build = { type = "dockerfile", … }`.
//!
//! ```toml
//! [apps.web]
//! build = { type = "dockerfile", dockerfile = "apps/web/Dockerfile", context = ".", target = "runtime", args = { PROFILE = "release" } }
//! deploy.docker = { container = "web", ports = ["8080:8080"], strategy = "start-first", health = { http = "/healthz" }, proxy = { caddy_admin = "http://127.0.0.1:2019", route = "web" } }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shipflow_core::{ConfigSection, Schema, SectionContext, SectionError};

use crate::spec::{PortSpec, restart_policy};

/// The deploy target [`DockerTarget`] is read for.
pub const DOCKER_TARGET: &str = "docker";
/// The build type [`DockerfileBuild`] is read for.
pub const DOCKERFILE_BUILD_TYPE: &str = "dockerfile";

/// The longest health-probe interval: an hour.
const MAX_INTERVAL_SECS: u64 = 3_600;
/// The longest health timeout: a day.
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The sections this crate reads: `deploy.docker` and Dockerfile builds.
pub fn schema() -> Schema {
    Schema::new()
        .deploy_target::<DockerTarget>(DOCKER_TARGET)
        .build_type::<DockerfileBuild>(DOCKERFILE_BUILD_TYPE)
}

/// A container on one Docker or Podman host: `[apps.<app>.deploy.docker]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DockerTarget {
    /// The container name; default the app's name.
    pub container: Option<String>,
    /// Published ports, `[ip:][host:]container[/proto]` (e.g. `8080:80`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Volumes, `source:destination[:options]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Restart policy: `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart: Option<String>,
    /// How the container's health is checked.
    pub health: Option<HealthCheck>,
    /// `recreate` (default) or `start-first`.
    #[serde(default)]
    pub strategy: Strategy,
    /// How many old containers to keep for rollback without a pull; default 3.
    pub keep: Option<u32>,
    /// The reverse proxy that `start-first` switches.
    pub proxy: Option<ProxyTarget>,
}

/// How a container is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Strategy {
    /// Stop the old container, start the new one.
    #[default]
    Recreate,
    /// Start the new one beside the old, switch the proxy, then stop the old.
    StartFirst,
}

/// A health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheck {
    /// An HTTP path probed on the container's port, e.g. `/healthz`.
    pub http: Option<String>,
    /// A command run in the container instead.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The container port to probe; default the first published one.
    pub port: Option<u16>,
    /// Seconds between probes; default 1, at most 3600.
    pub interval: Option<u64>,
    /// Seconds until the container must be healthy; default 30, at most 86400.
    pub timeout: Option<u64>,
    /// Seconds the container must stay healthy after its first passing probe
    /// (running, not restarted, every probe passing) before the deploy calls it
    /// healthy and stops what ran before; like Kubernetes' `minReadySeconds`.
    /// Default the deployer's (5, as Swarm's update monitor), 0 turns it off, at
    /// most 3600.
    pub stable_for: Option<u64>,
}

/// The reverse proxy `start-first` switches: HAProxy through its runtime API
/// (`haproxy_admin`, `backend`, `servers`), or Caddy through its admin API
/// (`caddy_admin`, `route`).
///
/// ```toml
/// proxy = { haproxy_admin = "/run/haproxy/admin.sock", backend = "web", servers = ["blue", "green"] }
/// proxy = { caddy_admin = "http://127.0.0.1:2019", route = "web" }
/// ```
///
/// HAProxy switches with no reload and drains: kept-alive client connections and
/// requests in flight carry on. Caddy restarts its servers on every config change,
/// which fails requests sent on idle kept-alive connections at that moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProxyTarget {
    /// HAProxy's runtime API: a `stats socket … level admin`, as a Unix socket path
    /// or `host:port`.
    pub haproxy_admin: Option<String>,
    /// The HAProxy backend that serves the app.
    pub backend: Option<String>,
    /// The backend's two server slots that take turns, e.g. `["blue", "green"]`,
    /// declared in HAProxy's config (for example `server blue 127.0.0.1:9 disabled`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Seconds HAProxy's drain waits for requests in flight to the old container
    /// before it stops anyway; default 30, at most 3600.
    pub drain_timeout: Option<u64>,
    /// Caddy's admin address, e.g. `http://127.0.0.1:2019`.
    pub caddy_admin: Option<String>,
    /// The `@id` of the Caddy route whose upstreams are switched.
    pub route: Option<String>,
}

impl ProxyTarget {
    fn check(&self) -> Result<(), SectionError> {
        match (&self.haproxy_admin, &self.caddy_admin) {
            (Some(_), Some(_)) => Err(SectionError::new(
                "proxy",
                "give haproxy_admin or caddy_admin, not both",
            )),
            (None, None) => Err(SectionError::new(
                "proxy",
                "give haproxy_admin (with backend and servers) or caddy_admin (with route)",
            )),
            (Some(admin), None) => {
                admin
                    .parse::<crate::HaproxyAdmin>()
                    .map_err(|why| SectionError::new("proxy.haproxy_admin", why))?;
                if self.backend.as_deref().is_none_or(str::is_empty) {
                    return Err(SectionError::new(
                        "proxy.backend",
                        "HAProxy needs the backend that serves the app",
                    ));
                }
                match self.servers.as_slice() {
                    [a, b] if a != b && !a.is_empty() && !b.is_empty() => {}
                    _ => {
                        return Err(SectionError::new(
                            "proxy.servers",
                            "give the backend's two server slots that take turns, e.g. [\"blue\", \"green\"]",
                        ));
                    }
                }
                if let Some(v) = self.drain_timeout.filter(|v| *v > MAX_INTERVAL_SECS) {
                    return Err(SectionError::new(
                        "proxy.drain_timeout",
                        format!("{v} is out of range: give 0 to {MAX_INTERVAL_SECS} seconds"),
                    ));
                }
                self.only_for("HAProxy", [("route", self.route.is_some())])
            }
            (None, Some(admin)) => {
                if !(admin.starts_with("http://") || admin.starts_with("https://")) {
                    return Err(SectionError::new(
                        "proxy.caddy_admin",
                        format!("{admin:?} is not an admin URL like \"http://127.0.0.1:2019\""),
                    ));
                }
                if self.route.as_deref().is_none_or(str::is_empty) {
                    return Err(SectionError::new(
                        "proxy.route",
                        "Caddy needs the @id of the route to switch",
                    ));
                }
                self.only_for(
                    "Caddy",
                    [
                        ("backend", self.backend.is_some()),
                        ("servers", !self.servers.is_empty()),
                        ("drain_timeout", self.drain_timeout.is_some()),
                    ],
                )
            }
        }
    }

    /// Refuses keys that belong to the other proxy.
    fn only_for<const N: usize>(
        &self,
        proxy: &str,
        keys: [(&str, bool); N],
    ) -> Result<(), SectionError> {
        match keys.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(SectionError::new(
                format!("proxy.{key}"),
                format!("{key} is not a {proxy} setting"),
            )),
            None => Ok(()),
        }
    }
}

/// A Dockerfile build through the engine: `build = { type = "dockerfile", … }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DockerfileBuild {
    /// The Dockerfile, relative to the repository root; default `<app path>/Dockerfile`.
    pub dockerfile: Option<String>,
    /// The build context, relative to the repository root; default the root.
    pub context: Option<String>,
    /// The target stage.
    pub target: Option<String>,
    /// Build arguments.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Whether the context sends `.git/` (default no: `.git/config` may hold CI
    /// tokens). `.shipflow/` is never sent.
    #[serde(default)]
    pub include_git: bool,
}

impl ConfigSection for DockerTarget {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if let Some(container) = &self.container {
            let valid = container
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && container
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                return Err(SectionError::new(
                    "container",
                    format!(
                        "{container:?} is not a container name: letters, digits, '_', '.' and '-', starting with a letter or digit"
                    ),
                ));
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            PortSpec::parse(port).map_err(|why| SectionError::new(format!("ports[{i}]"), why))?;
        }
        restart_policy(self.restart.as_deref()).map_err(|why| SectionError::new("restart", why))?;
        for (i, volume) in self.volumes.iter().enumerate() {
            if volume.split(':').count() < 2 || volume.split(':').any(str::is_empty) {
                return Err(SectionError::new(
                    format!("volumes[{i}]"),
                    format!(
                        "{volume:?} is not a volume like \"data:/var/lib/app\" or \"/srv/conf:/etc/app:ro\""
                    ),
                ));
            }
        }
        if let Some(health) = &self.health {
            health.check(self)?;
        }
        if let Some(proxy) = &self.proxy {
            proxy.check()?;
        }
        Ok(())
    }
}

impl HealthCheck {
    fn check(&self, target: &DockerTarget) -> Result<(), SectionError> {
        let in_range = |field: &str, value: Option<u64>, max: u64| match value {
            Some(v) if !(1..=max).contains(&v) => Err(SectionError::new(
                format!("health.{field}"),
                format!("{v} is out of range: give 1 to {max} seconds"),
            )),
            _ => Ok(()),
        };
        in_range("interval", self.interval, MAX_INTERVAL_SECS)?;
        in_range("timeout", self.timeout, MAX_TIMEOUT_SECS)?;
        if let Some(v) = self.stable_for.filter(|v| *v > MAX_INTERVAL_SECS) {
            return Err(SectionError::new(
                "health.stable_for",
                format!("{v} is out of range: give 0 to {MAX_INTERVAL_SECS} seconds"),
            ));
        }
        if self.http.is_some() && !self.cmd.is_empty() {
            return Err(SectionError::new(
                "health",
                "give either http or cmd, not both",
            ));
        }
        if self.http.is_some() && self.port.is_none() && target.ports.is_empty() {
            return Err(SectionError::new(
                "health.http",
                "an HTTP probe needs a port: publish one in ports, or set health.port",
            ));
        }
        if self.port == Some(0) {
            return Err(SectionError::new("health.port", "0 is not a port"));
        }
        Ok(())
    }
}

impl ConfigSection for DockerfileBuild {
    fn validate(&mut self, ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        let default = format!("{}/Dockerfile", ctx.app_path().unwrap_or_default());
        let dockerfile = self.dockerfile.as_deref().unwrap_or(&default);
        self.dockerfile = Some(ctx.repo_path("dockerfile", dockerfile)?);
        self.context = Some(ctx.repo_path("context", self.context.as_deref().unwrap_or(""))?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use shipflow_core::Workspace;

    fn load(docker: &str) -> Result<Workspace, String> {
        let toml = format!(
            "[workspace]\nregistry = \"r.io\"\n[apps.web]\ndeploy.docker = {{ {docker} }}\n"
        );
        Workspace::loader()
            .schema(schema())
            .from_toml(&toml, "/nonexistent-root")
            .map_err(|e| e.to_string())
    }

    #[rstest]
    #[case::port(
        "ports = [\"abc:def\"]",
        "apps.web.deploy.docker.ports[0]: port `abc:def`: `abc` is not a port number"
    )]
    #[case::restart(
        "restart = \"sometimes\"",
        "apps.web.deploy.docker.restart: restart `sometimes`: use no, always, unless-stopped or on-failure"
    )]
    #[case::interval_overflow(
        "ports = [\"80\"], health = { http = \"/\", interval = 9223372036854775807 }",
        "apps.web.deploy.docker.health.interval: 9223372036854775807 is out of range: give 1 to 3600 seconds"
    )]
    #[case::timeout_zero(
        "health = { cmd = [\"true\"], timeout = 0 }",
        "apps.web.deploy.docker.health.timeout: 0 is out of range: give 1 to 86400 seconds"
    )]
    #[case::stable_for_too_long(
        "health = { cmd = [\"true\"], stable_for = 3601 }",
        "apps.web.deploy.docker.health.stable_for: 3601 is out of range: give 0 to 3600 seconds"
    )]
    #[case::http_without_port(
        "health = { http = \"/\" }",
        "apps.web.deploy.docker.health.http: an HTTP probe needs a port"
    )]
    #[case::volume(
        "volumes = [\"data\"]",
        "apps.web.deploy.docker.volumes[0]: \"data\" is not a volume"
    )]
    #[case::container(
        "container = \"web app\"",
        "apps.web.deploy.docker.container: \"web app\" is not a container name"
    )]
    #[case::proxy_neither(
        "proxy = { route = \"web\" }",
        "apps.web.deploy.docker.proxy: give haproxy_admin (with backend and servers) or caddy_admin"
    )]
    #[case::proxy_both(
        "proxy = { caddy_admin = \"http://a:1\", route = \"r\", haproxy_admin = \"/run/h.sock\" }",
        "apps.web.deploy.docker.proxy: give haproxy_admin or caddy_admin, not both"
    )]
    #[case::haproxy_one_server(
        "proxy = { haproxy_admin = \"/run/h.sock\", backend = \"web\", servers = [\"blue\"] }",
        "apps.web.deploy.docker.proxy.servers: give the backend's two server slots"
    )]
    #[case::haproxy_no_backend(
        "proxy = { haproxy_admin = \"127.0.0.1:9999\", servers = [\"a\", \"b\"] }",
        "apps.web.deploy.docker.proxy.backend: HAProxy needs the backend"
    )]
    #[case::haproxy_bad_admin(
        "proxy = { haproxy_admin = \"admin.sock\", backend = \"web\", servers = [\"a\", \"b\"] }",
        "apps.web.deploy.docker.proxy.haproxy_admin: \"admin.sock\" is not a runtime API address"
    )]
    #[case::haproxy_route(
        "proxy = { haproxy_admin = \"/h.sock\", backend = \"web\", servers = [\"a\", \"b\"], route = \"r\" }",
        "apps.web.deploy.docker.proxy.route: route is not a HAProxy setting"
    )]
    #[case::caddy_servers(
        "proxy = { caddy_admin = \"http://a:1\", route = \"r\", servers = [\"a\", \"b\"] }",
        "apps.web.deploy.docker.proxy.servers: servers is not a Caddy setting"
    )]
    #[case::strategy(
        "strategy = \"blue-green\"",
        "apps.web.deploy.docker: shipflow.toml: TOML parse error at line 4"
    )]
    fn bad_settings_are_refused_at_load(#[case] docker: &str, #[case] start: &str) {
        let err = load(docker).expect_err("refused");
        assert!(err.starts_with(start), "{err}\n---\n{start}");
    }

    #[test]
    fn dockerfile_defaults_follow_the_app() {
        let toml = "[workspace]\nregistry = \"r.io\"\n[apps.web]\npath = \"web\"\n[apps.api]\nbuild = { type = \"dockerfile\", context = \"./api/\" }\n";
        let ws = Workspace::loader()
            .schema(schema())
            .from_toml(toml, "/nonexistent-root")
            .expect("valid");
        let web = ws
            .app("web")
            .expect("web")
            .build_spec::<DockerfileBuild>()
            .expect("valid");
        assert_eq!(web.dockerfile.as_deref(), Some("web/Dockerfile"));
        assert_eq!(web.context.as_deref(), Some(""));
        let api = ws
            .app("api")
            .expect("api")
            .build_spec::<DockerfileBuild>()
            .expect("valid");
        assert_eq!(api.dockerfile.as_deref(), Some("apps/api/Dockerfile"));
        assert_eq!(api.context.as_deref(), Some("api"));
    }

    #[test]
    fn a_dockerfile_link_out_of_the_repository_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("apps/web")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("apps/web/Dockerfile"))
            .expect("link");
        let err = Workspace::loader()
            .schema(schema())
            .from_toml("[workspace]\nregistry = \"r.io\"\n[apps.web]\n", dir.path())
            .expect_err("refused");
        assert!(
            err.to_string().starts_with(
                "apps.web.build.dockerfile: \"apps/web/Dockerfile\" is outside the repository"
            ),
            "{err}"
        );
    }
}
