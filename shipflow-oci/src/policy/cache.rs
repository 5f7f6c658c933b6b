//! [`TagCache`]: one poll's tag lists and tag digests, each fetched once however
//! many policies ask for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use shipflow_core::{Context, Digest, ImageRef, Registry as _};
use tokio::sync::OnceCell;

use super::{ImagePolicy, PolicyError, Resolution};
use crate::{OciError, RegistryClient};

/// A result shared by every policy that asked for it in this poll.
type Shared<T> = Result<T, Arc<OciError>>;
type Slot<T> = Arc<OnceCell<Shared<T>>>;

/// One poll of the registry for a set of [`ImagePolicy`]s: each repository's
/// tags are listed once (`GET /v2/<repo>/tags/list?n=100`, following the `Link`
/// pages; 100 is Quay's most per page), and each chosen tag is resolved once
/// (`HEAD` of its manifest), however many policies watch them, even when they
/// ask at the same time. A 429 is waited out as its `Retry-After` says, and
/// 5xx and connection errors are retried, as every request of the
/// [`RegistryClient`]. A failure is kept for the poll too: fifty policies on a
/// registry that is down make one attempt, not fifty.
///
/// Make one per poll, or call [`TagCache::next_poll`]; [`TagCache::forget`]
/// drops one repository (on a registry's push notification, say).
///
/// ```no_run
/// use shipflow_core::Context;
/// use shipflow_oci::{ImagePolicy, RegistryClient, TagCache};
///
/// # async fn poll(policies: &[ImagePolicy]) -> Result<(), Box<dyn std::error::Error>> {
/// let tags = TagCache::new(RegistryClient::builder().build()?);
/// for resolved in tags.resolve_all(policies, &Context::new()).await {
///     let resolved = resolved?;
///     println!("{}: {}", resolved.policy, resolved.pinned());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TagCache {
    client: RegistryClient,
    /// Per `registry/repository`: its tags.
    lists: Mutex<HashMap<String, Slot<Arc<[String]>>>>,
    /// Per `registry/repository:tag`: its digest, `None` if it has no manifest.
    digests: Mutex<HashMap<String, Slot<Option<Digest>>>>,
}

impl TagCache {
    /// The page size asked for: Quay's limit.
    pub const PAGE_SIZE: u32 = 100;
    /// How many policies [`TagCache::resolve_all`] resolves at once.
    const CONCURRENCY: usize = 8;

    /// An empty cache over `client`.
    pub fn new(client: RegistryClient) -> Self {
        Self {
            client,
            lists: Mutex::default(),
            digests: Mutex::default(),
        }
    }

    /// Starts the next poll: every list and digest is fetched again when asked.
    pub fn next_poll(&self) {
        lock(&self.lists).clear();
        lock(&self.digests).clear();
    }

    /// Forgets what this poll learnt about `repository`, so that it is listed
    /// again when asked (after a push to it, say).
    pub fn forget(&self, repository: &ImageRef) {
        let name = repository.name();
        lock(&self.lists).remove(&name);
        let prefix = format!("{name}:");
        lock(&self.digests).retain(|key, _| !key.starts_with(&prefix));
    }

    /// The tags of `repository` (its tag, if any, is ignored), listed at most
    /// once per poll.
    pub async fn tags(&self, repository: &ImageRef, ctx: &Context) -> Shared<Arc<[String]>> {
        let slot = slot(&self.lists, repository.name());
        slot.get_or_init(|| async {
            let listed = self
                .client
                .list_tags(repository, Some(Self::PAGE_SIZE), ctx)
                .await;
            if let Ok(tags) = &listed {
                tracing::debug!(repository = %repository.name(), tags = tags.len(), "tags listed");
            }
            listed.map(Into::into).map_err(Arc::new)
        })
        .await
        .clone()
    }

    /// The digest `image` (a tag of a repository) names, resolved at most once
    /// per poll; `None` when the registry has no such manifest.
    async fn digest(&self, image: &ImageRef, ctx: &Context) -> Shared<Option<Digest>> {
        let slot = slot(&self.digests, image.to_string());
        slot.get_or_init(|| async {
            self.client.resolve(image, ctx).await.map_err(|e| {
                Arc::new(match e.downcast::<OciError>() {
                    Ok(e) => *e,
                    Err(other) => OciError::Client {
                        reason: format!("resolving {image}"),
                        source: Some(other),
                    },
                })
            })
        })
        .await
        .clone()
    }

    /// Chooses `policy`'s tag from its repository's tags and resolves it to a
    /// digest.
    pub async fn resolve(
        &self,
        policy: &ImagePolicy,
        ctx: &Context,
    ) -> Result<Resolution, PolicyError> {
        let repository = policy.repository();
        let tags = self
            .tags(repository, ctx)
            .await
            .map_err(|source| PolicyError::TagList {
                policy: policy.name().to_owned(),
                repository: repository.name(),
                source,
            })?;
        let tag = policy.choose(&tags)?;
        // A listed tag is a valid one, unless the registry lists what no client could push.
        let image = repository.with_tag(tag).map_err(|e| PolicyError::NoMatch {
            policy: policy.name().to_owned(),
            repository: repository.name(),
            listed: tags.len(),
            why: format!("the registry listed an invalid tag: {e}"),
        })?;
        let digest = self
            .digest(&image, ctx)
            .await
            .map_err(|source| PolicyError::Resolve {
                policy: policy.name().to_owned(),
                reference: image.to_string(),
                source,
            })?
            .ok_or_else(|| PolicyError::TagGone {
                policy: policy.name().to_owned(),
                reference: image.to_string(),
            })?;
        tracing::debug!(policy = policy.name(), %image, %digest, of = tags.len(), "policy chose a tag");
        Ok(Resolution {
            policy: policy.name().to_owned(),
            image,
            digest,
        })
    }

    /// [`TagCache::resolve`] for each of `policies` (a few at once), in their order.
    pub async fn resolve_all(
        &self,
        policies: &[ImagePolicy],
        ctx: &Context,
    ) -> Vec<Result<Resolution, PolicyError>> {
        // The futures are made before the stream, not by a closure inside it: a
        // stream holding such a closure is not `Send` (rust-lang/rust#102211), and
        // then neither is any task that awaits this.
        let each: Vec<_> = policies.iter().map(|p| self.resolve(p, ctx)).collect();
        futures_util::stream::iter(each)
            .buffered(Self::CONCURRENCY)
            .collect()
            .await
    }
}

/// The slot for `key`, made empty if there is none yet.
fn slot<T>(map: &Mutex<HashMap<String, Slot<T>>>, key: String) -> Slot<T> {
    lock(map).entry(key).or_default().clone()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a plain map behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
