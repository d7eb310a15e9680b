#!/usr/bin/env bash
# Load benchmark: emgate's cache hits against nginx (proxy_cache +
# proxy_cache_lock) serving the same bytes, on one machine, side by side,
# plus the gateway's promises measured end to end.
#
#   bash benches/load.sh            # about 3 minutes on 2 cores
#
# Knobs (environment): ROUNDS (3 alternations), DURATION (10s per wrk run),
# CONNECTIONS (32), RESTORE_POINTS (10000), WARM (100 IDs in the hot set).
#
# It installs wrk and nginx from the distribution's packages if missing,
# builds emgate in release mode, and starts (on loopback only):
#   - the EM simulator (HTTPS, self-signed, pinned by the gateway);
#   - emgate, one tokio worker thread, pinned to core 0, logs at warn;
#   - nginx, one worker, pinned to core 0, access log off, caching emgate's
#     answers (so both serve the very same bytes);
#   - wrk pinned to core 1.
# Everything it starts is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
RESTORE_POINTS=${RESTORE_POINTS:-10000}
WARM=${WARM:-100}
SIM_PORT=${SIM_PORT:-19498}
GW_PORT=${GW_PORT:-19499}
NGINX_PORT=${NGINX_PORT:-19500}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d /tmp/emgate-load.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
    say "installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cores=$(nproc)
if [[ $cores -ge 2 ]]; then
    server_cpu=(taskset -c 0)
    client_cpu=(taskset -c 1)
else
    server_cpu=()
    client_cpu=()
fi

say "building emgate (release)"
(cd "$root" && cargo build --release --quiet)
EMGATE="$root/target/release/emgate"

say "starting the EM simulator ($RESTORE_POINTS restore points)"
"$EMGATE" sim --listen "127.0.0.1:$SIM_PORT" --tls --username load --password load-pass \
    --restore-points "$RESTORE_POINTS" >"$work/sim.out" 2>"$work/sim.err" &
pids+=($!)
for _ in $(seq 100); do grep -q 'SHA-256' "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
pin=$(grep -oE '([0-9A-F]{2}:){31}[0-9A-F]{2}' "$work/sim.out" | head -1)
[[ -n "$pin" ]] || { cat "$work/sim.out" "$work/sim.err"; echo "no fingerprint"; exit 1; }

say "starting emgate (1 worker thread, core 0)"
start_ns=$(date +%s%N)
TOKIO_WORKER_THREADS=1 EMGATE_LISTEN="127.0.0.1:$GW_PORT" \
    EMGATE_UPSTREAM_URL="https://127.0.0.1:$SIM_PORT" EMGATE_UPSTREAM_USERNAME=load \
    EMGATE_UPSTREAM_PASSWORD=load-pass EMGATE_UPSTREAM_CERT_SHA256="$pin" \
    EMGATE_LOG=warn EMGATE_CACHE_TTL=1h \
    "${server_cpu[@]}" "$EMGATE" serve 2>"$work/emgate.err" &
gw_pid=$!
pids+=($gw_pid)
until curl -sf "http://127.0.0.1:$GW_PORT/readyz" >/dev/null 2>&1; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
gw="http://127.0.0.1:$GW_PORT"

# A sample by its full name (with labels), or a metric's sum over its labels.
metric() { curl -s "$gw/metrics" | awk -v m="$1" '
    $1 == m || (index(m, "{") == 0 && index($1, m "{") == 1) { s += $2; n++ }
    END { if (n) print s }'; }

say "restore point IDs"
curl -s "$gw/api/restorePoints" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["Refs"]:
    print(r["UID"].rsplit(":", 1)[1])' >"$work/ids"
echo "$(wc -l <"$work/ids") restore points"

say "200 concurrent cold clients of one ID"
cold_id=$(sed -n 5000p "$work/ids")
before=$(metric 'emgate_upstream_requests_total{status="200"}')
seq 200 | xargs -P 200 -I{} curl -s -o /dev/null "$gw/api/restorePoints/$cold_id/vmRestorePoints"
after=$(metric 'emgate_upstream_requests_total{status="200"}')
cold_fetches=$(python3 -c "print(int(float('$after')) - int(float('${before:-0}')))")
echo "EM fetches: $cold_fetches"

say "warming $WARM restore points"
head -n "$WARM" "$work/ids" | while read -r id; do
    printf '%s %s\n' "$(curl -s "$gw/api/restorePoints/$id/vmRestorePoints" | wc -c)" "$id"
done | sort -n >"$work/sizes"
# One body, the same for both servers: the largest of the warm set (8 VMs).
hot_id=$(tail -1 "$work/sizes" | cut -d' ' -f2)
hot_path="/api/restorePoints/$hot_id/vmRestorePoints"
body_bytes=$(curl -s "$gw$hot_path" | wc -c)
echo "hot body: $body_bytes bytes"

say "starting nginx (1 worker, core 0) caching emgate's answers"
mkdir -p "$work/nginx/cache" "$work/nginx/tmp"
# As root, nginx's workers would run as an unprivileged user that cannot
# write into this private scratch folder.
nginx_user=""
[[ $EUID -eq 0 ]] && nginx_user="user root;"
cat >"$work/nginx.conf" <<EOF
$nginx_user
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp;
    scgi_temp_path $work/nginx/tmp;
    proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=em:10m max_size=256m inactive=1h;
    upstream emgate { server 127.0.0.1:$GW_PORT; keepalive 32; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://emgate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same Host as a direct client, so the links (and bytes) match.
            proxy_set_header Host 127.0.0.1:$GW_PORT;
            proxy_cache em;
            proxy_cache_valid 200 404 1h;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            add_header X-Nginx-Cache \$upstream_cache_status;
        }
    }
}
EOF
"${server_cpu[@]}" "$NGINX" -c "$work/nginx.conf"
ng="http://127.0.0.1:$NGINX_PORT"
curl -s -o /dev/null "$ng$hot_path"
status=$(curl -s -o /dev/null -D - "$ng$hot_path" | awk 'tolower($1)=="x-nginx-cache:" {print $2}' | tr -d '\r')
echo "nginx cache status on the second request: $status"
cmp <(curl -s "$gw$hot_path") <(curl -s "$ng$hot_path") && echo "same bytes from both"

