//! Sockets in bulk, for the tests that hold thousands: loopback source addresses (so
//! they do not use up one address's ephemeral ports), the open-file limit, opening many
//! connections with a request each, and closing with a reset.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::http::{Conn, IO_TIMEOUT};

/// A blocking connection from loopback address `source` (127.0.0.2 and up spread many
/// sockets over more than one address's ephemeral ports).
pub fn connect_from(source: std::net::Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(
        std::net::IpAddr::V4(source),
        0,
    )))?;
    sock.connect_timeout(&SockAddr::from(to), IO_TIMEOUT)?;
    Ok(sock.into())
}

/// The `i`-th of `n` source addresses 127.0.0.2, 127.0.0.3, …
pub fn source_addr(i: usize, n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % n as usize) as u8)
}

/// Raises this process's open-file limit to its hard limit (server children started
/// afterwards inherit it) and asserts it leaves room for `sockets` client sockets plus
/// 200 for everything else.
pub fn raise_fd_limit_for(sockets: usize) {
    let limit = holdfast::sys::raise_fd_limit().expect("raise the open-file limit");
    assert!(
        limit >= sockets as u64 + 200,
        "open-file limit {limit} is too low for {sockets} client sockets"
    );
}

/// Opens `n` connections to `to`, the `i`-th from [`source_addr`]`(i, sources)`, and
/// sends `request` on each without reading anything. Panics naming the connection that
/// failed, or if opening them takes longer than 120 s.
///
/// For the tests that hold thousands of sockets: spread over several source addresses,
/// they do not use up one address's ephemeral port range (~28,000).
pub fn connect_many(to: SocketAddr, n: usize, sources: u8, request: &[u8]) -> Vec<Conn> {
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "only {i} connections opened in 120 s"
        );
        let source = source_addr(i, sources);
        let stream = connect_from(source, to)
            .unwrap_or_else(|e| panic!("connection {i} from {source}: {e}"));
        let mut c = Conn::from_stream(stream);
        c.try_send(request)
            .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
        conns.push(c);
    }
    conns
}

/// Closes `stream` with a reset (`SO_LINGER` 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let sock = socket2::Socket::from(stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}
