#!/usr/bin/env bash
# Validates deploy/ without a cluster, a registry or Docker:
#   1. every YAML under deploy/kubernetes/ against the Kubernetes API schema
#      (kubernetes-validate --strict: unknown fields are errors), for the
#      oldest Kubernetes these manifests support and the newest the pinned
#      kubernetes-validate knows; kustomization.yaml's resources exist, and
#      `kubectl kustomize` renders them when kubectl is on the PATH;
#   2. the manifests agree with each other: every *_FILE setting points at a
#      key of the mounted Secret, the pod's stop budget covers the preStop
#      sleep plus the drain timeout, and its memory limit covers the cache
#      bound + the upstream memory budget + a 64Mi baseline;
#   3. grafana-dashboard.json parses, and its queries name only the metrics of
#      the README;
#   4. `emgate check-config` accepts the settings of every emgate container
#      (ConfigMap plus env, as the pod would see them, with placeholder files
#      for the secrets), and knows every EMGATE_* name they use: emgate itself
#      ignores a misspelt variable.
#
# Usage: deploy/validate.sh          (from anywhere)
#   EMGATE_BIN=path/to/emgate        the binary to check settings with
#                                    (default: target/debug/emgate)
# Needs python3 (with venv) and PyPI on the first run; the virtualenv is kept
# in target/deploy-venv and reused.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deploy="$root/deploy"
k8s="$deploy/kubernetes"

# kubernetes-validate ships the API schemas of 1.25 to 1.37 inside the
# package, so validation runs offline once it is installed.
KV_VERSION="1.37.0"
# 1.30: the oldest Kubernetes these manifests are for (the preStop `sleep`
# action is on by default from 1.30); 1.37: the newest schema in the package.
K8S_VERSIONS=(1.30.0 1.37.0)

EMGATE_BIN="${EMGATE_BIN:-$root/target/debug/emgate}"
venv="$root/target/deploy-venv"
py="$venv/bin/python"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'validate: %s\n' "$*" >&2; exit 1; }

