#!/usr/bin/env bash
# held-cost.sh N MODE [SED]
#
# What N held requests cost, all on this host. MODE:
#   poll    long-polls through nginx (shipped config)
#   sse     event streams through nginx
#   direct  long-polls straight to holdfast (no nginx)
# SED, optional, edits the nginx config first, e.g.
#   's/proxy_buffering off;/proxy_buffering off; proxy_buffer_size 1k;/'
# Prints RSS growth ÷ N for nginx's workers and holdfast, nginx's open descriptors, the
# kernel's slab growth ÷ N (machine-wide, so only meaningful on an otherwise idle host),
# and what one idle TCP socket costs in slab objects on this kernel (from the object
# sizes in /proc/slabinfo: the tcp_sock, its socket inode, file, dentry, epoll item).
# Every held request through nginx is 4 sockets on this host (client, nginx's two,
# holdfast's); direct it is 2.
#   sudo tuning/measure/held-cost.sh 5000 poll
source "$(dirname "$0")/lib.sh"
in_netns "$@"
N=$1 MODE=$2
start_holdfast
start_nginx "${3:-}"
for _ in $(seq 20); do curl -s -o /dev/null '127.0.0.1/sub/warm?timeout=0'; done
slab_kib() { awk '/^Slab:/{print $2}' /proc/meminfo; }
# Bytes of slab per idle TCP socket: each object's share of its slab pages.
socket_objects() {
    awk '$1 ~ /^(TCP|sock_inode_cache|filp|dentry|eventpoll_epi)$/ {
             b = $6 * 4096 / $5; s += b; printf "%s%s %d", sep, $1, b; sep = " + " }
         END { printf " = %d bytes", s }' /proc/slabinfo
}
N0=$(rss_kib $NGINX_WORKERS) H0=$(rss_kib "$HF") S0=$(slab_kib)
case $MODE in
    poll) hold 127.0.0.1 80 "$N" '/sub/cost?timeout=110' ;;
    sse) hold 127.0.0.1 80 "$N" /sub/cost sse ;;
    direct) hold 127.0.0.1 8080 "$N" '/sub/cost?timeout=110' ;;
    *) echo "MODE is poll, sse or direct" >&2; exit 2 ;;
esac
sleep 1
N1=$(rss_kib $NGINX_WORKERS) H1=$(rss_kib "$HF") S1=$(slab_kib)
FDS=0
for p in $NGINX_WORKERS; do FDS=$((FDS + $(ls "/proc/$p/fd" | wc -l))); done
echo "$MODE, $N held${3:+, nginx edited by '$3'}:"
echo "  nginx workers: ${N0} -> ${N1} KiB RSS = $(((N1 - N0) * 1024 / N)) bytes per held request; $FDS descriptors open"
echo "  holdfast:      ${H0} -> ${H1} KiB RSS = $(((H1 - H0) * 1024 / N)) bytes per held request"
echo "  kernel slab:   ${S0} -> ${S1} KiB = $(((S1 - S0) * 1024 / N)) bytes per held request (all its sockets; machine-wide)"
echo "  one idle TCP socket in slab objects: $(socket_objects)"
echo "  $(grep '^TCP:' /proc/net/sockstat)"
release_hold
