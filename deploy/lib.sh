# shellcheck shell=bash
#
# deploy/lib.sh — shared shell functions for the local stack (deploy/up.sh, deploy/down.sh,
# deploy/dev-token, deploy/test.sh) and for CI (.ci/run).
#
# Source it, do not run it:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Sourcing it turns on strict mode (set -euo pipefail, inherit_errexit) in the calling shell.
#
# It owns:
#   - installing missing Debian packages          (ensure_packages)
#   - a local PostgreSQL on 127.0.0.1:5432         (ensure_postgres, ensure_database)
#   - waiting for an HTTP endpoint to answer 200   (wait_http)
#   - waiting for a TCP port to accept connections (wait_port)
#   - the tansu Kafka broker and its database      (ensure_tansu, ensure_tansu_database)
#   - moto's S3 server, installed with pip         (ensure_moto, which exports MOTO_SERVER)
#   - running nginx on the rendered gateway config (run_nginx)
#   - checking that the Rust toolchain is present  (ensure_rust, ensure_rust_components)
#
# Assumptions: Debian (apt/dpkg), no systemd required (clusters are driven with pg_ctlcluster
# --skip-systemctl-redirect). Package installation and cluster management need root; when not
# root, sudo is used if it is available.

set -euo pipefail
# Let failures inside $(...) stop the script too (bash >= 4.4).
shopt -s inherit_errexit

# Where the local database server lives, and the superuser URL every script uses. The password
# is set by ensure_postgres so that this URL works on both "trust" and "scram-sha-256" clusters.
PG_HOST="127.0.0.1"
PG_PORT="5432"
PG_ADMIN_URL="postgres://postgres:postgres@${PG_HOST}:${PG_PORT}/postgres"
# Lowest max_connections the test suite and the benchmark need (many pools run side by side).
PG_MIN_MAX_CONNECTIONS=400

# The repository root (this file lives in <root>/deploy/), and the directory that holds what the
# local stack writes at run time: pid files, logs, the rendered nginx config, the dev-issuer key.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO_ROOT/deploy/.run"

# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

log() { printf '==> %s\n' "$*" >&2; }

# timed LABEL COMMAND...: runs COMMAND, then logs how long LABEL took (the cost of each setup step).
timed() {
    local label="$1" started=$SECONDS
    shift
    "$@"
    log "$label took $((SECONDS - started)) s"
}
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Privileges
# ---------------------------------------------------------------------------------------------

# as_root CMD...: runs a command as root (directly, or through sudo when not root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not available; run this script as root"
    fi
}

# as_postgres CMD...: runs a command as the postgres OS user (peer auth over the Unix socket).
# Runs from / so that psql does not complain about an unreadable working directory.
as_postgres() {
    local cmd
    cmd="$(printf '%q ' "$@")"
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && su postgres -s /bin/bash -c "$cmd")
    elif command -v sudo >/dev/null 2>&1; then
        (cd / && sudo -u postgres "$@")
    else
        die "running '$*' as the postgres user needs root or sudo"
    fi
}

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------

