//! The few raw syscalls the harness needs and std does not offer: an epoll set (many sockets on one
//! thread) and batched UDP receive/send (`recvmmsg`/`sendmmsg`) for the echo peer. Linux only, as
//! the server is.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A level-triggered epoll set; every registered fd is watched for readability.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions; a negative return is an error.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: fd was just returned by the kernel and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    /// Watch `fd` for input; `token` comes back from [`Epoll::wait`].
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stop watching `fd`.
    pub fn del(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let r = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait at most `timeout_ms` (0 = poll) and call `f` with the token of each ready fd.
    pub fn wait(&mut self, timeout_ms: i32, mut f: impl FnMut(u64)) -> io::Result<usize> {
        // SAFETY: the buffer holds `events.len()` initialised epoll_events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        for ev in &self.events[..n as usize] {
            // epoll_event is packed on x86_64: copy the field out rather than borrow it.
            let token = ev.u64;
            f(token);
        }
        Ok(n as usize)
    }
}

/// Buffers for one `recvmmsg`/`sendmmsg` batch of datagrams with their source addresses.
pub struct MmsgBatch {
    bufs: Vec<u8>,
    buf_len: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` point into this struct's own heap buffers, which move
// with it; nothing is shared with another thread.
unsafe impl Send for MmsgBatch {}

impl MmsgBatch {
    /// `count` slots of `buf_len` bytes each.
    pub fn new(count: usize, buf_len: usize) -> Self {
        let mut b = MmsgBatch {
            bufs: vec![0u8; count * buf_len],
            buf_len,
            // SAFETY: sockaddr_storage is plain old data; all zeros is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; count],
            iovs: Vec::with_capacity(count),
            hdrs: Vec::with_capacity(count),
        };
        for i in 0..count {
            b.iovs.push(libc::iovec {
                // SAFETY: i * buf_len is inside `bufs`.
                iov_base: unsafe { b.bufs.as_mut_ptr().add(i * buf_len) }.cast(),
                iov_len: buf_len,
            });
        }
        for i in 0..count {
            // SAFETY: mmsghdr is plain old data; all zeros is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }

    /// Receive up to a batch (blocking for the first datagram, within the socket's read
    /// timeout). Returns how many slots hold a datagram.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (h, iov) in self.hdrs.iter_mut().zip(self.iovs.iter_mut()) {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            iov.iov_len = self.buf_len;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Send the first `count` received datagrams back to where each came from (an echo).
    /// Returns how many the kernel took.
    pub fn echo(&mut self, fd: RawFd, count: usize) -> io::Result<usize> {
        for i in 0..count {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        let mut done = 0;
        while done < count {
            // SAFETY: headers done..count point at live buffers, lengths set above.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(done),
                    (count - done) as u32,
                    0,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done == 0 && n < 0 {
                    return Err(e);
                }
                break;
            }
            done += n as usize;
        }
        Ok(done)
    }

    /// Bytes of datagram `i` of the last receive.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = self.hdrs[i].msg_len as usize;
        &self.bufs[i * self.buf_len..i * self.buf_len + len]
    }

    /// Source address of datagram `i` of the last receive.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.addrs[i])
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Raise the soft open-files limit to the hard one (many client sockets).
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
