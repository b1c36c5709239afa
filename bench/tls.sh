#!/usr/bin/env bash
# SIP over TLS: full handshakes per second (and server CPU per handshake), and the
# server's memory per held TLS connection (see examples/bench_tls.rs). Runs on
# loopback from 127.0.1.x and 127.0.2.x source addresses.
#   bench/tls.sh [CONNECTIONS] [HANDSHAKES] [PARALLEL]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin hotline --example bench_tls
target/release/examples/bench_tls target/release/hotline "${1:-500}" "${2:-1000}" "${3:-4}"
