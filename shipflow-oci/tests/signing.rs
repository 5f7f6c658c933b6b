//! Signatures in the sigstore (cosign) format. Two peers check them:
//!
//! - skopeo's `sigstoreSigned` policy with `use-sigstore-attachments: true`
//!   finds them where containers/image looks (`sha256-<digest>.sig`, for the
//!   index and for the platform it copies) and refuses an unsigned image.
//!   Debian's skopeo 1.9.3 is built with sigstore verification patched out
//!   ("Debian-local change: sigstore disabled"): there the check stops after
//!   the signature was found; a skopeo with verification must accept it.
//! - `openssl dgst -verify` checks each signature against the public key:
//!   it accepts ours and refuses one made with another key.

mod common;

use std::fs;
use std::path::Path;

use common::{TestRegistry, path_str, run, run_with};
use serde_json::Value;
use shipflow_core::{Context, ImageBuilder, LocalImage, Registry, Workspace};
use shipflow_oci::{ImageSigner, NativeBuilder, RegistryClient, SIGNATURE_MEDIA_TYPE, schema};

/// A two-platform image of two small files.
async fn image(root: &Path, images: &Path) -> LocalImage {
    fs::create_dir_all(root.join("app")).expect("mkdir");
    fs::write(root.join("app/hello.txt"), "hello\n").expect("write");
    let toml = r#"[workspace]
registry = "127.0.0.1:5000/team"
[apps.api]
build = { type = "native", platforms = ["linux/amd64", "linux/arm64"], layers = [{ from = "app", to = "/srv" }] }
"#;
    let workspace = Workspace::loader()
        .schema(schema())
        .from_toml(toml, root)
        .expect("workspace");
    let request = shipflow_core::BuildRequest {
        root: root.to_path_buf(),
        tag: "v1".into(),
        ..Default::default()
    };
    NativeBuilder::new(images)
        .build(
            workspace.app("api").expect("api"),
            &request,
            &Context::new(),
        )
        .await
        .expect("build")
}

/// A new P-256 key made by openssl: PKCS#8 (`genpkey`) or SEC1 (`ecparam`).
/// Returns (private key path, public key path).
fn openssl_key(dir: &Path, name: &str, sec1: bool) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    if sec1 {
        run(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                path_str(&key),
            ],
        );
    } else {
        run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path_str(&key),
            ],
        );
    }
    run(
        "openssl",
        &[
            "pkey",
            "-in",
            path_str(&key),
            "-pubout",
            "-out",
            path_str(&public),
        ],
    );
    (path_str(&key).to_owned(), path_str(&public).to_owned())
}

/// `skopeo copy` of `source` under a policy that wants a sigstore signature by
/// `public_key` for every image of `registry`: (accepted, stderr).
fn skopeo_verifies(dir: &Path, registry: &str, public_key: &str, source: &str) -> (bool, String) {
    let policy = dir.join("policy.json");
    let policy_json = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {registry: [{
            "type": "sigstoreSigned",
            "keyPath": public_key,
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }]}},
    });
    fs::write(&policy, policy_json.to_string()).expect("policy.json");
    let registries_d = dir.join("registries.d");
    fs::create_dir_all(&registries_d).expect("registries.d");
    fs::write(
        registries_d.join("test.yaml"),
        format!("docker:\n  {registry}:\n    use-sigstore-attachments: true\n"),
    )
    .expect("registries.d entry");
    let destination = tempfile::tempdir().expect("destination");
    let (ok, _, stderr) = run_with(
        "skopeo",
        &[
            "--policy",
            path_str(&policy),
            "--registries.d",
            path_str(&registries_d),
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{source}"),
            &format!("oci:{}:x", path_str(destination.path())),
        ],
        &[],
    );
    (ok, stderr)
}

async fn get(url: &str) -> Vec<u8> {
    let response = reqwest::Client::new()
        .get(url)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().await.expect("body").to_vec()
}

/// The payload and DER signature of the (only) signature of `digest` in `repo`.
async fn signature_of(
    host: &str,
    repo: &str,
    digest: &shipflow_core::Digest,
) -> (Vec<u8>, Vec<u8>) {
    let tag = shipflow_oci::signature_tag(digest);
    let manifest: Value = serde_json::from_slice(
        &get(&format!("http://{host}/v2/team/{repo}/manifests/{tag}")).await,
    )
    .expect("signature manifest");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = &layers[0];
    assert_eq!(layer["mediaType"], SIGNATURE_MEDIA_TYPE);
    let payload = get(&format!(
        "http://{host}/v2/team/{repo}/blobs/{}",
        layer["digest"].as_str().expect("digest")
    ))
    .await;
    let signature = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("signature annotation");
    let der = run_with_stdin("base64", &["-d"], signature.as_bytes());
    (payload, der)
}

