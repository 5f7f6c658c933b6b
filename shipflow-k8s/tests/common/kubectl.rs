//! The real `kubectl`, run as a child process against one simulated cluster with
//! its own kubeconfig, cache and home in a temporary directory. It must be on
//! `PATH` (Debian's `kubectl` package), or the tests that use it fail.

use std::process::Command;

use serde_json::Value;
use shipflow_k8s::testing::SimCluster;

/// `kubectl` configured for one simulated cluster.
pub struct Kubectl {
    dir: tempfile::TempDir,
}

/// What a `kubectl` run printed.
pub struct Run {
    /// Whether it exited with 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Kubectl {
    /// A kubeconfig for `sim` in a fresh temporary directory.
    pub fn new(sim: &SimCluster) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("config"), sim.kubeconfig()).expect("kubeconfig");
        Self { dir }
    }

    /// A file `name` in the temporary directory (for manifests).
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `kubectl args...` (off the async runtime: it blocks).
    pub async fn run(&self, args: &[&str]) -> Run {
        let dir = self.dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("kubectl")
                .env_clear()
                .env("HOME", &dir)
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .arg("--kubeconfig")
                .arg(dir.join("config"))
                .arg("--cache-dir")
                .arg(dir.join("cache"))
                .args(&args)
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run kubectl (install Debian's kubectl package): {e}")
                });
            Run {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .expect("kubectl task")
    }

    /// Runs `kubectl args...`, which must succeed; returns its output.
    pub async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(
            run.ok,
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        run.stdout
    }

    /// Runs `kubectl args... -o json`, which must succeed; returns what it printed.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl prints JSON")
    }
}
