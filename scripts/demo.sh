#!/usr/bin/env bash
# Runs argocd-proxy end to end on one machine: a demo upstream (standing in for a Kubernetes
# API; it echoes what it receives), argocd-proxy-server and argocd-proxy-agent on loopback. Sends
# requests through /tunnel/demo/... and shows what the upstream saw, then stops everything.
# Every port is chosen by the OS (port 0) and read back from the processes' own output.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "demo needs python3 for its upstream" >&2; exit 1; }
command -v curl >/dev/null || { echo "demo needs curl" >&2; exit 1; }

cargo build --quiet --bins
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# wait_for FILE PATTERN: the first line of FILE matching PATTERN, within 20 s.
wait_for() {
  for _ in $(seq 200); do
    if line=$(grep -m1 -E "$2" "$1" 2>/dev/null); then echo "$line"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for /$2/ in $1:" >&2; cat "$1" >&2; return 1
}

# 1. The demo upstream: answers every request with what it received (method, path, headers).
python3 -u - >"$work/upstream.log" 2>&1 <<'PY' &
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"method": self.command, "path": self.path,
                           "authorization": self.headers.get("Authorization"),
                           "x-forwarded-for": self.headers.get("X-Forwarded-For")}, indent=1).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
print("upstream on", server.server_address[1], flush=True)
server.serve_forever()
PY
pids+=($!)
upstream_port=$(wait_for "$work/upstream.log" "upstream on" | awk '{print $3}')

# 2. The server, with one cluster whose agent token is "demo-agent-token".
echo "demo-agent-token" >"$work/agent.token"
echo "demo-service-account-token" >"$work/sa.token"
cat >"$work/server.toml" <<TOML
[public]
listen = "127.0.0.1:0"
[internal]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[[cluster]]
id = "demo"
token_file = "agent.token"
target = "127.0.0.1:$upstream_port"
TOML
"$bin/argocd-proxy-server" --config "$work/server.toml" >"$work/server.log" 2>&1 &
pids+=($!)
listening=$(wait_for "$work/server.log" "listening")
public=$(sed -E 's/.*public=([0-9.:]+).*/\1/' <<<"$listening")
internal=$(sed -E 's/.*internal=([0-9.:]+).*/\1/' <<<"$listening")
ops=$(sed -E 's/.*ops=Some\(([0-9.:]+)\).*/\1/' <<<"$listening")

# 3. The agent: dials the server, injects its own service-account token upstream.
cat >"$work/agent.toml" <<TOML
server_url = "ws://$public/connect"
allow_insecure_server = true
token_file = "agent.token"
[upstream]
target = "127.0.0.1:$upstream_port"
plaintext = true
token_file = "sa.token"
TOML
"$bin/argocd-proxy-agent" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for "$work/agent.log" "tunnel up" >/dev/null
for _ in $(seq 100); do curl -fs "http://$ops/readyz?cluster=demo" >/dev/null && break; sleep 0.1; done

echo "server: public $public, internal $internal, ops $ops; upstream 127.0.0.1:$upstream_port"
echo
echo "\$ curl -H 'Authorization: Bearer caller-credential' http://$internal/tunnel/demo/api/v1/namespaces?x=%2F"
curl -fsS -H 'Authorization: Bearer caller-credential' "http://$internal/tunnel/demo/api/v1/namespaces?x=%2F"
echo
echo
echo "\$ curl http://$internal/tunnel/unknown/api   # a cluster that does not exist"
curl -sS "http://$internal/tunnel/unknown/api"
echo
echo
echo "agent log (its audit trail):"
grep proxied "$work/agent.log" | sed 's/^/  /'
echo
echo "metrics: $(curl -fsS "http://$ops/metrics" | grep -E '^(agents_connected|proxy_requests_total)' | tr '\n' ' ')"