fn run_with_stdin(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

/// Whether `openssl dgst -sha256 -verify` accepts `der` over `payload` for `public_key`.
fn openssl_verifies(dir: &Path, public_key: &str, payload: &[u8], der: &[u8]) -> bool {
    let work = tempfile::tempdir_in(dir).expect("temp");
    let (p, s) = (work.path().join("payload"), work.path().join("sig"));
    fs::write(&p, payload).expect("payload");
    fs::write(&s, der).expect("sig");
    let (ok, stdout, _) = run_with(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            public_key,
            "-signature",
            path_str(&s),
            path_str(&p),
        ],
        &[],
    );
    ok && stdout.contains("Verified OK")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_found_by_skopeo_and_verified_by_openssl() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().expect("work");
    let image = image(&work.path().join("repo"), &work.path().join("images")).await;
    let (key, public) = openssl_key(work.path(), "ours", false);
    let (other_key, _) = openssl_key(work.path(), "theirs", true);
    let signer = ImageSigner::from_pem_file(&key).expect("PKCS#8 key");
    assert_eq!(
        signer.public_key_pem(),
        fs::read_to_string(&public).expect("public key"),
        "the same public key openssl derives"
    );
    let push = |repo: &str, signer: Option<ImageSigner>| {
        let mut client = RegistryClient::builder();
        if let Some(signer) = signer {
            client = client.sign_with(signer);
        }
        let client = client.build().expect("client");
        let target = registry.reference(&format!("team/{repo}:v1"));
        let image = image.clone();
        async move {
            client
                .push(&image, &target, &Context::new())
                .await
                .expect("push")
        }
    };
    let signed = push("signed", Some(signer.clone())).await;
    push("unsigned", None).await;
    push(
        "other",
        Some(ImageSigner::from_pem_file(&other_key).expect("SEC1 key")),
    )
    .await;

    let signature = signed
        .attachments
        .iter()
        .find(|a| a.kind == "signature")
        .expect("the report names the signature");
    assert_eq!(signature.artifact_type, SIGNATURE_MEDIA_TYPE);
    let host = registry.host();
    let at = |repo: &str| format!("{host}/team/{repo}@{}", image.digest);

    // skopeo finds the signatures and refuses the unsigned image.
    const DEBIAN: &str = "Debian-local change: sigstore disabled";
    let (ok, stderr) = skopeo_verifies(work.path(), &host, &public, &at("signed"));
    assert!(
        ok || stderr.contains(DEBIAN),
        "skopeo refused the signed image: {stderr}"
    );
    let (ok, stderr) = skopeo_verifies(work.path(), &host, &public, &at("unsigned"));
    assert!(!ok, "skopeo took an unsigned image");
    assert!(
        stderr.contains("A signature was required, but no signature exists"),
        "{stderr}"
    );
    let (ok, stderr) = skopeo_verifies(work.path(), &host, &public, &at("other"));
    assert!(
        !ok,
        "skopeo took an image signed with another key: {stderr}"
    );

    // openssl verifies the signature of the index and of each platform's
    // manifest with our key, and refuses those made with the other key.
    let mut digests = vec![image.digest.clone()];
    digests.extend(image.platforms.iter().map(|p| p.digest.clone()));
    for digest in &digests {
        let (payload, der) = signature_of(&host, "signed", digest).await;
        let claims: Value = serde_json::from_slice(&payload).expect("payload JSON");
        assert_eq!(
            claims["critical"]["image"]["docker-manifest-digest"],
            digest.to_string()
        );
        assert_eq!(
            claims["critical"]["identity"]["docker-reference"],
            format!("{host}/team/signed")
        );
        assert_eq!(
            claims["critical"]["type"],
            "cosign container image signature"
        );
        assert!(
            openssl_verifies(work.path(), &public, &payload, &der),
            "{digest}"
        );
        let (payload, der) = signature_of(&host, "other", digest).await;
        assert!(
            !openssl_verifies(work.path(), &public, &payload, &der),
            "{digest}"
        );
    }

    // Signing again (a new tag) adds nothing: RFC 6979 signatures are deterministic.
    let client = RegistryClient::builder()
        .sign_with(signer)
        .build()
        .expect("client");
    let again = client
        .push(
            &image,
            &registry.reference("team/signed:v2"),
            &Context::new(),
        )
        .await
        .expect("push again");
    let again = again
        .attachments
        .iter()
        .find(|a| a.kind == "signature")
        .expect("signature");
    assert_eq!(again.digest, signature.digest);
    let bytes = get(&format!(
        "http://{host}/v2/team/signed/manifests/{}",
        signature.digest
    ))
    .await;
    let manifest: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        manifest["layers"][0]["mediaType"], SIGNATURE_MEDIA_TYPE,
        "{manifest}"
    );
}
