//! Image policies: tables of tag sets and the tag each policy kind chooses
//! (pre-releases, tags that do not match, ties, invalid settings), then against
//! a real docker-registry (50 policies over 10 repositories list each repository
//! once per poll and resolve the digests that were pushed) and against servers
//! on loopback that page, throttle and fail.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::hostile::{Hostile, Reply};
use common::{TestRegistry, noise, temp_layout, write_image};
use shipflow_core::{Context, Digest, Registry as _};
use shipflow_oci::{ImagePolicy, PolicyError, PolicyRule, RegistryClient, SortOrder, TagCache};

const REPO: &str = "ghcr.io/acme/api";

fn semver(range: &str) -> ImagePolicy {
    ImagePolicy::new(
        "semver",
        REPO,
        PolicyRule::Semver {
            range: range.into(),
        },
    )
    .unwrap_or_else(|e| panic!("{range}: {e}"))
}

fn numerical(order: SortOrder) -> ImagePolicy {
    ImagePolicy::new("numerical", REPO, PolicyRule::Numerical { order }).expect("policy")
}

fn alphabetical(order: SortOrder) -> ImagePolicy {
    ImagePolicy::new("alphabetical", REPO, PolicyRule::Alphabetical { order }).expect("policy")
}

fn filtered(policy: ImagePolicy, pattern: &str, extract: &str) -> ImagePolicy {
    policy
        .filter_tags(pattern, Some(extract))
        .unwrap_or_else(|e| panic!("{pattern} / {extract}: {e}"))
}

/// Checks `policy` picks `expected` from `tags`, and from `tags` reversed: the
/// registry's order never decides.
fn assert_chooses(policy: &ImagePolicy, tags: &[&str], expected: &str) {
    let chosen = policy
        .choose(tags)
        .unwrap_or_else(|e| panic!("{tags:?}: {e}"));
    assert_eq!(chosen, expected, "{:?} from {tags:?}", policy.rule());
    let reversed: Vec<&str> = tags.iter().rev().copied().collect();
    assert_eq!(
        policy.choose(&reversed).expect("same tags"),
        expected,
        "{:?} from {reversed:?}",
        policy.rule()
    );
}

