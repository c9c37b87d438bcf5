//! UDP sockets: listeners shared across workers with SO_REUSEPORT, relay sockets, and their
//! options (buffer sizes, DONT-FRAGMENT).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

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
    set_buffers(&s, buf_size);
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
        set_dont_fragment(&s, addr.is_ipv6())?;
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

fn set_dont_fragment(s: &Socket, v6: bool) -> io::Result<()> {
    let fd = s.as_raw_fd();
    let (level, name, value) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: fd is a valid socket owned by `s`; the option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
