#!/usr/bin/env bash
# Runs the test suite inside a private network namespace with only loopback up, so
# that no test (and no server answering torture messages) can send a packet off the
# machine. Needs root (or CAP_SYS_ADMIN). Build first: `cargo nextest run --no-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-}"
exec unshare --net -- sh -c 'ip link set lo up && RUST_BACKTRACE=1 cargo nextest run --offline --locked --no-fail-fast "$@"' sh "$@"