fn assert_none(policy: &ImagePolicy, tags: &[&str], why: &str) {
    let err = policy.choose(tags).expect_err("nothing to choose");
    assert!(
        matches!(&err, PolicyError::NoMatch { listed, .. } if *listed == tags.len()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(why), "{message}");
    assert!(
        message.contains(policy.name()) && message.contains(REPO),
        "{message}"
    );
}

#[test]
fn semver_policies_choose_the_highest_version_in_range() {
    let tags = [
        "1.0.0",
        "1.2.3",
        "v1.10.0",
        "2.0.0-rc.1",
        "latest",
        "main-abc-1",
    ];
    for (range, expected) in [
        (">=1.0.0", "v1.10.0"),
        ("1.2", "1.2.3"),
        ("1.0.0", "1.0.0"),
        ("~1.2", "1.2.3"),
        ("^1", "v1.10.0"),
        (">=1.0.0 <1.10.0", "1.2.3"),
        (">=1.0.0, <1.10", "1.2.3"),
        ("1.0 - 1.2", "1.2.3"),
        ("<1.0.0 || 1.2.x", "1.2.3"),
        ("!=1.10.0", "1.2.3"),
        ("*", "v1.10.0"),
        // Pre-releases only where the range names one, as Flux.
        (">=1.0.0-0", "2.0.0-rc.1"),
        (">=1.0.0-0 <2.0.0", "v1.10.0"),
        (">=1.0.0-0 <2.0.0-0", "v1.10.0"),
        ("^2.0.0-0", "2.0.0-rc.1"),
    ] {
        assert_chooses(&semver(range), &tags, expected);
    }
    // Pre-releases order by their identifiers, numbers numerically, below the release.
    let rcs = ["2.0.0-rc.2", "2.0.0-rc.10", "2.0.0-beta.11", "2.0.0-alpha"];
    assert_chooses(&semver(">=2.0.0-0"), &rcs, "2.0.0-rc.10");
    let mut with_release = rcs.to_vec();
    with_release.push("2.0.0");
    assert_chooses(&semver(">=2.0.0-0"), &with_release, "2.0.0");
    assert_chooses(&semver(">=2.0.0"), &with_release, "2.0.0");
    // Ties of precedence (a `v` prefix, build metadata) go to the tag sorting last.
    assert_chooses(&semver(">=1.0.0"), &["1.2.3", "v1.2.3"], "v1.2.3");
    assert_chooses(
        &semver("^1"),
        &["1.0.0+build.2", "1.0.0+build.10", "1.0.0"],
        "1.0.0+build.2",
    );
}

#[test]
fn semver_policies_without_a_match_say_why() {
    // Not strict semver (Flux's rule): partial, leading zeros, four parts, `V`.
    assert_none(
        &semver(">=1.0.0"),
        &["1.2", "01.2.3", "1.2.3.4", "V1.0.0", "latest"],
        "none of them is a semver version",
    );
    assert_none(
        &semver(">=3.0.0"),
        &["1.0.0", "2.0.0", "3.0.0-rc.1"],
        "3 semver version(s), none in range `>=3.0.0`",
    );
    assert_none(&semver(">=1.0.0"), &[], "the repository has no tags");
}

#[test]
fn numerical_policies_compare_numbers_exactly_and_skip_the_rest() {
    let tags = ["1", "10", "9", "2", "latest", "v11", "1e3"];
    assert_chooses(&numerical(SortOrder::Asc), &tags, "10");
    assert_chooses(&numerical(SortOrder::Desc), &tags, "1");
    assert_chooses(&numerical(SortOrder::Asc), &["1.5", "1.25", "-3"], "1.5");
    assert_chooses(&numerical(SortOrder::Desc), &["-1", "-10", "0"], "-10");
    // Nanosecond timestamps differ past an f64's precision.
    assert_chooses(
        &numerical(SortOrder::Asc),
        &["1700000000123456790", "1700000000123456789"],
        "1700000000123456790",
    );
    // Equal numbers tie: the tag sorting last wins, in either order.
    assert_chooses(&numerical(SortOrder::Asc), &["007", "7", "3"], "7");
    assert_chooses(&numerical(SortOrder::Desc), &["1.0", "1", "2"], "1.0");
    assert_none(
        &numerical(SortOrder::Asc),
        &["latest", "main"],
        "none of them is a decimal number",
    );
}

#[test]
fn alphabetical_policies_compare_bytes() {
    let tags = ["b", "a", "B", "ab"];
    assert_chooses(&alphabetical(SortOrder::Asc), &tags, "b");
    assert_chooses(&alphabetical(SortOrder::Desc), &tags, "B");
    let dated = filtered(alphabetical(SortOrder::Asc), r"^(?P<date>\d{8})-", "$date");
    assert_chooses(
        &dated,
        &["20240101-x", "20231231-y", "2025-bad", "latest"],
        "20240101-x",
    );
    // Two tags of one date tie: the tag sorting last wins.
    assert_chooses(
        &dated,
        &["20240101-a", "20240101-b", "20231231-z"],
        "20240101-b",
    );
}

#[test]
fn filters_order_by_the_value_extracted_from_the_tag() {
    let main = filtered(
        numerical(SortOrder::Asc),
        r"^main-[a-f0-9]+-(?P<ts>[0-9]+)",
        "$ts",
    );
    // By the timestamp, not the text (`99` sorts after `100` alphabetically), and
    // never another branch's, however recent.
    assert_chooses(
        &main,
        &[
            "main-abc123-99",
            "main-def456-100",
            "feature-0a1b-1000",
            "main-xyz-500",
            "v1.0.0",
        ],
        "main-def456-100",
    );
    let oldest = filtered(
        numerical(SortOrder::Desc),
        r"^main-[a-f0-9]+-(?P<ts>[0-9]+)",
        "${ts}",
    );
    assert_chooses(&oldest, &["main-abc-99", "main-def-100"], "main-abc-99");
    // A filter without extract orders by the whole tag.
    let rc = ImagePolicy::new(
        "rc",
        REPO,
        PolicyRule::Semver {
            range: ">=1.0.0-0".into(),
        },
    )
    .expect("policy")
    .filter_tags(r"-rc\.", None)
    .expect("filter");
    assert_chooses(
        &rc,
        &["1.0.0-rc.1", "1.0.0-rc.3", "1.1.0", "1.0.0-beta.9"],
        "1.0.0-rc.3",
    );
    assert_none(
        &main,
        &["latest", "v1.0.0"],
        "none matches the filter pattern",
    );
    assert_none(
        &filtered(numerical(SortOrder::Asc), r"^build-(?P<n>\w+)$", "$n"),
        &["build-x", "build-y"],
        "2 matched the filter, none of them is a decimal number",
    );
}

#[test]
fn invalid_settings_are_refused_when_the_policy_is_made() {
    let rule = |range: &str| PolicyRule::Semver {
        range: range.into(),
    };
    for (range, says) in [
        ("banana", "banana"),
        (">=", "no version"),
        ("", "empty"),
        ("1.0.x-0", "1.0.x-0"),
        (">=1.0.0 ||", "empty"),
    ] {
        let err = ImagePolicy::new("api", REPO, rule(range)).expect_err(range);
        assert!(
            matches!(
                &err,
                PolicyError::Invalid {
                    setting: "semver range",
                    ..
                }
            ),
            "{range}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("image policy `api`: semver range") && message.contains(says),
            "{message}"
        );
    }
    for (repository, says) in [("ghcr.io/acme/api:v1", "without a tag"), ("", "repository")] {
        let err = ImagePolicy::new("api", repository, rule(">=1.0.0")).expect_err(repository);
        assert!(
            matches!(
                &err,
                PolicyError::Invalid {
                    setting: "repository",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(says), "{err}");
    }
    let base = || numerical(SortOrder::Asc);
    for (pattern, extract, setting, says) in [
        (
            "(?P<ts>[0-9]+",
            Some("$ts"),
            "filter pattern",
            "unclosed group",
        ),
        (
            "^(?P<ts>[0-9]+)$",
            Some("$tss"),
            "extract template",
            "capture `tss`",
        ),
        (
            "^(?P<ts>[0-9]+)$",
            Some("${build}"),
            "extract template",
            "capture `build`",
        ),
        (
            "^(?P<ts>[0-9]+)$",
            Some("$2"),
            "extract template",
            "capture `2`",
        ),
        (
            "^(?P<ts>[0-9]+)$",
            Some("ts"),
            "extract template",
            "names no capture",
        ),
    ] {
        let err = base()
            .filter_tags(pattern, extract)
            .expect_err("invalid filter");
        assert!(
            matches!(&err, PolicyError::Invalid { setting: s, .. } if *s == setting),
            "{pattern} {extract:?}: {err:?}"
        );
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[test]
fn policies_deserialize_from_a_config_section_and_refuse_invalid_ones() {
    #[derive(serde::Deserialize)]
    struct Section {
        image_policies: Vec<ImagePolicy>,
    }
    let section: Section = toml::from_str(
        r#"
        [[image_policies]]
        name = "api-main"
        repository = "ghcr.io/acme/api"
        policy = { numerical = {} }
        filter_tags = { pattern = '^main-[a-f0-9]+-(?P<ts>[0-9]+)$', extract = '$ts' }

        [[image_policies]]
        name = "api-stable"
        repository = "ghcr.io/acme/api"
        policy = { semver = { range = ">=1.0.0 <2.0.0" } }

        [[image_policies]]
        name = "web"
        repository = "registry.example.com:5000/acme/web"
        policy = { alphabetical = { order = "desc" } }
        "#,
    )
    .expect("policies");
    let [main, stable, web] = &section.image_policies[..] else {
        panic!("three policies");
    };
    assert_eq!(
        main.rule(),
        &PolicyRule::Numerical {
            order: SortOrder::Asc
        }
    );
    assert_eq!(
        main.choose(&["main-a-2", "main-b-10"]).expect("tag"),
        "main-b-10"
    );
    assert_eq!(stable.choose(&["1.9.0", "2.0.0"]).expect("tag"), "1.9.0");
    assert_eq!(web.repository().registry(), "registry.example.com:5000");
    assert_eq!(web.choose(&["b", "a"]).expect("tag"), "a");

    // Flux's spelling, as a YAML or JSON document has it; and back out again.
    let flux: ImagePolicy = serde_json::from_str(
        r#"{"name": "flux", "repository": "ghcr.io/acme/api",
            "policy": {"semver": {"range": "1.2.x"}},
            "filterTags": {"pattern": "^v(?P<v>.*)$", "extract": "$v"}}"#,
    )
    .expect("policy");
    assert_eq!(
        flux.choose(&["v1.2.9", "1.2.10", "v1.3.0"]).expect("tag"),
        "v1.2.9"
    );
    let written = toml::to_string(&flux).expect("serialize");
    assert!(written.contains("filter_tags"), "{written}");
    let again: ImagePolicy = toml::from_str(&written).expect("round trip");
    assert_eq!(
        again.choose(&["v1.2.9", "v1.2.11"]).expect("tag"),
        "v1.2.11"
    );

    for (toml_text, says) in [
        (
            r#"name = "x"
               repository = "ghcr.io/acme/api"
               policy = { semver = { range = ">=banana" } }"#,
            "image policy `x`: semver range \">=banana\" is invalid",
        ),
        (
            r#"name = "x"
               repository = "ghcr.io/acme/api"
               policy = { numerical = { order = "up" } }"#,
            "unknown variant `up`",
        ),
        (
            r#"name = "x"
               repository = "ghcr.io/acme/api"
               policy = { newest = {} }"#,
            "unknown variant `newest`",
        ),
        (
            r#"name = "x"
               repository = "ghcr.io/acme/api"
               policy = { alphabetical = {} }
               filter_tag = { pattern = "x" }"#,
            "unknown field `filter_tag`",
        ),
        (
            r#"name = "x"
               repository = "ghcr.io/acme/api"
               policy = { alphabetical = {} }
               filter_tags = { pattern = "^(?P<n>\\d+)", extract = "$m" }"#,
            "capture `m`",
        ),
    ] {
        let err = toml::from_str::<ImagePolicy>(toml_text)
            .err()
            .unwrap_or_else(|| panic!("{toml_text} is refused"));
        assert!(err.to_string().contains(says), "{err}");
    }
}

fn client() -> RegistryClient {
    RegistryClient::builder()
        .without_docker_config()
        .retries(3, Duration::from_millis(1))
        .build()
        .expect("client")
}

fn tag_list_requests(registry: &TestRegistry) -> usize {
    common::access_log(&registry.log())
        .iter()
        .filter(|line| line.contains("/tags/list"))
        .count()
}

/// The tags pushed to every repository, each its own image.
const PUSHED: [&str; 9] = [
    "1.0.0",
    "1.2.3",
    "v1.3.0",
    "2.0.0-rc.1",
    "main-abc123-1700000000",
    "main-def456-1700000100",
    "build-9",
    "build-10",
    "latest",
];

/// Five policies on `repository` and the tag each must choose from [`PUSHED`].
fn five_policies(repository: &str) -> Vec<(ImagePolicy, &'static str)> {
    let policy = |kind: &str, rule| {
        ImagePolicy::new(format!("{repository}/{kind}"), repository, rule).expect("policy")
    };
    vec![
        (
            policy(
                "stable",
                PolicyRule::Semver {
                    range: ">=1.0.0".into(),
                },
            ),
            "v1.3.0",
        ),
        (
            policy(
                "next",
                PolicyRule::Semver {
                    range: ">=1.0.0-0".into(),
                },
            ),
            "2.0.0-rc.1",
        ),
        (
            filtered(
                policy(
                    "main",
                    PolicyRule::Numerical {
                        order: SortOrder::Asc,
                    },
                ),
                r"^main-[a-f0-9]+-(?P<ts>[0-9]+)$",
                "$ts",
            ),
            "main-def456-1700000100",
        ),
        (
            filtered(
                policy(
                    "build",
                    PolicyRule::Numerical {
                        order: SortOrder::Asc,
                    },
                ),
                r"^build-(?P<n>[0-9]+)$",
                "$n",
            ),
            "build-10",
        ),
        (
            policy(
                "first",
                PolicyRule::Alphabetical {
                    order: SortOrder::Desc,
                },
            ),
            "1.0.0",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_policies_over_ten_repositories_list_each_once_per_poll_and_resolve_what_was_pushed()
{
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let client = client();
    let ctx = Context::new();
    let mut pushed = std::collections::HashMap::new();
    for r in 0..10 {
        for tag in PUSHED {
            let repo_tag = format!("team/app{r}:{tag}");
            let image = write_image(&layout, "app", tag, &[noise(&repo_tag, 512)]);
            client
                .push(&image, &registry.reference(&repo_tag), &ctx)
                .await
                .unwrap_or_else(|e| panic!("push {repo_tag}: {e}"));
            pushed.insert(repo_tag, image.digest);
        }
    }
    let digests: std::collections::HashSet<&Digest> = pushed.values().collect();
    assert_eq!(digests.len(), 90, "every tag names its own image");

    let mut policies = Vec::new();
    let mut expected = Vec::new();
    for r in 0..10 {
        let repository = format!("{}/team/app{r}", registry.host());
        for (policy, tag) in five_policies(&repository) {
            policies.push(policy);
            expected.push(format!("team/app{r}:{tag}"));
        }
    }
    assert_eq!(policies.len(), 50);

    let cache = TagCache::new(client.clone());
    let before = tag_list_requests(&registry);
    let started = Instant::now();
    let resolved = cache.resolve_all(&policies, &ctx).await;
    let first_poll = started.elapsed();
    let listed = tag_list_requests(&registry) - before;
    assert_eq!(listed, 10, "one tag list per repository for 50 policies");
    for ((resolution, want), policy) in resolved.iter().zip(&expected).zip(&policies) {
        let resolution = resolution
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", policy.name()));
        assert_eq!(resolution.policy, policy.name());
        let got = format!("{}:{}", resolution.image.repository(), resolution.tag());
        assert_eq!(&got, want, "{}", policy.name());
        assert_eq!(&resolution.digest, &pushed[want], "{}", policy.name());
        assert_eq!(
            resolution.pinned(),
            format!("{}/{want}@{}", registry.host(), pushed[want])
        );
    }
    // The same poll asks the registry nothing more (once the registry has
    // logged the last answers).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log_len = common::access_log(&registry.log()).len();
    let again = cache.resolve_all(&policies, &ctx).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(common::access_log(&registry.log()).len(), log_len);

    // A new build on main: the next poll lists every repository once more and
    // picks it up; the other policies keep their choice.
    let newer = "team/app3:main-0ff1ce-1700000200";
    let image = write_image(&layout, "app", "newer", &[noise(newer, 512)]);
    client
        .push(&image, &registry.reference(newer), &ctx)
        .await
        .expect("push the newer build");
    cache.next_poll();
    let before = tag_list_requests(&registry);
    let second = cache.resolve_all(&policies, &ctx).await;
    assert_eq!(tag_list_requests(&registry) - before, 10);
    for (i, resolution) in second.iter().enumerate() {
        let resolution = resolution.as_ref().expect("resolved");
        if policies[i].name().ends_with("app3/main") {
            assert_eq!(resolution.tag(), "main-0ff1ce-1700000200");
            assert_eq!(resolution.digest, image.digest);
        } else {
            assert_eq!(resolution, resolved[i].as_ref().expect("first poll"));
        }
    }
    println!(
        "first poll: 50 policies, 10 repositories, {listed} tag lists, {:?}",
        first_poll
    );
}

/// A registry on loopback answering `/v2/`, a tag list in two pages (`a`, `b`
/// then `c`), and a `HEAD` of any manifest with `digest`.
fn paged_registry(
    tag_list: impl Fn(usize) -> Option<Reply> + Send + Sync + 'static,
    digest: &'static str,
) -> Hostile {
    let lists = AtomicUsize::new(0);
    Hostile::start(move |req| {
        let path = req.path();
        if path == "/v2/" {
            Reply::new(200).json("{}")
        } else if path == "/v2/team/api/tags/list" {
            let n = lists.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = tag_list(n) {
                return reply;
            }
            if req.target.contains("last=b") {
                Reply::new(200).json(r#"{"name":"team/api","tags":["c"]}"#)
            } else {
                Reply::new(200)
                    .header(
                        "Link",
                        r#"</v2/team/api/tags/list?n=100&last=b>; rel="next""#,
                    )
                    .json(r#"{"name":"team/api","tags":["a","b"]}"#)
            }
        } else if path.starts_with("/v2/team/api/manifests/") && req.method == "HEAD" {
            Reply::new(200)
                .header("Docker-Content-Digest", digest)
                .header("Content-Type", shipflow_oci::OCI_MANIFEST_MEDIA_TYPE)
        } else {
            Reply::new(404)
        }
    })
}

const DIGEST: &str = "sha256:3b2c4f6d0a8e7f1c9b5d2e4a6c8f0b1d3e5a7c9f2b4d6e8a0c1f3b5d7e9a2c4f";

fn alphabetical_on(server: &Hostile, name: &str, order: SortOrder) -> ImagePolicy {
    ImagePolicy::new(
        name,
        &format!("{}/team/api", server.host()),
        PolicyRule::Alphabetical { order },
    )
    .expect("policy")
}

fn tag_lists(server: &Hostile) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/tags/list"))
        .map(|r| r.target.clone())
        .collect()
}

#[tokio::test]
async fn a_throttled_tag_list_waits_as_retry_after_says_then_pages_at_100() {
    let server = paged_registry(
        |n| (n == 0).then(|| Reply::new(429).header("Retry-After", "1")),
        DIGEST,
    );
    let policies = [
        alphabetical_on(&server, "last", SortOrder::Asc),
        alphabetical_on(&server, "first", SortOrder::Desc),
        alphabetical_on(&server, "last-again", SortOrder::Asc),
    ];
    let cache = TagCache::new(client());
    let started = Instant::now();
    let resolved = cache.resolve_all(&policies, &Context::new()).await;
    let waited = started.elapsed();
    let tags: Vec<String> = resolved
        .into_iter()
        .map(|r| {
            let r = r.expect("resolved");
            assert_eq!(r.digest.to_string(), DIGEST);
            r.tag().to_owned()
        })
        .collect();
    assert_eq!(tags, ["c", "a", "c"], "both pages were read");
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was waited out, not the 1 ms backoff: {waited:?}"
    );
    assert_eq!(
        tag_lists(&server),
        [
            "/v2/team/api/tags/list?n=100",
            "/v2/team/api/tags/list?n=100",
            "/v2/team/api/tags/list?n=100&last=b",
        ],
        "the throttled page, its retry and the next page: one listing for three policies"
    );
    let heads = server
        .requests()
        .iter()
        .filter(|r| r.method == "HEAD")
        .count();
    assert_eq!(heads, 2, "tags `c` and `a`, each resolved once");
}

#[tokio::test]
async fn a_failed_listing_fails_every_policy_on_the_repository_with_one_request() {
    let server = paged_registry(
        |_| {
            Some(Reply::new(404).json(
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            ))
        },
        DIGEST,
    );
    let policies = [
        alphabetical_on(&server, "one", SortOrder::Asc),
        alphabetical_on(&server, "two", SortOrder::Desc),
    ];
    let cache = TagCache::new(client());
    let resolved = cache.resolve_all(&policies, &Context::new()).await;
    for (result, name) in resolved.iter().zip(["one", "two"]) {
        let err = result.as_ref().expect_err("no tags");
        let PolicyError::TagList {
            policy,
            repository,
            source,
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(policy, name);
        assert_eq!(repository, &format!("{}/team/api", server.host()));
        let message = err.to_string();
        assert!(
            message.contains(&format!("image policy `{name}`: listing the tags of"))
                && message.contains("NAME_UNKNOWN"),
            "{message}"
        );
        assert!(
            matches!(**source, shipflow_oci::OciError::Status { status: 404, .. }),
            "{source:?}"
        );
    }
    assert_eq!(tag_lists(&server).len(), 1);

    // Forgetting the repository lists it again.
    cache.forget(policies[0].repository());
    let _ = cache.resolve(&policies[0], &Context::new()).await;
    assert_eq!(tag_lists(&server).len(), 2);
}

#[tokio::test]
async fn a_tag_deleted_between_listing_and_resolving_is_reported_as_gone() {
    let server = Hostile::start(|req| match req.path() {
        "/v2/" => Reply::new(200).json("{}"),
        "/v2/team/api/tags/list" => Reply::new(200).json(r#"{"name":"team/api","tags":["1.0.0"]}"#),
        _ => Reply::new(404),
    });
    let policy = ImagePolicy::new(
        "gone",
        &format!("{}/team/api", server.host()),
        PolicyRule::Semver { range: "^1".into() },
    )
    .expect("policy");
    let err = TagCache::new(client())
        .resolve(&policy, &Context::new())
        .await
        .expect_err("no manifest");
    assert!(
        matches!(&err, PolicyError::TagGone { policy, reference } if policy == "gone" && reference.ends_with("/team/api:1.0.0")),
        "{err:?}"
    );
    assert!(err.to_string().contains("deleted since"), "{err}");
}
