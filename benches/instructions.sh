#!/usr/bin/env bash
# User-space instructions per cache hit, counted by valgrind's callgrind:
# two emgate binaries (before/after a change) and the floor (a bare hyper
# server answering the same bytes, benches/floor.rs), each serving the same
# restore point's collection to wrk for a while.
#
#   bash benches/instructions.sh ../before/target/release/emgate target/release/emgate
#
# Why beside ab.sh and load.sh: on this 2-core machine req/s move by ±10%
# with the neighbours, so a change worth 3% of a hit cannot be seen there.
# An instruction count does not move with them (a run again gives the same
# figure within about 1%); it says nothing of the kernel's part (most of a
# hit's time over loopback, the same for every server) nor of cache misses.
# Each server runs alone under callgrind (about 50 times slower); counting
# starts after a warm-up and covers only the measured wrk run.
#
# Knobs: DURATION (15s), LOG (info, a deployment's default), KEEP (a folder
# to keep the three callgrind files in, for callgrind_annotate), CACHE_SIM
# (1: callgrind also simulates the caches, and each line adds the L1
# instruction and data misses per hit: the floor's working set stays in L1,
# emgate's does not, see BENCHMARKS.md "fourteenth steps"), CLIENT (as
# ab.sh's: `basic` or `session`, the hits of a client of a clients file by
# its secret or by its session token; the floor gets the same Basic header,
# and no token). Needs valgrind
# (callgrind_control, callgrind_annotate), wrk, curl, python3.
set -euo pipefail
A=$1
B=$2
DURATION=${DURATION:-15s}
cache_sim=()
[[ "${CACHE_SIM:-}" != 1 ]] || cache_sim=(--cache-sim=yes)
LOG=${LOG:-info}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# port, floor_binary, sim_pin, clients_file, client_credential.
source "$root/benches/common.sh"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for tool in valgrind callgrind_control callgrind_annotate wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
FLOOR=$(floor_binary "$root")
[[ -x "$FLOOR" ]] || { echo "the floor server did not build"; exit 1; }

sim_port=$(port)
"$B" sim --listen "127.0.0.1:$sim_port" --tls --username ab --password ab-pass --restore-points 20 \
    >"$work/sim.out" 2>&1 &
pids+=($!)
pin=$(sim_pin "$work/sim.out")

# The gateways' settings but the address (the floor ignores them).
export TOKIO_WORKER_THREADS=1 EMGATE_UPSTREAM_URL="https://127.0.0.1:$sim_port" \
    EMGATE_UPSTREAM_USERNAME=ab EMGATE_UPSTREAM_PASSWORD=ab-pass \
    EMGATE_UPSTREAM_CERT_SHA256="$pin" EMGATE_LOG="$LOG" EMGATE_CACHE_TTL=1h
if [[ -n "${CLIENT:-}" ]]; then
    clients_file "$work/clients.toml"
    export EMGATE_CLIENTS_FILE="$work/clients.toml"
fi

# counted NAME URL PORT COMMAND...: starts COMMAND (listening on PORT) under
# callgrind, waits for URL, warms it, counts one wrk run and prints NAME's
# instructions per request.
counted() {
    local name=$1 url=$2 pid out requests totals credential header=()
    shift 2
    (EMGATE_LISTEN="127.0.0.1:$1" exec valgrind --tool=callgrind "${cache_sim[@]}" \
        --callgrind-out-file="$work/$name.cg" "${@:2}" >"$work/$name.out" 2>&1) &
    pid=$!
    pids+=("$pid")
    # Listening (any answer), then the client's credential, then ready.
    for _ in $(seq 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$url") != 000 ]] && break
        sleep 0.2
    done
    credential=$(client_credential "http://127.0.0.1:$1")
    [[ -z "$credential" ]] || header=(-H "$credential")
    for _ in $(seq 600); do curl -sf -o /dev/null ${header[@]+"${header[@]}"} "$url" && break; sleep 0.2; done
    curl -sf -o /dev/null ${header[@]+"${header[@]}"} "$url"
    wrk -t1 -c4 -d3s ${header[@]+"${header[@]}"} "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    out=$(wrk -t1 -c4 -d"$DURATION" ${header[@]+"${header[@]}"} "$url")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    requests=$(awk '/requests in/{print $1}' <<<"$out")
    # The totals: Ir, and with CACHE_SIM Dr Dw I1mr D1mr D1mw ... after it.
    read -r -a totals < <(callgrind_annotate "$work/$name.cg.1" 2>/dev/null |
        awk '/PROGRAM TOTALS/{gsub(",", ""); for (i = 1; i < NF; i += 2) printf "%s ", $i; print ""; exit}')
    [[ -z "${KEEP:-}" ]] || cp "$work/$name.cg.1" "$KEEP/$name.callgrind"
    if ((${#cache_sim[@]})); then
        awk -v n="$requests" -v i1="${totals[3]}" -v dr="${totals[4]}" -v dw="${totals[5]}" \
            'BEGIN {printf "L1 misses a hit: %.0f instruction, %.1f data\n", i1 / n, (dr + dw) / n}' >"$work/$name.misses"
    fi
    echo "$((totals[0] / requests))"
}

# The key and its bytes, from B run normally once.
probe=$(port)
EMGATE_LISTEN="127.0.0.1:$probe" "$B" serve >/dev/null 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$probe/readyz" >/dev/null; do sleep 0.05; done
credential=$(client_credential "http://127.0.0.1:$probe")
header=()
[[ -z "$credential" ]] || header=(-H "$credential")
id=$(curl -s ${header[@]+"${header[@]}"} "http://127.0.0.1:$probe/api/restorePoints" | python3 -c '
import json, sys
print(json.load(sys.stdin)["Refs"][5]["UID"].rsplit(":", 1)[1])')
path="/api/restorePoints/$id/vmRestorePoints"
mkdir -p "$(dirname "$work/static$path")"
curl -s -o /dev/null ${header[@]+"${header[@]}"} "http://127.0.0.1:$probe$path"
curl -s ${header[@]+"${header[@]}"} "http://127.0.0.1:$probe$path" >"$work/static$path"
curl -s -D - -o /dev/null ${header[@]+"${header[@]}"} "http://127.0.0.1:$probe$path" | tail -n +2 | tr -d '\r' |
    grep -viE '^(content-length|date|connection):|^$' >"$work/hit-headers"
echo "one key, $(wc -c <"$work/static$path") bytes, LOG=$LOG${CLIENT:+, CLIENT=$CLIENT}, wrk -c4 -d$DURATION under callgrind"

pa=$(port); pb=$(port); pf=$(port)
a=$(counted a "http://127.0.0.1:$pa$path" "$pa" "$A" serve)
b=$(counted b "http://127.0.0.1:$pb$path" "$pb" "$B" serve)
f=$(counted floor "http://127.0.0.1:$pf$path" "$pf" "$FLOOR" --listen "127.0.0.1:$pf" \
    --root "$work/static" --headers "$work/hit-headers")
printf '%-8s %8s instructions per hit  %s\n' A "$a" "$A" B "$b" "$B" floor "$f" "(bare hyper)"
if ((${#cache_sim[@]})); then
    for name in a b floor; do printf '%-8s %s' "$name" "$(cat "$work/$name.misses")"; echo; done
fi
python3 -c "import sys; a, b, f = map(int, sys.argv[1:]); print(f'B/A {b / a:.3f}   B/floor {b / f:.2f}   A/floor {a / f:.2f}')" "$a" "$b" "$f"
