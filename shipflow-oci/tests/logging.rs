//! A push logs every request and decision at debug, and no secret: neither the
//! password nor a bearer token, against a real registry with token auth.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{TestRegistry, temp_layout, three_layers, write_image};
use shipflow_core::{Context, Registry};
use shipflow_oci::testing::TokenService;
use shipflow_oci::{Credentials, RegistryClient};

const PASSWORD: &str = "log-pass-8842";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_push_logs_its_requests_and_decisions_and_no_secret() {
    let tokens = TokenService::start("ci", PASSWORD, "team/api").expect("token service");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("logging"));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime is single-threaded: every task of the push logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let client = RegistryClient::builder()
        .credentials(registry.host(), Credentials::basic("ci", PASSWORD))
        .without_docker_config()
        .build()
        .expect("client");
    let target = registry.reference("team/api:v1");
    client
        .push(&image, &target, &Context::new())
        .await
        .expect("push");
    client
        .push(&image, &target, &Context::new())
        .await
        .expect("re-push");

    let log = String::from_utf8(captured.0.lock().expect("log").clone()).expect("utf-8 log");
    for needle in [
        "the registry does not speak TLS: using plain HTTP",
        "learnt the registry's auth scheme",
        "fetching a bearer token",
        "blob uploaded",
        "the tag already names this manifest",
        "status=201",
        "authorized=true",
    ] {
        assert!(log.contains(needle), "{needle:?} not logged:\n{log}");
    }
    // The password, its basic-auth form (base64 of "ci:…" starts "Y2k6") and any
    // JWT (they start "eyJ").
    for secret in [PASSWORD, "Y2k6", "eyJ"] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}
