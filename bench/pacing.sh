#!/usr/bin/env bash
# RTP pacing: N concurrent calls to a release build on loopback, S seconds of the
# prompts they hear, inter-packet interval statistics per call (see
# examples/bench_pacing.rs), plus the server's CPU time and memory.
#   bench/pacing.sh [CALLS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-100}"; seconds="${2:-60}"
work="$(mktemp -d)"; trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet --example bench_pacing
cargo build --release --quiet
port=$((30000 + RANDOM % 20000))
target/release/hotline serve \
    --set "sip.listen=[\"udp:127.0.0.1:$port\"]" \
    --set "storage.data_dir=\"$work/data\"" --set "privacy.hash_key_file=\"$work/key\"" \
    --set 'limits.trusted_sources=["127.0.0.1"]' --set rtp.timeout_s=0 --set log.level=warn \
    >"$work/server.log" 2>&1 &
pid=$!
sleep 1
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
cpu_before=$(awk '{print $14+$15}' /proc/$pid/stat)
target/release/examples/bench_pacing "127.0.0.1:$port" "$calls" "$seconds"
cpu_after=$(awk '{print $14+$15}' /proc/$pid/stat)
rss_after=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
tck=$(getconf CLK_TCK)
python3 - "$calls" "$seconds" "$cpu_before" "$cpu_after" "$tck" "$rss_before" "$rss_after" <<'PY'
import sys
calls, secs, c0, c1, tck, r0, r1 = (float(x) for x in sys.argv[1:])
cpu = (c1 - c0) / tck
print(f"server cpu: {cpu:.2f} s over {secs:.0f} s = {cpu/secs*100:.1f} % of a core, {cpu/secs/calls*100:.3f} % per call")
print(f"server rss: {r0:.0f} kB idle, {r1:.0f} kB with {calls:.0f} calls = {(r1-r0)/calls:.1f} kB per call")
PY
