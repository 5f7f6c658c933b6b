//! The registry client against a real docker-registry serving TLS, with a CA and
//! certificates made here with the openssl CLI: trust through certs.d and the
//! builder, mutual TLS, and the errors for an unknown CA, a wrong name, an
//! expired certificate and a missing client certificate; skopeo reads what was
//! pushed with the same certs.d directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{path_str, run, temp_layout, three_layers, write_image};
use shipflow_core::{Context, ImageRef, Registry};
use shipflow_oci::testing::TestRegistry;
use shipflow_oci::{CertificateProblem, ConnectFailure, OciError, RegistryClient};

/// A private CA and certificates it signs, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=shipflow test CA",
            ],
        );
        std::fs::create_dir_all(d.join("issued")).expect("ca dir");
        std::fs::write(d.join("index.txt"), "").expect("ca index");
        std::fs::write(d.join("serial"), "1000\n").expect("ca serial");
        std::fs::write(
            d.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndir = {0}\ndatabase = {0}/index.txt\nnew_certs_dir = {0}/issued\nserial = {0}/serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\nunique_subject = no\n[any]\ncommonName = supplied\n",
                d.display()
            ),
        )
        .expect("ca config");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `<name>.crt`/`<name>.key` for `san`, valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`), or for a day from now.
    fn issue(&self, name: &str, san: &str, dates: Option<(&str, &str)>) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                &format!("subjectAltName={san}"),
            ],
        );
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile",
            "ca.key", "-in", &csr, "-out", &crt,
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "1"]),
        }
        openssl(d, &args);
        (self.path(&crt), self.path(&key))
    }
}

/// A certs.d root holding `<registry>/` with `files` (name, source) copied in.
fn certs_d(registry: &TestRegistry, files: &[(&str, &Path)]) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("certs.d root");
    let dir = root.path().join(registry.host());
    std::fs::create_dir_all(&dir).expect("certs.d/<host:port>");
    for (name, from) in files {
        std::fs::copy(from, dir.join(name)).expect("copy into certs.d");
    }
    (root, dir)
}

fn tls_registry(pki: &Pki, name: &str, san: &str, dates: Option<(&str, &str)>) -> TestRegistry {
    let (crt, key) = pki.issue(name, san, dates);
    TestRegistry::start_tls(&crt, &key, None).expect("docker-registry serves TLS")
}

async fn push_and_pull(
    client: &RegistryClient,
    target: &ImageRef,
    seed: &str,
) -> shipflow_core::Digest {
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers(seed));
    let report = client
        .push(&image, target, &Context::new())
        .await
        .unwrap_or_else(|e| panic!("push to {target}: {e}"));
    assert_eq!(report.blobs_uploaded, 4);
    let (_, _, digest) = client
        .fetch_manifest(target, &Context::new())
        .await
        .expect("pull the manifest back");
    assert_eq!(digest, image.digest);
    let config = client
        .fetch_blob(target, &image.config.digest, &Context::new())
        .await
        .expect("pull the config back");
    assert_eq!(config.len() as u64, image.config.size);
    digest
}

#[tokio::test]
async fn push_and_pull_with_the_ca_from_each_route_and_skopeo_reads_it() {
    let pki = Pki::new();
    let registry = tls_registry(&pki, "registry", "IP:127.0.0.1,DNS:localhost", None);
    let ca = pki.path("ca.crt");

    // certs.d/<host:port>/ca.crt, as Docker and Podman read it.
    let (root, dir) = certs_d(&registry, &[("ca.crt", &ca)]);
    let via_certs_d = RegistryClient::builder()
        .certs_dirs([root.path()])
        .without_docker_config()
        .build()
        .expect("client");
    let target = registry.reference("team/api:certs-d");
    let digest = push_and_pull(&via_certs_d, &target, "tls-certs-d").await;

    // skopeo, given the same directory, reads what was pushed over verified TLS.
    let inspected = run(
        "skopeo",
        &[
            "inspect",
            "--cert-dir",
            path_str(&dir),
            &format!("docker://{target}"),
        ],
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).expect("skopeo json");
    assert_eq!(inspected["Digest"], digest.to_string());

    // The builder's PEM bytes, and a CA file (the CLI's --registry-ca).
    let pem = std::fs::read(&ca).expect("ca pem");
    for (route, builder) in [
        ("pem", RegistryClient::builder().ca_certificates(pem)),
        ("file", RegistryClient::builder().ca_certificate_file(&ca)),
    ] {
        let client = builder
            .certs_dirs(Vec::<PathBuf>::new())
            .without_docker_config()
            .build()
            .expect("client");
        push_and_pull(
            &client,
            &registry.reference(&format!("team/api:{route}")),
            &format!("tls-{route}"),
        )
        .await;
    }
}

fn certificate_error(err: &OciError) -> &CertificateProblem {
    match err {
        OciError::Certificate { problem, .. } => problem,
        other => panic!("not a certificate error: {other:?}"),
    }
}

#[tokio::test]
async fn without_the_ca_the_error_names_the_certificate_and_the_fix_after_one_attempt() {
    let pki = Pki::new();
    let registry = tls_registry(&pki, "registry", "IP:127.0.0.1", None);
    let client = RegistryClient::builder()
        .certs_dirs(Vec::<PathBuf>::new())
        .without_docker_config()
        .retries(4, std::time::Duration::from_millis(10))
        .build()
        .expect("client");
    let (port, connections) = counting_forwarder(registry.port());
    let host = format!("127.0.0.1:{port}");
    let err = client
        .resolve(
            &format!("{host}/team/api:v1").parse().expect("ref"),
            &Context::new(),
        )
        .await
        .expect_err("untrusted CA");
    let err = err.downcast::<OciError>().expect("an OciError");
    assert_eq!(certificate_error(&err), &CertificateProblem::UnknownIssuer);
    let message = err.to_string();
    for needle in [
        format!("registry {host} is not trusted"),
        "unknown certificate authority".to_owned(),
        "shipflow test CA".to_owned(),
        "127.0.0.1".to_owned(),
        format!("/etc/docker/certs.d/{host}/ca.crt"),
        "--registry-ca".to_owned(),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in: {message}");
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one attempt, no retry, no plain-HTTP fallback"
    );
}

#[tokio::test]
async fn a_name_mismatch_and_an_expired_certificate_each_say_so() {
    let pki = Pki::new();
    let wrong_name = tls_registry(&pki, "wrong-name", "DNS:registry.other.test", None);
    let expired = tls_registry(
        &pki,
        "expired",
        "IP:127.0.0.1",
        Some(("20200101000000Z", "20200102000000Z")),
    );
    let client = RegistryClient::builder()
        .ca_certificate_file(pki.path("ca.crt"))
        .certs_dirs(Vec::<PathBuf>::new())
        .without_docker_config()
        .build()
        .expect("client");

    let err = client
        .ping(&wrong_name.reference("team/api"), &Context::new())
        .await
        .expect_err("wrong name");
    assert_eq!(certificate_error(&err), &CertificateProblem::NameMismatch);
    let message = err.to_string();
    assert!(
        message.contains("not valid for the name") && message.contains("registry.other.test"),
        "{message}"
    );

    let err = client
        .ping(&expired.reference("team/api"), &Context::new())
        .await
        .expect_err("expired");
    assert_eq!(certificate_error(&err), &CertificateProblem::Expired);
    let message = err.to_string();
    assert!(
        message.contains("it has expired")
            && message.contains("2020")
            && message.contains("renewed"),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_certificate_registry_works_with_the_pair_and_fails_clearly_without() {
    let pki = Pki::new();
    let (server_crt, server_key) = pki.issue("registry", "IP:127.0.0.1", None);
    let registry = TestRegistry::start_tls(&server_crt, &server_key, Some(&pki.path("ca.crt")))
        .expect("docker-registry serves mutual TLS");
    let (client_crt, client_key) = pki.issue("ci-client", "DNS:ci-client", None);
    let ca = pki.path("ca.crt");

    let (with_pair, _) = certs_d(
        &registry,
        &[
            ("ca.crt", &ca),
            ("client.cert", &client_crt),
            ("client.key", &client_key),
        ],
    );
    let client = RegistryClient::builder()
        .certs_dirs([with_pair.path()])
        .without_docker_config()
        .build()
        .expect("client");
    push_and_pull(&client, &registry.reference("team/api:v1"), "mtls").await;

    let (without, _) = certs_d(&registry, &[("ca.crt", &ca)]);
    let client = RegistryClient::builder()
        .certs_dirs([without.path()])
        .without_docker_config()
        .build()
        .expect("client");
    let err = client
        .ping(&registry.reference("team/api"), &Context::new())
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(
            err,
            OciError::Connect {
                failure: ConnectFailure::ClientCertificate,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("client.cert"), "{err}");
}

#[tokio::test]
async fn refused_dns_and_tls_failures_have_their_own_messages() {
    let client = RegistryClient::builder()
        .without_docker_config()
        .retries(1, std::time::Duration::from_millis(1))
        .build()
        .expect("client");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let refused: ImageRef = format!("127.0.0.1:{port}/team/api").parse().expect("ref");
    let err = client
        .ping(&refused, &Context::new())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            OciError::Connect {
                failure: ConnectFailure::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("connection refused"), "{err}");

    let unknown: ImageRef = "shipflow-test.invalid:5000/team/api".parse().expect("ref");
    let err = client
        .ping(&unknown, &Context::new())
        .await
        .expect_err("no such host");
    assert!(
        matches!(
            err,
            OciError::Connect {
                failure: ConnectFailure::Dns,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not resolve"), "{err}");
}

/// A TCP forwarder to `port` on loopback that counts the connections it takes.
fn counting_forwarder(port: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("forwarder port");
    let own = listener.local_addr().expect("addr").port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            let (mut client, mut upstream) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client, &mut upstream);
                let _ = upstream.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (own, count)
}

#[tokio::test]
async fn insecure_speaks_https_without_verification_and_plain_http_to_plain_registries() {
    let pki = Pki::new();
    let tls = tls_registry(&pki, "registry", "DNS:registry.other.test", None);
    let plain = TestRegistry::start().expect("plain registry");
    let insecure = RegistryClient::builder()
        .insecure(true)
        .certs_dirs(Vec::<PathBuf>::new())
        .without_docker_config()
        .build()
        .expect("client");
    // An untrusted CA and a wrong name: verification is off.
    push_and_pull(&insecure, &tls.reference("team/api:v1"), "insecure-tls").await;
    push_and_pull(&insecure, &plain.reference("team/api:v1"), "insecure-plain").await;
    // The TLS registry got the image over HTTPS: a plain request shows it is TLS only.
    assert!(
        tls.log().contains("\"PUT /v2/team/api/manifests/v1"),
        "{}",
        tls.log()
    );
}
