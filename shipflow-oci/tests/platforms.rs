//! Images for several platforms: a two-platform Rust-style app (a prebuilt
//! binary per platform, a shared static layer) built reproducibly into an image
//! index, pushed to a real `docker-registry` with its shared layer uploaded
//! once, and read back by skopeo and Podman; its SBOM and provenance fetched
//! back from the registry and checked against their JSON schemas.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Podman, TestRegistry, access_log, path_str, run};
use serde_json::Value;
use shipflow_core::{App, BuildRequest, Context, Digest, ImageBuilder, Registry, RevisionInfo};
use shipflow_core::{Fingerprint, LocalImage, Workspace};
use shipflow_oci::{
    BuildError, NativeBuilder, PROVENANCE_ARTIFACT_TYPE, RegistryClient, SBOM_ARTIFACT_TYPE,
    referrers_tag, schema,
};

const AMD64: &str = "x86_64-unknown-linux-gnu";
const ARM64: &str = "aarch64-unknown-linux-gnu";

fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, content).expect("write file");
}

/// A Rust-style repository: `target/<triple>/release/busybox` for each platform
/// (the host's is the real static busybox, so that Podman can run it), static
/// files, and a `Cargo.lock`.
fn rust_repo(root: &Path) {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed (/bin/busybox)");
    write(
        &root.join(format!("target/{AMD64}/release/busybox")),
        &busybox,
    );
    let mut arm = b"\x7fELF arm64 stand-in ".to_vec();
    arm.extend(common::noise("arm64 binary", 300_000));
    write(&root.join(format!("target/{ARM64}/release/busybox")), &arm);
    for p in [AMD64, ARM64] {
        run(
            "chmod",
            &[
                "755",
                path_str(&root.join(format!("target/{p}/release/busybox"))),
            ],
        );
    }
    write(&root.join("apps/api/static/index.html"), b"<h1>api</h1>\n");
    write(
        &root.join("apps/api/static/app.js"),
        &common::noise("js", 200_000),
    );
    write(
        &root.join("Cargo.lock"),
        b"version = 4\n\n[[package]]\nname = \"api\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.219\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6\"\n",
    );
}

const TWO_PLATFORMS: &str = r#"platforms = ["linux/amd64", "linux/arm64"], layers = [{ from = "apps/api/static", to = "/srv/static" }, { from = "target/${TARGET_TRIPLE}/release/busybox", to = "/bin/" }], entrypoint = ["/bin/busybox"], cmd = ["echo", "hello from shipflow"]"#;

fn app(root: &Path, registry: &str, build: &str) -> App {
    let toml = format!(
        "[workspace]\nregistry = \"{registry}/team\"\n[apps.api]\nbuild = {{ type = \"native\", {build} }}\n"
    );
    let workspace = Workspace::loader()
        .schema(schema())
        .from_toml(&toml, root)
        .expect("valid workspace");
    workspace.app("api").expect("app api").clone()
}

fn request(root: &Path) -> BuildRequest {
    BuildRequest {
        root: root.to_path_buf(),
        tag: "v1".into(),
        revision: RevisionInfo {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            ..RevisionInfo::default()
        },
        fingerprint: Some(Fingerprint("f1f2f3f4f5f6".into())),
        ..BuildRequest::default()
    }
}

async fn build_with_threads(app: &App, root: &Path, images: PathBuf, threads: usize) -> LocalImage {
    NativeBuilder::new(images)
        .source_date_epoch(1_700_000_000)
        .source_url("https://github.com/acme/monorepo")
        .compression_threads(threads)
        .build(app, &request(root), &Context::new())
        .await
        .expect("build")
}

async fn get_json(url: &str, accept: &str) -> (Vec<u8>, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .header("Accept", accept)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    let bytes = response.bytes().await.expect("body").to_vec();
    let value = serde_json::from_slice(&bytes).expect("JSON");
    (bytes, value)
}

/// A validator for `schema` (a file of tests/fixtures/schemas), resolving its
/// references to the files beside it, never to the network.
fn validator(schema: &str) -> jsonschema::Validator {
    struct Fixtures;
    impl jsonschema::Retrieve for Fixtures {
        fn retrieve(
            &self,
            uri: &jsonschema::Uri<String>,
        ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
            let name = uri
                .path()
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let text = fs::read_to_string(fixtures().join(&name))?;
            Ok(serde_json::from_str(&text)?)
        }
    }
    let text = fs::read_to_string(fixtures().join(schema)).expect("schema fixture");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::options()
        .with_retriever(Fixtures)
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas")
}

