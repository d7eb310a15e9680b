#!/usr/bin/env bash
# One gateway under steady load for a minute or more, window after window:
# the slow drifts that alternating rounds of a few seconds spread over every
# server (a log file filling the page cache, the kernel writing it back).
#
#   bash benches/steady.sh BIN [WINDOWS]     # WINDOWS (12) windows of 5 s
#
# BIN serves one warm key of its own simulator (TLS, 20 restore points),
# pinned to core 0 with one worker, at EMGATE_LOG=LOG (info), its stderr
# appended to a file (LOG_TO=/dev/null to compare); `wrk -t1 -c32` on core 1
# loads it without a pause. Per window: req/s, p99, the gateway's CPU per
# request (user + system), core 0's system and softirq ticks, and the
# machine's dirty memory and page cache. Run it for each build in turn,
# after `sync; echo 3 > /proc/sys/vm/drop_caches` (as root) for the same
# start: each row of load.sh is too short to show this.
set -euo pipefail

BIN=${1:?usage: bash benches/steady.sh BIN [WINDOWS]}
WINDOWS=${2:-12}
LOG=${LOG:-info}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# port, sim_pin.
source "$root/benches/common.sh"
for tool in wrk taskset curl; do
    command -v "$tool" >/dev/null || { echo "steady.sh needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
LOG_TO=${LOG_TO:-$work/emgate.log}

sim_port=$(port)
"$BIN" sim --listen "127.0.0.1:$sim_port" --tls --username steady --password steady-pass \
    --restore-points 20 >"$work/sim.out" 2>&1 &
pids+=($!)
pin=$(sim_pin "$work/sim.out")

gw_port=$(port)
env TOKIO_WORKER_THREADS=1 EMGATE_LISTEN="127.0.0.1:$gw_port" \
    EMGATE_UPSTREAM_URL="https://127.0.0.1:$sim_port" EMGATE_UPSTREAM_USERNAME=steady \
    EMGATE_UPSTREAM_PASSWORD=steady-pass EMGATE_UPSTREAM_CERT_SHA256="$pin" \
    EMGATE_LOG="$LOG" EMGATE_CACHE_TTL=1h taskset -c 0 "$BIN" serve >/dev/null 2>>"$LOG_TO" &
gw=$!
pids+=($gw)
until curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null; do sleep 0.05; done
id=$(curl -s "http://127.0.0.1:$gw_port/api/restorePoints" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Refs"][5]["UID"].rsplit(":", 1)[1])')
url="http://127.0.0.1:$gw_port/api/restorePoints/$id/vmRestorePoints"
curl -sf -o /dev/null "$url"

echo "$(basename "$BIN"), log at $LOG to $LOG_TO; $WINDOWS windows of 5 s"
echo "| window | req/s | p99 | CPU us/req | core 0 sys/softirq ticks | dirty MiB | page cache MiB |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
hz=$(getconf CLK_TCK)
cpu0() { awk '/^cpu0 /{print $4, $8}' /proc/stat; }
gw_ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
for w in $(seq "$WINDOWS"); do
    c0=$(cpu0)
    t0=$(gw_ticks)
    out=$(taskset -c 1 wrk --latency -t1 -c32 -d5s "$url")
    c1=$(cpu0)
    t1=$(gw_ticks)
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '/ 99%/ {print $2}' <<<"$out")
    read -r sys0 soft0 <<<"$c0"
    read -r sys1 soft1 <<<"$c1"
    awk -v w="$w" -v n="$n" -v p99="$p99" -v t="$((t1 - t0))" -v hz="$hz" \
        -v sys="$((sys1 - sys0))" -v soft="$((soft1 - soft0))" '
        /^Dirty:/ {dirty = $2 / 1024} /^Cached:/ {cached = $2 / 1024}
        END {printf "| %d | %.0f | %s | %.2f | %d/%d | %.0f | %.0f |\n",
             w, n / 5, p99, t / hz * 1e6 / n, sys, soft, dirty, cached}' /proc/meminfo
done
