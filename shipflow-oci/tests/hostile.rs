//! The registry client against hostile servers on loopback: a registry that names
//! another host for uploads, tag pages and challenges, that sends endless bodies,
//! or loops its tag list; and a second host that records what it is sent.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::hostile::{Hostile, Reply, Seen};
use common::{temp_layout, three_layers, write_image};
use shipflow_core::{Context, ImageRef, Registry};
use shipflow_oci::{Credentials, OciError, RegistryClient, Step};

const USER: &str = "ci";
const PASSWORD: &str = "hostile-pass-6120";

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

fn reference(server: &Hostile, repo_and_tag: &str) -> ImageRef {
    format!("{}/{repo_and_tag}", server.host())
        .parse()
        .expect("valid reference")
}

fn client_for(server: &Hostile) -> RegistryClient {
    RegistryClient::builder()
        .credentials(server.host(), Credentials::basic(USER, PASSWORD))
        .without_docker_config()
        .retries(1, Duration::from_millis(1))
        .build()
        .expect("client")
}

/// A registry wanting basic auth whose answers past the auth check come from `route`.
fn basic_registry(route: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Hostile {
    let expected = basic();
    Hostile::start(move |req| {
        if req.header("authorization") != Some(expected.as_str()) {
            return Reply::new(401).header("WWW-Authenticate", r#"Basic realm="hostile""#);
        }
        if req.path() == "/v2/" {
            return Reply::new(200).json("{}");
        }
        route(req)
    })
}

/// What a registry that holds nothing answers to a push, with uploads sent to `upload_host`.
fn empty_registry_uploading_to(upload_host: String) -> impl Fn(&Seen) -> Reply {
    move |req| match req.method.as_str() {
        "HEAD" => Reply::new(404),
        "POST" if req.path().ends_with("/blobs/uploads/") => Reply::new(202)
            .header("Location", format!("http://{upload_host}/upload/session-1"))
            .header("Range", "0-0"),
        "PUT" if req.path().contains("/manifests/") => Reply::new(201),
        _ => Reply::new(404),
    }
}

/// An upload host that takes every chunk and every final PUT.
fn upload_host() -> Hostile {
    Hostile::start(|req| match req.method.as_str() {
        "PATCH" => Reply::new(202)
            .header("Location", "/upload/session-1")
            .header("Range", "0-0"),
        "PUT" => Reply::new(201),
        _ => Reply::new(404),
    })
}

#[tokio::test]
async fn upload_locations_on_another_host_get_no_credentials() {
    let other = upload_host();
    let registry = basic_registry(empty_registry_uploading_to(other.host()));
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("hostile-upload"));
    client_for(&registry)
        .push(
            &image,
            &reference(&registry, "team/api:v1"),
            &Context::new(),
        )
        .await
        .expect("push through the other host");

    let puts = other
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 4, "config and three layers went to the upload host");
    assert!(
        other.authorized().is_empty(),
        "the upload host got credentials: {:?}",
        other.authorized()
    );
    assert!(
        !registry.authorized().is_empty(),
        "the registry itself got them"
    );
}

#[tokio::test]
async fn chunk_urls_on_another_host_get_no_credentials() {
    let other = upload_host();
    let registry = basic_registry(empty_registry_uploading_to(other.host()));
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("hostile-chunks"));
    let client = RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic(USER, PASSWORD))
        .without_docker_config()
        .chunked_uploads(64 * 1024, 64 * 1024)
        .build()
        .expect("client");
    client
        .push(
            &image,
            &reference(&registry, "team/api:v1"),
            &Context::new(),
        )
        .await
        .expect("push through the other host");
    let patches = other
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(patches >= 9, "the layers went in chunks: {patches}");
    assert!(other.authorized().is_empty(), "{:?}", other.authorized());
}

