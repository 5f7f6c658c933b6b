//! The registry client against a real `docker-registry` (CNCF Distribution 2.8).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestRegistry, run, temp_layout, three_layers, write_image};
use shipflow_core::{Context, Digest, EventKind, EventSink, Registry};
use shipflow_oci::testing::{Refusal, TokenService};
use shipflow_oci::{Credentials, OciError, RegistryClient};

fn client() -> RegistryClient {
    RegistryClient::builder().build().expect("client")
}

async fn fetch_blob(registry: &TestRegistry, repo: &str, digest: &Digest) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", registry.host());
    let response = reqwest::get(&url).await.expect("GET blob");
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().await.expect("blob body").to_vec()
}

#[tokio::test]
async fn push_uploads_every_blob_and_they_read_back_intact() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("a"));
    let target = registry.reference("team/api:v1");

    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let ctx = Context::new().with_events(EventSink::new(move |e| {
        if let EventKind::Progress { done, total, unit } = &e.kind {
            seen.lock()
                .expect("lock")
                .push((*done, *total, unit.clone()));
        }
    }));
    let report = client().push(&image, &target, &ctx).await.expect("push");

    assert_eq!(report.digest.as_ref(), Some(&image.digest));
    assert_eq!(report.blobs_uploaded, 4, "3 layers + config");
    assert_eq!(report.blobs_skipped, 0);
    assert!(report.manifest_written);
    assert_eq!(report.bytes_uploaded, image.size() + image.manifest_size);
    // ping, 4 × (HEAD + POST + PUT), manifest HEAD + PUT
    assert_eq!(report.requests, 1 + 4 * 3 + 2);

    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let bytes = fetch_blob(&registry, "team/api", &blob.digest).await;
        assert_eq!(bytes.len() as u64, blob.size);
        assert_eq!(Digest::sha256(&bytes), blob.digest);
    }
    let resolved = client()
        .resolve(&target, &Context::new())
        .await
        .expect("resolve");
    assert_eq!(resolved, Some(image.digest.clone()));

    let progress = progress.lock().expect("lock");
    assert_eq!(progress.len(), 4, "{progress:?}");
    let last = progress.iter().map(|p| p.0).max();
    assert_eq!(last, Some(image.size()));
    assert!(
        progress
            .iter()
            .all(|p| p.1 == Some(image.size()) && p.2 == "bytes")
    );
}

#[tokio::test]
async fn repush_uploads_nothing_and_leaves_the_manifest() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("b"));
    let target = registry.reference("team/api:v1");
    let client = client();
    client
        .push(&image, &target, &Context::new())
        .await
        .expect("first push");

    let report = client
        .push(&image, &target, &Context::new())
        .await
        .expect("re-push");
    assert_eq!(report.blobs_uploaded, 0);
    assert_eq!(report.blobs_skipped, 4);
    assert_eq!(report.bytes_uploaded, 0);
    assert!(!report.manifest_written);
    // Already pinged: the tag already names the manifest, one HEAD says so.
    assert_eq!(report.requests, 1);
}

#[tokio::test]
async fn a_changed_layer_uploads_only_that_layer_and_the_config() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let mut layers = three_layers("c");
    let v1 = write_image(&layout, "api", "v1", &layers);
    let client = client();
    client
        .push(&v1, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push v1");

    layers[1] = common::noise("c-changed", 123_456);
    let v2 = write_image(&layout, "api", "v2", &layers);
    assert_ne!(v1.digest, v2.digest);
    let report = client
        .push(&v2, &registry.reference("team/api:v2"), &Context::new())
        .await
        .expect("push v2");
    assert_eq!(report.blobs_uploaded, 2, "the changed layer and the config");
    assert_eq!(report.blobs_skipped, 2);
    assert_eq!(
        report.bytes_uploaded,
        v2.layers[1].size + v2.config.size + v2.manifest_size
    );
    assert!(report.manifest_written);
    let changed = fetch_blob(&registry, "team/api", &v2.layers[1].digest).await;
    assert_eq!(changed, layers[1]);
}

#[tokio::test]
async fn retag_points_a_new_tag_without_moving_blobs() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("d"));
    let client = client();
    client
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push");
    let blobs_before = registry.stored_blobs();

    let stable = registry.reference("team/api:stable");
    assert_eq!(
        client
            .resolve(&stable, &Context::new())
            .await
            .expect("resolve"),
        None
    );
    client
        .tag(&image.digest, &stable, &Context::new())
        .await
        .expect("tag");
    assert_eq!(
        client
            .resolve(&stable, &Context::new())
            .await
            .expect("resolve"),
        Some(image.digest.clone())
    );
    assert_eq!(registry.stored_blobs(), blobs_before, "no blob was written");
    let pinned = registry.reference("team/api").pinned(image.digest.clone());
    assert_eq!(
        client
            .resolve(&pinned, &Context::new())
            .await
            .expect("resolve by digest"),
        Some(image.digest)
    );
}