fn assert_valid(validator: &jsonschema::Validator, document: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks its schema:\n{}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_platform_app_is_one_reproducible_index_that_skopeo_and_podman_read() {
    let registry = TestRegistry::start();
    let repo = tempfile::tempdir().expect("repo");
    rust_repo(repo.path());
    let app = app(repo.path(), &registry.host(), TWO_PLATFORMS);
    let out = tempfile::tempdir().expect("images");

    // Same inputs, another thread count, another directory: the same index.
    let one = build_with_threads(&app, repo.path(), out.path().join("one"), 1).await;
    let four = build_with_threads(&app, repo.path(), out.path().join("four"), 4).await;
    assert_eq!(
        one.digest, four.digest,
        "the index digest depends on the inputs only"
    );
    assert_eq!(
        one,
        LocalImage {
            location: one.location.clone(),
            ..four.clone()
        }
    );
    assert!(one.is_index());
    let platforms: Vec<&str> = one.platforms.iter().map(|p| p.platform.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let (amd, arm) = (&one.platforms[0], &one.platforms[1]);
    assert_eq!(amd.layers[0], arm.layers[0], "the static layer is shared");
    assert_ne!(
        amd.layers[1], arm.layers[1],
        "each platform has its own binary"
    );
    let shared = amd.layers[0].digest.clone();

    // Push: the shared layer goes up once; the index after its manifests.
    let target = registry.reference("team/api:v1");
    let report = RegistryClient::builder()
        .build()
        .expect("client")
        .push(&one, &target, &Context::new())
        .await
        .expect("push");
    assert_eq!(report.digest.as_ref(), Some(&one.digest));
    let log = access_log(&registry.log());
    let hex = shared.encoded();
    let uploads = log
        .iter()
        .filter(|l| l.starts_with("PUT ") && l.contains(&format!("digest=sha256%3A{hex}")))
        .count();
    let heads = log
        .iter()
        .filter(|l| l.starts_with("HEAD ") && l.contains(&format!("/blobs/sha256:{hex}")))
        .count();
    assert_eq!(
        (uploads, heads),
        (1, 1),
        "the shared layer: one HEAD, one upload\n{log:#?}"
    );
    let position = |needle: &str| {
        log.iter()
            .position(|l| l.starts_with("PUT ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no PUT of {needle}\n{log:#?}"))
    };
    let index_put = position("/manifests/v1 ");
    assert!(
        position(&format!("/manifests/{}", amd.digest)) < index_put,
        "{log:#?}"
    );
    assert!(
        position(&format!("/manifests/{}", arm.digest)) < index_put,
        "{log:#?}"
    );
    // 2 configs and 3 layers (the SBOM and provenance are attachments, apart).
    assert_eq!(report.blobs_uploaded, 5, "{report:?}");
    let kinds: Vec<&str> = report.attachments.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["sbom", "provenance"]);

    // skopeo sees the index; --override-arch arm64 copies the arm64 image.
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    );
    let index: Value = serde_json::from_str(&raw).expect("index JSON");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        Digest::sha256(raw.as_bytes()),
        one.digest,
        "skopeo reads our exact bytes"
    );
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    let copy = out.path().join("arm64-copy");
    run(
        "skopeo",
        &[
            "--override-arch",
            "arm64",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &format!("oci:{}:arm", path_str(&copy)),
        ],
    );
    let copied = shipflow_oci::OciLayout::open(&copy)
        .expect("copied layout")
        .local_image("api", "arm")
        .expect("copied image");
    assert_eq!(
        copied.digest, arm.digest,
        "skopeo picked the arm64 manifest"
    );

    // Podman pulls the index by digest for the host's platform and runs it.
    let podman = Podman::new(&registry.host());
    let pinned = format!("{}/team/api@{}", registry.host(), one.digest);
    let (ok, _, err) = podman.run(&["pull", "--platform", "linux/amd64", &pinned]);
    assert!(ok, "podman pull: {err}");
    let (ok, stdout, err) = podman.run(&["run", "--rm", "--network", "none", &pinned]);
    assert!(ok, "podman run: {err}");
    assert_eq!(stdout.trim(), "hello from shipflow");

    // The SBOM and provenance, fetched back by digest, valid against their schemas.
    let base = format!("http://{}/v2/team/api", registry.host());
    let (_, referrers) = get_json(
        &format!("{base}/manifests/{}", referrers_tag(&one.digest)),
        "application/vnd.oci.image.index.v1+json",
    )
    .await;
    let listed: Vec<&str> = referrers["manifests"]
        .as_array()
        .expect("referrers")
        .iter()
        .map(|d| d["artifactType"].as_str().expect("artifactType"))
        .collect();
    assert_eq!(listed, [SBOM_ARTIFACT_TYPE, PROVENANCE_ARTIFACT_TYPE]);
    let mut documents = Vec::new();
    for (descriptor, attachment) in referrers["manifests"]
        .as_array()
        .expect("referrers")
        .iter()
        .zip(&report.attachments)
    {
        assert_eq!(descriptor["digest"], attachment.digest.to_string());
        let (bytes, manifest) = get_json(
            &format!("{base}/manifests/{}", attachment.digest),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
        assert_eq!(Digest::sha256(&bytes), attachment.digest);
        assert_eq!(manifest["subject"]["digest"], one.digest.to_string());
        assert_eq!(manifest["artifactType"], attachment.artifact_type);
        let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
        let (bytes, document) = get_json(&format!("{base}/blobs/{layer}"), "*/*").await;
        assert_eq!(Digest::sha256(&bytes).to_string(), layer);
        documents.push(document);
    }
    let (sbom, provenance) = (&documents[0], &documents[1]);
    let (bom_schema, slsa_schema) = (
        validator("bom-1.5.SNAPSHOT.schema.json"),
        validator("slsa-provenance-v1.schema.json"),
    );
    assert_valid(&bom_schema, sbom, "the SBOM");
    assert_valid(&slsa_schema, provenance, "the provenance");
    // The schemas do refuse what breaks them.
    let mut broken = sbom.clone();
    broken["components"][0]["hashes"][0]["alg"] = "SHA-257".into();
    assert!(!bom_schema.is_valid(&broken));
    let mut broken = provenance.clone();
    broken["predicate"]["runDetails"]["builder"]
        .as_object_mut()
        .expect("builder")
        .remove("id");
    assert!(!slsa_schema.is_valid(&broken));

    // Every file of each layer, with the sha256 of its content; the lock file's packages.
    let files: Vec<(String, String)> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .flat_map(|c| c["components"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_owned(),
                f["hashes"][0]["content"].as_str().expect("hash").to_owned(),
            )
        })
        .collect();
    let sha = |p: &str| {
        Digest::sha256(&fs::read(repo.path().join(p)).expect("read"))
            .encoded()
            .to_owned()
    };
    for (path, source) in [
        ("/srv/static/app.js", "apps/api/static/app.js".to_owned()),
        (
            "/srv/static/index.html",
            "apps/api/static/index.html".to_owned(),
        ),
        ("/bin/busybox", format!("target/{AMD64}/release/busybox")),
        ("/bin/busybox", format!("target/{ARM64}/release/busybox")),
    ] {
        assert!(
            files.contains(&(path.to_owned(), sha(&source))),
            "{path} from {source} is in the SBOM: {files:?}"
        );
    }
    assert_eq!(files.len(), 4, "{files:?}");
    let purls: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    assert_eq!(purls, ["pkg:cargo/api@0.1.0", "pkg:cargo/serde@1.0.219"]);

    let predicate = &provenance["predicate"];
    assert_eq!(
        provenance["subject"][0]["digest"]["sha256"],
        one.digest.encoded()
    );
    let external = &predicate["buildDefinition"]["externalParameters"];
    assert_eq!(external["fingerprint"], "f1f2f3f4f5f6");
    assert_eq!(
        external["revision"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        external["build"]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let source = &predicate["buildDefinition"]["resolvedDependencies"][0];
    assert_eq!(
        source["uri"],
        "git+https://github.com/acme/monorepo@0123456789abcdef0123456789abcdef01234567"
    );
    assert!(predicate["runDetails"]["builder"]["id"].as_str().is_some());
}

/// Pushes a base index for `platforms` plus an `unknown/unknown` attestation
/// entry (as buildx writes them) as `team/base:1`.
async fn push_base(registry: &TestRegistry, root: &Path, platforms: &str) {
    write(&root.join("base/etc/base.txt"), b"base\n");
    let base_app = app(
        root,
        &registry.host(),
        &format!(
            r#"platforms = [{platforms}], layers = [{{ from = "base", to = "/" }}], sbom = false, provenance = false"#
        ),
    );
    let images = tempfile::tempdir().expect("images");
    let built = build_with_threads(&base_app, root, images.path().to_path_buf(), 2).await;
    RegistryClient::builder()
        .build()
        .expect("client")
        .push(
            &built,
            &registry.reference("team/base:plain"),
            &Context::new(),
        )
        .await
        .expect("push base");
    let layout = shipflow_oci::OciLayout::open(images.path().join("api")).expect("layout");
    let mut index: Value =
        serde_json::from_slice(&layout.read_blob(&built.digest).expect("index")).expect("json");
    // The attestation entry points at a manifest the registry has (Distribution
    // checks that every entry exists); only its platform and annotation matter.
    let first = index["manifests"][0].clone();
    let mut attestation = first.clone();
    attestation["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    attestation["annotations"] =
        serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .insert(0, attestation);
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/v2/team/base/manifests/1",
            registry.host()
        ))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).expect("json"))
        .send()
        .await
        .expect("PUT index");
    assert_eq!(response.status(), 201, "the registry takes the base index");
}

