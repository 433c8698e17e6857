#!/usr/bin/env bash
#
# deploy/up.sh — sets everything up and runs the whole system locally.
#
# It owns the local stack's lifecycle on a development machine:
#   1. system packages (nginx, build tools) and PostgreSQL on 127.0.0.1:5432;
#   2. the `admin_platform` database and the `.env` file at the repository root (written once,
#      never overwritten: edit it to change addresses or keys; settings added since it was written
#      are appended to it with their defaults);
#   3. the tansu broker (built the first time, then kept in ~/.cargo/bin), moto's S3 server
#      (installed with pip the first time), and a build of the binaries the stack runs (dev profile);
#   4. the processes, in the background, each logging to deploy/.run/<name>.log with its pid in
#      deploy/.run/<name>.pid: the tansu Kafka broker (PostgreSQL storage in its own database, so
#      its data survives a restart), moto (an S3 server holding the processed queue's bucket, in
#      memory only), dev-issuer (local token issuer), fake-provider (a local model provider speaking
#      OpenAI's and Anthropic's wire formats), command-api, query-api, mcp-api (the MCP server),
#      projector (which publishes the domain events to the broker), and the nginx gateway (config rendered from
#      deploy/nginx.conf.template);
#   5. waiting until every process answers, registering two visible system models on the fake
#      provider (one per wire format; kept if they exist), creating the organization "Demo" and its
#      environment "Production" (kept if they exist), writing 200 processed messages of theirs into
#      the bucket with queue-producer (again on every run: moto forgets everything when it stops),
#      then printing how to use the system.
#
# Re-running it restarts everything (it calls deploy/down.sh first). Stop with deploy/down.sh.
# Works from any directory. Needs root (or sudo) for packages and PostgreSQL.

set -euo pipefail

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# Seconds each component gets to become ready.
READY_TIMEOUT=120

# ---------------------------------------------------------------------------------------------
# 1. System dependencies
# ---------------------------------------------------------------------------------------------

log "checking system packages"
# gettext-base provides envsubst (nginx config rendering); ca-certificates lets cargo fetch crates.
timed "system packages" ensure_packages nginx curl openssl pkg-config cmake build-essential gettext-base \
    ca-certificates libcurl4-openssl-dev
timed "PostgreSQL" ensure_postgres

# ---------------------------------------------------------------------------------------------
# 2. Configuration and database
# ---------------------------------------------------------------------------------------------

if [ ! -f .env ]; then
    log "writing .env (local configuration; kept on later runs)"
    secrets_key="$(openssl rand -base64 32)"
    umask_saved="$(umask)"
    umask 077 # .env holds SECRETS_KEY
    cat >.env <<EOF
# Local configuration of the admin platform, written by deploy/up.sh. Edit freely: it is never
# overwritten. Loaded by deploy/up.sh and deploy/dev-token with \`set -a; . ./.env; set +a\`.
DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/admin_platform
COMMAND_API_ADDR=127.0.0.1:8081
QUERY_API_ADDR=127.0.0.1:8082
PROJECTOR_ADDR=127.0.0.1:8083
GATEWAY_ADDR=127.0.0.1:8080
DEV_ISSUER_ADDR=127.0.0.1:8090
DEV_ISSUER_KEY_FILE=$RUN_DIR/dev-issuer-key.pem
AUTH_ISSUER=http://127.0.0.1:8090/
AUTH_AUDIENCE=admin-platform
SYSTEM_ADMINS=dev-admin
SECRETS_KEY=$secrets_key
RUST_LOG=info
EOF
    umask "$umask_saved"
else
    log "using the existing .env"
fi

set -a
# shellcheck disable=SC1091
. ./.env
set +a

# ensure_setting NAME VALUE: appends NAME=VALUE to .env and exports it unless .env sets NAME
# already. Settings added after a checkout's .env was written arrive this way, with defaults.
ensure_setting() {
    local name="$1" value="$2"
    grep -q "^$name=" .env && return 0
    log "adding $name to .env"
    printf '%s=%s\n' "$name" "$value" >>.env
    export "$name=$value"
}

# The OAuth client of the browser sign-in at the issuer (the dev-issuer reads the same two), and
# the gateway's public base URL: the sign-in callback is ${PUBLIC_URL}/api/auth/callback, and
# browsers must use exactly this origin for their session cookie to work.
ensure_setting AUTH_CLIENT_ID admin-platform-web
ensure_setting AUTH_CLIENT_SECRET "$(openssl rand -hex 24)"
ensure_setting PUBLIC_URL "http://localhost:${GATEWAY_ADDR##*:}"