#[tokio::test]
async fn dry_run_reports_the_work_but_writes_nothing() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("e"));
    let target = registry.reference("team/api:v1");
    let ctx = Context::new().with_dry_run(true);
    let report = client()
        .push(&image, &target, &ctx)
        .await
        .expect("dry-run push");
    assert_eq!(report.blobs_uploaded, 4, "would upload");
    assert!(report.manifest_written, "would write");
    assert_eq!(registry.stored_blobs(), 0);
    assert_eq!(
        client()
            .resolve(&target, &Context::new())
            .await
            .expect("resolve"),
        None
    );
}

#[tokio::test]
async fn blobs_are_mounted_from_a_sibling_repository() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("f"));
    client()
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push to team/api");
    let mounting = RegistryClient::builder()
        .mount_from(["team/api"])
        .build()
        .expect("client");
    let report = mounting
        .push(
            &image,
            &registry.reference("team/api-canary:v1"),
            &Context::new(),
        )
        .await
        .expect("push to team/api-canary");
    assert_eq!(report.blobs_mounted, 4);
    assert_eq!(report.blobs_uploaded, 0);
    assert_eq!(report.bytes_uploaded, image.manifest_size);
    let layer = fetch_blob(&registry, "team/api-canary", &image.layers[0].digest).await;
    assert_eq!(Digest::sha256(&layer), image.layers[0].digest);
}

#[tokio::test]
async fn basic_auth_pushes_and_a_wrong_password_fails_clearly_without_leaking_it() {
    let registry = TestRegistry::start_with_basic_auth("ci", "right-horse-battery");
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("g"));
    let target = registry.reference("team/api:v1");

    let good = RegistryClient::builder()
        .credentials(
            registry.host(),
            Credentials::basic("ci", "right-horse-battery"),
        )
        .build()
        .expect("client");
    assert!(!format!("{good:?}").contains("right-horse-battery"));
    let report = good
        .push(&image, &target, &Context::new())
        .await
        .expect("push with auth");
    assert_eq!(report.blobs_uploaded, 4);
    assert_eq!(
        good.resolve(&target, &Context::new())
            .await
            .expect("resolve"),
        Some(image.digest.clone())
    );

    let secret = "wrong-staple-9931";
    let bad = RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic("ci", secret))
        .build()
        .expect("client");
    let err = bad
        .push(&image, &target, &Context::new())
        .await
        .expect_err("wrong password must fail");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Unauthorized { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("check the credentials"), "{message}");
    assert!(message.contains("\"ci\""), "{message}");
    assert!(message.contains(&target.to_string()), "{message}");
    for shown in [message, format!("{err:?}"), format!("{bad:?}")] {
        assert!(!shown.contains(secret), "password leaked: {shown}");
    }

    let anonymous = client()
        .resolve(&target, &Context::new())
        .await
        .expect_err("anonymous must fail");
    assert!(
        anonymous.to_string().contains("check the credentials"),
        "{anonymous}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_fails_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = format!("127.0.0.1:{port}/team/api:v1")
        .parse()
        .expect("ref");
    let client = RegistryClient::builder()
        .retries(3, Duration::from_millis(10))
        .build()
        .expect("client");
    let err = client
        .resolve(&target, &Context::new())
        .await
        .expect_err("nothing listens");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(
        matches!(
            *err,
            OciError::Connect {
                attempts: 3,
                failure: shipflow_oci::ConnectFailure::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("nothing listens at 127.0.0.1:")
            && err.to_string().contains("connection refused"),
        "{err}"
    );
}

#[tokio::test]
async fn a_cancelled_push_stops_before_writing() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("h"));
    let ctx = Context::new();
    ctx.cancellation().cancel();
    let err = client()
        .push(&image, &registry.reference("team/api:v1"), &ctx)
        .await
        .expect_err("cancelled");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Cancelled { .. }), "{err:?}");
    assert_eq!(registry.stored_blobs(), 0);
}

