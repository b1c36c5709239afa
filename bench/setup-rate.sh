#!/usr/bin/env bash
# Call setup rate: SIPp's built-in `uac` scenario (INVITE -> 200 -> ACK -> BYE -> 200,
# no hold time) against a release build on loopback. Prints successful and failed
# calls, setup time percentiles (INVITE to 200, from SIPp's response-time trace), the
# server's CPU time and its peak RSS.
#   bench/setup-rate.sh [RATE_CPS] [CALLS] [TRANSPORT u1|t1]
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-1000}"; calls="${2:-20000}"; transport="${3:-u1}"
work="$(mktemp -d)"; trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
port=$((30000 + RANDOM % 20000))
target/release/hotline serve \
    --set "sip.listen=[\"udp:127.0.0.1:$port\",\"tcp:127.0.0.1:$port\"]" \
    --set "storage.data_dir=\"$work/data\"" --set "privacy.hash_key_file=\"$work/key\"" \
    --set 'limits.trusted_sources=["127.0.0.1"]' --set log.level=warn \
    >"$work/server.log" 2>&1 &
pid=$!
sleep 0.5
cd "$work"
sipp -sn uac "127.0.0.1:$port" -i 127.0.0.1 -p $((port + 1)) -mp $((port + 2)) -t "$transport" \
    -r "$rate" -m "$calls" -d 0 -l 5000 -nostdin -trace_rtt -rtt_freq 1 -timeout 300s \
    >"$work/sipp.out" 2>&1 || true
grep -E "Successful call|Failed call|Call Rate" "$work/sipp.out" | sed 's/^/sipp: /'
python3 - "$work" "$pid" <<'PY'
import csv, glob, os, sys
work, pid = sys.argv[1], sys.argv[2]
vals = []
for f in glob.glob(os.path.join(work, "*_rtt.csv")):
    for row in list(csv.reader(open(f), delimiter=";"))[1:]:
        if len(row) > 1:
            vals.append(float(row[1]))
vals.sort()
if vals:
    p = lambda q: vals[min(len(vals) - 1, int(len(vals) * q))]
    print(f"setup time ms: n={len(vals)} p50={p(0.5):.1f} p99={p(0.99):.1f} max={vals[-1]:.1f}")
stat = open(f"/proc/{pid}/stat").read().split(")")[1].split()
tick = os.sysconf("SC_CLK_TCK")
cpu = (int(stat[11]) + int(stat[12])) / tick
status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
print(f"server cpu: {cpu:.2f} s user+sys; rss now {status['VmRSS'].strip()}, peak {status['VmHWM'].strip()}")
PY