# Runs `apt-get update` at most once per process tree (the flag is exported so that scripts
# started from this one, e.g. .ci/run -> deploy/test.sh, do not update again).
apt_update_once() {
    if [ "${DEPLOY_APT_UPDATED:-0}" != 1 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        export DEPLOY_APT_UPDATED=1
    fi
}

# True when the Debian package is installed.
package_installed() {
    local status
    status="$(dpkg -s "$1" 2>/dev/null || true)"
    [[ "$status" == *"Status: install ok installed"* ]]
}

# ensure_packages PKG...: installs the listed Debian packages that are not installed yet.
# Package scripts are not allowed to start services during the installation (no nginx on port
# 80, no PostgreSQL started behind our back): ensure_postgres and up.sh start what they need.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0

    apt_update_once
    log "installing Debian packages: ${missing[*]}"

    # policy-rc.d exiting 101 tells invoke-rc.d not to start services. Only add one temporarily
    # when the machine has none (Docker images usually ship one already).
    local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || rc=$?
    if [ "$added_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

# True when some PostgreSQL server binary from the Debian packages is installed.
postgres_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Prints "VERSION NAME STATUS" of the Debian cluster configured on $PG_PORT, if there is one.
find_cluster_on_port() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local clusters
    clusters="$(pg_lsclusters -h 2>/dev/null || true)"
    awk -v port="$PG_PORT" '$3 == port && !found { print $1, $2, $4; found = 1 }' <<<"$clusters"
}

# Runs SQL (from stdin) as the postgres superuser over the cluster's Unix socket.
# Usage: cluster_psql PORT [psql args...] <<<"SQL"
cluster_psql() {
    local port="$1"
    shift
    as_postgres psql -X -q -At -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@"
}

# Waits (bounded) until the cluster accepts connections on its Unix socket.
wait_cluster_socket() {
    local port="$1" seconds="${2:-60}" i
    for ((i = 0; i < seconds; i++)); do
        pg_isready -q -p "$port" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# pg_ctlcluster ACTION for VERSION NAME, printing the server log when it fails.
cluster_ctl() {
    local action="$1" version="$2" name="$3"
    log "PostgreSQL cluster $version/$name: $action"
    if ! as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" "$action"; then
        local logfile="/var/log/postgresql/postgresql-${version}-${name}.log"
        [ -r "$logfile" ] && tail -n 30 "$logfile" >&2
        die "pg_ctlcluster $version $name $action failed (log: $logfile)"
    fi
}

# Applies the settings the platform needs to a server reachable with a superuser psql command
# given as arguments (e.g. `cluster_psql 5432` or `psql $PG_ADMIN_URL`). Prints "restart" when a
# restart is needed for them to take effect, nothing otherwise.
apply_postgres_settings() {
    local max_conn listen needs_restart=0
    max_conn="$("$@" <<<'SHOW max_connections')"
    listen="$("$@" <<<'SHOW listen_addresses')"

    # Listening on 127.0.0.1: 'localhost', '*', '0.0.0.0' and explicit 127.0.0.1 all qualify.
    case ",${listen// /}," in
        *,\*,* | *,0.0.0.0,* | *,localhost,* | *,127.0.0.1,*) ;;
        *)
            log "listen_addresses is '$listen': adding 127.0.0.1"
            local new="127.0.0.1"
            [ -n "$listen" ] && new="$listen,127.0.0.1"
            "$@" -v v="$new" <<<"ALTER SYSTEM SET listen_addresses = :'v'" >/dev/null
            needs_restart=1
            ;;
    esac

    if [ "$max_conn" -lt "$PG_MIN_MAX_CONNECTIONS" ]; then
        log "max_connections is $max_conn: raising it to $PG_MIN_MAX_CONNECTIONS"
        "$@" <<<"ALTER SYSTEM SET max_connections = $PG_MIN_MAX_CONNECTIONS" >/dev/null
        needs_restart=1
    fi

    # Abandoned transactions must not hold locks (or the projector's advisory locks) forever.
    local idle_timeout
    idle_timeout="$("$@" <<<'SHOW idle_in_transaction_session_timeout')"
    if [ "$idle_timeout" != "1min" ]; then
        "$@" <<<"ALTER SYSTEM SET idle_in_transaction_session_timeout = '60s'" >/dev/null
        "$@" <<<'SELECT pg_reload_conf()' >/dev/null
    fi

    if [ "$needs_restart" -eq 1 ]; then
        echo restart
    fi
}

