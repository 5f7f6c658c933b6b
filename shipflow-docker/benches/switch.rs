//! What a switch costs the clients, per proxy adapter: two busybox httpd servers
//! ("A" and "B") behind HAProxy (switched through its runtime API) and behind Caddy
//! (its admin API), 8 clients on kept-alive connections sending GETs and POSTs
//! every 10 ms, and the upstream switched back and forth. Printed per adapter:
//! failed requests per switch, how long the switch call takes, and the switch
//! latency: from the call until no request sent after it gets the old answer.
//! Needs haproxy, caddy and busybox-static; no container engine.
//!
//! `cargo bench -p shipflow-docker --bench switch` (`SHIPFLOW_BENCH_SWITCHES=40`
//! for more switches)

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Service, free_port, spawn, start_caddy_in, start_haproxy_in, wait_until};
use shipflow_docker::{CaddySwitch, HaproxyAdmin, HaproxySwitch, TrafficSwitch};

/// Switches unless `SHIPFLOW_BENCH_SWITCHES` says otherwise.
const SWITCHES: usize = 10;
const CLIENTS: usize = 8;

/// busybox httpd serving `body` at `/cgi-bin/rev` (GET and POST) on `port`.
fn upstream(dir: &Path, body: &str, port: u16) -> Service {
    let root = dir.join(body);
    std::fs::create_dir_all(root.join("cgi-bin")).expect("docroot");
    let script = root.join("cgi-bin/rev");
    std::fs::write(
        &script,
        format!(
            "#!/bin/busybox sh\nprintf 'Content-Type: text/plain\\r\\nContent-Length: {}\\r\\nConnection: close\\r\\n\\r\\n{body}'\n",
            body.len()
        ),
    )
    .expect("cgi script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("cgi mode");
    let mut httpd = Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&root);
    let service = spawn(httpd, &dir.join(format!("httpd-{body}.log")));
    wait_until("busybox httpd", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    service
}

fn haproxy(dir: &Path, listen: u16) -> (Service, HaproxySwitch) {
    let (service, socket) = start_haproxy_in(dir, listen, "web");
    let switch = HaproxySwitch::new(
        HaproxyAdmin::Unix(socket),
        "web",
        ["blue".into(), "green".into()],
    )
    .drain_timeout(Duration::from_secs(5));
    (service, switch)
}

fn caddy(dir: &Path, listen: u16) -> (Service, CaddySwitch) {
    let (service, admin) = start_caddy_in(dir, listen, "web");
    (service, CaddySwitch::new(admin, "web"))
}

/// One request: when it was sent and its answer's body, or why it failed.
type Sent = (Instant, Result<String, String>);

async fn client(listen: u16, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let url = format!("http://127.0.0.1:{listen}/cgi-bin/rev");
    let mut sent = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let request = if n.is_multiple_of(2) {
            http.get(&url)
        } else {
            http.post(&url).body("x")
        };
        n += 1;
        let at = Instant::now();
        let answer = match request.send().await {
            Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(format!("{e:?}")),
        };
        sent.push((at, answer));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent
}

struct Measured {
    requests: usize,
    failed: usize,
    calls: Vec<Duration>,
    latencies: Vec<Duration>,
}

async fn measure(
    switch: &dyn TrafficSwitch,
    listen: u16,
    a: u16,
    b: u16,
    switches: usize,
) -> Measured {
    let addr = |port: u16| format!("127.0.0.1:{port}");
    switch.switch_to(&addr(a)).await.expect("first switch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(listen, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut switched = Vec::new();
    for i in 0..switches {
        let (to, from, new) = if i % 2 == 0 { (b, a, "B") } else { (a, b, "A") };
        let started = Instant::now();
        switch.switch_to(&addr(to)).await.expect("switch");
        let call = started.elapsed();
        switched.push((started, call, new));
        // As a deploy does: wait until nothing is in flight to the old one.
        switch
            .drain(&addr(from), Duration::from_millis(500))
            .await
            .expect("drain");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.extend(c.await.expect("client"));
    }
    let failed = sent.iter().filter(|(_, a)| a.is_err()).count();
    let latencies = switched
        .iter()
        .enumerate()
        .map(|(i, (started, call, new))| {
            let until = switched.get(i + 1).map(|s| s.0);
            // The last request sent after the switch began that got the old answer.
            let last_old = sent
                .iter()
                .filter(|(at, _)| at >= started && until.is_none_or(|u| *at < u))
                .filter(|(_, a)| a.as_ref().is_ok_and(|body| body != new))
                .map(|(at, _)| at.duration_since(*started))
                .max();
            last_old.unwrap_or(Duration::ZERO).max(*call)
        })
        .collect();
    Measured {
        requests: sent.len(),
        failed,
        calls: switched.iter().map(|s| s.1).collect(),
        latencies,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let switches: usize = std::env::var("SHIPFLOW_BENCH_SWITCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SWITCHES);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (free_port(), free_port());
    let _a = upstream(dir.path(), "A", a);
    let _b = upstream(dir.path(), "B", b);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{CLIENTS} kept-alive clients, GET and POST every 10 ms, {switches} switches per adapter"
    );
    println!(
        "adapter  requests  failed  failed/switch  switch call (median)  latency median  latency max"
    );
    for name in ["haproxy", "caddy"] {
        let listen = free_port();
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).expect("dir");
        let (_service, switch): (Service, Box<dyn TrafficSwitch>) = match name {
            "haproxy" => {
                let (s, w) = haproxy(&sub, listen);
                (s, Box::new(w))
            }
            _ => {
                let (s, w) = caddy(&sub, listen);
                (s, Box::new(w))
            }
        };
        let m = runtime.block_on(measure(switch.as_ref(), listen, a, b, switches));
        println!(
            "{name:<8} {:>8}  {:>6}  {:>13.1}  {:>20?}  {:>14?}  {:>11?}",
            m.requests,
            m.failed,
            m.failed as f64 / switches as f64,
            median(m.calls),
            median(m.latencies.clone()),
            m.latencies.iter().max().copied().unwrap_or_default(),
        );
    }
}
