#!/usr/bin/env bash
# The reference for benches/cycle.rs: what the seeds' deploy scripts do, per changed
# app. `git diff` finds the apps (every app when a shared path changed), then each is
# built with `docker build` (or `podman build`), pushed, its old container replaced
# with `docker run`, and the script waits until the new one answers HTTP.
#
# usage: seed-deploy.sh BASE REGISTRY PORTS_FILE   (PORTS_FILE: "app port" lines)
# SEED_ENGINE=docker|podman (default podman); SEED_PREFIX: container name prefix.
set -euo pipefail
base=$1 registry=$2 ports=$3
engine=${SEED_ENGINE:-podman} prefix=${SEED_PREFIX:-}
changed=$(git diff --name-only "$base" HEAD)
if grep -qE '^(packages/|shipflow.toml)' <<<"$changed"; then
    apps=$(ls apps)
else
    apps=$(awk -F/ '$1 == "apps" { print $2 }' <<<"$changed" | sort -u)
fi
sha=$(git rev-parse --short HEAD)
for app in $apps; do
    image="$registry/seed/$app:$sha"
    name="${prefix}seed-$app"
    # Quiet unless it fails (Docker's CLI warns that its legacy builder is deprecated).
    if ! out=$("$engine" build -q -f "apps/$app/Dockerfile" -t "$image" . 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    if [ "$engine" = podman ]; then
        podman push -q --tls-verify=false "$image"
        podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    else
        docker push -q "$image" >/dev/null
        docker rm -f "$name" >/dev/null 2>&1 || true
    fi
    port=$(awk -v a="$app" '$1 == a { print $2 }' "$ports")
    "$engine" run -d --name "$name" -p "127.0.0.1:$port:8080" "$image" >/dev/null
    until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.05; done
done