# Kafka: the local broker's address, its storage (its PostgreSQL client wants a password and
# `localhost`), and the prefix of the topics the projector publishes to.
ensure_setting KAFKA_BROKERS 127.0.0.1:9092
ensure_setting KAFKA_TOPIC_PREFIX admin-platform
ensure_setting TANSU_STORAGE_URL postgres://postgres:postgres@localhost:5432/tansu

# Prompt-template executions: the local fake model provider, and the outbound allow-list that lets
# command-api reach it on loopback (model URLs may not reach internal addresses otherwise).
ensure_setting FAKE_PROVIDER_ADDR 127.0.0.1:8093
ensure_setting OUTBOUND_ALLOW 127.0.0.1/32

# The MCP server (mcp-api), behind the gateway at /mcp. The gateway passes the client's Host on, so
# the allowed hosts are those clients use to reach the gateway.
ensure_setting MCP_API_ADDR 127.0.0.1:8084
ensure_setting MCP_ALLOWED_HOSTS localhost,127.0.0.1

# The processed queue: the bucket the workflow runtime writes processed messages into, on the local
# S3 server (moto, on S3_ADDR), with the credentials and region the services sign their calls with
# (moto accepts any).
ensure_setting S3_ADDR 127.0.0.1:8094
ensure_setting S3_ENDPOINT "http://$S3_ADDR"
ensure_setting S3_BUCKET processed-messages
ensure_setting AWS_REGION us-east-1
ensure_setting AWS_ACCESS_KEY_ID local
ensure_setting AWS_SECRET_ACCESS_KEY local

# The database named in DATABASE_URL (admin_platform unless .env was edited), on the local server.
db_name="${DATABASE_URL##*/}"
db_name="${db_name%%\?*}"
ensure_database "${db_name:-admin_platform}"
ensure_tansu_database "${TANSU_STORAGE_URL##*/}"

# ---------------------------------------------------------------------------------------------
# 3. Build
# ---------------------------------------------------------------------------------------------

timed "the Kafka broker" ensure_tansu
# Sets MOTO_SERVER, the command that starts it.
timed "the S3 server" ensure_moto
# Only the binaries the stack runs, in the dev profile: three minutes on 2 cores instead of ten for a
# release build, and the tests reuse them. The benchmark builds its own release binaries when run.
log "cargo build (command-api, query-api, mcp-api, projector, dev-issuer, fake-provider, queue-producer)"
timed "the build" cargo build --locked -p command-api -p query-api -p mcp-api -p projector -p tests \
    --bin command-api --bin query-api --bin mcp-api --bin projector --bin dev-issuer \
    --bin fake-provider --bin queue-producer

# ---------------------------------------------------------------------------------------------
# 4. Start the processes
# ---------------------------------------------------------------------------------------------

bash "$REPO_ROOT/deploy/down.sh"
mkdir -p "$RUN_DIR"

# start_process NAME ARGS...: starts target/debug/NAME in the background with the environment
# loaded above, logging to $RUN_DIR/NAME.log (truncated) and recording its pid in NAME.pid.
start_process() {
    local name="$1"
    shift
    local bin="$REPO_ROOT/target/debug/$name"
    [ -x "$bin" ] || die "$bin was not built"
    log "starting $name"
    nohup "$bin" "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo "$!" >"$RUN_DIR/$name.pid"
}

# wait_ready NAME URL LOGFILE: waits for URL to answer 200; on failure shows the end of LOGFILE
# and exits. For a process started by start_process, stops waiting as soon as it has exited.
wait_ready() {
    local name="$1" url="$2" logfile="$3" pid=""
    [ -f "$RUN_DIR/$name.pid" ] && pid="$(cat "$RUN_DIR/$name.pid")"
    log "waiting for $name ($url)"
    if ! wait_http "$url" "$READY_TIMEOUT" ${pid:+"$pid"}; then
        printf '\n--- last lines of %s ---\n' "$logfile" >&2
        tail -n 40 "$logfile" >&2 2>/dev/null || true
        printf -- '---\n' >&2
        die "$name is not ready. The other processes are left running; stop them with deploy/down.sh"
    fi
}

