//! One run of one container, in the background: pull (as the pull policy says),
//! run, then wait for the real exit and read the termination message.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::spec::PullPolicy;
use super::{Event, Key, Pod, RunState, Slots, logs, net, probe};
use crate::testing::controller::runtime::MAX_MESSAGE;
use crate::testing::store::now;

/// How long `podman run` (create and start) may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a container may run: a year stands for ever.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one run needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RunPlan {
    pub(crate) engine: Arc<Engine>,
    pub(crate) slots: Slots,
    pub(crate) key: Key,
    pub(crate) run: u32,
    pub(crate) pod: Pod,
    /// The Podman container name of this run.
    pub(crate) name: String,
    /// The container of the run before, removed first.
    pub(crate) previous: Option<String>,
    pub(crate) log: PathBuf,
    pub(crate) termination: PathBuf,
    /// Where the pod's `emptyDir` volumes live, one directory each.
    pub(crate) volumes: PathBuf,
    pub(crate) pull_timeout: Duration,
}

impl RunPlan {
    /// Applies `change` to this run's slot, unless a later run replaced it.
    fn update(&self, change: impl FnOnce(&mut super::Slot)) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(&self.key)
            && slot.run == self.run
        {
            change(slot);
        }
    }

    fn set(&self, state: RunState, events: Vec<Event>) {
        self.update(|slot| {
            slot.state = state;
            slot.acknowledged = false;
            slot.events.extend(events);
        });
    }
}

/// Runs `plan` to its end: a pull failure, a start failure or the container's exit.
pub(crate) async fn run(plan: RunPlan) {
    let Some(spec) = plan
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&plan.key)
        .map(|s| s.spec.clone())
    else {
        return;
    };
    let engine = &plan.engine;
    if let Some(previous) = &plan.previous {
        let args = ["rm", "-f", "-t", "0", previous].map(str::to_owned);
        let _ = engine.run(&args, START_TIMEOUT).await;
    }
    let image = spec.image.clone();
    if let Some(why) = invalid(&image, &spec.termination_path).or_else(|| invalid_mounts(&spec)) {
        plan.set(
            RunState::PullFailed {
                reason: why.0,
                message: why.1.clone(),
            },
            vec![Event::warning("Failed", format!("Error: {}", why.1))],
        );
        return;
    }
    let present = spec.pull != PullPolicy::Always
        && engine
            .run(
                &["image".into(), "exists".into(), image.clone()],
                START_TIMEOUT,
            )
            .await
            .is_ok();
    if present {
        plan.set(
            RunState::Starting,
            vec![Event::normal(
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            )],
        );
    } else if spec.pull == PullPolicy::Never {
        let message =
            format!("Container image \"{image}\" is not present with pull policy of Never");
        plan.set(
            RunState::PullFailed {
                reason: "ErrImageNeverPull",
                message: message.clone(),
            },
            vec![Event::warning("ErrImageNeverPull", message)],
        );
        return;
    } else {
        plan.set(
            RunState::Pulling,
            vec![Event::normal(
                "Pulling",
                format!("Pulling image \"{image}\""),
            )],
        );
        let started = Instant::now();
        let args = ["pull", "-q", "--tls-verify=false", &image].map(str::to_owned);
        match engine.run(&args, plan.pull_timeout).await {
            Ok(_) => plan.set(
                RunState::Starting,
                vec![Event::normal(
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                )],
            ),
            Err(message) => {
                plan.set(
                    RunState::PullFailed {
                        reason: "ErrImagePull",
                        message: message.clone(),
                    },
                    vec![
                        Event::warning(
                            "Failed",
                            format!("Failed to pull image \"{image}\": {message}"),
                        ),
                        Event::warning("Failed", "Error: ErrImagePull".to_owned()),
                    ],
                );
                return;
            }
        }
    }
    if let Err(e) = std::fs::write(&plan.termination, "") {
        let message = format!("cannot create the termination message file: {e}");
        plan.set(
            RunState::StartFailed {
                message: message.clone(),
            },
            vec![Event::warning("Failed", format!("Error: {message}"))],
        );
        return;
    }
    // The container may run as any user: let it write its message.
    let _ = std::fs::set_permissions(
        &plan.termination,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    );
    // An emptyDir outlives the pod's container restarts, and any user may write it.
    for (volume, _, _) in &spec.empty_dirs {
        let dir = plan.volumes.join(volume);
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        });
        if let Err(e) = made {
            let message = format!("cannot create emptyDir {volume}: {e}");
            plan.set(
                RunState::StartFailed {
                    message: message.clone(),
                },
                vec![Event::warning("Failed", format!("Error: {message}"))],
            );
            return;
        }
    }
    let container = plan.key.1.clone();
    match engine.run(&run_args(&plan, &spec), START_TIMEOUT).await {
        Ok(_) => {}
        Err(message) => {
            plan.set(
                RunState::StartFailed {
                    message: message.clone(),
                },
                vec![Event::warning("Failed", format!("Error: {message}"))],
            );
            return;
        }
    }
    let started_at = now();
    let ready = plan
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&plan.key)
        .map(|s| s.ready.clone());
    let Some(ready) = ready else { return };
    ready.store(false, Ordering::SeqCst);
    let prober = tokio::spawn(probe::run(
        engine.clone(),
        spec.probe.clone(),
        plan.pod.ip.clone(),
        plan.name.clone(),
        ready.clone(),
    ));
    let prober_handle = prober.abort_handle();
    plan.update(|slot| {
        slot.state = RunState::Running {
            started_at: started_at.clone(),
        };
        slot.acknowledged = false;
        slot.started.push(plan.log.clone());
        slot.prober = Some(prober_handle);
        slot.events.extend([
            Event::normal("Created", format!("Created container: {container}")),
            Event::normal("Started", format!("Started container {container}")),
        ]);
    });
    let waited = engine
        .run(&["wait".into(), plan.name.clone()], FOREVER)
        .await;
    prober.abort();
    ready.store(false, Ordering::SeqCst);
    // Gone (the pod was deleted) is no exit to report.
    let Ok(out) = waited else { return };
    let code = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .unwrap_or(-1);
    let message = read_message(&plan.termination);
    let log = logs::read(&plan.log);
    let tail = log[log.len().saturating_sub(logs::TAIL_LINES)..].to_vec();
    plan.set(
        RunState::Exited {
            code,
            message,
            started_at,
            tail,
        },
        Vec::new(),
    );
}

