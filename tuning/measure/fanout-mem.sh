#!/usr/bin/env bash
# fanout-mem.sh N BYTES
#
# Kernel memory a fan-out costs until clients read it (what net.ipv4.tcp_mem bounds):
# N event streams straight to holdfast whose clients never read, one publish of BYTES
# bytes. Summed over this namespace's sockets from `ss -tm` (receive queue + send queue
# + forward-allocated bytes: what the socket is charged against tcp_mem), before and
# after. (/proc/net/sockstat's `mem` would say the same, but it counts every namespace.)
#   sudo tuning/measure/fanout-mem.sh 5000 100
source "$(dirname "$0")/lib.sh"
in_netns "$@"
N=$1 BYTES=$2
start_holdfast
hold 127.0.0.1 8080 "$N" /sub/fan sse
tcp_bytes() {
    ss -tmn | grep -o 'skmem:([^)]*)' | sed 's/[(),]/ /g' |
        awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[rwf][0-9]/) s += substr($i, 2) }
             END { print s + 0 }'
}
M0=$(tcp_bytes)
head -c "$BYTES" /dev/zero | tr '\0' x | curl -s -o /dev/null --data-binary @- 127.0.0.1:8081/pub/fan
sleep 1
M1=$(tcp_bytes)
echo "$N streams, one $BYTES-byte message: socket memory $M0 -> $M1 bytes = $(((M1 - M0) / N)) bytes per stream until its client reads"
release_hold
