#!/usr/bin/env bash
#
# deploy/fuzz.sh — fuzzes the HTTP API against schemas/openapi.yaml with Schemathesis.
#
# It owns one throw-away stack and the fuzz run over it: a fresh, randomly named database on the
# local PostgreSQL (see deploy/lib.sh), the debug binaries that `cargo build --workspace --bins`
# leaves in ${CARGO_TARGET_DIR:-target}/debug (dev-issuer, command-api, query-api, mcp-api,
# projector; no Kafka) on free local ports, moto's S3 server with the processed queue's bucket (and a few
# messages of the fuzzed organization, written by queue-producer), and the nginx gateway rendered
# from deploy/nginx.conf.template, all under a temporary directory. It installs Schemathesis with pip when it is missing (its hooks are
# in deploy/fuzz_hooks.py), then runs `schemathesis run` twice through the gateway, once with a
# System token and once with the token of a `user`-role member of an organization, with the checks
# not_a_server_error, status_code_conformance, content_type_conformance and
# response_schema_conformance, a bounded number of examples per operation, and a time bound per
# run. It prints how many requests each run made, and stops everything it started, and drops the
# database, whatever happens.
#
# deploy/test.sh runs it after `cargo test`. Run it alone after a build:
#   cargo build --workspace --bins && deploy/fuzz.sh
# Settings (environment): FUZZ_MAX_EXAMPLES (per operation, default 15), FUZZ_TIME_LIMIT (seconds
# per run, default 180), FUZZ_WORKERS (default 2). Exits non-zero when a check fails, a run does
# not finish in time, or the stack does not start.

set -euo pipefail

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# Schemathesis 3.39 breaks with Hypothesis releases newer than early 2025: both are pinned.
SCHEMATHESIS_VERSION="3.39.16"
HYPOTHESIS_VERSION="6.122.0"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-15}"
TIME_LIMIT="${FUZZ_TIME_LIMIT:-180}"
WORKERS="${FUZZ_WORKERS:-2}"
READY_TIMEOUT=60
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

BIN_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug"
for bin in dev-issuer command-api query-api projector queue-producer; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing: run cargo build --workspace --bins first"
done

command -v python3 >/dev/null 2>&1 || ensure_packages python3 python3-pip
command -v openssl >/dev/null 2>&1 || ensure_packages openssl
command -v envsubst >/dev/null 2>&1 || ensure_packages gettext-base
command -v nginx >/dev/null 2>&1 || ensure_packages nginx
ensure_moto
if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
    || ! python3 -c "import hypothesis, sys; sys.exit(hypothesis.__version__ != '$HYPOTHESIS_VERSION')" 2>/dev/null; then
    log "installing schemathesis $SCHEMATHESIS_VERSION (hypothesis $HYPOTHESIS_VERSION)"
    python3 -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"
fi

# ---------------------------------------------------------------------------------------------
# The stack: everything below lives in FUZZ_DIR and is stopped by cleanup.
# ---------------------------------------------------------------------------------------------

FUZZ_DIR="$(mktemp -d /tmp/fuzz.XXXXXX)"
DB_NAME="fuzz_$(openssl rand -hex 6)"
PIDS=()
NGINX_STARTED=0

