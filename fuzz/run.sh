#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable Rust and
# runs them. See fuzz/README.md.
#
#   fuzz/run.sh build                      build every target
#   fuzz/run.sh run TARGET [libFuzzer args]  fuzz one target (corpus under fuzz/corpus/)
#   fuzz/run.sh smoke SECONDS              every target for SECONDS each; fails on a crash
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(sip_frame sip_endpoint sdp rtp digest wav_repair flow_toml)
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN="target/$TRIPLE/release"

# What cargo-fuzz passes with `--sanitizer none`: SanitizerCoverage (edge counters, the
# PC table and comparison tracing for libFuzzer's value profile); all stable flags.
# With --target, build scripts and proc macros are built without them.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

build() {
    cargo build --release --locked --target "$TRIPLE" --bins
}

# The seed corpus lives in fuzz/seeds/TARGET (in git); what libFuzzer finds goes to
# fuzz/corpus/TARGET (not in git); crashes to fuzz/artifacts/TARGET/.
run_target() {
    local target=$1
    shift
    local corpus="${CORPUS_ROOT:-corpus}/$target"
    mkdir -p "$corpus" "artifacts/$target"
    local dict=()
    [ -f "dict/$target.dict" ] && dict=("-dict=dict/$target.dict")
    "$BIN/$target" "$corpus" "seeds/$target" \
        -artifact_prefix="artifacts/$target/" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        "${dict[@]}" "$@"
}

case "${1:-}" in
build)
    build
    ;;
run)
    target=${2:?target}
    shift 2
    build
    run_target "$target" "$@"
    ;;
smoke)
    seconds=${2:?seconds}
    build
    mkdir -p artifacts
    # From the seeds alone with a fixed seed: the same run here and in CI, so a
    # smoke failure is a finding that reproduces, not luck.
    CORPUS_ROOT="$(mktemp -d)"
    trap 'rm -rf "$CORPUS_ROOT"' EXIT
    for t in "${TARGETS[@]}"; do
        echo "== fuzz $t for ${seconds}s"
        run_target "$t" -seed=1 -max_total_time="$seconds" -print_final_stats=1 2>"artifacts/$t.log" ||
            { tail -n 60 "artifacts/$t.log"; echo "fuzz target $t failed"; exit 1; }
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec)|cov:' "artifacts/$t.log" | tail -n 3
    done
    ;;
*)
    sed -n '2,8p' "$0"
    exit 2
    ;;
esac
