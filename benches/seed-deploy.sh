#!/usr/bin/env bash
# The reference for benches/cycle.rs: what the seeds' deploy scripts do, per changed
# app. `git diff` finds the apps (every app when a shared path changed), then each is
# built with `podman build`, pushed with `podman push`, its old container replaced
# with `podman run`, and the script waits until the new one answers HTTP.
#
# usage: seed-deploy.sh BASE REGISTRY PORTS_FILE   (PORTS_FILE: "app port" lines)
set -euo pipefail
base=$1 registry=$2 ports=$3
changed=$(git diff --name-only "$base" HEAD)
if grep -qE '^(packages/|shipflow.toml)' <<<"$changed"; then
    apps=$(ls apps)
else
    apps=$(awk -F/ '$1 == "apps" { print $2 }' <<<"$changed" | sort -u)
fi
sha=$(git rev-parse --short HEAD)
for app in $apps; do
    image="$registry/seed/$app:$sha"
    podman build -q -f "apps/$app/Dockerfile" -t "$image" . >/dev/null
    podman push -q --tls-verify=false "$image"
    port=$(awk -v a="$app" '$1 == a { print $2 }' "$ports")
    podman rm -f -t 0 "seed-$app" >/dev/null 2>&1 || true
    podman run -d --name "seed-$app" -p "127.0.0.1:$port:8080" "$image" >/dev/null
    until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.05; done
done