#[tokio::test]
async fn skopeo_reads_what_we_pushed() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("i"));
    client()
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push");
    let url = format!("docker://{}/team/api:v1", registry.host());
    let out = run("skopeo", &["inspect", "--tls-verify=false", &url]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("skopeo json");
    assert_eq!(json["Digest"], image.digest.to_string());
    let layers: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    assert_eq!(json["Layers"], serde_json::json!(layers));
    assert_eq!(json["Labels"]["app"], "api");
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope_and_bad_credentials_fail_clearly() {
    let tokens =
        TokenService::start("ci", "token-pass-4471", "team/api").expect("the token service starts");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("t"));
    let target = registry.reference("team/api:v1");

    let client = RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic("ci", "token-pass-4471"))
        .build()
        .expect("client");
    let report = client
        .push(&image, &target, &Context::new())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "push with bearer auth: {e}\nregistry log:\n{}",
                registry.log()
            )
        });
    assert_eq!(report.blobs_uploaded, 4);
    assert!(report.manifest_written);
    {
        let requests = tokens.requests();
        assert_eq!(
            requests.len(),
            1,
            "one token for the whole push: {requests:?}"
        );
        assert!(
            requests[0].contains("service=shipflow-registry"),
            "{requests:?}"
        );
        assert!(
            requests[0].contains("scope=repository%3Ateam%2Fapi%3Apull%2Cpush"),
            "{requests:?}"
        );
    }
    let again = client
        .push(&image, &target, &Context::new())
        .await
        .expect("re-push");
    assert_eq!(again.blobs_uploaded, 0);
    assert_eq!(tokens.requests().len(), 1, "token reused");
    assert_eq!(
        client
            .resolve(&target, &Context::new())
            .await
            .expect("resolve"),
        Some(image.digest.clone())
    );
    assert_eq!(
        tokens.requests().len(),
        2,
        "a pull-only scope gets its own token"
    );
    assert!(!format!("{client:?}").contains("token-pass-4471"));

    let bad = RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic("ci", "nope-8812"))
        .build()
        .expect("client");
    let err = bad
        .resolve(&target, &Context::new())
        .await
        .expect_err("bad credentials");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("check the credentials"), "{err}");
    assert!(!err.to_string().contains("nope-8812") && !format!("{err:?}").contains("nope-8812"));
}

const TOKEN_PASSWORD: &str = "mount-pass-5120";

/// Two images sharing their first two layers: `team/base`'s, and `team/api`'s with
/// one layer of its own on top (and its own config).
fn base_and_api(
    layout: &shipflow_oci::OciLayout,
) -> (shipflow_core::LocalImage, shipflow_core::LocalImage) {
    let shared = three_layers("mount-shared");
    let base = write_image(layout, "base", "v1", &shared[..2]);
    let mut own = shared[..2].to_vec();
    own.push(common::noise("mount-api-own", 150_000));
    let api = write_image(layout, "api", "v1", &own);
    (base, api)
}

fn token_client(registry: &TestRegistry) -> RegistryClient {
    RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic("ci", TOKEN_PASSWORD))
        .mount_from(["team/base"])
        .without_docker_config()
        .build()
        .expect("client")
}

#[tokio::test]
async fn on_a_token_registry_a_mount_asks_for_pull_on_its_source_too() {
    let tokens =
        TokenService::start_with_rule("ci", TOKEN_PASSWORD, Refusal::Narrow, |repo| match repo {
            "team/base" | "team/api" => vec!["pull", "push"],
            _ => Vec::new(),
        })
        .expect("the token service starts");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let (_dir, layout) = temp_layout();
    let (base, api) = base_and_api(&layout);
    let client = token_client(&registry);
    let ctx = Context::new();
    client
        .push(&base, &registry.reference("team/base:v1"), &ctx)
        .await
        .expect("push team/base");

    let before = tokens.scopes().len();
    let target = registry.reference("team/api:v1");
    let report = client.push(&api, &target, &ctx).await.unwrap_or_else(|e| {
        panic!(
            "push team/api mounting from team/base: {e}\nregistry log:\n{}",
            registry.log()
        )
    });
    assert_eq!(
        (
            report.blobs_mounted,
            report.blobs_uploaded,
            report.blobs_skipped
        ),
        (2, 2, 0),
        "the two shared layers mounted; the own layer and the config uploaded: {report:?}"
    );
    assert_eq!(
        report.bytes_uploaded,
        api.layers[2].size + api.config.size + api.manifest_size
    );
    // The token service grants exactly what is asked: the registry accepted the
    // mounts, so their token held pull on team/base; it was asked for as two scopes.
    let scopes = tokens.scopes().split_off(before);
    let target_scope = vec!["repository:team/api:pull,push".to_owned()];
    let mount_scopes = vec![
        target_scope[0].clone(),
        "repository:team/base:pull".to_owned(),
    ];
    assert!(scopes.contains(&mount_scopes), "{scopes:?}");
    assert!(
        scopes
            .iter()
            .all(|s| *s == mount_scopes || *s == target_scope),
        "{scopes:?}"
    );
    for layer in &api.layers {
        let bytes = client
            .fetch_blob(&target, &layer.digest, &ctx)
            .await
            .expect("the layer reads back from team/api");
        assert_eq!(Digest::sha256(&bytes), layer.digest);
    }
    assert_eq!(
        client.resolve(&target, &ctx).await.expect("resolve"),
        Some(api.digest.clone())
    );
}

