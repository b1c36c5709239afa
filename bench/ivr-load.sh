#!/usr/bin/env bash
# Full IVR calls under load: a release build of the hotline on loopback, and the
# caller-side load generator (examples/loadgen) placing CALLS concurrent calls that
# talk (speech from tests/data/speech_ru_festival.wav), answer the three questions
# with keys (RFC 4733 and in-band, mixed), wait in the queue, and, a quarter of
# them, leave a voice message. Prints the generator's report (send deviation, loss,
# timer probe, its own CPU, the server's CPU and RSS per call over the measurement
# window), then what the server stored.
#
#   bench/ivr-load.sh CALLS [loadgen options ...]
#   PERF_DATA=perf.data bench/ivr-load.sh 1000     # also `perf record` the server
#                                                  # during the measurement window
#   (PERF_ARGS, default "-g", chooses the sampling, e.g. "--call-graph dwarf -F 199")
#   KEEP=1 bench/ivr-load.sh 100                   # keep the data directory and logs
#   NICE=-10 bench/ivr-load.sh 2000                # server and generator ahead of other
#                                                  # work on a shared machine
#   CPU_WAKE_US=0 bench/ivr-load.sh 2000           # idle CPUs poll (see bench/cpu-wake.sh)
#   GENERATOR_IDLE=1 bench/ivr-load.sh 2000        # the generator in the idle scheduling
#                                                  # class (its timer probe stays normal): it
#                                                  # stands for remote phones, so it yields
#                                                  # the machine to everything it measures
#   HOTLINE=/tmp/h bench/ivr-load.sh 1000          # measure another build of the server
#
# Callers wait in the queue (nobody is logged in, and
# queue.voicemail_when_nobody_logged_in=false keeps them there); message callers
# leave it with the queue's voicemail key 1 and record until after the window.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/cpu-wake.sh
. bench/cpu-wake.sh
hold_cpu_wake_latency
calls="${1:-500}"
shift || true
# Two sockets per call on the server; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
HOTLINE="${HOTLINE:-target/release/hotline}"
cargo build --release --quiet --example loadgen
[ "$HOTLINE" != target/release/hotline ] || cargo build --release --quiet

settings=(
    --set 'sip.listen=["udp:127.0.0.1:0"]'
    --set "storage.data_dir=\"$work/data\""
    --set "privacy.hash_key_file=\"$work/caller-id.key\""
    --set "limits.max_calls=$((calls * 2 + 100))"
    # Every caller comes from 127.0.0.1.
    --set 'limits.source_rate=1000000.0'
    --set 'limits.source_burst=1000000' --set limits.max_calls_per_source=0
    --set 'rtp.ports="20000-29999"'
    --set 'queue.voicemail_when_nobody_logged_in=false'
    --set 'log.level="warn,hotline::serve=info"'
)
prio=()
if [ -n "${NICE:-}" ]; then
    prio=(nice -n "$NICE")
    # With autogroup scheduling, nice only orders processes within a session;
    # the session's own nice orders it against other sessions' work.
    if [ -w /proc/self/autogroup ]; then echo "$NICE" >/proc/self/autogroup || true; fi
fi
"${prio[@]}" "$HOTLINE" serve "${settings[@]}" >"$work/server.out" 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do
    grep -q "SIP listening on udp:" "$work/server.log" 2>/dev/null && break
    sleep 0.1
done
addr="$(sed -n 's/.*SIP listening on udp:\([^ ]*\).*/\1/p' "$work/server.log" | head -1)"
[ -n "$addr" ] || { echo "server did not start:"; cat "$work/server.log"; exit 1; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), ulimit -n $(ulimit -n)${NICE:+, nice $NICE}${cpu_wake_note:-}"
echo "server: $HOTLINE serve ${settings[*]}"
gen_class=()
[ -z "${GENERATOR_IDLE:-}" ] || gen_class=(chrt --idle 0)
echo "generator: ${gen_class[*]:+${gen_class[*]} }target/release/examples/loadgen $addr --calls $calls --server-pid $pid $*"
"${prio[@]}" "${gen_class[@]}" target/release/examples/loadgen "$addr" --calls "$calls" --server-pid "$pid" "$@" \
    >"$work/report" 2> >(tee "$work/progress" >&2) &
gen=$!
if [ -n "${PERF_DATA:-}" ]; then
    # The window opens after the ramp and the settling time; profile its length.
    duration=30
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        [ "${args[$i]}" = "--duration" ] && duration="${args[$((i + 1))]}"
    done
    until grep -q "window open" "$work/progress" 2>/dev/null; do
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.2
    done
    # shellcheck disable=SC2086
    # `-p PID -- sleep N` would profile the sleep; stop the attached recording instead.
    timeout -s INT "$duration" perf record ${PERF_ARGS:--g} -p "$pid" -o "$PERF_DATA" >/dev/null 2>&1 || true
    echo "perf data of the window: $PERF_DATA"
fi
wait "$gen"
cat "$work/report"

echo "--- what the server stored"
"$HOTLINE" calls --json --limit 1000000 "${settings[@]}" | python3 -c '
import json, sys, collections
rows = json.load(sys.stdin)
digits = collections.Counter(r["digits"] for r in rows)
ends = collections.Counter(r["end_reason"] for r in rows)
vm = [rec for r in rows for rec in r["recordings"] if rec["kind"] == "voicemail"]
done = [rec for rec in vm if not rec["partial"]]
secs = sorted(rec["duration_ms"] / 1000 for rec in done)
print(f"calls stored: {len(rows)}; keys: {dict(digits.most_common(6))}; end reasons: {dict(ends)}")
print(f"voice messages: {len(vm)}, {len(done)} complete" + (f", {secs[0]:.1f}-{secs[-1]:.1f} s long" if secs else ""))
'
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg)"
grep -c "ERROR" "$work/server.log" | sed 's/^/server log ERROR lines: /' || true