cleanup() {
    local status=$? pid
    # Nothing stops the cleanup half-way: not a failing command, not a closed stderr.
    set +e
    trap - EXIT HUP INT TERM
    trap '' PIPE
    if [ "$NGINX_STARTED" = 1 ] && [ -f "$FUZZ_DIR/nginx.pid" ]; then
        kill "$(cat "$FUZZ_DIR/nginx.pid")" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    psql -X -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ]; then
        local f
        for f in "$FUZZ_DIR"/*.log; do
            [ -s "$f" ] || continue
            printf -- '--- last lines of %s ---\n' "$(basename "$f")" >&2
            tail -n 20 "$f" >&2 || true
        done
    fi
    rm -rf "$FUZZ_DIR"
    exit "$status"
}
# A signal (a closed pipe included) ends the script through exit, so cleanup runs.
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

psql -X -q "$PG_ADMIN_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null

DEV_ISSUER_ADDR="127.0.0.1:$(free_port)"
COMMAND_API_ADDR="127.0.0.1:$(free_port)"
QUERY_API_ADDR="127.0.0.1:$(free_port)"
MCP_API_ADDR="127.0.0.1:$(free_port)"
PROJECTOR_ADDR="127.0.0.1:$(free_port)"
S3_ADDR="127.0.0.1:$(free_port)"
GATEWAY_ADDR="127.0.0.1:$(free_port)"
BASE_URL="http://$GATEWAY_ADDR"
export DATABASE_URL="postgres://postgres:postgres@$PG_HOST:$PG_PORT/$DB_NAME"
export DEV_ISSUER_ADDR COMMAND_API_ADDR QUERY_API_ADDR MCP_API_ADDR PROJECTOR_ADDR GATEWAY_ADDR
export DEV_ISSUER_KEY_FILE="$FUZZ_DIR/dev-issuer-key.pem"
export AUTH_ISSUER="http://$DEV_ISSUER_ADDR/"
export AUTH_AUDIENCE=admin-platform
export AUTH_CLIENT_ID=admin-platform-web
AUTH_CLIENT_SECRET="$(openssl rand -hex 24)"
export AUTH_CLIENT_SECRET
export PUBLIC_URL="$BASE_URL"
export SYSTEM_ADMINS=fuzz-admin
SECRETS_KEY="$(openssl rand -base64 32)"
export SECRETS_KEY
export RUST_LOG=warn
unset KAFKA_BROKERS
export S3_ENDPOINT="http://$S3_ADDR" S3_BUCKET=fuzz-processed-messages
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=fuzz AWS_SECRET_ACCESS_KEY=fuzz

# start NAME ARGS...: starts a debug binary in the background, logging to FUZZ_DIR/NAME.log.
start() {
    local name="$1"
    shift
    "$BIN_DIR/$name" "$@" >"$FUZZ_DIR/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
}

# ready NAME URL: waits until URL answers 200.
ready() {
    wait_http "$2" "$READY_TIMEOUT" || die "$1 is not ready ($2)"
}

log "fuzz stack: gateway $BASE_URL, database $DB_NAME"
"$MOTO_SERVER" -H "${S3_ADDR%:*}" -p "${S3_ADDR##*:}" >"$FUZZ_DIR/moto.log" 2>&1 </dev/null &
PIDS+=("$!")
ready moto "http://$S3_ADDR/moto-api/data.json"
curl -sS --fail --max-time 10 -o /dev/null -X PUT "$S3_ENDPOINT/$S3_BUCKET" || die "creating the bucket failed"
start dev-issuer serve
ready dev-issuer "http://$DEV_ISSUER_ADDR/.well-known/jwks.json"
start command-api
start query-api
start mcp-api
start projector

RUN_DIR="$FUZZ_DIR"
export RUN_DIR
mkdir -p "$RUN_DIR/nginx-tmp"
render_gateway
: >"$RUN_DIR/nginx-error.log"
run_nginx -t -q
run_nginx
NGINX_STARTED=1

ready command-api "http://$COMMAND_API_ADDR/readyz"
ready query-api "http://$QUERY_API_ADDR/readyz"
ready mcp-api "http://$MCP_API_ADDR/readyz"
ready projector "http://$PROJECTOR_ADDR/readyz"
ready nginx "$BASE_URL/healthz"

# ---------------------------------------------------------------------------------------------
# Tokens: the System administrator, and a `user`-role member of an organization.
# ---------------------------------------------------------------------------------------------

token() {
    "$BIN_DIR/dev-issuer" token --sub "$1" --ttl-seconds 3600
}

# api METHOD PATH TOKEN [JSON]: calls the gateway and prints the body; fails on a non-2xx answer.
api() {
    local method="$1" path="$2" bearer="$3" json="${4:-}"
    local args=(-sS --fail-with-body --max-time 30 -X "$method" -H "Authorization: Bearer $bearer")
    if [ -n "$json" ]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$json")
    fi
    curl "${args[@]}" "$BASE_URL$path" || die "$method $path failed"
}

json_field() {
    python3 -c 'import json, sys; d = json.load(sys.stdin)
for k in sys.argv[1].split("."): d = d[k]
print(d)' "$1"
}

SYSTEM_TOKEN="$(token fuzz-admin)"
USER_TOKEN="$(token fuzz-user)"
org_id="$(api POST /api/organizations "$SYSTEM_TOKEN" \
    '{"name": "Fuzz organization", "description": "Made by deploy/fuzz.sh"}' | json_field id)"
env_id="$(api POST /api/environments "$SYSTEM_TOKEN" \
    "{\"name\": \"Fuzz environment\", \"organizationId\": \"$org_id\"}" | json_field id)"
"$BIN_DIR/queue-producer" --organization-id "$org_id" --environment-id "$env_id" --count 20 \
    --days 2 >/dev/null || die "queue-producer failed"
user_id="$(api GET /api/auth/session "$USER_TOKEN" | json_field user.id)"
api POST "/api/organizations/$org_id/members" "$SYSTEM_TOKEN" \
    "{\"userId\": \"$user_id\", \"role\": \"user\"}" >/dev/null

# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------

# The requests made so far, counted by the gateway (one access log line per request).
requests_so_far() {
    wc -l <"$RUN_DIR/nginx-access.log"
}

TOTAL_REQUESTS=0
FAILED=0

# fuzz LABEL TOKEN: one schemathesis run with TOKEN; prints the requests it made.
fuzz() {
    local label="$1" bearer="$2" before after status=0 started
    before="$(requests_so_far)"
    started=$SECONDS
    # The bearer token is the run's credential: no generated Authorization header or session
    # cookie. No NUL bytes: nginx refuses a URI with %00 itself (its own HTML 400) before the API
    # sees it; NUL in JSON bodies is covered by the tests. Redirects are not followed (fuzz_hooks).
    log "schemathesis as $label (at most $MAX_EXAMPLES examples per operation, ${TIME_LIMIT}s)"
    PYTHONPATH="$REPO_ROOT/deploy" SCHEMATHESIS_HOOKS=fuzz_hooks \
        timeout --kill-after=10 "$TIME_LIMIT" python3 -m schemathesis.cli run schemas/openapi.yaml \
        --base-url "$BASE_URL" \
        --header "Authorization: Bearer $bearer" \
        --checks "$CHECKS" \
        --hypothesis-max-examples "$MAX_EXAMPLES" \
        --hypothesis-deadline 30000 \
        --hypothesis-suppress-health-check all \
        --hypothesis-database none \
        --hypothesis-phases explicit,generate \
        --stateful links \
        --generation-with-security-parameters false \
        --generation-allow-x00 false \
        --workers "$WORKERS" \
        --request-timeout 30000 \
        --no-color \
        --show-trace \
        || status=$?
    after="$(requests_so_far)"
    TOTAL_REQUESTS=$((TOTAL_REQUESTS + after - before))
    log "schemathesis as $label: $((after - before)) requests in $((SECONDS - started))s, exit $status"
    # How they were answered, by status class (the status follows the quoted request line).
    awk -v from="$before" 'NR > from && match($0, /" [1-5][0-9][0-9] /) {
            n[substr($0, RSTART + 2, 1) "xx"]++
        }
        END { for (k in n) printf "%s %d\n", k, n[k] }' "$RUN_DIR/nginx-access.log" \
        | sort | tr '\n' ' ' | sed 's/ $//' | { read -r classes || true; log "answers: ${classes:-none}"; }
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        warn "schemathesis as $label did not finish within ${TIME_LIMIT}s"
    fi
    [ "$status" -eq 0 ] || FAILED=1
}

fuzz_started=$SECONDS
fuzz "the System administrator" "$SYSTEM_TOKEN"
fuzz "a user-role member" "$USER_TOKEN"
log "fuzzing made $TOTAL_REQUESTS requests in $((SECONDS - fuzz_started))s"
[ "$FAILED" -eq 0 ] || die "schemathesis found failures (above)"
