//! What a hook that does nothing costs: `CommandHooks` running `true` (directly and
//! through `sh -c`) against a bare spawn of `true` in the same run.
//!
//! ```text
//! cargo bench -p shipflow-core --bench hooks
//! ```
//!
//! Goal: under 5 ms per no-op hook.

use std::time::{Duration, Instant};

use shipflow_core::{CommandHooks, Context, Hook, HookEvent, HookPoint, Workspace};

const ROUNDS: usize = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn time_hook(hook: &str) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml =
        format!("[workspace]\nregistry = \"r.io\"\n[apps.api]\nhooks = {{ pre_build = {hook} }}\n");
    let ws = Workspace::from_toml(&toml, dir.path()).expect("workspace");
    let app = ws.app("api").expect("api");
    let hooks = CommandHooks::new(&ws);
    let ctx = Context::new();
    let event = HookEvent::new(HookPoint::PreBuild, app);
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        hooks.run(&event, &ctx).await.expect("hook runs");
        samples.push(t.elapsed());
    }
    median(samples)
}

async fn time_bare_spawn() -> Duration {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let status = tokio::process::Command::new("true")
            .status()
            .await
            .expect("true runs");
        assert!(status.success());
        samples.push(t.elapsed());
    }
    median(samples)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bare = time_bare_spawn().await;
    let argv = time_hook("[\"true\"]").await;
    let shell = time_hook("\"true\"").await;
    println!("bare spawn of `true`            median of {ROUNDS}: {bare:?}");
    println!(
        "no-op hook, argv [\"true\"]       median of {ROUNDS}: {argv:?} ({:.2}x the bare spawn)",
        argv.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "no-op hook, sh -c true         median of {ROUNDS}: {shell:?} ({:.2}x the bare spawn)",
        shell.as_secs_f64() / bare.as_secs_f64()
    );
    let goal = Duration::from_millis(5);
    println!(
        "goal: a no-op hook under {goal:?}: {}",
        if argv < goal && shell < goal {
            "met"
        } else {
            "NOT met"
        }
    );
}
