#!/usr/bin/env bash
# port-range.sh N [no-proxy-bind]
#
# What net.ipv4.ip_local_port_range does to held requests through nginx. The range is
# narrowed to 100 ports (50000-50099) so the wall is reached with N (default 150)
# long-polls: each held request holds one nginx->holdfast connection, and from one
# source address to holdfast's one address there is one connection per ephemeral
# port. With `no-proxy-bind` the shipped config's proxy_bind line is removed (one
# source address): 100 are held, the rest get 503 and nginx logs "Cannot assign
# requested address". As shipped, eight source addresses: room for 800.
#   sudo tuning/measure/port-range.sh 150 no-proxy-bind
#   sudo tuning/measure/port-range.sh 500
source "$(dirname "$0")/lib.sh"
in_netns "$@"
N=${1:-150}
sysctl -qw net.ipv4.ip_local_port_range="50000 50099"
start_holdfast
if [ "${2:-}" = no-proxy-bind ]; then start_nginx '/proxy_bind /d'; else start_nginx; fi
hold 127.0.0.1 80 "$N" '/sub/x?timeout=60'
echo "ephemeral ports 50000-50099, ${2:-proxy_bind as shipped}: holdfast has $(stat_field parked) parked;" \
    "nginx logged $(grep -c 'Cannot assign requested address' "$WORK/nginx/log/holdfast-error.log" || true) \"Cannot assign requested address\""
release_hold
