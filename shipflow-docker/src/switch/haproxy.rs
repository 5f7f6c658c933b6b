//! [`HaproxySwitch`]: HAProxy's runtime API, with no reload.
//!
//! The backend declares two server slots, say `blue` and `green`; one serves and
//! the other waits in maintenance. A switch points the waiting slot at the new
//! container (`set server <backend>/<slot> addr <ip> port <port>`), makes it
//! ready, and sets the serving one to drain: it takes no new request while those
//! in flight finish on their connections. HAProxy keeps its client connections
//! open throughout, so kept-alive clients notice nothing. Once the drained slot has
//! no request in flight (its `scur` and `qcur` in `show stat` are 0) it goes to
//! maintenance and its container may stop.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::TrafficSwitch;
use crate::config::ProxyTarget;

/// How long one runtime-API command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read: `show stat` of a backend is a few KiB.
const ANSWER_LIMIT: u64 = 1024 * 1024;
/// How often a drain looks at the requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long a drain waits for requests in flight unless the target says.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where HAProxy's runtime API listens: a `stats socket … level admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxyAdmin {
    /// A Unix socket, written as its absolute path or `unix:<path>`.
    Unix(PathBuf),
    /// A TCP address, written `host:port` (`ipv4@` as in HAProxy's config is accepted).
    Tcp(String),
}

impl FromStr for HaproxyAdmin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let addr = s
            .strip_prefix("ipv4@")
            .or_else(|| s.strip_prefix("ipv6@"))
            .unwrap_or(s);
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(Self::Tcp(addr.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is not a runtime API address like \"/run/haproxy/admin.sock\" or \"127.0.0.1:9999\""
            )),
        }
    }
}

impl std::fmt::Display for HaproxyAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => f.write_str(addr),
        }
    }
}

/// A backend's two server slots switched through HAProxy's runtime API.
#[derive(Debug, Clone)]
pub struct HaproxySwitch {
    admin: HaproxyAdmin,
    backend: String,
    slots: [String; 2],
    drain_timeout: Duration,
    route: String,
}

/// One server slot as `show stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    name: String,
    /// `ip:port`.
    addr: String,
    /// `UP`, `no check`, `DRAIN`, `MAINT`, `DOWN`, …
    status: String,
    /// Requests being served or queued.
    in_flight: u64,
}

impl Slot {
    /// Whether HAProxy may send it new requests.
    fn serving(&self) -> bool {
        !(self.status.starts_with("MAINT") || self.status.starts_with("DRAIN"))
    }
}

impl HaproxySwitch {
    /// The switch of `backend`'s server slots `slots` through the runtime API at
    /// `admin`; a drain waits at most 30 s for requests in flight.
    pub fn new(admin: HaproxyAdmin, backend: impl Into<String>, slots: [String; 2]) -> Self {
        let backend = backend.into();
        Self {
            route: format!("backend {backend}"),
            admin,
            backend,
            slots,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// How long a drain waits for requests in flight before the old slot goes to
    /// maintenance anyway.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The switch a deploy target's `proxy` section describes (checked at load).
    pub(crate) fn for_target(admin: &str, proxy: &ProxyTarget) -> Self {
        let admin = admin
            .parse()
            .unwrap_or_else(|_| HaproxyAdmin::Unix(PathBuf::from(admin)));
        let slot = |i: usize| proxy.servers.get(i).cloned().unwrap_or_default();
        Self::new(
            admin,
            proxy.backend.clone().unwrap_or_default(),
            [slot(0), slot(1)],
        )
        .drain_timeout(
            proxy
                .drain_timeout
                .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs),
        )
    }

    /// Sends one command and returns HAProxy's answer.
    async fn command(&self, line: &str) -> Result<String, String> {
        let exchange = async {
            match &self.admin {
                HaproxyAdmin::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    exchange(stream, line).await
                }
                HaproxyAdmin::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    exchange(stream, line).await
                }
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("HAProxy runtime API {}: {line}: {e}", self.admin)),
            Err(_) => Err(format!(
                "HAProxy runtime API {}: {line}: no answer within {COMMAND_TIMEOUT:?}",
                self.admin
            )),
        }
    }

    /// Sends a `set server` command, whose answer is empty or says what changed.
    async fn set(&self, slot: &str, change: &str) -> Result<(), String> {
        let line = format!("set server {}/{slot} {change}", self.backend);
        let answer = self.command(&line).await?;
        let answer = answer.trim();
        if answer.is_empty() || answer.contains("changed") || answer.contains("no need to change") {
            Ok(())
        } else {
            Err(format!("HAProxy refused `{line}`: {}", first_line(answer)))
        }
    }

    /// The two slots as `show stat` reports them now.
    async fn slots(&self) -> Result<[Slot; 2], String> {
        let answer = self
            .command(&format!("show stat {} 4 -1", self.backend))
            .await?;
        let slots = parse_stat(&answer, &self.backend)?;
        let find = |name: &str| {
            slots.iter().find(|s| s.name == name).cloned().ok_or_else(|| {
                format!(
                    "HAProxy backend {} has no server {name}: declare two servers for shipflow to switch between (for example `server {} 127.0.0.1:9 disabled` and `server {} 127.0.0.1:9 disabled`)",
                    self.backend, self.slots[0], self.slots[1]
                )
            })
        };
        Ok([find(&self.slots[0])?, find(&self.slots[1])?])
    }
}