#[tokio::test]
async fn a_platform_the_base_lacks_is_an_error_naming_it_and_attestations_are_not_platforms() {
    let registry = TestRegistry::start();
    let repo = tempfile::tempdir().expect("repo");
    rust_repo(repo.path());
    push_base(&registry, repo.path(), r#""linux/amd64""#).await;
    let base = format!("{}/team/base:1", registry.host());

    let both = app(
        repo.path(),
        &registry.host(),
        &format!(r#"base = "{base}", {TWO_PLATFORMS}"#),
    );
    let images = tempfile::tempdir().expect("images");
    let err = NativeBuilder::new(images.path())
        .build(&both, &request(repo.path()), &Context::new())
        .await
        .expect_err("the base has no arm64 image");
    let typed = err.downcast_ref::<BuildError>().expect("a BuildError");
    assert!(
        matches!(typed, BuildError::BasePlatformMissing { .. }),
        "{typed:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "app api: build failed: base image {base} has no linux/arm64 image (it has: linux/amd64); pick a base built for linux/arm64, or leave linux/arm64 out of platforms"
        )
    );

    let amd64 = app(
        repo.path(),
        &registry.host(),
        &format!(
            r#"base = "{base}", platforms = ["linux/amd64"], layers = [{{ from = "target/${{TARGET_TRIPLE}}/release/busybox", to = "/bin/" }}]"#
        ),
    );
    let image = NativeBuilder::new(images.path())
        .build(&amd64, &request(repo.path()), &Context::new())
        .await
        .expect("amd64 is in the base");
    assert_eq!(image.platforms.len(), 1);
    assert_eq!(
        image.platforms[0].layers.len(),
        2,
        "the base's layer and the binary"
    );
}

#[tokio::test]
async fn the_layout_store_holds_the_index_its_platforms_and_its_referrers() {
    let repo = tempfile::tempdir().expect("repo");
    rust_repo(repo.path());
    let app = app(repo.path(), "127.0.0.1:5000", TWO_PLATFORMS);
    let out = tempfile::tempdir().expect("images");
    let image = build_with_threads(&app, repo.path(), out.path().join("images"), 2).await;
    let store = shipflow_oci::LayoutRegistry::new(out.path().join("store"));
    let target: shipflow_core::ImageRef = "localhost/team/api:v1".parse().expect("ref");
    let report = store
        .push(&image, &target, &Context::new())
        .await
        .expect("push");
    assert!(report.manifest_written);
    store
        .tag(
            &image.digest,
            &"localhost/team/api:latest".parse().expect("ref"),
            &Context::new(),
        )
        .await
        .expect("tag the index");
    let dir = store.layout_dir(&target);
    for tag in ["v1", "latest"] {
        let raw = run(
            "skopeo",
            &["inspect", "--raw", &format!("oci:{}:{tag}", path_str(&dir))],
        );
        assert_eq!(Digest::sha256(raw.as_bytes()), image.digest, "{tag}");
    }
    let copy = out.path().join("arm64");
    run(
        "skopeo",
        &[
            "--override-arch",
            "arm64",
            "copy",
            &format!("oci:{}:v1", path_str(&dir)),
            &format!("oci:{}:arm", path_str(&copy)),
        ],
    );
    let copied = shipflow_oci::OciLayout::open(&copy)
        .expect("copy")
        .local_image("api", "arm")
        .expect("image");
    assert_eq!(copied.digest, image.platforms[1].digest);
    let stored = shipflow_oci::OciLayout::open(&dir).expect("store layout");
    let kinds: Vec<String> = stored
        .referrers(&image.digest)
        .expect("referrers")
        .into_iter()
        .map(|r| r.artifact_type)
        .collect();
    assert_eq!(kinds, [SBOM_ARTIFACT_TYPE, PROVENANCE_ARTIFACT_TYPE]);
}
