#!/usr/bin/env bash
# Sealing cost: CPU and wall time per minute of audio to seal recordings (encrypt,
# fsync, read back and verify, erase the plaintext), mono and stereo, one and three
# recipients, and the cost of sealing one call's details (see examples/bench_seal.rs).
# Files are written under target/ (a disk, as the data directory would be).
#   bench/seal.sh [FILES] [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example bench_seal
mkdir -p target/bench-seal
TMPDIR="$PWD/target/bench-seal" target/release/examples/bench_seal "${1:-20}" "${2:-1}"
