#!/usr/bin/env bash
# Reference code allocation: cost per code as the book of codes given out fills up,
# and the start-up cost of loading a full book (see examples/bench_references.rs).
#   bench/references.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example bench_references
target/release/examples/bench_references
