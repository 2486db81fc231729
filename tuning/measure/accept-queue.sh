#!/usr/bin/env bash
# accept-queue.sh SOMAXCONN [N] [STALL_SECONDS]
#
# What net.core.somaxconn does to a reconnect storm. holdfast listens with backlog
# 65535, which the kernel caps at somaxconn. N clients (default 15000) connect at once
# while holdfast's accept loops are stopped for STALL_SECONDS (default 1; SIGSTOP, as
# if it were busy or still starting): what does not fit in the accept queues is
# dropped and retried by the client 1 s, 3 s, ... later. Prints the connect times and
# the kernel's ListenOverflows / ListenDrops / TCPReqQFullDoCookies counters.
#   sudo tuning/measure/accept-queue.sh 4096     # the default since Linux 5.4
#   sudo tuning/measure/accept-queue.sh 65535    # tuning/sysctl.conf
# SYN_BACKLOG=n and SYNCOOKIES=0|1 set net.ipv4.tcp_max_syn_backlog / tcp_syncookies too.
source "$(dirname "$0")/lib.sh"
in_netns "$@"
SOMAXCONN=$1 N=${2:-15000} STALL=${3:-1}
sysctl -qw net.core.somaxconn="$SOMAXCONN"
[ -z "${SYN_BACKLOG:-}" ] || sysctl -qw net.ipv4.tcp_max_syn_backlog="$SYN_BACKLOG"
[ -z "${SYNCOOKIES:-}" ] || sysctl -qw net.ipv4.tcp_syncookies="$SYNCOOKIES"
start_holdfast
nstat -n >/dev/null
[ "$STALL" = 0 ] || kill -STOP "$HF"
python3 "$HERE/burst.py" 127.0.0.1 8080 "$N" &
B=$!
if [ "$STALL" != 0 ]; then sleep "$STALL"; kill -CONT "$HF"; fi
wait $B
echo "somaxconn=$SOMAXCONN tcp_max_syn_backlog=$(sysctl -n net.ipv4.tcp_max_syn_backlog) tcp_syncookies=$(sysctl -n net.ipv4.tcp_syncookies), accept stalled ${STALL} s: $(nstat -az | awk '/ListenOverflows|ListenDrops|TCPReqQFullDoCookies|TCPReqQFullDrop /{printf "%s=%s ", $1, $2}')"