step "virtualenv with kubernetes-validate $KV_VERSION ($venv)"
if [[ ! -x "$venv/bin/kubernetes-validate" ]] \
    || [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$KV_VERSION" ]] \
    || ! "$venv/bin/python" -c "import jsonpatch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" "jsonpatch==1.33"
fi
echo "kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- 1. schemas
step "Kubernetes schemas"
manifests=()
while IFS= read -r f; do
    [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done < <(find "$k8s" -name '*.yaml' -o -name '*.yml' | sort)
[[ ${#manifests[@]} -gt 0 ]] || fail "no manifests under $k8s"

kv() { # kubernetes-validate, where a warning (e.g. an unknown kind) fails too
    local out rc=0
    out="$("$venv/bin/kubernetes-validate" --strict "$@" 2>&1)" || rc=$?
    [[ -z "$out" ]] || printf '%s\n' "$out" | sed "s|$root/||g"
    [[ $rc -eq 0 ]] || fail "kubernetes-validate failed"
    if grep -q '^WARN' <<<"$out"; then fail "kubernetes-validate warned"; fi
}
for v in "${K8S_VERSIONS[@]}"; do
    kv -k "$v" "${manifests[@]}"
done

"$py" - "$k8s" <<'EOF'
# kustomization.yaml: its resources exist, and every manifest but the examples
# is one of them.
import os, sys, yaml
k8s = sys.argv[1]
with open(os.path.join(k8s, "kustomization.yaml")) as f:
    k = yaml.safe_load(f)
assert k.get("kind") == "Kustomization", "kustomization.yaml: kind is not Kustomization"
listed = set(k.get("resources", []))
for r in sorted(listed):
    assert os.path.isfile(os.path.join(k8s, r)), f"kustomization.yaml: {r} does not exist"
for f in sorted(os.listdir(k8s)):
    if f.endswith(".yaml") and f != "kustomization.yaml" and "example" not in f:
        assert f in listed, f"kustomization.yaml does not list {f}"
print(f"kustomization.yaml: {len(listed)} resources, all present")
EOF
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$k8s" >"$tmp/rendered.yaml"
    for v in "${K8S_VERSIONS[@]}"; do
        kv --quiet -k "$v" "$tmp/rendered.yaml"
    done
    echo "kubectl kustomize: rendered $(grep -c '^kind:' "$tmp/rendered.yaml") objects, all valid"
else
    echo "kubectl not found: kustomize rendering not checked"
fi

# ----------------------------------------------- 1b. the fleet overlay
# No kustomize needed: the overlay's JSON 6902 patches are applied to the
# base objects here, the result validated like the rest, and written to
# $tmp/fleet-rendered.yaml for the cross-checks below.
step "fleet overlay (deploy/kubernetes/fleet)"
"$py" - "$k8s" "$tmp" <<'EOF'
import copy, os, sys, yaml, jsonpatch
k8s, tmp = sys.argv[1], sys.argv[2]
fleet = os.path.join(k8s, "fleet")
with open(os.path.join(fleet, "kustomization.yaml")) as f:
    k = yaml.safe_load(f)
objects = []
for r in k.get("resources", []):
    path = os.path.normpath(os.path.join(fleet, r))
    if os.path.isdir(path):
        with open(os.path.join(path, "kustomization.yaml")) as f:
            base = yaml.safe_load(f)
        files = [os.path.join(path, x) for x in base["resources"]]
    else:
        assert os.path.isfile(path), f"fleet/kustomization.yaml: {r} does not exist"
        files = [path]
    for file in files:
        with open(file) as f:
            objects += [d for d in yaml.safe_load_all(f) if d]
for p in k.get("patches", []):
    t = p["target"]
    hits = [o for o in objects if o["kind"] == t["kind"] and o["metadata"]["name"] == t["name"]]
    assert len(hits) == 1, f"fleet patch target {t} matches {len(hits)} objects"
    patched = jsonpatch.apply_patch(hits[0], yaml.safe_load(p["patch"]))
    objects[objects.index(hits[0])] = patched
svc = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "emgate"][0]
assert svc["spec"].get("sessionAffinity") == "None", "fleet mode must not pin clients to replicas"
kinds = {o["kind"] for o in objects}
assert "NetworkPolicy" in kinds, "no NetworkPolicy guarding the shared tier"
with open(os.path.join(tmp, "fleet-rendered.yaml"), "w") as f:
    yaml.safe_dump_all(objects, f)
print(f"fleet overlay: {len(objects)} objects rendered, {len(k.get('patches', []))} patches applied")
EOF
for v in "${K8S_VERSIONS[@]}"; do
    kv --quiet -k "$v" "$tmp/fleet-rendered.yaml"
done

# ------------------------------------------- 2 and 4a: the emgate containers
# For each emgate container: cross-checks, then its environment as the pod
# would see it, written to $tmp/env.<n> (KEY=VALUE lines), with each *_FILE
# pointed at a placeholder file.
step "manifests agree with each other"
"$py" - "$k8s" "$tmp" <<'EOF'
import os, re, sys, yaml
k8s, tmp = sys.argv[1], sys.argv[2]

def load(name):
    with open(os.path.join(k8s, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s)
    assert m, f"not a duration: {s!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]

def size(s, kubernetes=False):
    """A size as emgate reads it (512KiB, 256MiB, 1GB = 2^30: all binary), or
    as Kubernetes does (512Mi, 1Gi binary; 512M, 1G decimal)."""
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", str(s).strip())
    assert m, f"not a size: {s!r}"
    unit = m[2] if kubernetes else m[2].lower().rstrip("b").rstrip("i")
    mult = ({"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
            if kubernetes else {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30})
    assert unit in mult, f"unknown size unit in {s!r}"
    return int(m[1]) * mult[unit]

configmaps = {d["metadata"]["name"]: d.get("data", {})
              for f in os.listdir(k8s) if f.endswith(".yaml") and f != "kustomization.yaml"
              for d in load(f) if d["kind"] == "ConfigMap"}
secret_keys = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
               for d in load("secret.example.yaml") if d["kind"] == "Secret"}
# The fleet's Secret adds keys to the same Secret.
fleet_secret = {}
for d in load("fleet/secret.example.yaml"):
    if d["kind"] == "Secret":
        fleet_secret = d.get("stringData", {})
        secret_keys.setdefault(d["metadata"]["name"], set()).update(fleet_secret)
with open(os.path.join(tmp, "fleet-rendered.yaml")) as f:
    fleet_objects = [d for d in yaml.safe_load_all(f) if d]
for d in fleet_objects:
    if d["kind"] == "ConfigMap":
        configmaps["fleet:" + d["metadata"]["name"]] = d.get("data", {})

# What a placeholder secret file holds, by setting.
placeholder = {
    "EMGATE_UPSTREAM_PASSWORD_FILE": "placeholder-password\n",
    "EMGATE_ADMIN_TOKEN_FILE": "placeholder-admin-token\n",
    "EMGATE_CLIENTS_FILE": '[[clients]]\nname = "validate"\nsecret_sha256 = "%s"\n' % ("0" * 64),
    "EMGATE_SHARED_SECRET_FILE": "placeholder-shared-secret-0123456789\n",
}

n = 0
sources = [(m, load(m)) for m in ("deployment.yaml", "sidecar-example.yaml")]
sources.append(("fleet overlay", fleet_objects))
for manifest, docs in sources:
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        fleet_mode = manifest == "fleet overlay"
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            if "emgate" not in c["image"]:
                continue
            where = f"{manifest} {d['metadata']['name']}/{c['name']}"
            env = {}
            for src in c.get("envFrom", []):
                ref = src["configMapRef"]["name"]
                if fleet_mode:
                    ref = "fleet:" + ref
                assert ref in configmaps, f"{where}: no ConfigMap {ref}"
                env.update(configmaps[ref])
            for e in c.get("env", []):
                if "valueFrom" in e:
                    # A Secret key, as the pod would get it: the example's value.
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secret_keys.get(ref["name"], ()), \
                        f"{where}: {e['name']}: Secret {ref['name']} has no key {ref['key']}"
                    env[e["name"]] = fleet_secret.get(ref["key"], "placeholder")
                    continue
                assert "value" in e, f"{where}: {e['name']} is not a plain value"
                env[e["name"]] = e["value"]
            # Every *_FILE names a key of a mounted Secret volume.
            mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
            for key, path in sorted(env.items()):
                if not key.endswith("_FILE"):
                    continue
                folder, name = os.path.split(path)
                assert folder in mounts, f"{where}: {key}={path} is under no volumeMount"
                vol = volumes[mounts[folder]["name"]]
                assert "secret" in vol, f"{where}: {key}: volume {vol['name']} is not a Secret"
                sec = vol["secret"]["secretName"]
                items = vol["secret"].get("items")
                if items is not None:
                    by_path = {i["path"]: i["key"] for i in items}
                    assert name in by_path, f"{where}: {key}: {name} is not among the volume's items"
                    name = by_path[name]
                assert name in secret_keys.get(sec, ()), \
                    f"{where}: {key}: Secret {sec} in secret.example.yaml has no key {name}"
                print(f"{where}: {key} -> Secret {sec}, key {name}")
            # The stop budget: preStop sleep + drain must fit in the grace period.
            grace = pod.get("terminationGracePeriodSeconds", 30)
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            drain = seconds(env.get("EMGATE_DRAIN_TIMEOUT", "25s"))
            assert sleep + drain + 5 <= grace, \
                f"{where}: terminationGracePeriodSeconds {grace} < preStop {sleep}s + drain {drain}s + 5s"
            print(f"{where}: stop budget {grace}s >= preStop {sleep}s + drain {drain:g}s + 5s")
            # The memory budget: cache + EM answers in flight + baseline <= limit.
            limit = size(c.get("resources", {}).get("limits", {}).get("memory", "0"), kubernetes=True)
            cache = size(env.get("EMGATE_CACHE_MAX_BYTES", "256MiB"))
            upstream = size(env.get("EMGATE_UPSTREAM_MEMORY", "256MiB"))
            baseline = 64 << 20
            assert limit > 0, f"{where}: no memory limit"
            assert cache + upstream + baseline <= limit, \
                f"{where}: memory limit {limit >> 20}Mi < cache {cache >> 20}MiB + upstream {upstream >> 20}MiB + baseline 64Mi"
            print(f"{where}: memory limit {limit >> 20}Mi >= cache {cache >> 20}MiB + upstream {upstream >> 20}MiB + baseline 64Mi")
            # The environment for check-config.
            n += 1
            with open(os.path.join(tmp, f"env.{n}"), "w") as out:
                out.write(f"# {where}\n")
                for key, value in sorted(env.items()):
                    if key in placeholder:
                        value = os.path.join(tmp, f"{n}.{key.lower()}")
                        with open(value, "w") as f:
                            f.write(placeholder[key])
                    assert "\n" not in value, f"{where}: {key} has a newline"
                    out.write(f"{key}={value}\n")
assert n >= 3, "expected the emgate containers of deployment.yaml, sidecar-example.yaml and the fleet overlay"
EOF

# ------------------------------------------------------------ 3. dashboard
step "Grafana dashboard"
"$py" -m json.tool "$deploy/grafana-dashboard.json" >/dev/null
"$py" - "$deploy/grafana-dashboard.json" <<'EOF'
# Every emgate_* name in a query is a metric the README documents (section "Operations") or
# one the README documents beside them, histograms by their _bucket series;
# every core metric has a panel; the datasource is the import input.
import json, re, sys
contract = {"emgate_requests_total", "emgate_request_duration_seconds_bucket",
            "emgate_cache_requests_total", "emgate_cache_entries", "emgate_cache_bytes",
            "emgate_upstream_requests_total", "emgate_upstream_duration_seconds_bucket",
            "emgate_upstream_logons_total", "emgate_upstream_session_valid", "emgate_client_sessions",
            "emgate_shared_up", "emgate_shared_operations_total", "emgate_fleet_members",
            "emgate_fleet_lease_takeovers_total"}
documented = {"emgate_cache_refreshes_total", "emgate_cache_collapsed_total",
              "emgate_upstream_memory_bytes"}
with open(sys.argv[1]) as f:
    d = json.load(f)
assert any(i.get("name") == "DS_PROMETHEUS" for i in d.get("__inputs", [])), "no DS_PROMETHEUS input"
used = set()
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", f"{p['title']}: datasource"
            used.update(re.findall(r"\bemgate_[a-z_]+", t["expr"]))
walk(d["panels"])
unknown = used - contract - documented
assert not unknown, f"metrics not documented: {sorted(unknown)}"
missing = contract - used
assert not missing, f"core metrics without a panel: {sorted(missing)}"
print(f"grafana-dashboard.json: schemaVersion {d['schemaVersion']}, {len(used)} metrics, all documented")
EOF

# ----------------------------------------------------------- 4. check-config
step "emgate check-config ($EMGATE_BIN)"
[[ -x "$EMGATE_BIN" ]] || fail "no emgate binary at $EMGATE_BIN (build it, or set EMGATE_BIN)"
for envfile in "$tmp"/env.*; do
    vars=()
    while IFS= read -r line; do
        [[ "$line" == \#* ]] || vars+=("$line")
    done <"$envfile"
    echo "-- $(head -1 "$envfile" | cut -c3-)"
    rc=0
    env -i PATH="$PATH" "${vars[@]}" "$EMGATE_BIN" check-config >"$tmp/out" 2>&1 || rc=$?
    sed "s|$tmp|\$TMP|g" "$tmp/out"
    [[ $rc -eq 0 ]] || fail "check-config refused these settings (exit $rc)"
    for kv in "${vars[@]}"; do
        key="${kv%%=*}"
        grep -qE "(^|[^A-Z0-9_])${key}([^A-Z0-9_]|\$)" "$tmp/out" \
            || fail "$key: emgate does not know this setting"
    done
done

step "deploy/: all checks passed"
