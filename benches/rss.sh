#!/usr/bin/env bash
# Resident memory of two emgate builds side by side, each alone after the
# same workload: KEYS restore points fetched once (misses), read once more
# (a hit each), then three 5 s rounds of wrk going round them. Builds
# alternate, RUNS runs each; one line per run.
#
#   bash benches/rss.sh ../before/target/release/emgate target/release/emgate
#
# Why beside load.sh: its RSS column compares unequal histories (the main
# gateway also serves the cold-client check and nginx proxy_cache's
# misses), and RSS moves by a megabyte or two from run to run, so only
# builds measured in turn, in one run, compare.
#
# Knobs: KEYS (1000), RUNS (3). Needs wrk, curl, python3, taskset.
set -euo pipefail
A=$1
B=$2
KEYS=${KEYS:-1000}
RUNS=${RUNS:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# port, sim_pin, rotating_script.
source "$root/benches/common.sh"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done

sim_port=$(port)
"$B" sim --listen "127.0.0.1:$sim_port" --tls --username ab --password ab-pass \
    --restore-points $((KEYS * 2)) >"$work/sim.out" 2>&1 &
pids+=($!)
pin=$(sim_pin "$work/sim.out")
export TOKIO_WORKER_THREADS=1 EMGATE_UPSTREAM_URL="https://127.0.0.1:$sim_port" \
    EMGATE_UPSTREAM_USERNAME=ab EMGATE_UPSTREAM_PASSWORD=ab-pass \
    EMGATE_UPSTREAM_CERT_SHA256="$pin" EMGATE_LOG=info EMGATE_CACHE_TTL=1h

rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

# measured BINARY: prints the RSS after each stage of the workload.
measured() {
    local bin=$1 gw_port pid after_misses after_hits
    gw_port=$(port)
    EMGATE_LISTEN="127.0.0.1:$gw_port" taskset -c 0 "$bin" serve >"$work/gw.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    until curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null; do sleep 0.05; done
    if [[ ! -s "$work/ids" ]]; then
        curl -s "http://127.0.0.1:$gw_port/api/restorePoints" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["Refs"][:int(sys.argv[1])]:
    print(r["UID"].rsplit(":", 1)[1])' "$KEYS" >"$work/ids"
        rotating_script "$work/ids" "" >"$work/rotate.lua"
    fi
    read_each() {
        while read -r id; do
            curl -s -o /dev/null "http://127.0.0.1:$gw_port/api/restorePoints/$id/vmRestorePoints"
        done <"$work/ids"
    }
    read_each
    after_misses=$(rss_kib "$pid")
    read_each
    after_hits=$(rss_kib "$pid")
    for _ in 1 2 3; do
        taskset -c 1 wrk -t1 -c32 -d5s -s "$work/rotate.lua" "http://127.0.0.1:$gw_port" >/dev/null
    done
    awk -v bin="$bin" -v m="$after_misses" -v h="$after_hits" -v w="$(rss_kib "$pid")" 'BEGIN {
        printf "%-40s after misses %6.1f MiB, a hit each %6.1f MiB, after wrk %6.1f MiB\n",
            bin, m / 1024, h / 1024, w / 1024 }'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "$KEYS keys; each build alone, in turn, $RUNS runs"
for _ in $(seq "$RUNS"); do
    measured "$A"
    measured "$B"
done
