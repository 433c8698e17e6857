#!/usr/bin/env bash
#
# deploy/test.sh — runs the whole test suite.
#
# It owns the test run: it makes sure the Rust toolchain, the build dependencies, nginx, a local
# PostgreSQL (127.0.0.1:5432, see deploy/lib.sh), the tansu Kafka broker, moto's S3 server and the
# MCP Python SDK are there, builds the binaries, then runs `cargo test` over the workspace with
# TEST_DATABASE_URL pointing at that server's `postgres` database and MOTO_SERVER at moto's server command. Tests
# create (and drop) their own randomly named databases from it, and start their own S3 servers, so
# nothing needs to be running beforehand and the local stack's database is not touched. Then it
# fuzzes the API against schemas/openapi.yaml with deploy/fuzz.sh (on its own database and ports).
#
# Extra arguments go to cargo test, e.g.:
#   deploy/test.sh -p command-api
#   deploy/test.sh -- --nocapture
# Exits non-zero when cargo test or the fuzz run fails. Works from any directory.

set -euo pipefail

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

ensure_rust
ensure_packages curl pkg-config cmake build-essential ca-certificates libcurl4-openssl-dev
# The gateway test runs real nginx on the rendered template.
ensure_packages nginx gettext-base
ensure_postgres
# The Kafka tests start their own tansu brokers (each on its own port and database).
ensure_tansu
# The processed-queue tests start their own S3 servers (`"$MOTO_SERVER" -H 127.0.0.1 -p PORT`, each
# in memory on its own port); ensure_moto installs moto and exports MOTO_SERVER.
ensure_moto
# The MCP tests drive the official Python SDK too (tests/mcp/client.py), on MCP_PYTHON.
ensure_mcp_sdk

export TEST_DATABASE_URL="$PG_ADMIN_URL"

# The tests that start the real binaries (signals, exit statuses, the gateway) find them next to the
# test executables; cargo test does not build other packages' binaries for them.
log "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

status=0
log "cargo test --workspace --locked --no-fail-fast $* (holds_transactions one test at a time)"
# The tests in tests/tests/holds_transactions hold transactions open, which holds back every reader of
# the log on the server (the log's reading order, events/log/src/lib.rs): they run on their own, after
# the others, and one at a time, so that none waits out another's held transaction.
cargo test --workspace --locked --no-fail-fast --exclude tests "$@" || status=$?
cargo test -p tests --locked --no-fail-fast --lib --bins --test it "$@" || status=$?
RUST_TEST_THREADS=1 cargo test -p tests --locked --no-fail-fast --test holds_transactions "$@" || status=$?

# Then the API against its description: Schemathesis over schemas/openapi.yaml (deploy/fuzz.sh).
log "deploy/fuzz.sh"
bash "$REPO_ROOT/deploy/fuzz.sh" || status=$?
exit "$status"
