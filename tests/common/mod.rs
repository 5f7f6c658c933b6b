//! Shared by the end-to-end tests and the headline benchmark: a generated git
//! monorepo whose apps are static sites served by busybox httpd, buildable both
//! natively by shipflow and by `podman build` from a Dockerfile.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The apps' command: busybox httpd on 8080 behind a shell that exits on SIGTERM
/// (PID 1 ignores signals it has no handler for, so a plain httpd waits out the
/// engine's stop timeout).
pub const HTTPD: &str =
    "trap 'kill $p; exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /www & p=$!; wait";

/// A git repository in a temp dir with `apps/<name>/index.html` for each app, the
/// shared `packages/common`, busybox as `packages/runtime/busybox`, and a
/// `shipflow.toml` declaring every app with a native build.
pub struct Monorepo {
    dir: tempfile::TempDir,
}

impl Monorepo {
    /// Creates the repository with images under `<registry>/e2e/<app>`, and
    /// `app_extra(app, index)` appended to each app's section (its `deploy` table).
    pub fn create(
        registry: &str,
        apps: &[&str],
        app_extra: impl Fn(&str, usize) -> String,
    ) -> Self {
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: these tests serve apps with busybox httpd; apt-get install -y busybox-static"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Self { dir };
        let mut toml = format!(
            "[workspace]\nregistry = \"{registry}/e2e\"\nshared = [\"packages/common/**\"]\n\
             tag = \"${{SHORT_SHA}}\"\n"
        );
        for (index, app) in apps.iter().enumerate() {
            toml.push_str(&format!(
                "\n[apps.{app}]\nbuild = {{ type = \"native\", expose = [\"8080/tcp\"], \
                 cmd = [\"/bin/busybox\", \"sh\", \"-c\", \"{HTTPD}\"], layers = [\n\
                 {{ from = \"packages/runtime/busybox\", to = \"/bin/busybox\" }},\n\
                 {{ from = \"packages/common\", to = \"/srv/common\" }},\n\
                 {{ from = \"apps/{app}\", to = \"/www\" }},\n] }}\n{}\n",
                app_extra(app, index)
            ));
            repo.write(
                &format!("apps/{app}/index.html"),
                &format!("<h1>{app} v1</h1>\n"),
            );
            repo.write(
                &format!("apps/{app}/Dockerfile"),
                &format!(
                    "FROM scratch\nCOPY packages/runtime/busybox /bin/busybox\n\
                     COPY packages/common /srv/common\nCOPY apps/{app} /www\n\
                     CMD [\"/bin/busybox\", \"sh\", \"-c\", \"{HTTPD}\"]\n"
                ),
            );
        }
        repo.write("shipflow.toml", &toml);
        repo.write("packages/common/version.txt", "1\n");
        let busybox = repo.path().join("packages/runtime/busybox");
        std::fs::create_dir_all(busybox.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(BUSYBOX, &busybox).expect("copy busybox");
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "initial"]);
        repo
    }

    /// The repository root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its `shipflow.toml`.
    pub fn config(&self) -> PathBuf {
        self.path().join("shipflow.toml")
    }

    /// Writes `content` to `path` and commits it.
    pub fn edit(&self, path: &str, content: &str) {
        self.write(path, content);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("edit {path}")]);
    }

    /// Gives each app a dependency tree of about `megabytes` MB (a generated
    /// `node_modules` of small JavaScript files) and 1 MB of code under `src/`, built
    /// as two layers, dependencies first: shipflow's `apps/<app>/node_modules` layer and
    /// the app's own with a `.dockerignore` leaving the dependencies out; the
    /// Dockerfile copies the dependencies, then the code, as a Node app's would.
    pub fn add_dependencies(&self, apps: &[&str], megabytes: usize) {
        let mut toml = std::fs::read_to_string(self.config()).expect("shipflow.toml");
        for (index, app) in apps.iter().enumerate() {
            let code = format!("{{ from = \"apps/{app}\", to = \"/www\" }},");
            assert!(toml.contains(&code), "{app}'s code layer");
            toml = toml.replace(
                &code,
                &format!(
                    "{{ from = \"apps/{app}/node_modules\", to = \"/www/node_modules\" }},\n{code}"
                ),
            );
            self.write(&format!("apps/{app}/.dockerignore"), "node_modules\n");
            self.write(
                &format!("apps/{app}/Dockerfile"),
                &format!(
                    "FROM scratch\nCOPY packages/runtime/busybox /bin/busybox\n\
                     COPY packages/common /srv/common\n\
                     COPY apps/{app}/node_modules /www/node_modules\n\
                     COPY apps/{app}/src /www/src\nCOPY apps/{app}/index.html /www/index.html\n\
                     CMD [\"/bin/busybox\", \"sh\", \"-c\", \"{HTTPD}\"]\n"
                ),
            );
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ index as u64;
            write_tree(
                &self.path().join(format!("apps/{app}/node_modules")),
                megabytes << 20,
                &mut seed,
            );
            write_tree(
                &self.path().join(format!("apps/{app}/src")),
                1 << 20,
                &mut seed,
            );
        }
        self.write("shipflow.toml", &toml);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "dependencies"]);
    }

    fn write(&self, path: &str, content: &str) {
        let path = self.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// Runs git in the repository.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.path())
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
            .args(args)
            .output()
            .expect("git runs (apt-get install -y git)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Writes about `bytes` of generated JavaScript under `dir`, as a package tree:
/// `pkg-NNNN/package.json` and `pkg-NNNN/lib/mod-N.js` files of 2–10 KB each.
fn write_tree(dir: &Path, bytes: usize, seed: &mut u64) {
    let mut next = move || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut written = 0;
    let mut package = 0;
    while written < bytes {
        let lib = dir.join(format!("pkg-{package:04}/lib"));
        std::fs::create_dir_all(&lib).expect("mkdir");
        let manifest = format!(
            "{{\"name\": \"pkg-{package:04}\", \"version\": \"1.0.{}\"}}\n",
            next() % 100
        );
        std::fs::write(lib.with_file_name("package.json"), &manifest).expect("write");
        written += manifest.len();
        for module in 0..8 {
            let size = 2048 + (next() % 8192) as usize;
            let mut text = String::with_capacity(size + 64);
            while text.len() < size {
                let (a, b) = (next() % 10_000, next() % 10_000);
                text.push_str(&format!(
                    "exports.f{a} = function (x) {{ return x * {b} + {a}; }};\n"
                ));
            }
            std::fs::write(lib.join(format!("mod-{module}.js")), &text).expect("write");
            written += text.len();
        }
        package += 1;
    }
}

/// The body of `GET /` on `127.0.0.1:port`, or `None` when nothing answers 200.
pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

/// How `app` ended in `report`; panics with the report when it is not there.
pub fn outcome<'r>(report: &'r shipflow_kit::Report, app: &str) -> &'r shipflow_kit::Outcome {
    &report
        .apps
        .iter()
        .find(|a| a.app == app)
        .unwrap_or_else(|| panic!("{app} is not in the report: {report:#?}"))
        .outcome
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The CLI binary, built once per test process: [`example_binary`]`("shipflow")`.
pub fn cli_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| example_binary("shipflow"))
}

