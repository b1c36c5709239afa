#!/usr/bin/env bash
# Soak: CALLS (200) concurrent IVR calls with churn (each hangs up a random 5-120 s
# after its answer and a new call takes its place) for MINUTES (30), from the load
# generator (examples/loadgen) against a release build on loopback, in a private
# network namespace. The server's RSS and open descriptors are sampled every 10 s;
# prints the generator's report, what the server stored, the samples, and the slopes
# (least squares) of RSS and descriptors over the run and after the warm-up
# (WARMUP seconds, default 300: by then the call population has turned over).
#
#   bench/soak.sh                      # 200 calls, 30 minutes
#   CALLS=50 MINUTES=3 bench/soak.sh   # a short check of the script
#   NICE=-10 bench/soak.sh             # ahead of other work on a shared machine
#   CPU_WAKE_US=0 bench/soak.sh        # idle CPUs poll (see bench/cpu-wake.sh)
#   HOTLINE=/path/to/hotline bench/soak.sh   # another build of the server
#   NO_BUILD=1 bench/soak.sh           # use the binaries as they are
#   PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 bench/soak.sh   # another allocator
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/cpu-wake.sh
. bench/cpu-wake.sh
hold_cpu_wake_latency
CALLS="${CALLS:-200}"
MINUTES="${MINUTES:-30}"
WARMUP="${WARMUP:-300}"
CHURN="${CHURN:-5-120}"
HOTLINE="${HOTLINE:-target/release/hotline}"
if [ -z "${HOTLINE_BENCH_NETNS:-}" ]; then
    if [ -z "${NO_BUILD:-}" ]; then
        cargo build --release --quiet --example loadgen
        [ "$HOTLINE" != target/release/hotline ] || cargo build --release --quiet
    fi
    exec unshare --net -- env HOTLINE_BENCH_NETNS=1 "$0" "$@"
fi
ip link set lo up
ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
pid=""
sampler=""
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

settings=(
    --set 'sip.listen=["udp:127.0.0.1:5060"]'
    --set "storage.data_dir=\"$work/data\""
    --set "privacy.hash_key_file=\"$work/caller-id.key\""
    --set "limits.max_calls=$((CALLS * 2 + 100))"
    # Every caller comes from 127.0.0.1.
    --set 'limits.trusted_sources=["127.0.0.1"]'
    --set 'rtp.ports="20000-29999"'
    --set 'queue.voicemail_when_nobody_logged_in=false'
    --set 'log.level="warn"'
)
prio=()
if [ -n "${NICE:-}" ]; then
    prio=(nice -n "$NICE")
    if [ -w /proc/self/autogroup ]; then echo "$NICE" >/proc/self/autogroup || true; fi
fi
"${prio[@]}" env ${PRELOAD:+LD_PRELOAD="$PRELOAD"} "$HOTLINE" serve "${settings[@]}" >"$work/server.out" 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do
    ss -Hlun 'sport = :5060' | grep -q . && break
    sleep 0.1
done
ss -Hlun 'sport = :5060' | grep -q . || { echo "server did not start:"; cat "$work/server.log"; exit 1; }

# seconds since start, RSS kB, open descriptors
(
    t0=$(date +%s)
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        fd=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        echo "$(($(date +%s) - t0)) $rss $fd"
        sleep 10
    done
) >"$work/samples" &
sampler=$!

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), ulimit -n $(ulimit -n)${NICE:+, nice $NICE}${cpu_wake_note:-}"
echo "server: ${PRELOAD:+LD_PRELOAD=$PRELOAD }$HOTLINE ($(sha1sum <"$HOTLINE" | cut -c1-12)) serve ${settings[*]}"
args=(127.0.0.1:5060 --calls "$CALLS" --churn "$CHURN" --duration "$((MINUTES * 60))" --server-pid "$pid")
echo "generator: target/release/examples/loadgen ${args[*]} $*"
"${prio[@]}" target/release/examples/loadgen "${args[@]}" "$@" >"$work/report" 2> >(tee "$work/progress" >&2)
cat "$work/report"
kill "$sampler" 2>/dev/null || true
sampler=""

echo "--- what the server stored"
"$HOTLINE" calls --json --limit 1000000 "${settings[@]}" | python3 -c '
import json, sys, collections
rows = json.load(sys.stdin)
ends = collections.Counter(r["end_reason"] for r in rows)
vm = [rec for r in rows for rec in r["recordings"] if rec["kind"] == "voicemail"]
complete = sum(not r["partial"] for r in vm)
print(f"calls stored: {len(rows)}; end reasons: {dict(ends)}; voice messages: {len(vm)}, {complete} complete")
'
echo "server log ERROR lines: $(grep -c ERROR "$work/server.log" || true)"
echo "--- server RSS and descriptors, every 10 s"
python3 - "$work/samples" "$WARMUP" "$((MINUTES * 60))" <<'PY'
import sys
samples = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
warmup, run = int(sys.argv[2]), int(sys.argv[3])

def slope(points):
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")

# The load runs from the first sample to `run` seconds (plus the ramp); later samples
# are the hang-ups and the idle server after the run.
during = [s for s in samples if s[0] <= run]
steady = [s for s in during if s[0] >= warmup]
for name, pts in (("whole run", during), (f"after {warmup} s", steady)):
    if not pts:
        print(f"{name}: no samples")
        continue
    rss = [(t, kb / 1024) for t, kb, _ in pts]
    fds = [(t, fd) for t, _, fd in pts]
    print(f"{name}: {len(pts)} samples, RSS {min(r for _, r in rss):.1f}-{max(r for _, r in rss):.1f} MB, "
          f"slope {slope(rss) * 600:+.2f} MB per 10 min; descriptors {min(f for _, f in fds)}-{max(f for _, f in fds)}, "
          f"slope {slope(fds) * 600:+.2f} per 10 min")
if samples:
    print("first: {} s {:.1f} MB {} fds; last: {} s {:.1f} MB {} fds".format(
        samples[0][0], samples[0][1] / 1024, samples[0][2], samples[-1][0], samples[-1][1] / 1024, samples[-1][2]))
print("samples (s, MB, fds): " + " ".join(f"{t}:{kb / 1024:.1f}:{fd}" for t, kb, fd in samples))
PY
