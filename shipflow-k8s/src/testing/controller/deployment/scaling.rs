//! sync.go's scaling: a changed replica count, proportionally while a rollout is
//! under way, and a paused Deployment.

use serde_json::Value;

use super::{DESIRED_REPLICAS, MAX_REPLICAS, Sync, available, max_surge, replicas, rolling};
use crate::testing::store::{int_at, str_at};

impl Sync<'_> {
    /// `isScalingEvent`: an active ReplicaSet was sized for another replica count.
    pub(super) fn is_scaling_event(&mut self) -> bool {
        let (new, old) = self.sync_revision(false);
        let desired = replicas(&self.d);
        new.iter()
            .chain(old.iter())
            .filter(|rs| replicas(rs) > 0)
            .any(|rs| {
                rs["metadata"]["annotations"][DESIRED_REPLICAS]
                    .as_str()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v != desired)
            })
    }

    /// `sync`: scaling (proportionally while a rollout is under way), and the
    /// clean-up of a paused Deployment.
    pub(super) fn sync_scale(&mut self) {
        let (new, old) = self.sync_revision(false);
        let new = new.map(|n| self.current(&n));
        let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
        self.scale_replica_sets(new.as_ref(), &old);
        if self.d["spec"]["paused"] == true {
            let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
            self.clean_up(&old);
        }
        let new = new.map(|n| self.current(&n));
        let status = self.calculate_status(new.as_ref());
        if status != self.d["status"] {
            self.d["status"] = status;
            self.write_deployment_status();
        }
    }

    fn scale_replica_sets(&mut self, new: Option<&Value>, old: &[Value]) {
        let desired = replicas(&self.d);
        let mut all: Vec<Value> = new
            .into_iter()
            .cloned()
            .chain(old.iter().cloned())
            .collect();
        let active: Vec<Value> = all.iter().filter(|rs| replicas(rs) > 0).cloned().collect();
        // One active (or, with none, the newest): it takes the whole size.
        let only = match active.len() {
            0 => new.cloned().or_else(|| old.last().cloned()),
            1 => active.first().cloned(),
            _ => None,
        };
        if let Some(rs) = only {
            if replicas(&rs) != desired {
                self.scale(&rs, desired);
            }
            return;
        }
        let saturated = new.is_some_and(|n| {
            replicas(n) == desired
                && n["metadata"]["annotations"][DESIRED_REPLICAS].as_str()
                    == Some(desired.to_string().as_str())
                && available(n) == desired
        });
        if saturated {
            for rs in old.iter().filter(|rs| replicas(rs) > 0) {
                self.scale(rs, 0);
            }
            return;
        }
        if !rolling(&self.d) {
            return;
        }
        all.retain(|rs| replicas(rs) > 0);
        let allowed = if desired > 0 {
            desired + max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - all.iter().map(replicas).sum::<i64>();
        if to_add == 0 {
            return;
        }
        // Larger first; among equals the newer (scaling up) or the older (down).
        all.sort_by(|a, b| {
            let by_size = replicas(b).cmp(&replicas(a));
            let by_age = str_at(a, "/metadata/creationTimestamp")
                .cmp(str_at(b, "/metadata/creationTimestamp"));
            by_size.then(if to_add > 0 { by_age.reverse() } else { by_age })
        });
        let mut added = 0;
        let mut sizes: Vec<i64> = Vec::new();
        for rs in &all {
            let proportion = self.proportion(rs, to_add, added);
            sizes.push(replicas(rs) + proportion);
            added += proportion;
        }
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
        for (rs, size) in all.iter().zip(sizes) {
            self.scale(rs, size);
        }
    }

    /// `GetProportion`.
    fn proportion(&self, rs: &Value, to_add: i64, added: i64) -> i64 {
        if replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let desired = replicas(&self.d);
        let fraction = if desired == 0 {
            -replicas(rs)
        } else {
            let max = desired + max_surge(&self.d);
            let before = rs["metadata"]["annotations"][MAX_REPLICAS]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v != 0)
                .unwrap_or_else(|| int_at(&self.d, "/status/replicas").unwrap_or(0));
            if before == 0 {
                0
            } else {
                ((replicas(rs) * max) as f64 / before as f64).round() as i64 - replicas(rs)
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }
}