/// Pushes `team/base`, then takes pull on it away from the user (as `refusal`
/// says) and pushes `team/api` mounting from it.
async fn push_with_pull_on_the_source_refused(refusal: Refusal) {
    let base_readable = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readable = base_readable.clone();
    let tokens =
        TokenService::start_with_rule("ci", TOKEN_PASSWORD, refusal, move |repo| match repo {
            "team/api" => vec!["pull", "push"],
            "team/base" if readable.load(std::sync::atomic::Ordering::SeqCst) => {
                vec!["pull", "push"]
            }
            _ => Vec::new(),
        })
        .expect("the token service starts");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let (_dir, layout) = temp_layout();
    let (base, api) = base_and_api(&layout);
    let ctx = Context::new();
    token_client(&registry)
        .push(&base, &registry.reference("team/base:v1"), &ctx)
        .await
        .expect("push team/base");
    base_readable.store(false, std::sync::atomic::Ordering::SeqCst);

    let before = tokens.scopes().len();
    let client = token_client(&registry);
    let target = registry.reference("team/api:v1");
    let report = client.push(&api, &target, &ctx).await.unwrap_or_else(|e| {
        panic!(
            "{refusal:?}: a refused mount must not fail the push: {e}\nregistry log:\n{}",
            registry.log()
        )
    });
    assert_eq!(
        (
            report.blobs_mounted,
            report.blobs_uploaded,
            report.blobs_skipped
        ),
        (0, 4, 0),
        "{refusal:?}: every blob uploaded: {report:?}"
    );
    assert_eq!(report.bytes_uploaded, api.size() + api.manifest_size);
    assert!(report.manifest_written);
    let mount_scopes = vec![
        "repository:team/api:pull,push".to_owned(),
        "repository:team/base:pull".to_owned(),
    ];
    let scopes = tokens.scopes().split_off(before);
    assert!(
        scopes.contains(&mount_scopes),
        "{refusal:?}: the mount was tried: {scopes:?}"
    );
    for layer in &api.layers {
        let bytes = client
            .fetch_blob(&target, &layer.digest, &ctx)
            .await
            .expect("the layer reads back from team/api");
        assert_eq!(Digest::sha256(&bytes), layer.digest);
    }
    assert_eq!(
        client.resolve(&target, &ctx).await.expect("resolve"),
        Some(api.digest.clone())
    );

    // The refusal is remembered: a second image from the same base tries no mount.
    let mut layers = three_layers("mount-shared")[..2].to_vec();
    layers.push(common::noise("mount-api-v2", 90_000));
    let v2 = write_image(&layout, "api", "v2", &layers);
    let before = tokens.scopes().len();
    let again = client
        .push(&v2, &registry.reference("team/api:v2"), &ctx)
        .await
        .expect("push v2");
    assert_eq!(
        (again.blobs_mounted, again.blobs_uploaded),
        (0, 2),
        "{again:?}"
    );
    assert_eq!(
        tokens.scopes().len(),
        before,
        "{refusal:?}: no token asked for a mount known to be refused"
    );
}

#[tokio::test]
async fn a_mount_whose_token_leaves_out_the_source_uploads_instead() {
    push_with_pull_on_the_source_refused(Refusal::Narrow).await;
}

#[tokio::test]
async fn a_mount_whose_token_is_refused_uploads_instead() {
    push_with_pull_on_the_source_refused(Refusal::Forbid).await;
}

