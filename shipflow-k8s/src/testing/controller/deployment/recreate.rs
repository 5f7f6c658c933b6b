//! recreate.go: old ReplicaSets to zero, wait for their pods, then the new one.

use serde_json::Value;

use super::{Sync, replicas, status_replicas};
use crate::testing::controller::controlled;
use crate::testing::resources::Kind;
use crate::testing::store::str_at;

impl Sync<'_> {
    /// `rolloutRecreate`.
    pub(super) fn rollout_recreate(&mut self) {
        let (new, old) = self.sync_revision(false);
        let active: Vec<Value> = old.iter().filter(|rs| replicas(rs) > 0).cloned().collect();
        let mut scaled_down = false;
        for rs in &active {
            scaled_down |= self.scale(rs, 0).is_some();
        }
        if scaled_down {
            return self.sync_rollout_status(new.as_ref());
        }
        if self.old_pods_running(new.as_ref(), &old) {
            return self.sync_rollout_status(new.as_ref());
        }
        let (new, old) = match new {
            Some(n) => (n, old),
            None => match self.sync_revision(true) {
                (Some(n), o) => (n, o),
                (None, _) => return,
            },
        };
        let new = self.current(&new);
        self.scale(&new, replicas(&self.d));
        if self.complete() {
            self.clean_up(&old);
        }
        let new = self.current(&new);
        self.sync_rollout_status(Some(&new));
    }

    fn old_pods_running(&self, new: Option<&Value>, old: &[Value]) -> bool {
        if old.iter().map(status_replicas).sum::<i64>() > 0 {
            return true;
        }
        let new_uid = new.map(|n| str_at(n, "/metadata/uid").to_owned());
        old.iter().any(|rs| {
            Some(str_at(rs, "/metadata/uid").to_owned()) != new_uid
                && controlled(self.st, Kind::Pod, &self.ns, str_at(rs, "/metadata/uid"))
                    .iter()
                    .any(|p| !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
        })
    }
}
