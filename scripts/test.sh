#!/usr/bin/env bash
# The project's test command (README, .ci/run): every test, against real servers.
#
#   0. installs what is missing and starts the local AWS emulators (scripts/dev-env.sh:
#      moto_server for DynamoDB and S3, cargo-lambda for the Lambda runtime and Invoke API);
#      they are stopped on exit, also when a test fails;
#   1. the Python client written only from docs/PROTOCOL.md, against `examples/counter.rs serve`;
#   2. the documentation examples (`cargo test --doc`);
#   3. everything else with cargo-nextest: unit, integration (transport suite over every
#      transport, Lambda included; WebSocket robustness; DynamoDB state), compile-fail (trybuild)
#      and property tests;
#   4. the README's Lambda client command, against the counter function.
#
# Extra arguments go to cargo nextest, e.g. `scripts/test.sh -E 'test(reconnect)'`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/dev-env.sh
ensure_tools

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi

server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap 'cleanup; stop_emulators' EXIT

echo "==> protocol client (Python, from docs/PROTOCOL.md) against the counter example"
cargo build --quiet --example counter
# The example keeps its count in a state file; the tests use one of their own.
state_dir=$(mktemp -d)
export TREBUCHET_STATE_FILE="$state_dir/state.redb"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/debug/examples/counter" serve "127.0.0.1:$port" &
server_pid=$!
for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then break; fi
    sleep 0.1
done
python3 tests/python/protocol_client.py "ws://127.0.0.1:$port/"
cleanup
server_pid=""

echo "==> the counter example keeps its count across runs"
"$target_dir/debug/examples/counter" > "$state_dir/first.txt"
"$target_dir/debug/examples/counter" > "$state_dir/second.txt"
first=$(sed -n 's/^websocket: get() -> \([0-9]*\) (the same actor)$/\1/p' "$state_dir/first.txt")
again=$(sed -n 's/^websocket: get() -> \([0-9]*\) (kept from earlier runs)$/\1/p' "$state_dir/second.txt")
if [ -z "$first" ] || [ "$first" != "$again" ]; then
    echo "the second run started at '$again', not at the first run's final count '$first'" >&2
    exit 1
fi
echo "ok: the second run started at $again"
rm -rf "$state_dir"

echo "==> local AWS emulators"
start_emulators

echo "==> documentation examples"
cargo test --quiet --workspace --doc

echo "==> cargo nextest"
cargo nextest run --workspace --profile "$profile" "$@"

echo "==> the README's Lambda client, against the counter function under cargo-lambda"
cargo run --quiet --bin lambda_counter -- call lambda_counter
