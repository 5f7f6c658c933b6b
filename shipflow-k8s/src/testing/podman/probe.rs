//! Readiness of a running container, probed for real and in real time: the
//! container's `readinessProbe` (HTTP GET, TCP connect or exec) with its
//! `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `successThreshold` and
//! `failureThreshold`; without one, a TCP connect to its first `containerPort` every
//! 200 ms (so that "ready" means "answers"), or ready once running when it has no
//! port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::engine::Engine;
use crate::testing::store::str_at;

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// `GET path` on the port answers 200–399.
    Http {
        /// The request path (with query).
        path: String,
        /// The container port.
        port: u16,
    },
    /// A TCP connection to the port opens.
    Tcp {
        /// The container port.
        port: u16,
    },
    /// The command, run in the container, exits 0.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
    /// Nothing to check: ready while running.
    Running,
}

/// A readiness probe and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) check: Check,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Probe {
    /// The readiness probe of `container`, whose TCP ports are `ports`.
    pub(crate) fn of(container: &Value, ports: &[u16]) -> Self {
        let p = &container["readinessProbe"];
        let seconds = |field: &str, default: u64| {
            Duration::from_secs(p[field].as_u64().unwrap_or(default).min(3600))
        };
        let count = |field: &str, default: u32| {
            p[field]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(default)
                .max(1)
        };
        let port_of = |probe: &Value| -> Option<u16> {
            match &probe["port"] {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(name) => container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|port| port["name"] == name.as_str())
                    .and_then(|port| port["containerPort"].as_u64())
                    .and_then(|n| u16::try_from(n).ok()),
                _ => None,
            }
        };
        let check = if let Some(port) = p.get("httpGet").and_then(port_of) {
            let path = match str_at(&p["httpGet"], "/path") {
                "" => "/".to_owned(),
                path => path.to_owned(),
            };
            Some(Check::Http { path, port })
        } else if let Some(port) = p.get("tcpSocket").and_then(port_of) {
            Some(Check::Tcp { port })
        } else {
            p["exec"]["command"].as_array().map(|c| Check::Exec {
                command: c
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            })
        };
        match check {
            Some(check) => Self {
                check,
                initial_delay: seconds("initialDelaySeconds", 0),
                period: seconds("periodSeconds", 10).max(Duration::from_secs(1)),
                timeout: seconds("timeoutSeconds", 1).max(Duration::from_secs(1)),
                success_threshold: count("successThreshold", 1),
                failure_threshold: count("failureThreshold", 3),
            },
            None => Self {
                check: ports
                    .first()
                    .map_or(Check::Running, |port| Check::Tcp { port: *port }),
                initial_delay: Duration::ZERO,
                period: Duration::from_millis(200),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 1,
            },
        }
    }
}

/// Probes `container` (reached at `ip`) until the task is aborted, keeping `ready`
/// up to date.
pub(crate) async fn run(
    engine: Arc<Engine>,
    probe: Probe,
    ip: String,
    container: String,
    ready: Arc<AtomicBool>,
) {
    if probe.check == Check::Running {
        ready.store(true, Ordering::SeqCst);
        return;
    }
    tokio::time::sleep(probe.initial_delay).await;
    let (mut passed, mut failed) = (0u32, 0u32);
    loop {
        let ok = tokio::time::timeout(probe.timeout, once(&engine, &probe.check, &ip, &container))
            .await
            .unwrap_or(false);
        if ok {
            passed += 1;
            failed = 0;
            if passed >= probe.success_threshold {
                ready.store(true, Ordering::SeqCst);
            }
        } else {
            failed += 1;
            passed = 0;
            if failed >= probe.failure_threshold {
                ready.store(false, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}

/// One probe.
async fn once(engine: &Engine, check: &Check, ip: &str, container: &str) -> bool {
    match check {
        Check::Running => true,
        Check::Tcp { port } => tcp_open(ip, *port).await,
        Check::Http { path, port } => http_ok(ip, *port, path).await,
        Check::Exec { command } => {
            let mut args = vec!["exec".to_owned(), container.to_owned()];
            args.extend(command.iter().cloned());
            engine.run(&args, Duration::from_secs(30)).await.is_ok()
        }
    }
}

/// Whether something listens on the container's `port`. The pod's address is a
/// port forwarder's (slirp4netns accepts every connection, then closes it when
/// nothing listens inside), so an accepted connection counts only if it is not
/// closed at once: it stays open, or the server speaks first.
async fn tcp_open(ip: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)).await else {
        return false;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// Whether `GET path` on `ip:port` answers with a status from 200 to 399, as the
/// kubelet's HTTP probe counts success. Reads at most the status line's first 64
/// bytes.
async fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    status_ok(&head[..len])
}

/// Whether an HTTP response starting with `head` has a 2xx or 3xx status.
fn status_ok(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .is_some_and(|code| (200..400).contains(&code))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Check, Probe, status_ok};

    #[test]
    fn probes_from_the_spec_or_the_first_port() {
        let c = json!({"ports": [{"name": "web", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "web"}, "periodSeconds": 1}});
        let probe = Probe::of(&c, &[8080]);
        assert_eq!(
            probe.check,
            Check::Http {
                path: "/healthz".into(),
                port: 8080
            }
        );
        assert_eq!(
            Probe::of(&json!({}), &[80, 81]).check,
            Check::Tcp { port: 80 }
        );
        assert_eq!(Probe::of(&json!({}), &[]).check, Check::Running);
    }

    #[test]
    fn success_is_a_2xx_or_3xx_status() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 302 Found"));
        assert!(!status_ok(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(!status_ok(b"garbage"));
    }
}
