#!/usr/bin/env bash
# The live board under load: CALLERS callers waiting in the queue (the load
# generator, examples/loadgen: they talk, answer the menu with keys and wait) and
# BOARDS browsers' worth of board streams (examples/bench_boards: one console login
# and one /events stream each), against a release build on loopback. Three runs of
# the same caller load:
#
#   none    no boards
#   quiet   BOARDS boards; the board changes only when callers arrive
#   busy    BOARDS boards, and an operator (a SIPp phone that rings and is never
#           picked up) toggled available/paused through the console every 125 ms:
#           each toggle offers the first caller or withdraws the offer, so the
#           board changes at its highest rate (console.board_interval_ms, 250 ms)
#
# Per run: board events delivered per second (all boards) and their delivery lag,
# the server's CPU over the window (from the generator), the RTP send deviation
# p99 measured at the callers, and the media clock's lateness p50/p99 from the
# server's own histogram (/metrics, window edges).
#
#   bench/console-load.sh [CALLERS] [BOARDS] [loadgen options ...]
#   NICE=-10 bench/console-load.sh 200 50 --duration 30
#   KEEP=1 bench/console-load.sh 200 50          # keep data directories and logs
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
callers="${1:-200}"
boards="${2:-50}"
shift $(($# < 2 ? $# : 2))
ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cargo build --release --quiet --example loadgen --example bench_boards
cargo build --release --quiet
command -v sipp >/dev/null || { echo "sipp is needed for the busy run (apt-get install sip-tester)"; exit 1; }

prio=()
if [ -n "${NICE:-}" ]; then
    prio=(nice -n "$NICE")
    if [ -w /proc/self/autogroup ]; then echo "$NICE" >/proc/self/autogroup || true; fi
fi
password="bench-board-password"
duration=30
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--duration" ] && duration="${args[$((i + 1))]}"
done
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)${NICE:+, nice $NICE}"
echo "callers: $callers waiting (loadgen --voicemail-share 0 --settle 10 $*), boards: $boards"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
    local name="$1" nboards="$2" toggle="$3"
    shift 3
    local dir="$work/$name"
    mkdir -p "$dir"
    local settings=(
        --set 'sip.listen=["udp:127.0.0.1:0"]'
        --set "storage.data_dir=\"$dir/data\""
        --set "privacy.hash_key_file=\"$dir/caller-id.key\""
        --set "limits.max_calls=$((callers * 2 + 100))"
        --set 'limits.source_rate=1000000.0'
        --set 'limits.source_burst=1000000'
        --set 'limits.max_calls_per_source=0'
        --set 'rtp.ports="20000-29999"'
        --set 'queue.voicemail_when_nobody_logged_in=false'
        --set 'queue.ring_timeout_s=60'
        --set 'queue.max_misses=0'
        --set 'queue.wrap_up_s=0'
        --set 'operators.available_on_register=false'
        --set 'console.listen="127.0.0.1:0"'
        --set 'metrics.listen="127.0.0.1:0"'
        --set 'log.level="warn,hotline::serve=info"'
    )
    local i
    for ((i = 1; i <= nboards; i++)); do
        target/release/hotline operator add "$(printf 'board%02d' "$i")" --password "$password" "${settings[@]}" >/dev/null
    done
    target/release/hotline operator add desk --password "$password" --role supervisor "${settings[@]}" >/dev/null
    "${prio[@]}" target/release/hotline serve "${settings[@]}" >"$dir/server.out" 2>"$dir/server.log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        grep -q "SIP listening on udp:" "$dir/server.log" 2>/dev/null && break
        sleep 0.1
    done
    local sip console metrics
    sip="$(sed -n 's/.*SIP listening on udp:\([^ ]*\).*/\1/p' "$dir/server.log" | head -1)"
    console="$(sed -n 's|.*console listening on http://\([^ ]*\).*|\1|p' "$dir/server.log" | head -1)"
    metrics="$(sed -n 's|.*metrics listening on http://\([^ ]*\)/metrics.*|\1|p' "$dir/server.log" | head -1)"
    [ -n "$sip" ] || { echo "server did not start:"; cat "$dir/server.log"; exit 1; }
    local boards_args=("$console" --boards "$nboards" --password "$password"
        --start-file "$dir/progress" --duration "$duration" --metrics "$metrics")
    if [ "$toggle" = yes ]; then
        local phone_port reg_port
        phone_port="$(free_port)"
        reg_port="$(free_port)"
        (cd "$dir" && exec sipp -sf "$root/tests/sipp/operator-noanswer.xml" -i 127.0.0.1 \
            -p "$phone_port" -mp "$(free_port)" -nostdin >/dev/null 2>&1) &
        pids+=($!)
        sipp "$sip" -sf tests/sipp/register.xml -m 1 -s desk -au desk -ap "$password" \
            -key uas_port "$phone_port" -key expires 300 -i 127.0.0.1 -p "$reg_port" \
            -timeout 10s -timeout_error -nostdin >/dev/null 2>&1 ||
            { echo "the operator phone did not register"; exit 1; }
        boards_args+=(--toggle desk --toggle-password "$password" --toggle-ms 125)
    fi
    "${prio[@]}" target/release/examples/loadgen "$sip" --calls "$callers" --voicemail-share 0 \
        --settle 10 --server-pid "$pid" --json "$@" >"$dir/loadgen.json" 2>"$dir/progress" &
    local gen=$!
    pids+=("$gen")
    "${prio[@]}" target/release/examples/bench_boards "${boards_args[@]}" >"$dir/boards.json" 2>"$dir/boards.log" &
    local bb=$!
    pids+=("$bb")
    wait "$gen"
    wait "$bb"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$name" "$dir/loadgen.json" "$dir/boards.json" <<'EOF'
import json, sys
name, gen, boards = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
d, s, l = gen["deviation"], gen.get("server") or {}, boards["clock_lateness_ms"]
lag = boards["delivery_lag_ms"]
fmt = lambda v: "-" if v is None else f"{v:g}"
print(f"| {name} | {boards['boards']} | {gen['calls']['answered']} | {boards['events_per_s']:.1f} "
      f"| {boards['bytes_per_s'] / 1000:.0f} kB/s | {lag['p50']}/{lag['p99']} ms | {boards['state_changes']} "
      f"| {s.get('cpu_percent_of_core', 0):.1f} % | {d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.2f} ms "
      f"| {fmt(l['p50'])} / {fmt(l['p99'])} ms |")
EOF
}

echo
echo "| run | boards | callers answered | board events/s | board bytes | delivery lag p50/p99 | state changes | server CPU (of a core) | deviation p50 / p99 / max | clock lateness p50 / p99 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
run none 0 no "$@"
run quiet "$boards" no "$@"
run busy "$boards" yes "$@"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
