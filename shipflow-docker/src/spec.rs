//! The container an app's deploy target describes, in Docker Engine API terms.

use std::collections::HashMap;

use crate::config::DockerTarget;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

/// A published port: `[ip:][host:]container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortSpec {
    pub(crate) host_ip: Option<String>,
    pub(crate) host_port: Option<u16>,
    pub(crate) container_port: u16,
    pub(crate) protocol: String,
}

impl PortSpec {
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let (ports, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let parts: Vec<&str> = ports.split(':').collect();
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("port `{spec}`: `{p}` is not a port number"))
        };
        let (host_ip, host_port, container) = match parts.as_slice() {
            [c] => (None, None, port(c)?),
            [h, c] => (None, Some(port(h)?), port(c)?),
            [ip, h, c] => (Some((*ip).to_owned()), Some(port(h)?), port(c)?),
            _ => return Err(format!("port `{spec}`: expected `host:container`")),
        };
        Ok(Self {
            host_ip,
            host_port,
            container_port: container,
            protocol: protocol.to_owned(),
        })
    }

    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol)
    }
}

/// Whether the container's ports are those the target names, or loopback ports the
/// engine picks (the new container of a `start-first` deploy, behind the proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    AsConfigured,
    EphemeralLoopback,
}

pub(crate) fn restart_policy(name: Option<&str>) -> Result<Option<RestartPolicy>, String> {
    let name = match name {
        None => return Ok(None),
        Some("no") => RestartPolicyNameEnum::NO,
        Some("always") => RestartPolicyNameEnum::ALWAYS,
        Some("unless-stopped") => RestartPolicyNameEnum::UNLESS_STOPPED,
        Some("on-failure") => RestartPolicyNameEnum::ON_FAILURE,
        Some(other) => {
            return Err(format!(
                "restart `{other}`: use no, always, unless-stopped or on-failure"
            ));
        }
    };
    Ok(Some(RestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }))
}

/// The create request for `image` with `labels`.
pub(crate) fn container_body(
    target: &DockerTarget,
    image: &str,
    labels: HashMap<String, String>,
    publish: Publish,
) -> Result<ContainerCreateBody, String> {
    let ports = target
        .ports
        .iter()
        .map(|p| PortSpec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut exposed = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in &ports {
        exposed.insert(port.key(), HashMap::new());
        let binding = match publish {
            Publish::AsConfigured => PortBinding {
                host_ip: port.host_ip.clone(),
                host_port: port.host_port.map(|p| p.to_string()),
            },
            Publish::EphemeralLoopback => PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            },
        };
        bindings
            .entry(port.key())
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    let env: Vec<String> = target.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(labels),
        env: (!env.is_empty()).then_some(env),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!target.volumes.is_empty()).then(|| target.volumes.clone()),
            restart_policy: restart_policy(target.restart.as_deref())?,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_forms() {
        let p = PortSpec::parse("127.0.0.1:8080:80/udp").expect("valid");
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!((p.host_port, p.container_port), (Some(8080), 80));
        assert_eq!(p.key(), "80/udp");
        assert_eq!(PortSpec::parse("80").expect("valid").host_port, None);
        assert!(PortSpec::parse("a:80").is_err());
    }

    #[test]
    fn rejects_unknown_restart_policy() {
        assert!(restart_policy(Some("sometimes")).is_err());
        assert!(
            restart_policy(Some("unless-stopped"))
                .expect("valid")
                .is_some()
        );
    }
}
