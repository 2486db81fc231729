# Shared by the measurement scripts in this directory (sourced, not run).
#
# Every script runs in a network namespace of its own (`unshare -n`, so root): its
# sysctls, ports 80/8080/8081 and TCP counters (nstat) are private to it, and nothing
# it does touches the host's network settings. Only holdfast's binary is needed:
# HOLDFAST=path (default: target/release/holdfast; build it with `cargo build --release`).

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HOLDFAST=${HOLDFAST:-$ROOT/target/release/holdfast}
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# Re-runs the calling script inside a new network namespace, once.
in_netns() {
    if [ -z "${HOLDFAST_NETNS:-}" ]; then
        [ "$(id -u)" = 0 ] || { echo "needs root (unshare -n, sysctl)" >&2; exit 1; }
        [ -x "$HOLDFAST" ] || { echo "no holdfast binary at $HOLDFAST (cargo build --release)" >&2; exit 1; }
        HOLDFAST_NETNS=1 exec unshare -n "$0" "$@"
    fi
    # Scratch space (nginx's config, logs, temp files), made world-readable for nginx's
    # workers and removed on exit.
    WORK=$(mktemp -d /tmp/holdfast-measure.XXXXXX)
    chmod 755 "$WORK"
    trap cleanup EXIT
    ip link set lo up
}

start_holdfast() {
    "$HOLDFAST" --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:8081 --threads 2 "$@" \
        >"$WORK/holdfast.log" 2>&1 &
    HF=$!
    PIDS+=("$HF")
    for _ in $(seq 50); do grep -q "listening admin" "$WORK/holdfast.log" && return; sleep 0.1; done
    echo "holdfast did not start:" >&2; cat "$WORK/holdfast.log" >&2; exit 1
}

# nginx with tuning/nginx.conf as shipped: ports kept (the namespace has them free),
# paths moved into $WORK, plus an optional sed expression to try a variant.
start_nginx() {
    local d=$WORK/nginx
    mkdir -p "$d/run" "$d/log" "$d/lib" "$d/www"
    sed -e "s#/run/#$d/run/#; s#/var/log/nginx/#$d/log/#g; s#/var/lib/nginx/#$d/lib/#g" \
        -e "s#/var/www/holdfast#$d/www#" ${1:+-e "$1"} "$ROOT/tuning/nginx.conf" >"$d/nginx.conf"
    nginx -p "$d" -e "$d/log/startup.log" -c "$d/nginx.conf" -g 'daemon off;' &
    NGINX=$!
    PIDS+=("$NGINX")
    for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:80/ && break; sleep 0.1; done
    NGINX_WORKERS=$(pgrep -P "$NGINX" | tr '\n' ' ')
}

# Sum of VmRSS of the given pids, in KiB.
rss_kib() {
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '/^VmRSS/{print $2}' "/proc/$p/status"))); done
    echo "$t"
}

stat_field() { curl -s 127.0.0.1:8081/stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Starts hold.py in the background; waits until it holds everything. HOLD_PID is set;
# `release_hold` lets it go.
hold() {
    mkfifo "$WORK/hold.ctl"
    python3 "$HERE/hold.py" "$@" <"$WORK/hold.ctl" >"$WORK/hold.out" &
    HOLD_PID=$!
    PIDS+=("$HOLD_PID")
    exec 3>"$WORK/hold.ctl"
    for _ in $(seq 600); do grep -q '^ready' "$WORK/hold.out" && break; sleep 0.2; done
    grep -q '^ready' "$WORK/hold.out" || { cat "$WORK/hold.out" >&2; exit 1; }
    grep -v '^ready' "$WORK/hold.out"
}
release_hold() { exec 3>&-; wait "$HOLD_PID" || true; }
