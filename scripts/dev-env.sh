#!/usr/bin/env bash
# The tools and local services the tests need. Sourced by scripts/test.sh, which calls
# `ensure_tools`, `start_emulators` and (on exit, also when tests fail) `stop_emulators`.
#
# Run on its own, `scripts/dev-env.sh` installs what is missing, starts the emulators, prints
# the environment to use them from another shell, and keeps them up until Ctrl-C.
#
# Emulators (installed from PyPI, started on free ports, logs in target/emulators/):
#   moto_server        DynamoDB and S3                       AWS_ENDPOINT_URL
#   cargo lambda watch the Lambda runtime and Invoke API,   AWS_ENDPOINT_URL_LAMBDA
#                      serving this package's src/bin functions
set -euo pipefail

dev_env_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need() { command -v "$1" >/dev/null 2>&1; }

ensure_tools() {
    if ! need cargo; then
        echo "dev-env: cargo is missing; install Rust (https://rustup.rs) first" >&2
        return 1
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "dev-env: installing cargo-nextest"
        cargo install cargo-nextest --locked
    fi
    if ! need python3; then
        echo "dev-env: installing python3"
        apt-get update -qq && apt-get install -y -qq python3 python3-pip
    fi
    if ! need moto_server || ! python3 -c 'import flask, moto.server' >/dev/null 2>&1; then
        echo "dev-env: installing moto_server (pip: moto[server])"
        python3 -m pip install --quiet 'moto[server]'
    fi
    if ! cargo lambda --version >/dev/null 2>&1; then
        echo "dev-env: installing cargo-lambda (pip)"
        python3 -m pip install --quiet cargo-lambda
    fi
    hash -r
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for NAME URL SECONDS: until URL answers over HTTP (any status).
wait_for() {
    local name=$1 url=$2 seconds=$3
    if ! python3 - "$url" "$seconds" <<'PY'
import sys, time, urllib.request, urllib.error
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # it answered
    except Exception:
        time.sleep(0.2)
sys.exit(1)
PY
    then
        echo "dev-env: $name did not answer at $url within ${seconds}s; its log:" >&2
        tail -n 30 "$dev_env_root/target/emulators/$name.log" >&2 || true
        return 1
    fi
}

moto_pid=""
lambda_pid=""

start_emulators() {
    local logs="$dev_env_root/target/emulators"
    mkdir -p "$logs"

    local moto_port lambda_port
    moto_port=$(free_port)
    # (moto's own `moto_server` command, but atomic per request: see the script.)
    setsid python3 "$dev_env_root/scripts/moto_server.py" 127.0.0.1 "$moto_port" >"$logs/moto.log" 2>&1 &
    moto_pid=$!
    wait_for moto "http://127.0.0.1:$moto_port/moto-api/" 60

    # The standard SDK settings: the same binaries run against AWS without them.
    export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
    export STATE_TABLE=trebuchet-state

    # The functions (src/bin) are built now, so the first invocation does not compile them.
    (cd "$dev_env_root" && cargo build --quiet --bins)
    (cd "$dev_env_root" && cargo run --quiet --bin lambda_counter -- create-table >/dev/null)

    lambda_port=$(free_port)
    # Two instances per function, as Lambda would run under load: their writes to one actor's
    # state race, and the conditional writes must sort them out.
    (cd "$dev_env_root" && exec setsid cargo lambda watch -A 127.0.0.1 -P "$lambda_port" \
        --concurrency 2 </dev/null >"$logs/lambda.log" 2>&1) &
    lambda_pid=$!
    wait_for lambda "http://127.0.0.1:$lambda_port/" 120
    # (cargo lambda watch exits quietly when its port is taken: make sure it is still ours.)
    if ! kill -0 "$lambda_pid" 2>/dev/null; then
        echo "dev-env: cargo lambda watch stopped; its log:" >&2
        tail -n 30 "$logs/lambda.log" >&2
        return 1
    fi
    export AWS_ENDPOINT_URL_LAMBDA="http://127.0.0.1:$lambda_port"
    # A function's first invocation starts its process (`cargo run` under cargo lambda watch,
    # which can wait for cargo's locks): done now, one invocation each (any payload is answered),
    # so no test waits for a cold start while the suite loads the machine.
    local function
    for function in $(cd "$dev_env_root/src/bin" && ls -- *.rs | sed 's/\.rs$//'); do
        python3 - "$AWS_ENDPOINT_URL_LAMBDA/2015-03-31/functions/$function/invocations" <<'PY' || true
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], data=b"{}", method="POST")
try:
    urllib.request.urlopen(request, timeout=120).read()
except urllib.error.HTTPError:
    pass  # it answered (a function error is an answer too: lambda_misconfigured's init fails)
except Exception as error:
    print(f"dev-env: warming up {sys.argv[1]}: {error}", file=sys.stderr)
PY
    done
    echo "dev-env: moto_server at $AWS_ENDPOINT_URL, cargo lambda watch at $AWS_ENDPOINT_URL_LAMBDA"
}

stop_emulators() {
    local pid
    for pid in "$lambda_pid" "$moto_pid"; do
        if [ -n "$pid" ]; then
            # Each runs in a session of its own: end the whole group (cargo, the functions…).
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "$lambda_pid" "$moto_pid"; do
        if [ -n "$pid" ]; then
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done
    lambda_pid=""
    moto_pid=""
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ensure_tools
    trap stop_emulators EXIT
    start_emulators
    echo
    echo "In another shell, to use them:"
    for variable in AWS_ENDPOINT_URL AWS_ENDPOINT_URL_LAMBDA AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
        AWS_REGION AWS_EC2_METADATA_DISABLED STATE_TABLE; do
        echo "export $variable=${!variable}"
    done
    echo
    echo "Ctrl-C stops them."
    while true; do sleep 3600; done
fi
