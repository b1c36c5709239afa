#!/usr/bin/env bash
# SRTP cost per packet (AES_CM_128_HMAC_SHA1_80, media::srtp) against plain RTP
# handling (examples/bench_srtp.rs), then CPU per leg through the media core, plain
# against SRTP (examples/bench_srtp_leg.rs).
#   bench/srtp.sh [PACKETS] [LEGS] [TICKS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example bench_srtp --example bench_srtp_leg
target/release/examples/bench_srtp "${1:-1000000}"
target/release/examples/bench_srtp_leg "${2:-200}" "${3:-500}"
