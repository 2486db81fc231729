#!/usr/bin/env bash
# Starts SERVERS holdfast processes (--threads 1, each on its own free ports), runs
# holdfast-stress across all of them with the remaining flags, samples memory while it
# runs, and stops every server again (also on Ctrl-C or error).
#
#   cargo build --release -p holdfast -p holdfast-stress
#   tools/stress/scale.sh 12 --connections 200000 --publish 1 --hold 10s --json scale.json
#
# BIN_DIR (default target/release) is where both binaries are.
set -euo pipefail

servers=${1:?usage: scale.sh SERVERS [holdfast-stress flags...]}
shift
bin=${BIN_DIR:-target/release}
dir=$(mktemp -d)
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

for i in $(seq 1 "$servers"); do
    "$bin/holdfast" --threads 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        >"$dir/srv$i.out" 2>&1 &
    pids+=($!)
done
targets=()
admins=()
for i in $(seq 1 "$servers"); do
    for _ in $(seq 1 100); do # at most 10 s
        grep -q '^listening admin=' "$dir/srv$i.out" && break
        sleep 0.1
    done
    if ! grep -q '^listening admin=' "$dir/srv$i.out"; then
        echo "server $i did not start:" >&2
        cat "$dir/srv$i.out" >&2
        exit 1
    fi
    targets+=("$(sed -n 's/^listening public=//p' "$dir/srv$i.out")")
    admins+=("$(sed -n 's/^listening admin=//p' "$dir/srv$i.out")")
done
echo "servers (pids ${pids[*]}): $(IFS=,; echo "${targets[*]}")" >&2

mib() { awk '{s += $1} END {printf "%.0f", s / 1024}'; }
sample() {
    local used slab srv
    used=$(free -m | awk '/^Mem:/ {print $3}')
    slab=$(awk '/^Slab:/ {printf "%.0f", $2 / 1024}' /proc/meminfo)
    srv=$(ps -o rss= -p "$(IFS=,; echo "${pids[*]}")" | mib)
    echo "mem: used=${used}MiB kernel_slab=${slab}MiB servers_rss=${srv}MiB" >&2
}

sample
"$bin/holdfast-stress" --target "$(IFS=,; echo "${targets[*]}")" \
    --admin "$(IFS=,; echo "${admins[*]}")" "$@" &
stress=$!
while kill -0 "$stress" 2>/dev/null; do
    sleep 2
    sample
done
status=0
wait "$stress" || status=$?
sample
exit "$status"
