#!/usr/bin/env bash
#
# deploy/down.sh — stops the local stack started by deploy/up.sh.
#
# It owns shutting down what up.sh recorded in deploy/.run/: the nginx gateway first (so no new
# requests reach the services), then every process with a deploy/.run/<name>.pid file. Processes
# already gone and stale pid files are ignored; a pid is only signalled when that process still
# runs the recorded program (pids get reused). PostgreSQL is left running.
# Works from any directory; safe to run when nothing is running.

set -euo pipefail

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Seconds a process gets to exit after a polite signal before it is killed: more than the 30 s
# the services give the work in flight when they receive SIGTERM.
STOP_TIMEOUT=35

[ -d "$RUN_DIR" ] || exit 0

# True when PID is alive and its command line mentions NAME.
is_running() {
    local pid="$1" name="$2" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *"$name"* ]]
}

# wait_exit PID NAME: waits up to STOP_TIMEOUT seconds for PID to exit, then kills it.
wait_exit() {
    local pid="$1" name="$2" i
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        is_running "$pid" "$name" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop within ${STOP_TIMEOUT} s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# The gateway. `nginx -s quit` is a graceful stop (finishes in-flight requests); fall back to
# SIGQUIT on the master when the binary or the rendered config is not there any more.
nginx_pidfile="$RUN_DIR/nginx.pid"
if [ -f "$nginx_pidfile" ]; then
    pid="$(cat "$nginx_pidfile" 2>/dev/null || true)"
    if is_running "$pid" nginx; then
        log "stopping nginx (pid $pid)"
        if ! { command -v nginx >/dev/null 2>&1 && [ -f "$RUN_DIR/nginx.conf" ] \
            && run_nginx -s quit 2>/dev/null; }; then
            kill -QUIT "$pid" 2>/dev/null || true
        fi
        wait_exit "$pid" nginx
    fi
    rm -f "$nginx_pidfile"
fi

# The services: SIGTERM to all of them first, then wait for each.
stopping=()
for pidfile in "$RUN_DIR"/*.pid; do
    [ -e "$pidfile" ] || continue
    name="$(basename "$pidfile" .pid)"
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if is_running "$pid" "$name"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        stopping+=("$pid:$name")
    fi
done
for entry in "${stopping[@]}"; do
    wait_exit "${entry%%:*}" "${entry#*:}"
done
rm -f "$RUN_DIR"/*.pid