# ensure_postgres: makes sure a PostgreSQL server runs on 127.0.0.1:5432 and that
# $PG_ADMIN_URL logs in as a superuser. Installs and creates a Debian cluster when needed,
# starts it when stopped, and applies the settings above. Leaves the server running.
ensure_postgres() {
    local cluster version name status

    cluster="$(find_cluster_on_port)"

    # A server on the port that is not a Debian cluster (e.g. a container publishing 5432):
    # use it as is when the admin URL works; settings that need a restart are only reported.
    if [ -z "$cluster" ] && command -v pg_isready >/dev/null 2>&1 \
        && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; then
        log "a PostgreSQL server not managed by pg_ctlcluster answers on $PG_HOST:$PG_PORT; using it"
        psql "$PG_ADMIN_URL" -X -q -At -c 'SELECT 1' >/dev/null 2>&1 \
            || die "cannot log in with $PG_ADMIN_URL on the existing server at $PG_HOST:$PG_PORT"
        local outcome
        outcome="$(apply_postgres_settings psql "$PG_ADMIN_URL" -X -q -At -v ON_ERROR_STOP=1)"
        if [ "$outcome" = restart ]; then
            warn "restart the server on $PG_HOST:$PG_PORT for max_connections/listen_addresses to take effect"
        fi
        return 0
    fi

    # Install the server when it is missing (postgresql-contrib is a separate package on some
    # Debian releases and merged into the server package on others).
    if ! postgres_server_installed || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_update_once
        local pkgs=(postgresql)
        if apt-cache show --no-all-versions postgresql-contrib >/dev/null 2>&1; then
            pkgs+=(postgresql-contrib)
        fi
        ensure_packages "${pkgs[@]}"
        cluster="$(find_cluster_on_port)"
    fi

    # Create a cluster on the port when there is none (the package's postinst normally creates
    # "<version> main", but it may be missing or use another port).
    if [ -z "$cluster" ]; then
        version="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' \
            | awk -F/ '{ print $5 }' | sort -V | tail -n 1)"
        [ -n "$version" ] || die "no PostgreSQL server version found under /usr/lib/postgresql"
        name=main
        if [ -d "/etc/postgresql/$version/main" ]; then
            name=admin_platform
        fi
        log "creating PostgreSQL cluster $version/$name on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$version" "$name" >/dev/null
        cluster="$(find_cluster_on_port)"
        [ -n "$cluster" ] || die "pg_createcluster did not create a cluster on port $PG_PORT"
    fi

    read -r version name status <<<"$cluster"
    if [ "$status" != online ]; then
        cluster_ctl start "$version" "$name"
    fi
    wait_cluster_socket "$PG_PORT" 60 \
        || die "PostgreSQL cluster $version/$name does not accept connections on its Unix socket"

    # Same password on every machine, so that the URL works whatever pg_hba.conf says for TCP.
    cluster_psql "$PG_PORT" <<<"ALTER ROLE postgres WITH LOGIN SUPERUSER PASSWORD 'postgres'" >/dev/null

    local outcome
    outcome="$(apply_postgres_settings cluster_psql "$PG_PORT")"
    if [ "$outcome" = restart ]; then
        cluster_ctl restart "$version" "$name"
    fi

    # Bounded wait for TCP readiness, then check that the admin URL really logs in.
    local i
    for ((i = 0; i < 60; i++)); do
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1 && break
        sleep 1
    done
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1 \
        || die "PostgreSQL ($version/$name) is not ready on $PG_HOST:$PG_PORT after 60 s"
    psql "$PG_ADMIN_URL" -X -q -At -c 'SELECT 1' >/dev/null \
        || die "PostgreSQL answers on $PG_HOST:$PG_PORT but $PG_ADMIN_URL cannot log in (check pg_hba.conf)"
    log "PostgreSQL $version/$name is ready on $PG_HOST:$PG_PORT"
}

# ensure_database NAME: creates the database NAME on the local server unless it exists.
ensure_database() {
    local db="${1:?ensure_database needs a database name}"
    psql "$PG_ADMIN_URL" -X -q -At -v ON_ERROR_STOP=1 -v name="$db" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I', :'name')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name')
\gexec
SQL
}

# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

# wait_http URL SECONDS [PID]: polls URL until it answers 200, for at most SECONDS seconds.
# When PID is given, gives up as soon as that process has exited. Returns non-zero (with a
# message on stderr) on failure, so that callers can print their own diagnostics.
wait_http() {
    local url="${1:?wait_http needs a URL}" seconds="${2:?wait_http needs a timeout in seconds}"
    local pid="${3:-}" deadline code
    command -v curl >/dev/null 2>&1 || ensure_packages curl
    deadline=$((SECONDS + seconds))
    while :; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" 2>/dev/null || true)"
        [ "$code" = 200 ] && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            printf 'ERROR: %s: the process (pid %s) exited before answering 200\n' "$url" "$pid" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf 'ERROR: %s did not answer 200 within %s s (last status: %s)\n' \
                "$url" "$seconds" "${code:-none}" >&2
            return 1
        fi
        sleep 1
    done
}

