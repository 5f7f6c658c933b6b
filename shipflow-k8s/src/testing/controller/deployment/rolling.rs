//! rolling.go: a rolling update within maxSurge and maxUnavailable.

use serde_json::Value;

use super::{Sync, available, max_unavailable, replicas};

impl Sync<'_> {
    /// `rolloutRolling`.
    pub(super) fn rollout_rolling(&mut self) {
        let (new, old) = self.sync_revision(true);
        let Some(new) = new else { return };
        let new = self.current(&new);
        let mut all = old.clone();
        all.push(new.clone());
        if self.reconcile_new(&all, &new) {
            return self.sync_rollout_status(Some(&new));
        }
        let new = self.current(&new);
        let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
        if self.reconcile_old(&old, &new) {
            return self.sync_rollout_status(Some(&new));
        }
        if self.complete() {
            self.clean_up(&old);
        }
        self.sync_rollout_status(Some(&new));
    }

    fn reconcile_new(&mut self, all: &[Value], new: &Value) -> bool {
        let desired = replicas(&self.d);
        let have = replicas(new);
        if have == desired {
            return false;
        }
        if have > desired {
            return self.scale(new, desired).is_some();
        }
        let count = self.new_rs_new_replicas(all, new);
        self.scale(new, count).is_some()
    }

    fn reconcile_old(&mut self, old: &[Value], new: &Value) -> bool {
        let old_pods: i64 = old.iter().map(replicas).sum();
        if old_pods == 0 {
            return false;
        }
        let all_pods = old_pods + replicas(new);
        let min_available = replicas(&self.d) - max_unavailable(&self.d);
        let new_unavailable = replicas(new) - available(new);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        // Unhealthy old replicas first: they would block the rollout.
        let mut cleaned = 0;
        let mut old: Vec<Value> = old.to_vec();
        for rs in &mut old {
            if cleaned >= max_scaled_down {
                break;
            }
            let (want, avail) = (replicas(rs), available(rs));
            if want == 0 || want == avail {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(want - avail);
            if let Some(scaled) = self.scale(rs, want - down) {
                *rs = scaled;
            }
            cleaned += down;
        }
        // Then as many available old replicas as availability allows.
        let available_now: i64 = old.iter().chain(std::iter::once(new)).map(available).sum();
        let mut scaled_down = 0;
        if available_now > min_available {
            let total = available_now - min_available;
            for rs in &old {
                if scaled_down >= total {
                    break;
                }
                let want = replicas(rs);
                if want == 0 {
                    continue;
                }
                let down = want.min(total - scaled_down);
                self.scale(rs, want - down);
                scaled_down += down;
            }
        }
        cleaned + scaled_down > 0
    }
}
