//! Chunked uploads against a real `docker-registry`, and their resumption after
//! connection resets in the middle of a chunk.

mod common;

use common::{ResetProxy, TestRegistry, noise, temp_layout, write_image};
use shipflow_core::{Context, Digest, LocalImage, Registry};
use shipflow_oci::RegistryClient;

const MIB: u64 = 1024 * 1024;

async fn fetch_blob(registry: &TestRegistry, repo: &str, digest: &Digest) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", registry.host());
    let response = reqwest::get(&url).await.expect("GET blob");
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().await.expect("blob body").to_vec()
}

async fn assert_pulls_back(registry: &TestRegistry, repo: &str, image: &LocalImage) {
    for blob in image.layers.iter().chain([&image.config]) {
        let bytes = fetch_blob(registry, repo, &blob.digest).await;
        assert_eq!(Digest::sha256(&bytes), blob.digest);
        assert_eq!(bytes.len() as u64, blob.size);
    }
    let manifest = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/v1", registry.host()))
        .header("Accept", shipflow_oci::OCI_MANIFEST_MEDIA_TYPE)
        .send()
        .await
        .expect("GET manifest")
        .bytes()
        .await
        .expect("manifest body");
    assert_eq!(Digest::sha256(&manifest), image.digest);
}

fn chunked_client() -> RegistryClient {
    RegistryClient::builder()
        .chunked_uploads(MIB, MIB)
        .retries(4, std::time::Duration::from_millis(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn large_blobs_go_in_patch_chunks_and_small_ones_in_one_put() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let layers = vec![
        noise("big", (3 * MIB + 12_345) as usize),
        noise("small", 1000),
    ];
    let image = write_image(&layout, "api", "v1", &layers);
    let report = chunked_client()
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("push");
    assert_eq!(report.blobs_uploaded, 3);
    assert_eq!(report.bytes_uploaded, image.size() + image.manifest_size);
    let patches = registry
        .log()
        .matches("\"PATCH /v2/team/api/blobs/uploads/")
        .count();
    assert_eq!(
        patches,
        4,
        "3 MiB + 12 KB in 1 MiB chunks:\n{}",
        registry.log()
    );
    assert_pulls_back(&registry, "team/api", &image).await;
}

#[tokio::test]
async fn connection_resets_mid_chunk_are_resumed_and_the_image_verifies() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let layers = vec![
        noise("reset-a", (5 * MIB) as usize),
        noise("reset-b", (2 * MIB + 7) as usize),
    ];
    let image = write_image(&layout, "api", "v1", &layers);
    // Cut the traffic twice, in the middle of chunks.
    let proxy = ResetProxy::start(registry.port(), vec![MIB + MIB / 2, 4 * MIB + 1234]);
    let client = RegistryClient::builder()
        .chunked_uploads(MIB, MIB)
        .max_concurrent_uploads(1)
        .retries(4, std::time::Duration::from_millis(10))
        .build()
        .expect("client");
    let report = client
        .push(&image, &proxy.reference("team/api:v1"), &Context::new())
        .await
        .expect("push through resets");
    assert_eq!(proxy.resets.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(report.blobs_uploaded, 3);
    // After each cut the client asked the registry for the session's range.
    // Distribution 2.8 keeps the partial chunk and then refuses the session ("upload
    // resumed at wrong offset"), so the client starts that blob over in a new one.
    let status_checks = registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/team/api/blobs/uploads/"))
        .count();
    assert_eq!(status_checks, 2, "{}", registry.log());
    assert_pulls_back(&registry, "team/api", &image).await;
}

#[tokio::test]
async fn a_chunk_cut_before_its_body_resumes_in_the_same_session() {
    let registry = TestRegistry::start();
    let (_dir, layout) = temp_layout();
    let layers = vec![noise("resume", (3 * MIB + 99) as usize)];
    let image = write_image(&layout, "api", "v1", &layers);
    // The second PATCH reaches the registry as headers only: the session still
    // holds exactly the first chunk, so the registry lets it resume.
    let proxy = ResetProxy::cut_patch_bodies(registry.port(), vec![2]);
    let report = chunked_client()
        .push(&image, &proxy.reference("team/api:v1"), &Context::new())
        .await
        .expect("push through the cut");
    assert_eq!(proxy.resets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(report.blobs_uploaded, 2);
    let log = registry.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("\"GET /v2/team/api/blobs/uploads/"),
        1,
        "asked for the range once"
    );
    assert_eq!(
        count("\"POST /v2/team/api/blobs/uploads/"),
        2,
        "no session started over:\n{log}"
    );
    assert_eq!(
        count("\"PATCH /v2/team/api/blobs/uploads/"),
        5,
        "4 chunks and the cut one again:\n{log}"
    );
    assert_pulls_back(&registry, "team/api", &image).await;
}
