#!/usr/bin/env bash
# Checks that every crate can be published: packages each one in dependency order
# and builds it from its package alone, as the registry would, without uploading.
#
#   bash scripts/publish-dry-run.sh
#
# A library must leave k8s-openapi's Kubernetes version to the final binary, so
# building shipflow-k8s (and the facade) on its own needs one picked from outside.
set -euo pipefail
cd "$(dirname "$0")/.."
export K8S_OPENAPI_ENABLED_VERSION="${K8S_OPENAPI_ENABLED_VERSION:-1.33}"
# Verification reuses an earlier run's extraction and builds of the same version: drop them.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/shipflow-* target/package \
    target/debug/.fingerprint/shipflow-*
cargo publish --workspace --dry-run "$@"
