//! Pod addresses: each pod gets a loopback address of its own, `127.X.Y.N`, on
//! which its container ports are published, so that two replicas listening on the
//! same port do not clash and `http://<podIP>:<port>` answers from the host as on a
//! real cluster's node.
//!
//! Containers run on a slirp4netns network with `allow_host_loopback=true`: from
//! inside a pod, [`HOST_ALIAS`] reaches the host's `127.0.0.1` (a test's registry
//! or server there). Podman's default bridge network publishes ports too, but
//! from it the host's loopback is unreachable (its gateway is the host's bridge
//! address), so services a test binds to `127.0.0.1` would not be.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The address a pod uses to reach the host's `127.0.0.1` (slirp4netns's host
/// loopback forward).
pub(crate) const HOST_ALIAS: &str = "10.0.2.2";

/// The Podman network option of a pod on its own network.
pub(crate) const POD_NETWORK: &str =
    "slirp4netns:allow_host_loopback=true,port_handler=slirp4netns";

/// The pod addresses of one cluster: `127.X.Y.2` to `127.X.Y.254`, with `X.Y` taken
/// from the process id and a per-process counter, so clusters running at once (in
/// one process or several) draw from different blocks.
#[derive(Debug)]
pub(crate) struct Addresses {
    block: [u8; 2],
    used: HashSet<Ipv4Addr>,
    next: u8,
}

impl Addresses {
    /// A fresh block.
    pub(crate) fn new() -> Self {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Second octet 16..=254 (not 0, where 127.0.0.1 lives), third from the counter.
        let x = 16 + (pid % 239) as u8;
        let y = ((pid / 239).wrapping_add(n.wrapping_mul(97)) % 256) as u8;
        Self {
            block: [x, y],
            used: HashSet::new(),
            next: 2,
        }
    }

    /// A free address on which every port of `ports` can be bound now, or `None`
    /// when the block is exhausted.
    pub(crate) fn take(&mut self, ports: &[u16]) -> Option<Ipv4Addr> {
        for _ in 2..=254u16 {
            let ip = Ipv4Addr::new(127, self.block[0], self.block[1], self.next);
            self.next = if self.next >= 254 { 2 } else { self.next + 1 };
            if self.used.contains(&ip) {
                continue;
            }
            if ports.iter().all(|p| TcpListener::bind((ip, *p)).is_ok()) {
                self.used.insert(ip);
                return Some(ip);
            }
        }
        None
    }

    /// Gives `ip` back.
    pub(crate) fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::Addresses;

    #[test]
    fn addresses_are_distinct_loopback_ones() {
        let mut a = Addresses::new();
        let first = a.take(&[]).expect("an address");
        let second = a.take(&[]).expect("an address");
        assert_ne!(first, second);
        assert!(first.is_loopback() && second.is_loopback());
        assert_ne!(first.octets()[1], 0);
        a.release(first);
    }
}