/// Why a container cannot be run as its spec says, as the kubelet's waiting reason
/// and message: an image reference Podman would take for an option or that is no
/// reference at all (`InvalidImageName`), or a termination-message path that is not
/// absolute or would add mount options.
fn invalid(image: &str, termination_path: &str) -> Option<(&'static str, String)> {
    let bad_image = image.is_empty()
        || image.starts_with('-')
        || image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii());
    if bad_image {
        return Some((
            "InvalidImageName",
            format!(
                "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"
            ),
        ));
    }
    if !termination_path.starts_with('/') || termination_path.contains([':', ',']) {
        return Some((
            "CreateContainerConfigError",
            format!("invalid terminationMessagePath {termination_path:?}"),
        ));
    }
    None
}

/// Why the container's `emptyDir` mounts cannot be made: a mount path that is not
/// absolute or would add mount options, a volume name that is not a plain name.
fn invalid_mounts(spec: &super::spec::ContainerSpec) -> Option<(&'static str, String)> {
    spec.empty_dirs.iter().find_map(|(volume, path, _)| {
        let bad_name = volume.is_empty()
            || !volume
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || volume.starts_with('.');
        let bad_path = !path.starts_with('/') || path.contains([':', ',']);
        (bad_name || bad_path).then(|| {
            (
                "CreateContainerConfigError",
                format!("invalid volume mount {volume:?} at {path:?}"),
            )
        })
    })
}

/// The `podman run` arguments of `plan`.
fn run_args(plan: &RunPlan, spec: &super::spec::ContainerSpec) -> Vec<String> {
    let (uid, container) = &plan.key;
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--pull=never".into(),
        "--name".into(),
        plan.name.clone(),
        "--label".into(),
        format!("io.kubernetes.pod.namespace={}", plan.pod.namespace),
        "--label".into(),
        format!("io.kubernetes.pod.name={}", plan.pod.name),
        "--label".into(),
        format!("io.kubernetes.pod.uid={uid}"),
        "--label".into(),
        format!("io.kubernetes.container.name={container}"),
        "--log-driver".into(),
        "k8s-file".into(),
        "--log-opt".into(),
        format!("path={}", plan.log.display()),
        format!(
            "--volume={}:{}",
            plan.termination.display(),
            spec.termination_path
        ),
    ];
    if plan.pod.host_network {
        args.extend(["--network".into(), "host".into()]);
    } else {
        args.extend([
            "--network".into(),
            net::POD_NETWORK.into(),
            "--hostname".into(),
            plan.pod.name.clone(),
        ]);
        for port in &spec.ports {
            args.extend(["-p".into(), format!("{}:{port}:{port}", plan.pod.ip)]);
        }
    }
    for (name, value) in &spec.env {
        args.push(format!("--env={name}={value}"));
    }
    for (volume, path, read_only) in &spec.empty_dirs {
        let mode = if *read_only { ":ro" } else { "" };
        args.push(format!(
            "--volume={}:{path}{mode}",
            plan.volumes.join(volume).display()
        ));
    }
    let security = &spec.security;
    if let Some(user) = &security.user {
        args.push(format!("--user={user}"));
    }
    if security.read_only {
        // As readOnlyRootFilesystem: no writable /tmp, /var/tmp or /run either.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if security.no_new_privileges {
        args.push("--security-opt=no-new-privileges".into());
    }
    for capability in &security.drop {
        args.push(format!("--cap-drop={capability}"));
    }
    if let Some(dir) = &spec.working_dir {
        args.push(format!("--workdir={dir}"));
    }
    if !spec.command.is_empty() {
        let entrypoint = serde_json::to_string(&spec.command).unwrap_or_default();
        args.push(format!("--entrypoint={entrypoint}"));
    }
    args.push(spec.image.clone());
    args.extend(spec.args.iter().cloned());
    args
}

/// The termination message the container wrote, at most [`MAX_MESSAGE`] bytes of
/// it (what the kubelet reads).
fn read_message(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(MAX_MESSAGE as u64).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::invalid;

    #[test]
    fn option_like_images_and_mount_options_are_refused() {
        assert_eq!(
            invalid("127.0.0.1:5000/web:v1", "/dev/termination-log"),
            None
        );
        for image in ["--privileged", "", "web v1", "wéb"] {
            assert_eq!(
                invalid(image, "/dev/termination-log").map(|w| w.0),
                Some("InvalidImageName"),
                "{image:?}"
            );
        }
        for path in ["relative", "/x:/etc", "/x,ro"] {
            assert!(invalid("web", path).is_some(), "{path:?}");
        }
    }
}
