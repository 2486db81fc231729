"""hold.py HOST PORT N PATH [sse]: opens N connections to HOST:PORT, each from
127.0.0.2 with a source port chosen here (20000 + i, outside any ephemeral range a
measurement narrows), sends `GET PATH` on each (with `Accept: text/event-stream` if
`sse`), waits 2 s, prints what came back so far ("held" = nothing yet), prints "ready",
and holds every connection, unread, until its stdin closes (at most 10 minutes)."""
import collections, resource, select, socket, sys, time

host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sse = len(sys.argv) > 5 and sys.argv[5] == "sse"
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
req = f"GET {path} HTTP/1.1\r\nHost: x\r\n"
if sse:
    req += "Accept: text/event-stream\r\n"
req = (req + "\r\n").encode()
socks = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 20000 + i))
    s.sendall(req)
    socks.append(s)
time.sleep(2)
seen = collections.Counter()
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(65536)  # everything sent so far, so nothing stays queued
        seen["status " + d.split(b" ")[1].decode() if d else "closed"] += 1
    except BlockingIOError:
        seen["held"] += 1
print(f"{n} requests, after 2 s:", dict(seen), flush=True)
print("ready", flush=True)
select.select([sys.stdin], [], [], 600)
