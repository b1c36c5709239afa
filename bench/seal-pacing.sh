#!/usr/bin/env bash
# RTP pacing while the hotline seals many recordings at once: N IVR calls measured as
# in bench/pacing.sh for W seconds, while M other callers (examples/bench_seal_load.rs)
# leave voice messages of R seconds and hang up at the same moment, 3 s into the
# measurement. Run twice: with storage.recipients set (M recordings sealed at once)
# and without (the same load stored in clear); also prints how long the M messages
# took to be stored (sealed and committed) after the hang-up.
#   bench/seal-pacing.sh [CALLS] [MESSAGES] [RECORD_SECONDS] [WINDOW_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-100}"; messages="${2:-100}"; record="${3:-30}"; window="${4:-12}"
cargo build --release --quiet --example bench_pacing --example bench_seal_load
cargo build --release --quiet
work="$(mktemp -d)"; pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
age-keygen -o "$work/key" 2>/dev/null
recipient=$(sed -n 's/^# public key: //p' "$work/key")
# Key 0 at 0.5 s, "connecting" (5.1 s), the voicemail introduction (15.8 s), the beep:
# recording from about 21.5 s after the answer.
hangup=$(python3 -c "print(21.5 + $record)")
for mode in sealed clear; do
    data="$work/$mode"
    recipients='[]'
    [ "$mode" = sealed ] && recipients="[\"$recipient\"]"
    port=$((30000 + RANDOM % 20000))
    target/release/hotline serve \
        --set "sip.listen=[\"udp:127.0.0.1:$port\"]" \
        --set "storage.data_dir=\"$data\"" --set "storage.recipients=$recipients" \
        --set 'limits.trusted_sources=["127.0.0.1"]' --set rtp.timeout_s=0 --set log.level=warn \
        >"$work/$mode.log" 2>&1 &
    pid=$!
    sleep 1
    echo "== $mode: $calls calls measured for $window s; $messages messages of ${record} s end together 3 s into it"
    target/release/examples/bench_seal_load "127.0.0.1:$port" "$messages" "$hangup" >"$work/load.out" &
    load=$!
    # Start measuring so that the hang-up falls 3 s into the window (dialling the
    # calls takes a moment too).
    sleep "$(python3 -c "print(max(0.0, $hangup - 3.5))")"
    target/release/examples/bench_pacing "127.0.0.1:$port" "$calls" "$window" &
    pacing=$!
    wait "$load"
    hung_up=$(date +%s.%N)
    cat "$work/load.out"
    stored=""
    for _ in $(seq 1 600); do
        n=$(sqlite3 "file:$data/hotline.db?mode=ro" "SELECT count(*) FROM recordings" 2>/dev/null || echo 0)
        if [ "$n" -ge "$messages" ]; then
            stored=$(python3 -c "print(f'{$(date +%s.%N) - $hung_up:.2f}')")
            break
        fi
        sleep 0.05
    done
    echo "$messages messages stored ${stored:-(not all within 30 s)} s after the hang-up ($mode)"
    [ "$mode" = sealed ] && echo "sealed files: $(find "$data/recordings" -name '*.wav.age' | wc -l), plaintext left: $(find "$data/recordings" -name '*.wav' | wc -l)"
    wait "$pacing"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
