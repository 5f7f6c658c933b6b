//! [`Trigger`]: wakes the loop, for everything or for the repositories pushed to.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use shipflow_core::ImageRef;
use tokio::sync::Notify;

/// A handle that wakes an [`ImageAutomation`](super::ImageAutomation): cheap to
/// clone and to call from any task or thread. The registry-notification endpoint
/// holds one; a pipeline that just pushed an image can call
/// [`Trigger::pushed`] with it, so the config repository follows in about the
/// time of one pass rather than a poll interval later.
///
/// Wakes coalesce: many calls before the loop runs make one pass (after the
/// loop's debounce), covering every repository named.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    dirty: Mutex<Dirty>,
    notify: Notify,
}

/// What the wakes since the last pass asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Dirty {
    /// A full poll of every repository.
    pub(crate) all: bool,
    /// Repository paths (`team/api`, no registry) pushed to.
    pub(crate) repositories: BTreeSet<String>,
}

impl Dirty {
    pub(crate) fn is_empty(&self) -> bool {
        !self.all && self.repositories.is_empty()
    }
}

impl Trigger {
    /// A trigger not attached to a loop yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a full poll now.
    pub fn poll_now(&self) {
        lock(&self.shared.dirty).all = true;
        self.shared.notify.notify_one();
    }

    /// Says `image`'s repository was pushed to: its tags are listed again and the
    /// policies on it resolved, the others are left as they are.
    pub fn pushed(&self, image: &ImageRef) {
        self.pushed_repository(image.repository());
    }

    /// Says the repository at `path` (`team/api`, without the registry, as
    /// registry notifications name it) was pushed to.
    pub fn pushed_repository(&self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        lock(&self.shared.dirty)
            .repositories
            .insert(path.to_owned());
        self.shared.notify.notify_one();
    }

    /// Waits for a wake (one that came before this call counts).
    pub(crate) async fn woken(&self) {
        self.shared.notify.notified().await;
    }

    /// What was asked for since the last call, leaving nothing.
    pub(crate) fn take(&self) -> Dirty {
        std::mem::take(&mut *lock(&self.shared.dirty))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_coalesce_and_a_wake_before_waiting_counts() {
        let trigger = Trigger::new();
        trigger.pushed_repository("/team/api/");
        trigger.pushed_repository("team/web");
        trigger.pushed_repository("team/api");
        trigger.pushed_repository("");
        tokio::time::timeout(std::time::Duration::from_secs(1), trigger.woken())
            .await
            .expect("the earlier wake is kept");
        let dirty = trigger.take();
        assert!(!dirty.all);
        assert_eq!(
            dirty.repositories.into_iter().collect::<Vec<_>>(),
            ["team/api", "team/web"]
        );
        assert!(trigger.take().is_empty());
        trigger.poll_now();
        assert!(trigger.take().all);
    }
}