/// The example `name`, built (examples have no `CARGO_BIN_EXE_…`) with the feature
/// set of CI's `cargo test --workspace --all-features`, so that the build there
/// reuses what it compiled: `target/<profile>/examples/<name>`, beside this test's
/// `target/<profile>/deps/`.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let target = profile.parent().expect("the target dir");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--workspace", "--all-features"])
        .args(["--example", name])
        .env("CARGO_TARGET_DIR", target);
    if profile.file_name().is_some_and(|p| p == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    profile.join("examples").join(name)
}

/// The builder image of build Jobs, made from the CLI binary (`shipflow
/// build-context` is what the Job runs), stripped, with the shared libraries `ldd`
/// lists at their paths, as a native build of shipflow itself: pushed to
/// `<registry>/tools/shipflow` and returned pinned by digest. It runs as user 65532
/// on a read-only root file system with `/workspace` to work in.
pub async fn builder_image(registry: &str) -> String {
    use shipflow_kit::{BuildRequest, Context, ImageBuilder as _, Registry as _, Workspace};
    let binary = cli_binary();
    let staging = tempfile::tempdir().expect("staging dir");
    let rootfs = staging.path().join("rootfs");
    let bin = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("workspace")).expect("mkdir");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(bin.join("shipflow"))
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(binary, bin.join("shipflow")).expect("copy the CLI");
    }
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd runs");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let dest = rootfs.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir");
            std::fs::copy(path, &dest).unwrap_or_else(|e| panic!("copy {path}: {e}"));
        }
    }
    // TLS to registries needs the CA certificates, as in any builder image.
    let cas = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if cas.is_file() {
        let dest = rootfs.join("etc/ssl/certs");
        std::fs::create_dir_all(&dest).expect("mkdir");
        std::fs::copy(cas, dest.join("ca-certificates.crt")).expect("copy the CA certificates");
    }
    let toml = format!(
        "[workspace]\nregistry = \"{registry}/tools\"\n\n[apps.shipflow]\npath = \"rootfs\"\n\
         build = {{ type = \"native\", layers = [{{ from = \"rootfs\", to = \"/\" }}], \
         entrypoint = [\"/usr/local/bin/shipflow\"], user = \"65532:65532\", \
         sbom = false, provenance = false }}\n"
    );
    std::fs::write(staging.path().join("shipflow.toml"), toml).expect("config");
    let workspace = Workspace::load(staging.path().join("shipflow.toml")).expect("workspace");
    let app = workspace.app("shipflow").expect("app");
    let request = BuildRequest {
        root: staging.path().to_owned(),
        tag: "test".into(),
        ..Default::default()
    };
    let ctx = Context::new();
    let image = shipflow_kit::oci::NativeBuilder::new(staging.path().join("images"))
        .build(app, &request, &ctx)
        .await
        .expect("build the builder image");
    let pinned = app.image.pinned(image.digest.clone());
    shipflow_kit::oci::RegistryClient::builder()
        .build()
        .expect("client")
        .push(&image, &pinned, &ctx)
        .await
        .expect("push the builder image");
    pinned.to_string()
}

/// `registry` (`127.0.0.1:<port>`) as the pods of the Podman-backed `sim` reach it.
pub fn registry_in_pods(sim: &shipflow_kit::k8s::testing::SimCluster, registry: &str) -> String {
    let alias = sim.host_alias().expect("a Podman-backed cluster");
    registry.replacen("127.0.0.1", alias, 1)
}
