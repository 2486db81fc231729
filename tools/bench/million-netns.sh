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

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN_DIR:-$root/target/release}
key=/proc/sys/net/ipv4/tcp_child_ehash_entries
want=2097152
if [ ! -w "$key" ]; then
    echo "million-netns.sh: needs root and Linux 6.1+ ($key not writable)" >&2
    exit 2
fi
if [ ! -x "$bin/holdfast-bench" ]; then
    echo "million-netns.sh: $bin/holdfast-bench not found (cargo build --release --workspace)" >&2
    exit 2
fi
old=$(cat "$key")
child=
restore() { echo "$old" >"$key"; }
# The host's value goes back on every way out; a signal to this script is passed to
# the harness, which stops everything it started, and waited for.
trap restore EXIT
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 130' INT TERM
echo "$want" >"$key"
# holdfast and the floor only: nchan is not run at this scale, and a namespace with
# only loopback has no package mirror to install it from.
unshare --net -- bash -c '
    set -e
    ip link set lo up || { echo "million-netns.sh: ip (iproute2) is needed" >&2; exit 2; }
    have=$(cat /proc/sys/net/ipv4/tcp_ehash_entries)
    if [ "$have" != "$1" ]; then
        echo "million-netns.sh: the namespace got $have hash buckets, not $1" >&2
        exit 1
    fi
    echo "million-netns.sh: tcp_ehash_entries in the namespace: $have" >&2
    bench=$2
    shift 2
    exec "$bench" --only million --servers holdfast,floor --no-install "$@"
' million-netns "$want" "$bin/holdfast-bench" "$@" &
child=$!
# Put the host's value back once the namespace exists (it is read when the namespace
# is created, and only then): wait until the child is in a network namespace other
# than ours, for at most 10 s.
for _ in $(seq 1 100); do
    if [ "$(readlink "/proc/$child/ns/net" 2>/dev/null)" != "$(readlink /proc/$$/ns/net)" ]; then
        break
    fi
    sleep 0.1
done
restore
wait "$child"
