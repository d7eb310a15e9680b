# Helpers sourced by benches/load.sh, benches/ab.sh,
# benches/instructions.sh and benches/steady.sh.

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The floor server (benches/floor.rs) of the checkout at ROOT, built in
# release mode: its path.
floor_binary() { # ROOT
    (cd "$1" && cargo bench --bench floor --no-run --message-format=json 2>/dev/null) | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "floor":
        print(m["executable"])'
}

# The certificate fingerprint a starting simulator prints to FILE, once it
# has (up to 10 s); empty if it never does.
sim_pin() { # FILE
    for _ in $(seq 100); do grep -q 'SHA-256' "$1" 2>/dev/null && break; sleep 0.1; done
    grep -oE '([0-9A-F]{2}:){31}[0-9A-F]{2}' "$1" | head -1
}

# A wrk script that asks for the vmRestorePoints of each ID in FILE in turn.
rotating_script() { # FILE QUERY
    cat <<LUA
local ids = {}
for line in io.lines("$1") do ids[#ids + 1] = line end
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/api/restorePoints/" .. ids[(i % #ids) + 1] .. "/vmRestorePoints$2")
end
LUA
}

# CLIENT=basic|session in ab.sh and instructions.sh: one client,
# "dashboard", with this secret, in a clients file at FILE.
CLIENT_SECRET=dashboard-secret-0123456789
clients_file() { # FILE
    printf '[[clients]]\nname = "dashboard"\nsecret_sha256 = "%s"\n' \
        "$(printf %s "$CLIENT_SECRET" | sha256sum | cut -d' ' -f1)" >"$1"
}

# The header the client's requests carry to the gateway at BASE (CLIENT:
# `basic`, its secret; `session`, a session token it logs on for first, as
# an unchanged EM client does); nothing without CLIENT.
client_credential() { # BASE
    case "${CLIENT:-}" in
    "") ;;
    basic) echo "Authorization: Basic $(printf %s "dashboard:$CLIENT_SECRET" | base64 -w0)" ;;
    session)
        curl -sk -D - -o /dev/null -X POST -u "dashboard:$CLIENT_SECRET" "$1/api/sessionMngr/?v=latest" |
            awk 'tolower($1) == "x-restsvcsessionid:" {print "X-RestSvcSessionId: " $2}' | tr -d '\r'
        ;;
    *) echo "CLIENT is basic or session" >&2; return 1 ;;
    esac
}