const UNAVAILABLE: &str =
    r#"{"errors":[{"code":"UNAVAILABLE","message":"registry is warming up"}]}"#;

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried_honouring_retry_after() {
    let registry = TestRegistry::start();
    let proxy = common::FaultProxy::start(
        registry.port(),
        vec![
            ("503 Service Unavailable", "", UNAVAILABLE),
            ("429 Too Many Requests", "Retry-After: 1\r\n", "{}"),
            ("502 Bad Gateway", "", ""),
        ],
    );
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("r"));
    let client = RegistryClient::builder()
        .retries(4, Duration::from_millis(10))
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let report = client
        .push(&image, &proxy.reference("team/api:v1"), &Context::new())
        .await
        .expect("push succeeds after retries");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(proxy.served.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(report.requests, 15 + 3, "the normal 15 plus 3 retried");
    assert_eq!(report.blobs_uploaded, 4);
    assert_eq!(
        client
            .resolve(&registry.reference("team/api:v1"), &Context::new())
            .await
            .expect("resolve"),
        Some(image.digest)
    );
}

#[tokio::test]
async fn persistent_server_errors_give_up_with_the_registry_message() {
    let registry = TestRegistry::start();
    let proxy = common::FaultProxy::start(
        registry.port(),
        vec![("503 Service Unavailable", "", UNAVAILABLE); 3],
    );
    let client = RegistryClient::builder()
        .retries(3, Duration::from_millis(10))
        .build()
        .expect("client");
    let err = client
        .resolve(&proxy.reference("team/api:v1"), &Context::new())
        .await
        .expect_err("503 three times");
    let err = err.downcast::<OciError>().expect("an OciError");
    match &*err {
        OciError::Status {
            status: 503,
            code: Some(code),
            ..
        } => assert_eq!(code, "UNAVAILABLE"),
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("ping"), "{message}");
    assert!(message.contains("registry is warming up"), "{message}");
    assert!(message.contains("try again later"), "{message}");
}

#[tokio::test]
async fn tagging_an_unknown_digest_names_the_registry_error() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("u"));
    client()
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push");
    let unknown = Digest::sha256(b"no such manifest");
    let err = client()
        .tag(
            &unknown,
            &registry.reference("team/api:stable"),
            &Context::new(),
        )
        .await
        .expect_err("unknown manifest");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(
        matches!(&*err, OciError::Status { status: 404, step: shipflow_oci::Step::ManifestGet, code: Some(c), .. } if c == "MANIFEST_UNKNOWN"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("check the repository name"),
        "{err}"
    );
}

#[tokio::test]
async fn a_truncated_local_blob_is_refused_before_upload() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("x"));
    let path = layout.blob_path(&image.layers[2].digest);
    std::fs::write(&path, b"short").expect("truncate layer");
    let err = client()
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect_err("truncated layer");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(&*err, OciError::ReadBlob { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("the file has 5 bytes"), "{message}");
    assert!(message.contains("rebuild the image"), "{message}");
    assert_eq!(
        client()
            .resolve(&registry.reference("team/api:v1"), &Context::new())
            .await
            .expect("resolve"),
        None,
        "no manifest points at an incomplete image"
    );
}

#[tokio::test]
async fn a_large_layer_reports_progress_while_it_streams() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let big = common::noise("big", 5 * 1024 * 1024 + 11);
    let image = write_image(&layout, "api", "v1", std::slice::from_ref(&big));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let ctx = Context::new().with_events(EventSink::new(move |e| {
        if let EventKind::Progress { done, .. } = &e.kind {
            sink.lock().expect("lock").push(*done);
        }
    }));
    let report = client()
        .push(&image, &registry.reference("team/big:v1"), &ctx)
        .await
        .expect("push");
    assert_eq!(report.blobs_uploaded, 2);
    let seen = seen.lock().expect("lock").clone();
    let during: Vec<_> = seen
        .iter()
        .filter(|d| **d > image.config.size && **d < image.size())
        .collect();
    assert!(
        during.len() >= 4,
        "events while the 5 MiB layer streamed: {seen:?}"
    );
    assert_eq!(seen.iter().max(), Some(&image.size()));
    let fetched = fetch_blob(&registry, "team/big", &image.layers[0].digest).await;
    assert_eq!(fetched, big);
}