# The S3 server before the services that read the processed queue. It starts empty: the bucket is
# created here (an unsigned CreateBucket, which moto accepts), its messages once the API is up.
log "starting the moto S3 server on $S3_ADDR"
nohup "$MOTO_SERVER" -H "${S3_ADDR%:*}" -p "${S3_ADDR##*:}" >"$RUN_DIR/moto.log" 2>&1 </dev/null &
echo "$!" >"$RUN_DIR/moto.pid"
wait_ready moto "http://$S3_ADDR/moto-api/data.json" "$RUN_DIR/moto.log"
curl -sS --fail --max-time 10 -o /dev/null -X PUT "http://$S3_ADDR/$S3_BUCKET" \
    || die "creating the bucket $S3_BUCKET on the S3 server at $S3_ADDR failed"

# The token issuer first: the APIs fetch its JWKS to verify tokens. It reads AUTH_CLIENT_ID and
# AUTH_CLIENT_SECRET from the environment, like command-api, so both agree on the client.
# The Kafka broker first: the projector publishes to it.
log "starting the tansu Kafka broker on $KAFKA_BROKERS"
nohup tansu broker --listener-url "tcp://$KAFKA_BROKERS" --advertised-listener-url "tcp://$KAFKA_BROKERS" \
    --storage-engine "$TANSU_STORAGE_URL" >"$RUN_DIR/tansu.log" 2>&1 </dev/null &
echo "$!" >"$RUN_DIR/tansu.pid"
if ! wait_port "${KAFKA_BROKERS%:*}" "${KAFKA_BROKERS##*:}" "$READY_TIMEOUT"; then
    tail -n 40 "$RUN_DIR/tansu.log" >&2 || true
    die "the Kafka broker is not ready"
fi

start_process dev-issuer serve
wait_ready dev-issuer "http://$DEV_ISSUER_ADDR/.well-known/jwks.json" "$RUN_DIR/dev-issuer.log"

start_process fake-provider
start_process command-api
start_process query-api
start_process mcp-api
start_process projector # no arguments: run the projection workers

# The gateway: render the template (only our placeholders; nginx's own $variables stay as they
# are), check it, then start nginx, which daemonizes and writes $RUN_DIR/nginx.pid itself.
export RUN_DIR
mkdir -p "$RUN_DIR/nginx-tmp"
render_gateway
: >"$RUN_DIR/nginx-error.log"
if ! nginx_check="$(run_nginx -t -q 2>&1)"; then
    printf '%s\n' "$nginx_check" >&2
    die "the rendered nginx config $RUN_DIR/nginx.conf is invalid"
fi
log "starting nginx gateway on $GATEWAY_ADDR"
run_nginx

# ---------------------------------------------------------------------------------------------
# 5. Readiness
# ---------------------------------------------------------------------------------------------

wait_ready command-api "http://$COMMAND_API_ADDR/readyz" "$RUN_DIR/command-api.log"
wait_ready query-api "http://$QUERY_API_ADDR/readyz" "$RUN_DIR/query-api.log"
wait_ready mcp-api "http://$MCP_API_ADDR/readyz" "$RUN_DIR/mcp-api.log"
wait_ready projector "http://$PROJECTOR_ADDR/readyz" "$RUN_DIR/projector.log"
wait_ready nginx "http://$GATEWAY_ADDR/healthz" "$RUN_DIR/nginx-error.log"
wait_ready fake-provider "http://$FAKE_PROVIDER_ADDR/_requests" "$RUN_DIR/fake-provider.log"

# Two visible system models on the fake provider, so that any template can run locally. Creating
# one that exists answers 409 (names are unique), which leaves it as it is.
admin_token="$(bash "$REPO_ROOT/deploy/dev-token" "${SYSTEM_ADMINS%%,*}")"
for provider in openai anthropic; do
    case "$provider" in
        openai) path=/ok/v1/chat/completions ;;
        anthropic) path=/ok/v1/messages ;;
    esac
    status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$GATEWAY_ADDR/api/system-models" \
        -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
        -d "{\"name\": \"Local fake ($provider)\", \"modelUrl\": \"http://$FAKE_PROVIDER_ADDR$path\",
             \"provider\": \"$provider\", \"providerModel\": \"fake-$provider\", \"visible\": true,
             \"token\": \"local-fake-key\", \"inputPricePerMillionTokens\": 1,
             \"outputPricePerMillionTokens\": 2, \"currency\": \"USD\"}")"
    case "$status" in
        201) log "registered the system model \"Local fake ($provider)\"" ;;
        409) ;;
        *) die "registering the system model \"Local fake ($provider)\" answered $status" ;;
    esac
