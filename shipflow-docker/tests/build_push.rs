//! `EngineBuilder` and `EngineRegistry` against real Podman and docker-registry:
//! a Dockerfile build with `.dockerignore`, build args, a target stage and labels;
//! a push through the engine that uploads only the layers the registry lacks; the
//! pushed image deployed and served; `resolve` and `tag` on a bearer-token registry.

mod common;

use common::{HTTPD, Harness, free_port, get_path};
use rstest::rstest;
use shipflow_core::{
    BuildRequest, Context, DeployMeta, Deployer, ImageBuilder, ImageLocation, ImageRef, Registry,
};
use shipflow_docker::{EngineBuilder, EngineKind, EngineRegistry, RegistryCredentials};

fn blob_uploads(log: &str, repo: &str) -> usize {
    log.matches(&format!("\"PUT /v2/{repo}/blobs/uploads/"))
        .count()
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_pushes_only_missing_layers_and_deploys(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let root = h.dir.path().join("repo");
    let web = root.join("apps/bp-web");
    std::fs::create_dir_all(web.join("www")).expect("app dir");
    std::fs::copy("/bin/busybox", web.join("busybox")).expect("busybox-static");
    std::fs::write(web.join("www/index.html"), "v1").expect("index");
    std::fs::write(web.join("www/secret.txt"), "do not ship").expect("secret");
    std::fs::write(web.join("notes.md"), "not in the image").expect("notes");
    std::fs::write(web.join(".dockerignore"), "www/secret.txt\n*.md\n").expect("ignore");
    std::fs::write(
        web.join("Dockerfile"),
        format!(
            "FROM scratch AS base\n{}COPY busybox /bin/busybox\n\
             FROM base AS web\nARG GREETING=none\nCOPY www /www\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo $GREETING > /www/greeting.txt\"]\n\
             CMD [\"/bin/busybox\", \"sh\", \"-c\", {}]\n\
             FROM base AS other\nCMD [\"/bin/busybox\", \"false\"]\n",
            h.own_chain(),
            serde_json::to_string(HTTPD).expect("json")
        ),
    )
    .expect("Dockerfile");
    let port = free_port();
    let name = h.name("bp-web");
    let app = h.app_toml(
        &name,
        &format!(
            "[apps.{name}]\npath = \"apps/bp-web\"\n\
             build = {{ type = \"dockerfile\", context = \"apps/bp-web\", target = \"web\", args = {{ GREETING = \"hello\" }} }}\n\
             [apps.{name}.deploy.docker]\nports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}\n"
        ),
    );
    let engine = h.engine().await;
    let builder = EngineBuilder::new(engine.clone());
    let registry = EngineRegistry::new(engine);
    let ctx = Context::new();
    let request = |tag: &str| BuildRequest {
        root: root.clone(),
        tag: tag.to_owned(),
        labels: [("team".to_owned(), "web".to_owned())].into(),
        ..Default::default()
    };

    let v1 = builder
        .build(&app, &request("v1"), &ctx)
        .await
        .expect("build v1");
    assert!(matches!(v1.location, ImageLocation::Engine { .. }));
    assert_eq!(v1.layers.len(), 3, "busybox, www, RUN: {:?}", v1.layers);
    let labels = h.cli_run(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"team\"}}",
        &format!("{}/{name}:v1", h.registry),
    ]);
    assert_eq!(labels.trim(), "web");

    let target = app.image.with_tag("v1").expect("tag");
    let before = blob_uploads(&h.registry_log(), &name);
    let pushed = registry.push(&v1, &target, &ctx).await.expect("push v1");
    let digest = pushed.digest.clone().expect("manifest digest");
    assert_eq!(
        registry.resolve(&target, &ctx).await.expect("resolve"),
        Some(digest.clone())
    );
    assert_eq!(
        blob_uploads(&h.registry_log(), &name) - before,
        4,
        "3 layers and the config"
    );

    // Only the www layer, the RUN layer and the config change.
    std::fs::write(web.join("www/index.html"), "v2").expect("index v2");
    let v2 = builder
        .build(&app, &request("v2"), &ctx)
        .await
        .expect("build v2");
    let before = blob_uploads(&h.registry_log(), &name);
    let pushed2 = registry
        .push(&v2, &app.image.with_tag("v2").expect("tag"), &ctx)
        .await
        .expect("push v2");
    let uploads = blob_uploads(&h.registry_log(), &name) - before;
    // The www layer and the config; the RUN layer too unless both builds wrote its
    // file in the same second (same tar, same digest). Never the busybox layer.
    assert!(
        (2..=3).contains(&uploads),
        "{uploads} blob uploads: the busybox layer must not be uploaded again"
    );
    assert_ne!(pushed2.digest, Some(digest.clone()));

    // `tag` points a tag at a pushed manifest without moving blobs.
    let latest = app.image.with_tag("stable").expect("tag");
    registry
        .tag(&digest, &latest, &ctx)
        .await
        .expect("tag stable");
    assert_eq!(
        registry.resolve(&latest, &ctx).await.expect("resolve"),
        Some(digest.clone())
    );
    let missing = app.image.with_tag("nope").expect("tag");
    assert_eq!(
        registry.resolve(&missing, &ctx).await.expect("resolve"),
        None
    );

    // The pushed v1 deploys and serves what the build put in it.
    let deployer = h.deployer().await;
    deployer
        .deploy(
            &app,
            &app.image.pinned(digest),
            &DeployMeta::default(),
            &ctx,
        )
        .await
        .expect("deploy the built image");
    let http = reqwest::Client::new();
    assert_eq!(get_path(&http, port, "/").await.as_deref(), Ok("v1"));
    assert_eq!(
        get_path(&http, port, "/greeting.txt").await.as_deref(),
        Ok("hello")
    );
    assert!(
        get_path(&http, port, "/secret.txt").await.is_err(),
        ".dockerignore honoured"
    );
}

/// Docker Hub, GHCR and Harbor want bearer tokens: `resolve` and `tag` get one from
/// the registry's token service with the credentials, as the engine does for a push.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_and_tags_on_a_bearer_token_registry(#[case] kind: EngineKind) {
    let h = Harness::start_with_token_auth(kind, "ci", "tok-pass-8812", "tok-web");
    let pushed = h.web_image("tok-web", "v1", "v1");
    let digest = pushed.digest().cloned().expect("pinned");
    let v1: ImageRef = format!("{}/tok-web:v1", h.registry)
        .parse()
        .expect("reference");
    let stable = v1.with_tag("stable").expect("tag");
    let ctx = Context::new();

    let anonymous = EngineRegistry::new(h.engine().await);
    let err = anonymous
        .resolve(&v1, &ctx)
        .await
        .expect_err("the registry wants a token");
    assert!(err.to_string().contains("tok-web"), "{err}");

    let registry = EngineRegistry::new(h.engine().await).with_credentials(RegistryCredentials {
        username: "ci".into(),
        password: "tok-pass-8812".into(),
    });
    assert_eq!(
        registry.resolve(&v1, &ctx).await.expect("resolve"),
        Some(digest.clone())
    );
    registry
        .tag(&digest, &stable, &ctx)
        .await
        .expect("tag stable");
    assert_eq!(
        registry
            .resolve(&stable, &ctx)
            .await
            .expect("resolve stable"),
        Some(digest)
    );
    let tokens = h.tokens.as_ref().expect("token service");
    let requests = tokens.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("scope=repository%3Atok-web")
                || r.contains("scope=repository:tok-web")),
        "tokens came from the token service: {requests:?}"
    );
}
