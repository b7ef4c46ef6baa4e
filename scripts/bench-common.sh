# Shared by scripts/bench-proxy and scripts/bench-instructions (sourced, not run).

# A free loopback port (bound, then closed).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# The origin's answer in every benchmark: a 1 KB JSON body (no single quotes, so that it fits
# in nginx's `return 200 '...'`).
origin_json() {
  local json
  json=$(python3 -c 'import json; print(json.dumps({"items":[{"id":i,"name":"item %d"%i,"price":i*1.25,"tags":["a","b"]} for i in range(14)]})[:1024])')
  echo "${json//\'/}"
}
