#!/usr/bin/env bash
# Runs the adapter examples against a real node: a fresh deployment with one
# city node (乐山市 5111) listening on an adapter port, a department in the
# catalogue, a grant approved for it, and residents to read. Then the Python
# example (grpcio, code generated from the .proto files) and the Node.js
# example (@grpc/grpc-js, the .proto files loaded at run time) dock as that
# department and check what they are shown.
#
#   adapters/examples/run.sh [python|node|all]   (default: all)
#
# Needs: a built `tiersync` (TIERSYNC_BIN, default target/debug/tiersync, or
# $CARGO_TARGET_DIR/debug/tiersync; built here if missing),
# python3 with venv, node and npm. Installs the examples' packages into
# target/adapter-examples/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
which="${1:-all}"
bin="${TIERSYNC_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/tiersync}"
[[ -x "$bin" ]] || cargo build -q -p tiersync --locked
work="$root/target/adapter-examples"
mkdir -p "$work"
run="$(mktemp -d "$work/run.XXXXXX")"
node_pid=""
cleanup() {
  if [[ -n "$node_pid" ]]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$run"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api="127.0.0.1:$(free_port)"
adapter="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"

echo "== a city node with an adapter port ($adapter)"
"$bin" pki init --dir "$run/pki" --city 5111 >/dev/null
"$bin" pki issue --dir "$run/pki" --code 5111 >/dev/null
"$bin" pki issue --dir "$run/pki" --code 5111 --department civil-affairs
cat >"$run/city.toml" <<EOF
version = 1
[node]
code = "5111"
name = "乐山市"
[storage]
path = "city.db"
[listen]
peer = "127.0.0.1:0"
api = "$api"
adapter = "$adapter"
admin = "$admin"
[tls]
ca = "pki/ca.pem"
cert = "pki/5111.pem"
key = "pki/5111.key"
[trust]
root = "pki/trust-root.pem"
key = "pki/5111.sm2.key"
cert = "pki/5111.sm2.pem"
root_key = "pki/trust-root.key"
[deployment]
digest_key_file = "pki/deployment.key"
EOF
"$bin" check-config --config "$run/city.toml" >/dev/null
"$bin" serve --config "$run/city.toml" >"$run/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://$admin/readyz" >/dev/null 2>&1 && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$run/node.log"; exit 1; }
  sleep 0.2
done
curl -fsS "http://$admin/readyz" >/dev/null

export TIERSYNC_API="$api"
"$bin" put --kind tiersync.v1.Department \
  --json '{"code": "civil-affairs", "name": "民政局"}' >/dev/null
id_numbers=(11010519491231002X 51110219800102123X 511102198507150020)
for n in "${id_numbers[@]}"; do
  "$bin" put --kind civil.v1.Resident \
    --json "{\"name\": \"测试居民\", \"idNumber\": \"$n\", \"addressCode\": \"511102004001\"}" >/dev/null
done
grant="$("$bin" grant request --department civil-affairs --kind civil.v1.Resident \
  --clear civil.v1.Resident.id_number --area 5111 --matter 5111-MZ-0001 \
  --matter-name 最低生活保障审核确认 --legal-basis "社会救助暂行办法 第十一条" \
  --requested-by "乐山市民政局" --may-submit | awk '{print $2; exit}')"
"$bin" grant approve "$grant" --by "乐山市政务服务中心"
"$bin" grant list

args=(--addr "$adapter" --node 5111 --ca "$run/pki/ca.pem"
  --cert "$run/pki/5111-civil-affairs.pem" --key "$run/pki/5111-civil-affairs.key"
  --matter 5111-MZ-0001 --id-number "${id_numbers[0]}" --expect "${#id_numbers[@]}")

if [[ "$which" == all || "$which" == python ]]; then
  echo "== Python example (grpcio)"
  venv="$work/python-venv"
  req="$root/adapters/examples/python/requirements.txt"
  if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
  fi
  gen="$run/python-gen"
  mkdir -p "$gen"
  "$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
    --python_out="$gen" --grpc_python_out="$gen" \
    tiersync/adapter/v1/adapter.proto tiersync/v1/record.proto \
    tiersync/v1/department.proto tiersync/v1/options.proto civil/v1/resident.proto
  TIERSYNC_GEN="$gen" "$venv/bin/python" "$root/adapters/examples/python/department.py" "${args[@]}"
fi

if [[ "$which" == all || "$which" == node ]]; then
  echo "== Node.js example (@grpc/grpc-js)"
  # The Python example added a resident through Submit; the Node.js one
  # sees it too.
  [[ "$which" == all ]] && args[${#args[@]}-1]=$(( ${#id_numbers[@]} + 1 ))
  example="$root/adapters/examples/node"
  modules="$work/node-modules"
  if ! cmp -s "$example/package-lock.json" "$modules/package-lock.json" 2>/dev/null; then
    rm -rf "$modules"
    mkdir -p "$modules"
    cp "$example/package.json" "$example/package-lock.json" "$modules/"
    (cd "$modules" && npm ci --silent --no-audit --no-fund)
  fi
  NODE_PATH="$modules/node_modules" TIERSYNC_PROTO="$root/proto" \
    node "$example/department.js" "${args[@]}"
fi
echo "adapter examples passed"
