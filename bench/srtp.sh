#!/usr/bin/env bash
# SRTP cost per packet (AES_CM_128_HMAC_SHA1_80, media::srtp) against plain RTP
# handling, and the CPU share of one SRTP leg (see examples/bench_srtp.rs).
#   bench/srtp.sh [PACKETS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example bench_srtp
target/release/examples/bench_srtp "${1:-1000000}"