#[tokio::test]
async fn tag_list_links_to_another_host_get_no_credentials() {
    let other = Hostile::start(|_| Reply::new(200).json(r#"{"name":"team/api","tags":["b"]}"#));
    let next = format!("{}/v2/team/api/tags/list?last=a", other.url());
    let registry = basic_registry(move |req| {
        if req.path() == "/v2/team/api/tags/list" {
            Reply::new(200)
                .header("Link", format!("<{next}>; rel=\"next\""))
                .json(r#"{"name":"team/api","tags":["a"]}"#)
        } else {
            Reply::new(404)
        }
    });
    let tags = client_for(&registry)
        .list_tags(&reference(&registry, "team/api"), None, &Context::new())
        .await
        .expect("both pages");
    assert_eq!(tags, ["a", "b"]);
    assert_eq!(other.requests().len(), 1);
    assert!(other.authorized().is_empty(), "{:?}", other.authorized());
}

#[tokio::test]
async fn a_tag_list_whose_links_loop_ends_with_an_error() {
    let registry = basic_registry(|req| {
        let (tag, next) = if req.target.contains("last=a") {
            ("b", "/v2/team/api/tags/list")
        } else {
            ("a", "/v2/team/api/tags/list?last=a")
        };
        Reply::new(200)
            .header("Link", format!("<{next}>; rel=\"next\""))
            .json(format!(r#"{{"name":"team/api","tags":["{tag}"]}}"#))
    });
    let listed = tokio::time::timeout(
        Duration::from_secs(30),
        client_for(&registry).list_tags(&reference(&registry, "team/api"), None, &Context::new()),
    )
    .await
    .expect("paging stops");
    let err = listed.expect_err("a Link cycle is an error");
    assert!(
        matches!(
            err,
            OciError::Protocol {
                step: Step::TagList,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("loop"), "{err}");
    assert_eq!(
        registry.requests().len(),
        1 + 2 + 1,
        "ping (401, 200), two pages once each"
    );
}

#[tokio::test]
async fn a_redirect_targets_challenge_is_not_learnt() {
    // The other host answers 401 with a bearer realm of its own: a client that
    // learns it sends the registry's password there to get a "token".
    let other_port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let realm_port = other_port.clone();
    let other = Hostile::start(move |req| {
        if req.path() == "/token" {
            return Reply::new(200).json(r#"{"token":"stolen"}"#);
        }
        let port = realm_port.get().copied().unwrap_or_default();
        Reply::new(401).header(
            "WWW-Authenticate",
            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="evil""#),
        )
    });
    other_port.set(other.port()).expect("set once");
    let other_url = other.url();
    let registry = basic_registry(move |req| {
        if req.path().contains("/manifests/") {
            Reply::new(307).header("Location", format!("{other_url}{}", req.target))
        } else {
            Reply::new(404)
        }
    });
    let err = client_for(&registry)
        .resolve(&reference(&registry, "team/api:v1"), &Context::new())
        .await
        .expect_err("the other host refuses");
    assert!(
        other.requests().iter().all(|r| r.path() != "/token"),
        "the client asked the other host for a token: {:?}",
        other.requests()
    );
    assert!(other.authorized().is_empty(), "{:?}", other.authorized());
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn a_basic_challenge_does_not_downgrade_bearer() {
    let token_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let registry_port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let (calls, port) = (token_calls.clone(), registry_port.clone());
    let expected_basic = basic();
    let registry = Hostile::start(move |req| {
        let port = port.get().copied().unwrap_or_default();
        if req.path() == "/token" {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return if req.header("authorization") == Some(expected_basic.as_str()) {
                Reply::new(200).json(r#"{"token":"t-1"}"#)
            } else {
                Reply::new(401)
            };
        }
        match req.header("authorization") {
            Some("Bearer t-1") if req.path() == "/v2/" => Reply::new(200).json("{}"),
            // After a bearer request, this registry asks for the password itself.
            Some("Bearer t-1") => {
                Reply::new(401).header("WWW-Authenticate", r#"Basic realm="downgrade""#)
            }
            _ => Reply::new(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="hostile""#),
            ),
        }
    });
    registry_port.set(registry.port()).expect("set once");
    let err = client_for(&registry)
        .resolve(&reference(&registry, "team/api:v1"), &Context::new())
        .await
        .expect_err("unauthorized");
    let basic_outside_token = registry
        .requests()
        .into_iter()
        .filter(|r| r.path() != "/token")
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Basic"))
        })
        .collect::<Vec<_>>();
    assert!(
        basic_outside_token.is_empty(),
        "the password went out as Basic auth: {basic_outside_token:?}"
    );
    assert!(token_calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn explicit_credentials_go_only_to_their_registry() {
    let elsewhere = Hostile::start(|req| {
        if req.header("authorization").is_none() {
            Reply::new(401).header("WWW-Authenticate", r#"Basic realm="elsewhere""#)
        } else {
            Reply::new(200).json("{}")
        }
    });
    let client = RegistryClient::builder()
        .credentials("registry.example.com", Credentials::basic(USER, PASSWORD))
        .without_docker_config()
        .build()
        .expect("client");
    let err = client
        .resolve(&reference(&elsewhere, "team/api:v1"), &Context::new())
        .await
        .expect_err("no credentials for this registry");
    assert!(
        elsewhere.authorized().is_empty(),
        "{:?}",
        elsewhere.authorized()
    );
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(matches!(*err, OciError::Unauthorized { .. }), "{err:?}");
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn an_endless_error_body_is_read_only_so_far() {
    for declared in [true, false] {
        let registry = basic_registry(move |req| {
            if req.path().contains("/manifests/") {
                Reply::new(400).stream(512 * MIB, declared)
            } else {
                Reply::new(404)
            }
        });
        let err = client_for(&registry)
            .fetch_manifest(&reference(&registry, "team/api:v1"), &Context::new())
            .await
            .expect_err("400");
        assert!(
            matches!(err, OciError::Status { status: 400, .. }),
            "{err:?}"
        );
        let taken = registry.streamed.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            taken < 64 * MIB,
            "the client took {taken} bytes of an error body"
        );
    }
}

#[tokio::test]
async fn manifests_tag_pages_and_tokens_past_4_mib_are_refused() {
    for declared in [true, false] {
        let registry = basic_registry(move |req| {
            if req.path().contains("/manifests/") || req.path().ends_with("/tags/list") {
                Reply::new(200)
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .stream(5 * MIB, declared)
            } else {
                Reply::new(404)
            }
        });
        let client = client_for(&registry);
        let target = reference(&registry, "team/api:v1");
        let err = client
            .fetch_manifest(&target, &Context::new())
            .await
            .expect_err("too large");
        assert!(
            matches!(err, OciError::TooLarge { step: Step::ManifestGet, limit, .. } if limit == 4 * MIB),
            "{err:?}"
        );
        assert!(err.to_string().contains("manifest is larger than"), "{err}");
        let err = client
            .list_tags(&target, None, &Context::new())
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                OciError::TooLarge {
                    step: Step::TagList,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let realm_port = port.clone();
    let registry = Hostile::start(move |req| {
        if req.path() == "/token" {
            return Reply::new(200).stream(5 * MIB, false);
        }
        let port = realm_port.get().copied().unwrap_or_default();
        Reply::new(401).header(
            "WWW-Authenticate",
            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="hostile""#),
        )
    });
    port.set(registry.port()).expect("set once");
    let err = client_for(&registry)
        .resolve(&reference(&registry, "team/api:v1"), &Context::new())
        .await
        .expect_err("too large");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert!(
        matches!(
            *err,
            OciError::TooLarge {
                step: Step::Auth,
                ..
            }
        ),
        "{err:?}"
    );
}