run_wrk() { # url -> "rps p50_ms p99_ms"
    "${client_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$1" 2>&1 | awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%d %.3f %.3f %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }'
}

say "cache hits: emgate vs nginx, $ROUNDS alternations of $DURATION, $CONNECTIONS connections"
printf '%-7s %-7s %10s %9s %9s %8s\n' round server req/s p50_ms p99_ms non2xx
results=()
for r in $(seq "$ROUNDS"); do
    read -r e_rps e_p50 e_p99 e_bad < <(run_wrk "$gw$hot_path")
    printf '%-7s %-7s %10s %9s %9s %8s\n' "$r" emgate "$e_rps" "$e_p50" "$e_p99" "$e_bad"
    read -r n_rps n_p50 n_p99 n_bad < <(run_wrk "$ng$hot_path")
    printf '%-7s %-7s %10s %9s %9s %8s\n' "$r" nginx "$n_rps" "$n_p50" "$n_p99" "$n_bad"
    results+=("$e_rps $e_p50 $e_p99 $n_rps $n_p50 $n_p99")
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = lambda i: st.median(r[i] for r in rows)
e_rps, e_p50, e_p99, n_rps, n_p50, n_p99 = (med(i) for i in range(6))
print(f"median  emgate {e_rps:.0f} req/s p50 {e_p50:.3f} ms p99 {e_p99:.3f} ms")
print(f"median  nginx  {n_rps:.0f} req/s p50 {n_p50:.3f} ms p99 {n_p99:.3f} ms")
print(f"ratio emgate/nginx: throughput {e_rps/n_rps:.2f}x, p99 latency {e_p99/n_p99:.2f}x (lower is better)")
ratios = [r[0]/r[3] for r in rows]
print("per-round throughput ratios: " + ", ".join(f"{x:.2f}" for x in ratios))'

# A wrk script that asks for the vmRestorePoints of each ID in FILE in turn.
rotating_script() { # FILE QUERY
    cat <<EOF
local ids = {}
for line in io.lines("$1") do ids[#ids + 1] = line end
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/api/restorePoints/" .. ids[(i % #ids) + 1] .. "/vmRestorePoints$2")
end
EOF
}

say "EM logons for at least 10,000 requests from 200 clients"
logons_before=$(metric 'emgate_upstream_logons_total{result="ok"}')
head -n "$WARM" "$work/ids" >"$work/warm-ids"
rotating_script "$work/warm-ids" "" >"$work/rotate.lua"
requests=$("${client_cpu[@]}" wrk -t1 -c200 -d3s -s "$work/rotate.lua" "$gw" 2>&1 | awk '/requests in/ {print $1}')
logons_after=$(metric 'emgate_upstream_logons_total{result="ok"}')
echo "requests: $requests; EM logons during them: $(python3 -c "print(int(float('$logons_after')) - int(float('${logons_before:-0}')))"); EM logons since start: $logons_after"

say "RSS after filling the cache with $RESTORE_POINTS collections"
rotating_script "$work/ids" "?format=Entity" >"$work/fill.lua"
"${client_cpu[@]}" wrk -t1 -c16 -d15s -s "$work/fill.lua" "$gw" >/dev/null 2>&1
entries=$(metric emgate_cache_entries)
bytes=$(metric emgate_cache_bytes)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status")
python3 - "$entries" "$bytes" "$rss_kb" <<'EOF'
import sys
entries, cache_bytes, rss_kb = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rss = rss_kb * 1024
target = cache_bytes * 1.3 + 20 * 2**20
print(f"cache entries {entries:.0f}, cache bytes {cache_bytes/2**20:.1f} MiB, RSS {rss/2**20:.1f} MiB, "
      f"target <= {target/2**20:.1f} MiB (cache x 1.3 + 20 MiB): {'met' if rss <= target else 'NOT met'}")
EOF

say "start-to-ready"
echo "emgate: ${ready_ms} ms from exec to /readyz 200 (includes the EM logon over TLS)"
