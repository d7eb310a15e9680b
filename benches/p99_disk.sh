#!/usr/bin/env bash
# What a stream of disk writes costs a server's p99 on this machine, whoever
# writes it: the floor (a bare hyper server) and an emgate that writes no
# access line (LOG=warn), each pinned to core 0, loaded by wrk on core 1, in
# alternating rounds: with no neighbour, and with a neighbour process
# appending RATE MB/s to a file with O_DIRECT (256 KiB writes, as emgate's
# log writer at `info` under full load), first on core 1, then on core 0.
#
#   cargo build --release && bash benches/p99_disk.sh target/release/emgate
#
# Why: at `info` an emgate hit's p99 is above the same build's at `warn`
# and above the same log written to /dev/null; this tells how much of that
# is the disk's price on this machine rather than emgate's (BENCHMARKS.md,
# "twentieth steps"). Knobs: ROUNDS (6), DURATION (4s), RATE (30), LEVEL
# (warn). Needs wrk, curl, python3.
set -euo pipefail
B=$1
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4s}
RATE=${RATE:-30}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# port, floor_binary, sim_pin.
source "$root/benches/common.sh"
work=$(mktemp -d)
pids=()
neighbour=""
trap 'kill "${pids[@]}" $neighbour 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
FLOOR=$(floor_binary "$root")
[[ -x "$FLOOR" ]] || { echo "the floor server did not build"; exit 1; }

# The neighbour: it writes to a file beside the repository's (the disk
# emgate's log would be on), not to /tmp, which may be memory.
cat >"$work/neighbour.py" <<'PY'
import mmap, os, sys, time
path, rate = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
block = mmap.mmap(-1, 256 * 1024)  # page-aligned, as O_DIRECT wants
block.write(b"x" * (256 * 1024))
period, at, n = 256 * 1024 / (rate * 1e6), time.monotonic(), 0
while True:
    os.write(fd, block)
    n += 1
    if n % 400 == 0:  # 100 MiB: start the file again
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, 0)
    at += period
    if at > time.monotonic():
        time.sleep(at - time.monotonic())
PY
scratch="$root/target/p99_disk.$$"

sim_port=$(port)
taskset -c 1 "$B" sim --listen "127.0.0.1:$sim_port" --tls --username ab --password ab-pass \
    --restore-points 20 >"$work/sim.out" 2>&1 &
pids+=($!)
pin=$(sim_pin "$work/sim.out")
gw_port=$(port)
TOKIO_WORKER_THREADS=1 EMGATE_LISTEN="127.0.0.1:$gw_port" EMGATE_UPSTREAM_URL="https://127.0.0.1:$sim_port" \
    EMGATE_UPSTREAM_USERNAME=ab EMGATE_UPSTREAM_PASSWORD=ab-pass EMGATE_UPSTREAM_CERT_SHA256="$pin" \
    EMGATE_LOG="${LEVEL:-warn}" EMGATE_CACHE_TTL=1h taskset -c 0 "$B" serve >/dev/null 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null; do sleep 0.05; done
id=$(curl -s "http://127.0.0.1:$gw_port/api/restorePoints" | python3 -c '
import json, sys
print(json.load(sys.stdin)["Refs"][5]["UID"].rsplit(":", 1)[1])')
path="/api/restorePoints/$id/vmRestorePoints"
mkdir -p "$(dirname "$work/static$path")"
curl -s -o /dev/null "http://127.0.0.1:$gw_port$path"
curl -s "http://127.0.0.1:$gw_port$path" >"$work/static$path"
curl -s -D - -o /dev/null "http://127.0.0.1:$gw_port$path" | tail -n +2 | tr -d '\r' |
    grep -viE '^(content-length|date|connection):|^$' >"$work/hit-headers"
floor_port=$(port)
taskset -c 0 "$FLOOR" --listen "127.0.0.1:$floor_port" --root "$work/static" \
    --headers "$work/hit-headers" >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
declare -A url=([emgate]="http://127.0.0.1:$gw_port$path" [floor]="http://127.0.0.1:$floor_port$path")
for s in emgate floor; do taskset -c 1 wrk -t1 -c32 -d1s "${url[$s]}" >/dev/null; done

echo "p99 of each server (on core 0, wrk on core 1), $ROUNDS rounds of $DURATION; neighbour: $RATE MB/s of O_DIRECT writes"
: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
    for where in none "core 1" "core 0"; do
        neighbour=""
        if [[ $where != none ]]; then
            taskset -c "${where#core }" python3 "$work/neighbour.py" "$scratch" "$RATE" &
            neighbour=$!
            sleep 0.3
        fi
        for s in emgate floor; do
            out=$(taskset -c 1 wrk --latency -t1 -c32 -d"$DURATION" "${url[$s]}")
            awk -v r="$r" -v w="$where" -v s="$s" '
                function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1e6 }
                /Requests\/sec/ { rps = $2 } / 99%/ { p = us($2) }
                END { printf "%s\t%s\t%s\t%s\t%s\n", r, w, s, rps, p }' <<<"$out" >>"$work/rounds"
        done
        if [[ -n $neighbour ]]; then kill "$neighbour"; wait "$neighbour" 2>/dev/null || true; fi
        neighbour=""
    done
done
rm -f "$scratch"
python3 - "$work/rounds" <<'PY'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"{'neighbour':10s} {'server':7s} {'req/s':>8s} {'p99 median':>11s}   p99 of each round (us)")
for where in ["none", "core 1", "core 0"]:
    for s in ["emgate", "floor"]:
        rr = [r for r in rows if r[1] == where and r[2] == s]
        print(f"{where:10s} {s:7s} {st.median(float(r[3]) for r in rr):8.0f} "
              f"{st.median(float(r[4]) for r in rr):9.0f}us   {sorted(int(float(r[4])) for r in rr)}")
PY