#[tokio::test]
async fn tag_lists_follow_link_pages() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("tags"));
    let client = client();
    client
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push");
    let mut expected = vec!["v1".to_owned()];
    for i in 0..7 {
        let tag = format!("t{i}");
        client
            .tag(
                &image.digest,
                &registry.reference(&format!("team/api:{tag}")),
                &Context::new(),
            )
            .await
            .expect("tag");
        expected.push(tag);
    }
    expected.sort();
    let reference = registry.reference("team/api:v1");
    let mut paged = client
        .list_tags(&reference, Some(3), &Context::new())
        .await
        .expect("paged tag list");
    paged.sort();
    assert_eq!(paged, expected, "8 tags in pages of 3");
    // Distribution 2.8 ignores `n` and answers one page (pagination came in 3.0);
    // whatever the pages, the list is whole and fetched at least once.
    let pages = registry
        .log()
        .matches("\"GET /v2/team/api/tags/list")
        .count();
    assert!(pages >= 1, "{}", registry.log());
    let mut whole = client
        .list_tags(&reference, None, &Context::new())
        .await
        .expect("tag list");
    whole.sort();
    assert_eq!(whole, expected);
}

#[tokio::test]
async fn an_identity_token_from_the_docker_config_is_exchanged_not_sent_as_a_password() {
    // What `az acr login` leaves in config.json: a placeholder user in `auth` and an
    // OAuth2 refresh token in `identitytoken`.
    let secret = "refresh-7730-do-not-log";
    let tokens = TokenService::start("00000000-0000-0000-0000-000000000000", secret, "team/api")
        .expect("the token service starts");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("idt"));
    let target = registry.reference("team/api:v1");
    let placeholder = base64_of("00000000-0000-0000-0000-000000000000:");
    let config = shipflow_oci::DockerConfig::from_json(&format!(
        r#"{{"auths": {{"{}": {{"auth": "{placeholder}", "identitytoken": "{secret}"}}}}}}"#,
        registry.host()
    ))
    .expect("valid config");
    let client = RegistryClient::builder()
        .docker_config(config)
        .build()
        .expect("client");
    let report = client
        .push(&image, &target, &Context::new())
        .await
        .unwrap_or_else(|e| panic!("push with an identity token: {e}"));
    assert_eq!(report.blobs_uploaded, 4);
    let requests = tokens.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.contains("grant_type=refresh_token") && r.contains("scope=repository")),
        "every token came from the refresh-token grant: {requests:?}"
    );
    assert!(!format!("{client:?}{requests:?}").contains(secret));

    // A wrong identity token is refused at the token service.
    let config = shipflow_oci::DockerConfig::from_json(&format!(
        r#"{{"auths": {{"{}": {{"identitytoken": "stale"}}}}}}"#,
        registry.host()
    ))
    .expect("valid config");
    let client = RegistryClient::builder()
        .docker_config(config)
        .build()
        .expect("client");
    let err = client
        .push(&image, &target, &Context::new())
        .await
        .expect_err("a stale token");
    assert!(
        matches!(
            err.downcast_ref::<OciError>(),
            Some(OciError::Unauthorized { .. })
        ),
        "{err}"
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn a_push_then_two_more_tags_costs_two_manifest_requests_per_tag_and_no_blob_traffic() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("three-tags"));
    let client = client();
    let report = client
        .push(
            &image,
            &registry.reference("team/api:main-1a2b3c4"),
            &Context::new(),
        )
        .await
        .expect("push");
    let pushed = common::access_log(&registry.log());
    // The registry saw exactly the requests the report counts.
    assert_eq!(pushed.len() as u32, report.requests, "{pushed:#?}");
    assert_eq!(
        report.requests,
        1 + 4 * 3 + 2,
        "ping, 4 × (HEAD, POST, PUT), HEAD + PUT of the manifest"
    );

    for tag in ["latest", "stable"] {
        client
            .tag(
                &image.digest,
                &registry.reference(&format!("team/api:{tag}")),
                &Context::new(),
            )
            .await
            .expect("tag");
    }
    let log = common::access_log(&registry.log());
    let tagging: Vec<&str> = log[pushed.len()..].iter().map(String::as_str).collect();
    let digest = &image.digest;
    assert_eq!(
        tagging,
        [
            format!("GET /v2/team/api/manifests/{digest} 200").as_str(),
            "PUT /v2/team/api/manifests/latest 201",
            format!("GET /v2/team/api/manifests/{digest} 200").as_str(),
            "PUT /v2/team/api/manifests/stable 201",
        ],
        "each extra tag is one manifest read and one manifest write, no blob"
    );
    for tag in ["main-1a2b3c4", "latest", "stable"] {
        let resolved = client
            .resolve(
                &registry.reference(&format!("team/api:{tag}")),
                &Context::new(),
            )
            .await
            .expect("resolve");
        assert_eq!(resolved.as_ref(), Some(&image.digest), "{tag}");
    }
}