# wait_port HOST PORT SECONDS: polls until HOST:PORT accepts TCP connections, for at most SECONDS.
wait_port() {
    local host="$1" port="$2" seconds="$3" deadline
    deadline=$((SECONDS + seconds))
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf 'ERROR: %s:%s did not accept connections within %s s\n' "$host" "$port" "$seconds" >&2
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# Kafka: the tansu broker
# ---------------------------------------------------------------------------------------------

# The broker version, built with the one storage engine the stack uses: PostgreSQL.
TANSU_VERSION="0.6.0"

# ensure_tansu: makes sure `tansu` $TANSU_VERSION is on PATH, building it with cargo when it is
# not (about 13 minutes on 2 cores). The binary stays in ~/.cargo/bin, so later runs skip this.
ensure_tansu() {
    ensure_rust
    if command -v tansu >/dev/null 2>&1 && [ "$(tansu --version 2>/dev/null)" = "tansu $TANSU_VERSION" ]; then
        return 0
    fi
    log "building the tansu $TANSU_VERSION Kafka broker (about 13 minutes on 2 idle cores; kept in ~/.cargo/bin)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features postgres
}

# ensure_tansu_database NAME: creates the broker's PostgreSQL database NAME with its tables
# (deploy/tansu-schema.sql; the broker does not create them itself) unless they exist.
ensure_tansu_database() {
    local db="${1:?ensure_tansu_database needs a database name}" url
    ensure_database "$db"
    url="${PG_ADMIN_URL%/*}/$db"
    if [ "$(psql "$url" -X -q -At -c "SELECT to_regclass('public.cluster') IS NOT NULL")" != t ]; then
        log "creating the broker's tables in database $db"
        psql "$url" -X -q -v ON_ERROR_STOP=1 -f "$REPO_ROOT/deploy/tansu-schema.sql" >/dev/null
    fi
}

# ---------------------------------------------------------------------------------------------
# S3: moto's server
# ---------------------------------------------------------------------------------------------

# The S3-compatible server of the local stack and the tests: moto's (`moto[server]` from PyPI). It
# keeps everything in memory: a restart starts with no bucket.
MOTO_VERSION="5.2.1"

# moto_server_path: when python3 has moto $MOTO_VERSION with the server's dependencies, succeeds and
# prints the path of the `moto_server` script that installation put wherever pip puts scripts
# (which need not be on PATH, e.g. ~/.local/bin), or of the one on PATH when the installation does
# not record it. Fails otherwise.
moto_server_path() {
    local path
    path="$(python3 - "$MOTO_VERSION" 2>/dev/null <<'PY'
import importlib.metadata, os, sys
dist = importlib.metadata.distribution("moto")
if dist.version != sys.argv[1]:
    sys.exit(1)
import moto.server  # fails without the [server] extra's dependencies (flask)
for file in dist.files or []:
    if file.name == "moto_server" and os.access(file.locate(), os.X_OK):
        print(os.path.realpath(file.locate()))
        break
PY
)" || return 1
    [ -n "$path" ] || path="$(command -v moto_server)" || return 1
    printf '%s\n' "$path"
}

# ensure_moto: makes sure python3 has moto[server] $MOTO_VERSION, installing it with pip when it is
# missing or another version (and python3 and pip with apt when they are missing), and exports
# MOTO_SERVER: the path of its `moto_server` script. `"$MOTO_SERVER" -H 127.0.0.1 -p PORT` serves S3
# on that port (any credentials, any region) until it is stopped.
ensure_moto() {
    command -v python3 >/dev/null 2>&1 || ensure_packages python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || ensure_packages python3-pip
    local path
    if ! path="$(moto_server_path)"; then
        log "installing moto[server] $MOTO_VERSION (the local S3 server) with pip"
        # PIP_BREAK_SYSTEM_PACKAGES: a Debian python3 refuses pip installs otherwise (PEP 668); pip
        # then installs under /usr/local (as root) or ~/.local, never over the Debian packages' files.
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
            "moto[server]==$MOTO_VERSION"
        path="$(moto_server_path)" \
            || die "pip installed moto[server] $MOTO_VERSION, but python3 does not find it or its moto_server"
    fi
    export MOTO_SERVER="$path"
}

