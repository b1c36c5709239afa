#!/usr/bin/env bash
# Memory after a flood and after a burst of calls, per allocator: a release build of
# the hotline on loopback (in a private network namespace), its RSS sampled every
# 0.2 s. Prints, per allocator, the idle RSS, the peak during and the RSS 60 s after
#   - a flood: SIPp from 127.0.0.2 sending INVITEs that are never ACKed, FLOOD_RATE/s
#     (2000) for 10 s, under the default limits (the flooder is rate-limited);
#   - a burst: SIPp from 127.0.0.1 (a trusted source) setting up BURST_RATE calls/s
#     (800) for 10 s, each ACKed and hung up after 2 s.
# and the open descriptors at each point.
#
#   bench/memory.sh                         # system jemalloc mimalloc glibc-arena2
#   bench/memory.sh system jemalloc         # only these
#
# HOTLINE=path measures another build of the server; KEEP=1 keeps the logs and the
# server's /proc/PID/smaps when idle and after the burst. "system"
# is the binary as built: mimalloc by default (src/main.rs), glibc malloc when built
# with --no-default-features. "jemalloc" and "mimalloc" preload Debian's libjemalloc2
# and libmimalloc2.0, which replace glibc's malloc only, so compare them on a
# --no-default-features build:
#   cargo build --release --no-default-features && cp target/release/hotline /tmp/h
#   HOTLINE=/tmp/h bench/memory.sh
# "glibc-arena2" is glibc with MALLOC_ARENA_MAX=2. Needs root (unshare), sipp, and the
# two libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
HOTLINE="${HOTLINE:-target/release/hotline}"
if [ -z "${HOTLINE_BENCH_NETNS:-}" ]; then
    [ "$HOTLINE" != target/release/hotline ] || cargo build --release --quiet
    exec unshare --net -- env HOTLINE_BENCH_NETNS=1 "$0" "$@"
fi
ip link set lo up
ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

FLOOD_RATE="${FLOOD_RATE:-2000}"
BURST_RATE="${BURST_RATE:-800}"
AFTER="${AFTER:-60}"
LIBDIR=/usr/lib/x86_64-linux-gnu
allocators=("$@")
[ "${#allocators[@]}" -gt 0 ] || allocators=(system jemalloc mimalloc glibc-arena2)

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# Samples RSS into $1 until the file $1.stop appears; prints the peak when done.
sample() {
    local pid=$1 out=$2 peak=0 r
    while [ ! -e "$out.stop" ]; do
        r=$(rss_kb "$pid")
        [ "$r" -gt "$peak" ] && peak=$r
        echo "$peak" >"$out"
        sleep 0.2
    done
}

work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

printf '%-13s %8s %11s %13s %11s %13s   %s\n' allocator "idle MB" "flood peak" "flood +${AFTER}s" "burst peak" "burst +${AFTER}s" "descriptors idle/flood+/burst+"
for alloc in "${allocators[@]}"; do
    env_vars=()
    case "$alloc" in
    system) ;;
    jemalloc) env_vars=(LD_PRELOAD="$LIBDIR/libjemalloc.so.2") ;;
    mimalloc) env_vars=(LD_PRELOAD="$LIBDIR/libmimalloc.so.2") ;;
    glibc-arena2) env_vars=(MALLOC_ARENA_MAX=2) ;;
    *) echo "unknown allocator $alloc"; exit 2 ;;
    esac
    for lib in "${env_vars[@]}"; do
        case "$lib" in LD_PRELOAD=*) [ -f "${lib#LD_PRELOAD=}" ] || { echo "missing ${lib#LD_PRELOAD=}"; exit 2; } ;; esac
    done
    d="$work/$alloc"
    mkdir -p "$d"
    env "${env_vars[@]}" "$HOTLINE" serve \
        --set 'sip.listen=["udp:127.0.0.1:5060"]' \
        --set "storage.data_dir=\"$d/data\"" \
        --set "privacy.hash_key_file=\"$d/caller-id.key\"" \
        --set 'limits.trusted_sources=["127.0.0.1"]' \
        --set 'log.level="warn"' >"$d/server.out" 2>"$d/server.log" &
    pid=$!
    for _ in $(seq 100); do
        ss -Hlun 'sport = :5060' | grep -q . && break
        sleep 0.1
    done
    ss -Hlun 'sport = :5060' | grep -q . || { echo "server did not start:"; cat "$d/server.log"; exit 1; }
    sleep 5
    idle=$(rss_kb "$pid")
    fd_idle=$(fds "$pid")
    [ -z "${KEEP:-}" ] || cp "/proc/$pid/smaps" "$d/smaps.idle"

    # Flood: unACKed INVITEs from an untrusted address.
    sample "$pid" "$d/flood.peak" &
    sampler=$!
    timeout 60 sipp 127.0.0.1:5060 -i 127.0.0.2 -p 5070 -sf bench/sipp/invite-no-ack.xml -nd \
        -r "$FLOOD_RATE" -m $((FLOOD_RATE * 10)) -nostdin -mp 16000 >"$d/flood.sipp" 2>&1 || true
    touch "$d/flood.peak.stop"
    wait "$sampler"
    flood_peak=$(cat "$d/flood.peak")
    sleep "$AFTER"
    flood_after=$(rss_kb "$pid")
    fd_flood=$(fds "$pid")

    # Burst: real calls, ACKed, 2 s long, from the trusted address.
    sample "$pid" "$d/burst.peak" &
    sampler=$!
    timeout 120 sipp 127.0.0.1:5060 -i 127.0.0.1 -p 5080 -sn uac -d 2000 -nd \
        -r "$BURST_RATE" -m $((BURST_RATE * 10)) -l $((BURST_RATE * 5)) -nostdin -mp 17000 \
        >"$d/burst.sipp" 2>&1 || true
    touch "$d/burst.peak.stop"
    wait "$sampler"
    burst_peak=$(cat "$d/burst.peak")
    sleep "$AFTER"
    burst_after=$(rss_kb "$pid")
    fd_burst=$(fds "$pid")
    [ -z "${KEEP:-}" ] || cp "/proc/$pid/smaps" "$d/smaps.burst"
    kill -0 "$pid" 2>/dev/null || { echo "server died:"; tail -20 "$d/server.log"; exit 1; }
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""

    printf '%-13s %8s %11s %13s %11s %13s   %s/%s/%s\n' "$alloc" "$(mb "$idle")" "$(mb "$flood_peak")" \
        "$(mb "$flood_after")" "$(mb "$burst_peak")" "$(mb "$burst_after")" "$fd_idle" "$fd_flood" "$fd_burst"
    calls=$("$HOTLINE" calls --json --limit 1000000 --set "storage.data_dir=\"$d/data\"" \
        --set "privacy.hash_key_file=\"$d/caller-id.key\"" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo "?")
    echo "              calls stored: $calls; flood: $(grep -c . "$d/flood.sipp" >/dev/null && tail -n 1 "$d/flood.sipp" | tr -s ' ' | cut -c1-80)"
done
