#!/usr/bin/env bash
# Cache-hit throughput of two emgate binaries side by side (before/after a
# change): one simulator, both gateways pinned to core 0 with one worker
# thread, wrk on core 1, alternating rounds on the same warm restore point
# (or, with KEYS, going round that many).
#
#   git worktree add ../before <commit> && (cd ../before && cargo build --release)
#   cargo build --release
#   bash benches/ab.sh ../before/target/release/emgate target/release/emgate
#
# Each round prints both req/s and the gateway's CPU time per request
# (user + system, from /proc): the second moves less with the neighbours.
#
# Knobs: ROUNDS (4), DURATION (8s), CONNECTIONS (32), KEYS (1; up to 200), LOG (warn; `info` is
# the default of a deployment), TLS (1: both gateways listen over TLS 1.3
# with a fresh ECDSA certificate, as load.sh's), CLIENT (`basic`: both
# gateways have a clients file and every request carries a client's Basic
# secret; `session`: the client logs on to each gateway first and sends its
# session token, as an unchanged EM client does). Needs wrk and curl
# (benches/load.sh installs wrk), and openssl for TLS.
set -euo pipefail
# port, sim_pin, rotating_script (the wrk script going round the IDs in a
# file), clients_file, client_credential.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
A=$1
B=$2
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
KEYS=${KEYS:-1}
LOG=${LOG:-warn}
TLS=${TLS:-}
CLIENT=${CLIENT:-}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
sim_port=$(port)
"$B" sim --listen "127.0.0.1:$sim_port" --tls --username ab --password ab-pass --restore-points 200 \
    >"$work/sim.out" 2>&1 &
pids+=($!)
pin=$(sim_pin "$work/sim.out")
listener=()
scheme=http
if [[ -n "$TLS" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1
    listener=(EMGATE_TLS_CERT_FILE="$work/tls.crt" EMGATE_TLS_KEY_FILE="$work/tls.key")
    scheme=https
fi
if [[ -n "$CLIENT" ]]; then
    clients_file "$work/clients.toml"
    listener+=(EMGATE_CLIENTS_FILE="$work/clients.toml")
fi
start() { # binary port
    env TOKIO_WORKER_THREADS=1 EMGATE_LISTEN="127.0.0.1:$2" ${listener[@]+"${listener[@]}"} \
        EMGATE_UPSTREAM_URL="https://127.0.0.1:$sim_port" EMGATE_UPSTREAM_USERNAME=ab \
        EMGATE_UPSTREAM_PASSWORD=ab-pass EMGATE_UPSTREAM_CERT_SHA256="$pin" \
        EMGATE_LOG="$LOG" EMGATE_CACHE_TTL=1h taskset -c 0 "$1" serve >/dev/null 2>&1 &
    pids+=($!)
}
pa=$(port); pb=$(port)
start "$A" "$pa"
gpa=$!
start "$B" "$pb"
gpb=$!
until curl -sfk "$scheme://127.0.0.1:$pa/readyz" >/dev/null && curl -sfk "$scheme://127.0.0.1:$pb/readyz" >/dev/null; do
    sleep 0.05
done
# The credential each gateway's requests carry (CLIENT), as a header.
cred_a=$(client_credential "$scheme://127.0.0.1:$pa")
cred_b=$(client_credential "$scheme://127.0.0.1:$pb")
[[ -z "$CLIENT" || ( -n "$cred_a" && -n "$cred_b" ) ]] || { echo "no credential for CLIENT=$CLIENT"; exit 1; }
# curl and wrk arguments for each gateway's credential.
ha=(); hb=()
[[ -z "$cred_a" ]] || ha=(-H "$cred_a")
[[ -z "$cred_b" ]] || hb=(-H "$cred_b")
id=$(curl -sk ${ha[@]+"${ha[@]}"} "$scheme://127.0.0.1:$pa/api/restorePoints" | python3 -c '
import json, sys
print(json.load(sys.stdin)["Refs"][5]["UID"].rsplit(":", 1)[1])')
path="/api/restorePoints/$id/vmRestorePoints"
curl -sk -o /dev/null ${ha[@]+"${ha[@]}"} "$scheme://127.0.0.1:$pa$path"
curl -sk -o /dev/null ${hb[@]+"${hb[@]}"} "$scheme://127.0.0.1:$pb$path"
# KEYS > 1: wrk goes round that many restore points' collections, cached
# in both gateways first (the simulator holds 200: at most that many).
script=()
if (( KEYS > 1 )); then
    curl -sk ${ha[@]+"${ha[@]}"} "$scheme://127.0.0.1:$pa/api/restorePoints" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["Refs"][:int(sys.argv[1])]:
    print(r["UID"].rsplit(":", 1)[1])' "$KEYS" >"$work/ids"
    while read -r i; do
        curl -sk -o /dev/null ${ha[@]+"${ha[@]}"} "$scheme://127.0.0.1:$pa/api/restorePoints/$i/vmRestorePoints"
        curl -sk -o /dev/null ${hb[@]+"${hb[@]}"} "$scheme://127.0.0.1:$pb/api/restorePoints/$i/vmRestorePoints"
    done <"$work/ids"
    rotating_script "$work/ids" "" >"$work/rotate.lua"
    script=(-s "$work/rotate.lua")
fi
# CPU time (user + system, clock ticks) of a process, threads included.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# "req/s µs-of-CPU-per-request" of one wrk run against a gateway (pid, url,
# then wrk's header arguments): CPU per request is the steadier figure on a
# noisy machine.
measure() {
    local before after out
    before=$(ticks "$1")
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" ${script[@]+"${script[@]}"} "${@:3}" "$2")
    after=$(ticks "$1")
    awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" '
        /Requests\/sec/ {rps = $2}
        /requests in/ {n = $1}
        END {printf "%s %.2f", rps, n ? t / hz * 1e6 / n : 0}' <<<"$out"
}
echo "A: $A"
echo "B: $B"
for r in $(seq "$ROUNDS"); do
    # Alternate which goes first: the machine warms and cools.
    if (( r % 2 )); then
        a=$(measure "$gpa" "$scheme://127.0.0.1:$pa$path" ${ha[@]+"${ha[@]}"})
        b=$(measure "$gpb" "$scheme://127.0.0.1:$pb$path" ${hb[@]+"${hb[@]}"})
    else
        b=$(measure "$gpb" "$scheme://127.0.0.1:$pb$path" ${hb[@]+"${hb[@]}"})
        a=$(measure "$gpa" "$scheme://127.0.0.1:$pa$path" ${ha[@]+"${ha[@]}"})
    fi
    read -r ra ca <<<"$a"
    read -r rb cb <<<"$b"
    python3 -c "print('round $r: A %8.0f req/s %5.2f us/req  B %8.0f req/s %5.2f us/req  B/A req/s %.3f  CPU %.3f' % ($ra, $ca, $rb, $cb, $rb / $ra, $cb / $ca))" |
        tee -a "$work/rounds"
done
# The medians of the rounds' own ratios, with their range.
python3 - "$work/rounds" <<'EOF2'
import re, statistics, sys
rows = [re.search(r"req/s ([\d.]+)  CPU ([\d.]+)", l) for l in open(sys.argv[1])]
req, cpu = [[float(m[i]) for m in rows if m] for i in (1, 2)]
print("B/A medians of %d rounds: req/s %.3f (%.3f-%.3f), CPU a request %.3f (%.3f-%.3f)"
      % (len(req), statistics.median(req), min(req), max(req), statistics.median(cpu), min(cpu), max(cpu)))
EOF2