#[async_trait]
impl TrafficSwitch for HaproxySwitch {
    async fn switch_to(&self, upstream: &str) -> Result<(), String> {
        let (ip, port) = upstream
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .ok_or_else(|| format!("{upstream:?} is not an ip:port upstream"))?;
        let slots = self.slots().await?;
        // The slot already pointing there, else the one waiting, else the second.
        let target = slots
            .iter()
            .position(|s| s.addr == upstream)
            .or_else(|| slots.iter().position(|s| !s.serving()))
            .unwrap_or(1);
        let other = &slots[1 - target];
        let chosen = &slots[target];
        if chosen.addr != upstream {
            self.set(&chosen.name, &format!("addr {ip} port {port}"))
                .await?;
        }
        if !chosen.serving() {
            self.set(&chosen.name, "state ready").await?;
        }
        // Ready first, then drain: for a moment both serve, never neither.
        if other.serving() {
            self.set(&other.name, "state drain").await?;
        }
        Ok(())
    }

    fn route(&self) -> &str {
        &self.route
    }

    async fn upstream(&self) -> Result<Option<String>, String> {
        let slots = self.slots().await?;
        let mut serving = slots.iter().filter(|s| s.serving());
        Ok(match (serving.next(), serving.next()) {
            (Some(one), None) => Some(one.addr.clone()),
            _ => None,
        })
    }

    async fn drain(&self, upstream: &str, _wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            let slots = self.slots().await?;
            let Some(slot) = slots.iter().find(|s| s.addr == upstream && !s.serving()) else {
                // Serving again (switched back), or pointed elsewhere: nothing to drain.
                return Ok(());
            };
            if slot.in_flight == 0 || Instant::now() >= deadline {
                if slot.in_flight > 0 {
                    tracing::warn!(
                        backend = %self.backend,
                        server = %slot.name,
                        in_flight = slot.in_flight,
                        "requests still in flight after the drain timeout of {:?}",
                        self.drain_timeout
                    );
                }
                return self.set(&slot.name, "state maint").await;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// Writes `line` and reads the answer to its end (HAProxy closes a non-interactive
/// connection after answering), at most [`ANSWER_LIMIT`] bytes.
async fn exchange<S>(mut stream: S, line: &str) -> std::io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(ANSWER_LIMIT + 1)
        .read_to_end(&mut answer)
        .await?;
    if answer.len() as u64 > ANSWER_LIMIT {
        return Err(std::io::Error::other(format!(
            "the answer is larger than {ANSWER_LIMIT} bytes"
        )));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The servers of `backend` in a `show stat` CSV answer.
fn parse_stat(answer: &str, backend: &str) -> Result<Vec<Slot>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("HAProxy's `show stat` answered {:?}", first_line(answer)))?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("HAProxy's `show stat` has no {name} column"))
    };
    let (px, sv, scur, qcur, status, addr) = (
        column("pxname")?,
        column("svname")?,
        column("scur")?,
        column("qcur")?,
        column("status")?,
        column("addr")?,
    );
    let mut slots = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or_default();
        if field(px) != backend || matches!(field(sv), "BACKEND" | "FRONTEND") {
            continue;
        }
        let count = |i: usize| field(i).parse::<u64>().unwrap_or(0);
        slots.push(Slot {
            name: field(sv).to_owned(),
            addr: field(addr).to_owned(),
            status: field(status).to_owned(),
            in_flight: count(scur) + count(qcur),
        });
    }
    if slots.is_empty() {
        return Err(format!(
            "HAProxy has no backend {backend} with servers: {:?}",
            first_line(answer)
        ));
    }
    Ok(slots)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,status,addr\n\
        web,blue,0,0,2,3,DRAIN,127.0.0.1:8081\n\
        web,green,1,1,4,4,no check,127.0.0.1:8082\n\
        web,BACKEND,0,0,6,7,UP,\n\
        other,blue,0,0,9,9,UP,10.0.0.1:80\n";

    #[test]
    fn reads_the_backends_slots_from_show_stat() {
        let slots = parse_stat(STAT, "web").expect("parses");
        assert_eq!(slots.len(), 2);
        assert_eq!(
            (
                slots[0].addr.as_str(),
                slots[0].in_flight,
                slots[0].serving()
            ),
            ("127.0.0.1:8081", 2, false)
        );
        assert_eq!(
            (
                slots[1].addr.as_str(),
                slots[1].in_flight,
                slots[1].serving()
            ),
            ("127.0.0.1:8082", 5, true)
        );
    }

    #[test]
    fn refuses_answers_that_are_not_stats() {
        assert!(parse_stat("Unknown command.\n", "web").is_err());
        assert!(parse_stat("# pxname,svname\nweb,blue\n", "web").is_err());
        assert!(parse_stat(STAT, "nope").is_err());
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(
            "/run/haproxy/admin.sock".parse(),
            Ok(HaproxyAdmin::Unix("/run/haproxy/admin.sock".into()))
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse(),
            Ok(HaproxyAdmin::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            "ipv4@127.0.0.1:9999".parse(),
            Ok(HaproxyAdmin::Tcp("127.0.0.1:9999".into()))
        );
        assert!("admin.sock".parse::<HaproxyAdmin>().is_err());
        assert!("127.0.0.1:0".parse::<HaproxyAdmin>().is_err());
    }
}
