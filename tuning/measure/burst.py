"""burst.py HOST PORT N: N non-blocking connects to HOST:PORT issued as fast as Python
can, each timed until the handshake completes (at most 20 s). Prints the connect-time
distribution: a SYN dropped because an accept queue overflowed is retransmitted after
1 s, then 3 s, so overflow shows up as connects taking over 900 ms."""
import resource, select, socket, sys, time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ep = select.epoll()
socks, start, lat = {}, {}, []
failed = 0


def drain(timeout):
    global failed
    for fd, _ in ep.poll(timeout):
        ep.unregister(fd)
        if socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            failed += 1
        else:
            lat.append(time.monotonic() - start[fd])


t0 = time.monotonic()
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    socks[s.fileno()], start[s.fileno()] = s, time.monotonic()
    ep.register(s.fileno(), select.EPOLLOUT)
    if i % 200 == 199:
        drain(0)
issued = time.monotonic() - t0
deadline = time.monotonic() + 20
while len(lat) + failed < n and time.monotonic() < deadline:
    drain(0.5)
lat.sort()


def q(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")


print(
    f"{n} connects issued in {issued:.2f} s: {len(lat)} connected, {failed} failed, "
    f"{n - len(lat) - failed} pending; connect time p50 {q(.5):.1f} ms, p99 {q(.99):.0f} ms, "
    f"max {q(1):.0f} ms; {sum(1 for x in lat if x > 0.9)} took over 900 ms"
)
