#!/usr/bin/env bash
# Two flooding addresses against real callers, at full scale, in a private network
# namespace: a release build of the hotline with its default limits
# (limits.max_calls_per_source = 8); SIPp from 127.0.0.2 and 127.0.0.3 sending
# RATE (1000) INVITE/s each that are never ACKed, for FLOOD_SECONDS (40); meanwhile
#   - SIPp places 60 real calls of 8 s, 20 from each of 127.0.0.4, .5 and .6 (one a
#     second, at most 7 up at once per address, under the per-source limit that
#     applies to them too);
#   - the load generator places 6 calls from 127.0.0.7 that talk and measure the
#     server's RTP send deviation while the flood runs.
# Prints what each SIPp saw, how many calls the flooders got answered (answered calls
# stored minus the real ones), when each flooder was banned (from the server's log),
# the load generator's report and the server's CPU and RSS.
#
#   bench/flood.sh                # RATE=1000 FLOOD_SECONDS=40
#   NICE=-10 bench/flood.sh       # server and callers ahead of other work
#   KEEP=1 bench/flood.sh         # keep the logs
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${HOTLINE_BENCH_NETNS:-}" ]; then
    cargo build --release --quiet --example loadgen
    cargo build --release --quiet
    exec unshare --net -- env HOTLINE_BENCH_NETNS=1 "$0" "$@"
fi
ip link set lo up
ulimit -n "$(ulimit -Hn)"
RATE="${RATE:-1000}"
SECONDS_FLOOD="${FLOOD_SECONDS:-40}"
per_source=8
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
prio=()
if [ -n "${NICE:-}" ]; then
    prio=(nice -n "$NICE")
    if [ -w /proc/self/autogroup ]; then echo "$NICE" >/proc/self/autogroup || true; fi
fi
settings=(
    --set 'sip.listen=["udp:127.0.0.1:5060"]'
    --set "storage.data_dir=\"$work/data\""
    --set "privacy.hash_key_file=\"$work/caller-id.key\""
    --set "limits.max_calls_per_source=$per_source"
    --set 'queue.voicemail_when_nobody_logged_in=false'
    --set 'console.listen=""' --set 'metrics.listen=""'
    --set 'log.level="warn,hotline::serve=info"'
)
"${prio[@]}" target/release/hotline serve "${settings[@]}" >/dev/null 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do
    grep -q "SIP listening on udp:" "$work/server.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "SIP listening on udp:" "$work/server.log" || { echo "server did not start:"; cat "$work/server.log"; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_rss=$(rss_kb "$pid")
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)${NICE:+, nice $NICE}"
echo "flood: 2 x $RATE unACKed INVITE/s for $SECONDS_FLOOD s; real calls: 3 x 20 SIPp calls of 8 s, 6 load-generator calls"

# The talking callers first: their window (30 s) opens 2 s after they are up and
# lies inside the flood.
"${prio[@]}" target/release/examples/loadgen 127.0.0.1:5060 --local-ip 127.0.0.7 --calls 6 --rate 10 \
    --voicemail-share 0 --settle 2 --duration 30 --drain 1 --server-pid "$pid" \
    >"$work/loadgen.report" 2>"$work/loadgen.progress" &
gen=$!
until grep -q "window open" "$work/loadgen.progress" 2>/dev/null; do
    kill -0 "$gen" 2>/dev/null || { cat "$work/loadgen.progress"; exit 1; }
    sleep 0.1
done
cpu0=$(cpu_ticks "$pid")
t0=$(date +%s.%N)
flooders=()
for ip in 127.0.0.2 127.0.0.3; do
    timeout $((SECONDS_FLOOD + 20)) sipp 127.0.0.1:5060 -i "$ip" -p 5070 -sf bench/sipp/invite-no-ack.xml -nd \
        -r "$RATE" -m $((RATE * SECONDS_FLOOD)) -nostdin -mp 16000 >"$work/flood-$ip.out" 2>&1 &
    flooders+=($!)
done
sleep 0.5
real=()
for ip in 127.0.0.4 127.0.0.5 127.0.0.6; do
    (cd "$work" && "${prio[@]}" sipp 127.0.0.1:5060 -sn uac -i "$ip" -p 5080 -mp 17000 -d 8000 -r 1 -l 7 -m 20 \
        -nostdin -timeout 120s >"$work/real-$ip.out" 2>&1) &
    real+=($!)
done
peak=0
while kill -0 "${flooders[0]}" 2>/dev/null || kill -0 "${flooders[1]}" 2>/dev/null; do
    r=$(rss_kb "$pid"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.5
done
t1=$(date +%s.%N)
cpu1=$(cpu_ticks "$pid")
failed_real=0
for p in "${real[@]}"; do wait "$p" || failed_real=$((failed_real + 1)); done
wait "$gen" || true
sleep 1

echo "--- flooders (SIPp)"
for ip in 127.0.0.2 127.0.0.3; do
    echo "$ip: $(grep -E 'Successful call' "$work/flood-$ip.out" | tr -s ' ' | head -1) (each call is one INVITE sent)"
done
echo "--- real calls (SIPp, 20 from each address)"
for ip in 127.0.0.4 127.0.0.5 127.0.0.6; do
    echo "$ip: $(grep -E 'Successful call' "$work/real-$ip.out" | tr -s ' ' | head -1 | cut -c1-60) | $(grep -E 'Failed call' "$work/real-$ip.out" | tr -s ' ' | head -1 | cut -c1-60)"
done
echo "SIPp instances that exited non-zero: $failed_real"
echo "--- talking callers (load generator, 127.0.0.7)"
grep -E "^calls:|^send deviation, all|^received:|^timer probe|^generator:" "$work/loadgen.report" || cat "$work/loadgen.progress"
echo "--- server"
hz=$(getconf CLK_TCK)
python3 - "$t0" "$t1" "$cpu0" "$cpu1" "$hz" "$idle_rss" "$peak" "$(rss_kb "$pid")" <<'PY'
import sys
t0, t1, c0, c1, hz = map(float, sys.argv[1:6])
idle, peak, now = (int(x) / 1024 for x in sys.argv[6:9])
print(f"CPU during the flood: {(c1 - c0) / hz / (t1 - t0) * 100:.1f} % of a core over {t1 - t0:.1f} s; "
      f"RSS idle {idle:.1f} MB, peak {peak:.1f} MB, now {now:.1f} MB")
PY
# Bans: the server logs one line per ban (the source as a keyed label).
python3 - "$t0" "$work/server.log" <<'PY'
import sys, datetime, re
t0 = float(sys.argv[1])
bans = []
for line in open(sys.argv[2], errors="replace"):
    if "source banned" in line:
        ts = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        src = re.search(r"source=(\S+)", line)
        bans.append((ts - t0, src.group(1) if src else "?"))
print(f"bans: {len(bans)}; seconds after the flood began: " + ", ".join(f"{t:.2f} ({s})" for t, s in bans))
PY
"$(pwd)/target/release/hotline" calls --json --limit 1000000 "${settings[@]}" 2>/dev/null >"$work/calls.json" || true
python3 - "$work/calls.json" "$per_source" <<'PY'
import json, sys
calls = json.load(open(sys.argv[1]))
answered = [c for c in calls if c.get("answered_at")]
real = 60 + 6
print(f"calls stored: {len(calls)}, answered: {len(answered)}; flooders answered: {len(answered) - real} "
      f"(limit 2 x {sys.argv[2]} = {2 * int(sys.argv[2])}) if all {real} real calls were answered")
PY
echo "server log ERROR lines: $(grep -c ERROR "$work/server.log" || true)"