# The official MCP Python SDK, which tests/mcp/client.py drives against the MCP server. It lives in a
# virtual environment of its own, so that its dependencies and those of the other Python tools
# (moto, Schemathesis) cannot displace each other.
MCP_SDK_VERSION=2.3.0
MCP_SDK_VENV="${HOME:-/root}/.cache/admin-platform/mcp-sdk-$MCP_SDK_VERSION"

# ensure_mcp_sdk: makes sure the SDK's virtual environment exists, and exports MCP_PYTHON, its python.
ensure_mcp_sdk() {
    command -v python3 >/dev/null 2>&1 || ensure_packages python3 python3-pip python3-venv
    if ! "$MCP_SDK_VENV/bin/python" -c 'import mcp' >/dev/null 2>&1; then
        log "installing the MCP Python SDK (mcp $MCP_SDK_VERSION) into $MCP_SDK_VENV"
        rm -rf "$MCP_SDK_VENV"
        python3 -m venv "$MCP_SDK_VENV" || {
            ensure_packages python3-venv
            python3 -m venv "$MCP_SDK_VENV"
        }
        "$MCP_SDK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_SDK_VERSION" \
            || die "pip could not install mcp $MCP_SDK_VERSION"
    fi
    export MCP_PYTHON="$MCP_SDK_VENV/bin/python"
}

# ---------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------

# render_gateway: writes the gateway's nginx config, $RUN_DIR/nginx.conf, from
# deploy/nginx.conf.template with the addresses in GATEWAY_ADDR, COMMAND_API_ADDR, QUERY_API_ADDR and
# MCP_API_ADDR, and the routing rule of deploy/gateway-routes.map.
render_gateway() {
    # shellcheck disable=SC2016 # the list names the variables envsubst may replace; no expansion here
    GATEWAY_ROUTES="$REPO_ROOT/deploy/gateway-routes.map" RUN_DIR="$RUN_DIR" \
        envsubst '${RUN_DIR} ${GATEWAY_ADDR} ${COMMAND_API_ADDR} ${QUERY_API_ADDR} ${MCP_API_ADDR} ${GATEWAY_ROUTES}' \
        <"$REPO_ROOT/deploy/nginx.conf.template" >"$RUN_DIR/nginx.conf"
}

# run_nginx ARGS...: runs nginx on the gateway config rendered by up.sh, with the prefix and the
# startup error log in $RUN_DIR (so /etc/nginx and /var/log/nginx are never used).
# Examples: `run_nginx` starts it, `run_nginx -t` checks it, `run_nginx -s quit` stops it.
run_nginx() {
    nginx -p "$RUN_DIR/" -e "$RUN_DIR/nginx-error.log" -c "$RUN_DIR/nginx.conf" "$@"
}

# ---------------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------------

# ensure_rust: makes sure `cargo` is on PATH (loading ~/.cargo/env, as rustup installs it).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "${HOME:-/root}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH. Install Rust with rustup \
(https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then re-run."
}

# ensure_rust_components COMPONENT...: adds rustup components (e.g. rustfmt, clippy) that are
# missing. Without rustup, only checks that the matching cargo subcommands exist.
ensure_rust_components() {
    ensure_rust
    local component installed
    for component in "$@"; do
        if command -v rustup >/dev/null 2>&1; then
            installed="$(rustup component list --installed 2>/dev/null || true)"
            if ! grep -q "^${component}\(-\|$\)" <<<"$installed"; then
                log "rustup component add $component"
                rustup component add "$component"
            fi
        else
            case "$component" in
                rustfmt) command -v cargo-fmt >/dev/null 2>&1 || die "cargo fmt (rustfmt) is not installed" ;;
                clippy) command -v cargo-clippy >/dev/null 2>&1 || die "cargo clippy is not installed" ;;
            esac
        fi
    done
}
