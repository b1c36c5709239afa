#!/usr/bin/env bash
# Bridged conversations: N caller/operator bridges (PCMU on the caller's leg, PCMA on
# the operator's, stereo recording each) in a release build of the media engine, fed
# over loopback for S seconds. The engine runs in its own process so its CPU and RSS
# are read from /proc alone; prints relayed packets and loss, relay latency, packet
# intervals, recording size, the generator's own lateness, then one JSON line (see
# examples/bench_bridge.rs).
#   bench/bridge.sh [BRIDGES] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bridges="${1:-50}"; seconds="${2:-30}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --example bench_bridge
target/release/examples/bench_bridge "$bridges" "$seconds" "$work/recordings"
