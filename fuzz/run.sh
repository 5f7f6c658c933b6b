#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 600 s each), starting from the
# committed seed corpus, and stops at the first finding (cargo-fuzz leaves the
# input that failed under fuzz/artifacts/<target>/).
#
#   cargo install cargo-fuzz
#   bash fuzz/run.sh            # every target, 10 minutes each
#   bash fuzz/run.sh 60 image_ref workspace
#
# cargo-fuzz needs nightly compiler flags: a nightly toolchain is used when
# rustup has one, otherwise the stable compiler is asked to accept them.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target for ${seconds}s"
    cargo "${toolchain[@]}" fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
