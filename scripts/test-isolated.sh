#!/usr/bin/env bash
# Runs the test suite inside a private network namespace with only loopback up, so
# that no test (and no server answering torture messages) can send a packet off the
# machine. Needs root (or CAP_SYS_ADMIN). Build first: `cargo nextest run --no-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-}"
# 127.0.0.2 on lo: baresip will not use an interface whose only address is
# 127.0.0.1, and inside the namespace lo is the only interface.
exec unshare --net -- sh -c 'ip link set lo up && ip addr add 127.0.0.2/8 dev lo && RUST_BACKTRACE=1 cargo nextest run --offline --locked --no-fail-fast "$@"' sh "$@"
