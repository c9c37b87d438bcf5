//! UDP sockets: listeners shared across workers with SO_REUSEPORT, relay sockets, and their
//! options (buffer sizes, DONT-FRAGMENT).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

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

/// Datagrams one [`RecvBatch::recv`] call can return.
pub const BATCH: usize = 32;

/// A set of receive slots for `recvmmsg(2)`: up to [`BATCH`] datagrams per system call, each read
/// into its own slot at a fixed offset (the headroom where a relay header is written in place).
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    offset: usize,
    cap: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: [usize; BATCH],
    count: usize,
}

impl RecvBatch {
    /// Slots of `offset + cap + tail` bytes; datagrams land at `offset`, at most `cap` bytes each.
    pub fn new(offset: usize, cap: usize, tail: usize) -> Self {
        let slot = offset + cap + tail;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        RecvBatch {
            data: vec![0; slot * BATCH],
            slot,
            offset,
            cap,
            addrs: vec![zero_addr; BATCH],
            iovs: vec![zero_iov; BATCH],
            hdrs: vec![zero_hdr; BATCH],
            lens: [0; BATCH],
            count: 0,
        }
    }

    /// Read up to [`BATCH`] datagrams from the non-blocking socket `fd`. Returns how many;
    /// `WouldBlock` when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_at(fd, 0)
    }

    /// Read into slots `start..BATCH` only, keeping slots `..start` as the last reads left them
    /// (so datagrams of several sockets can be gathered and their answers sent together).
    /// Returns how many were read; [`RecvBatch::len`] is then `start` plus that.
    pub fn recv_at(&mut self, fd: RawFd, start: usize) -> io::Result<usize> {
        let start = start.min(BATCH);
        if start == BATCH {
            return Ok(0);
        }
        let base = self.data.as_mut_ptr();
        for i in start..BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * slot + offset + cap <= data.len(), so the pointer stays inside `data`.
                iov_base: unsafe { base.add(i * self.slot + self.offset) }.cast(),
                iov_len: self.cap,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at memory owned by `self` that outlives the call, with the
        // lengths set above; the kernel writes at most `cap` bytes per slot and one address each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr().add(start),
                (BATCH - start) as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = start;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in start..start + n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        self.count = start + n;
        Ok(n)
    }

    /// Slots filled by the last [`RecvBatch::recv`] (or [`RecvBatch::recv_at`], counting the
    /// slots before its start).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The sender of datagram `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        let len = self.hdrs[i].msg_hdr.msg_namelen;
        // SAFETY: the kernel filled addrs[i] with `len` bytes of a socket address.
        let sa = unsafe { socket2::SockAddr::new(self.addrs[i], len) };
        sa.as_socket()
    }

    /// Bytes of the whole receive area (for ranges from [`RecvBatch::slot_mut`] plus
    /// [`RecvBatch::slot_start`]).
    pub fn bytes(&self, r: std::ops::Range<usize>) -> &[u8] {
        &self.data[r]
    }

    /// Where slot `i` starts in the receive area.
    pub fn slot_start(&self, i: usize) -> usize {
        i * self.slot
    }

    /// Slot `i` whole, and where datagram `i` lies in it.
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], std::ops::Range<usize>) {
        let start = i * self.slot;
        let range = self.offset..self.offset + self.lens[i].min(self.cap);
        (&mut self.data[start..start + self.slot], range)
    }
}

/// Send datagrams with `sendmmsg(2)`, as many per system call as fit. Non-blocking: whatever the
/// socket buffer cannot take is dropped, as the network would. Returns how many were sent.
pub fn send_batch(fd: RawFd, msgs: &[(&[u8], SocketAddr)]) -> usize {
    let mut sent = 0;
    for chunk in msgs.chunks(BATCH) {
        let mut storage: [std::mem::MaybeUninit<socket2::SockAddr>; BATCH] =
            [const { std::mem::MaybeUninit::uninit() }; BATCH];
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: all-zero is a valid mmsghdr.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (data, to)) in chunk.iter().enumerate() {
            let sa = storage[i].write(socket2::SockAddr::from(*to));
            iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            hdrs[i].msg_hdr.msg_name = sa.as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = sa.len();
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < chunk.len() {
            // SAFETY: headers off..len point at live iovecs, addresses and caller-owned data that
            // outlive the call; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr().add(off),
                    (chunk.len() - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // A full buffer or an error for the first datagram: drop it and go on.
                off += 1;
                continue;
            }
            off += n as usize;
            sent += n as usize;
        }
        for s in storage.iter_mut().take(chunk.len()) {
            // SAFETY: the first chunk.len() entries were written above.
            unsafe { s.assume_init_drop() };
        }
    }
    sent
}