done

# api METHOD PATH [JSON]: calls the API through the gateway as the System administrator; sets
# `status` and `body`.
api() {
    local method="$1" path="$2" json="${3:-}" out
    local args=(-sS --max-time 30 -X "$method" -H "Authorization: Bearer $admin_token"
        -w '\n%{http_code}')
    if [ -n "$json" ]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$json")
    fi
    out="$(curl "${args[@]}" "http://$GATEWAY_ADDR$path")" \
        || die "$method $path: the gateway at $GATEWAY_ADDR did not answer"
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
}

# ensure_named NAME LIST_PATH CREATE_PATH JSON: prints the id of the resource named NAME
# (case-insensitively, as names are unique) on the page LIST_PATH answers, creating it by posting
# JSON to CREATE_PATH when there is none.
ensure_named() {
    local name="$1" list="$2" create="$3" json="$4" id
    api GET "$list"
    [ "$status" = 200 ] || die "GET $list answered $status: $body"
    id="$(python3 -c 'import json, sys
print(next((r["id"] for r in json.load(sys.stdin)["data"] if r["name"].lower() == sys.argv[1].lower()), ""))' \
        "$name" <<<"$body")"
    if [ -z "$id" ]; then
        api POST "$create" "$json"
        [ "$status" = 201 ] || die "POST $create (\"$name\") answered $status: $body"
        id="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <<<"$body")"
        log "created \"$name\" ($id)"
    fi
    printf '%s\n' "$id"
}

# The processed queue's demo data: an organization and an environment to file messages under, and
# the messages, written again on every run since moto kept none of the last run's.
demo_org="$(ensure_named Demo "/api/organizations?search=Demo&limit=100" /api/organizations \
    '{"name": "Demo"}')"
demo_env="$(ensure_named Production \
    "/api/environments?organizationId=$demo_org&search=Production&limit=100" /api/environments \
    "{\"organizationId\": \"$demo_org\", \"name\": \"Production\"}")"
log "writing processed messages of Demo / Production into the bucket $S3_BUCKET"
"$REPO_ROOT/target/debug/queue-producer" --organization-id "$demo_org" --environment-id "$demo_env" \
    --count 200 || die "queue-producer failed"
log "everything is up, $SECONDS s after deploy/up.sh started"

cat <<EOF

The admin platform is running.

  Gateway:    $PUBLIC_URL/   (GET/HEAD -> query-api, other methods and sign-in -> command-api)
  MCP:        $PUBLIC_URL/mcp   (for AI agents; a bearer token from deploy/dev-token; see README)
  Sign in:    $PUBLIC_URL/api/auth/login   (in a browser; any user name, no password)
  Models:     a fake provider on $FAKE_PROVIDER_ADDR, as the visible system models
              "Local fake (openai)" and "Local fake (anthropic)" (GET /api/system-models/visible)
  Kafka:      $KAFKA_BROKERS, topics $KAFKA_TOPIC_PREFIX.<aggregate>; watch them with
              target/debug/projector tail
  S3:         moto on $S3_ADDR (in memory), bucket $S3_BUCKET: the processed queue, with 200
              messages of the organization "Demo" ($demo_org), environment "Production"
              ($demo_env), written by target/debug/queue-producer on every deploy/up.sh
  Logs:       $RUN_DIR/*.log
  Stop:       deploy/down.sh

Get a bearer token for the system administrator ($SYSTEM_ADMINS):

  TOKEN=\$(deploy/dev-token dev-admin)
  curl -H "Authorization: Bearer \$TOKEN" $PUBLIC_URL/api/...

Get a token for another user, making them a member of an organization first:

  TOKEN=\$(deploy/dev-token alice admin <organizationId>)

List Demo's processed queue, and count its messages:

  curl -H "Authorization: Bearer \$(deploy/dev-token ${SYSTEM_ADMINS%%,*})" "$PUBLIC_URL/api/processed-queue?organizationId=$demo_org"
  curl -H "Authorization: Bearer \$(deploy/dev-token ${SYSTEM_ADMINS%%,*})" "$PUBLIC_URL/api/processed-queue/counts?organizationId=$demo_org"
EOF
