#!/usr/bin/env bash
# The 1M run (holdfast-bench --only million) in a private network namespace whose TCP
# established-connection hash has 2,097,152 buckets instead of the host's.
#
#   sudo tools/bench/million-netns.sh [holdfast-bench flags...]
#   sudo tools/bench/million-netns.sh --out docs/bench/million-ehash
#
# Why: every TCP segment the kernel receives is matched to its socket by a lookup in
# that hash. The host's table is sized at boot from memory (262,144 buckets on the
# 24 GiB build machine: `cat /proc/sys/net/ipv4/tcp_ehash_entries`); a million
# loopback connections are 2,000,000 sockets in it, about 8 per bucket, and walking
# those chains was the largest single cost of the 1M fan-out here (perf: 15 % of all
# CPU in __inet_lookup_established). A namespace gets a table of its own size when
# net.ipv4.tcp_child_ehash_entries is set before it is created (Linux 6.1+); this
# script sets it, creates the namespace, and puts the host's value back at once (it
# affects only namespaces created while it is set). A host that holds this many
# connections for real sizes its global table with the boot parameter
# thash_entries= (tuning/sysctl.conf).
#
# Needs root (unshare --net, sysctl -w). The namespace has its own loopback and its
# own defaults for the per-namespace sysctls (somaxconn 4096, the port range), which
# the harness's pre-flight checks as usual. BIN_DIR (default target/release) is where
# holdfast-bench and the binaries beside it are.
set -euo pipefail

bin=${BIN_DIR:-target/release}
key=/proc/sys/net/ipv4/tcp_child_ehash_entries
if [ ! -w "$key" ]; then
    echo "million-netns.sh: needs root and Linux 6.1+ ($key not writable)" >&2
    exit 2
fi
old=$(cat "$key")
echo 2097152 >"$key"
# The namespace is created by unshare; the host's value goes back as soon as the
# child has started, whatever happens after.
restore() { echo "$old" >"$key"; }
trap restore EXIT
unshare --net -- bash -c '
    set -e
    ip link set lo up 2>/dev/null || { echo "million-netns.sh: ip (iproute2) is needed" >&2; exit 2; }
    echo "million-netns.sh: tcp_ehash_entries in the namespace: $(cat /proc/sys/net/ipv4/tcp_ehash_entries)" >&2
    exec "$0" --only million "$@"
' "$bin/holdfast-bench" "$@" &
child=$!
sleep 1
restore
wait "$child"
