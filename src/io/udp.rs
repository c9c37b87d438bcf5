//! Binding the workers' sockets: UDP listeners shared across workers with SO_REUSEPORT, TCP
//! listeners, relay sockets, and their options (buffer sizes, DONT-FRAGMENT), through `socket2`.
//! Reading and writing them in batches is [`crate::sys`]'s (`recvmmsg`/`sendmmsg`).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listening sockets get this much buffer unless `--sock-buf-size` says otherwise: every client
/// of a worker shares one listening socket, so a burst must not overflow the kernel's default
/// (about 208 KiB). 2 MiB is what coturn gives its listeners; the kernel caps it at
/// net.core.{r,w}mem_max.
pub const LISTENER_BUF_DEFAULT: usize = 2 << 20;

/// A non-blocking UDP socket bound to `addr`. With `reuse_port`, every worker binds its own socket
/// to the same address and the kernel spreads clients over them by 5-tuple hash.
pub fn bind_udp(
    addr: SocketAddr,
    reuse_port: bool,
    buf_size: Option<usize>,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    set_buffers(&s, Some(buf_size.unwrap_or(LISTENER_BUF_DEFAULT)));
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A relay socket (RFC 8656 §7.2 step 6) on exactly `addr`, with the DF bit set when the client
/// asked for DONT-FRAGMENT (§7.2 step 4).
pub fn bind_relay(
    addr: SocketAddr,
    dont_fragment: bool,
    buf_size: Option<usize>,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    set_buffers(&s, buf_size);
    if dont_fragment {
        crate::sys::set_dont_fragment(&s, addr.is_ipv6())?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_buffers(s: &Socket, size: Option<usize>) {
    if let Some(n) = size {
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = s.set_recv_buffer_size(n);
        let _ = s.set_send_buffer_size(n);
    }
}

/// A TCP listener with SO_REUSEPORT, one per worker and address.
pub fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}
