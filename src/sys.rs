//! The one audited module for raw system calls (DESIGN.md, "Safe by default" and the house
//! style): batched UDP receive and send (`recvmmsg(2)`, `sendmmsg(2)`) into caller-owned slots,
//! the epoll sets that watch many sockets from one task or thread, handing a socket to tokio's
//! reactor, `IP_MTU_DISCOVER` (RFC 8656 §7.2 step 4, DONT-FRAGMENT), an interface's driver name
//! (`SIOCETHTOOL`, for `--xdp-mode auto`), and OpenSSL's stateless DTLS cookie exchange (feature
//! `dtls`).
//!
//! Everything else in the crate is safe code: the library denies `unsafe_code` at its root and
//! allows it here and in `io/fastpath` only (aya's `Pod` marker for the BPF maps' value types,
//! the monotonic clock the maps' timestamps follow, and the map views it needs); the binaries
//! forbid it. Each `unsafe` block below carries a `// SAFETY:` note saying why it holds.
//!
//! What goes through a maintained crate instead: epoll through `nix` (its wrappers are thin,
//! `EpollEvent` is `repr(transparent)` over the kernel's struct, so a wait costs what the raw call
//! did), `RLIMIT_NOFILE` through `nix`, IPv6's DONTFRAG through `nix`, socket options and binding
//! through `socket2`. What stays raw, and why: `nix`'s `recvmmsg`/`sendmmsg` rebuild their
//! headers and iovecs from iterators on every call and cannot read into part of a batch (the
//! relay path fills a batch from several sockets, [`RecvBatch::recv_at`]); here the headers are
//! built once and a receive only resets each header's address length. The instruction counts of
//! both, before and after, are in `benches/syscalls.rs`. `IP_MTU_DISCOVER` has no wrapper in
//! `nix` or `socket2`. Linux only, as the server is.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Datagrams one [`RecvBatch::recv`] or [`send_batch`] system call handles on the data path.
pub const BATCH: usize = 32;

const STORAGE_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as _;

/// Receive slots for `recvmmsg(2)`: up to [`RecvBatch::slots`] datagrams per system call, each
/// read into its own slot at a fixed offset (the headroom where a relay header is written in
/// place, RFC 8656 §12.4 and §11.6) with its source address beside it.
///
/// The slots, addresses, iovecs and headers are allocated once, in [`RecvBatch::with_slots`], and
/// never resized: the pointers the headers hold into them stay valid for the batch's whole life
/// (moving the batch moves only the `Vec` headers, not the heap buffers they point to).
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    offset: usize,
    cap: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl RecvBatch {
    /// [`BATCH`] slots of `offset + cap + tail` bytes; datagrams land at `offset`, at most `cap`
    /// bytes each.
    pub fn new(offset: usize, cap: usize, tail: usize) -> Self {
        Self::with_slots(BATCH, offset, cap, tail)
    }

    /// `slots` slots (at least one), as [`RecvBatch::new`].
    pub fn with_slots(slots: usize, offset: usize, cap: usize, tail: usize) -> Self {
        let slots = slots.max(1);
        let slot = offset + cap + tail;
        // SAFETY: all-zero is a valid value of these plain C structs (no references, no enums).
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut b = RecvBatch {
            data: vec![0; slot * slots],
            slot,
            offset,
            cap,
            addrs: vec![zero_addr; slots],
            iovs: Vec::with_capacity(slots),
            hdrs: vec![zero_hdr; slots],
            count: 0,
        };
        let base = b.data.as_mut_ptr();
        for i in 0..slots {
            b.iovs.push(libc::iovec {
                // SAFETY: i * slot + offset + cap <= data.len(), so the pointer stays inside
                // `data` (one past its end at most, when cap is 0).
                iov_base: unsafe { base.add(i * slot + offset) }.cast(),
                iov_len: cap,
            });
        }
        for i in 0..slots {
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = STORAGE_LEN;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// How many slots the batch has.
    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// Read up to a batch of datagrams from the non-blocking socket `sock`. Returns how many;
    /// `WouldBlock` when none is waiting.
    #[inline]
    pub fn recv(&mut self, sock: impl AsFd) -> io::Result<usize> {
        self.recv_with(sock.as_fd(), 0, libc::MSG_DONTWAIT)
    }

    /// Read into slots `start..` only, keeping slots `..start` as the last reads left them (so
    /// datagrams of several sockets can be gathered and their answers sent together). Returns how
    /// many were read; [`RecvBatch::len`] is then `start` plus that.
    #[inline]
    pub fn recv_at(&mut self, sock: impl AsFd, start: usize) -> io::Result<usize> {
        self.recv_with(sock.as_fd(), start, libc::MSG_DONTWAIT)
    }

    /// Wait for a datagram (within the socket's read timeout, `SO_RCVTIMEO`), then take what
    /// else is queued, up to a batch (`MSG_WAITFORONE`). For blocking sockets (the bench peer).
    pub fn recv_wait(&mut self, sock: impl AsFd) -> io::Result<usize> {
        self.recv_with(sock.as_fd(), 0, libc::MSG_WAITFORONE)
    }

    fn recv_with(&mut self, fd: BorrowedFd<'_>, start: usize, flags: i32) -> io::Result<usize> {
        let slots = self.hdrs.len();
        let start = start.min(slots);
        if start == slots {
            return Ok(0);
        }
        // The kernel wrote back the length of the last address into each header it used.
        for h in &mut self.hdrs[start..] {
            h.msg_hdr.msg_namelen = STORAGE_LEN;
        }
        // SAFETY: headers start.. point at this batch's own addresses, iovecs and slots (see the
        // type's doc: never resized), with the lengths set in `with_slots` and above, all alive
        // until the call returns; the kernel writes at most `cap` bytes per slot, one address of
        // at most `msg_namelen` bytes and the header's `msg_len`/`msg_flags`.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr().add(start),
                (slots - start) as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = start;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
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

    /// The length of datagram `i` (truncated to the slot's capacity).
    #[inline]
    fn datagram_len(&self, i: usize) -> usize {
        (self.hdrs[i].msg_len as usize).min(self.cap)
    }

    /// The sender of datagram `i`.
    #[inline]
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// Datagram `i` of the last receive.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let start = i * self.slot + self.offset;
        &self.data[start..start + self.datagram_len(i)]
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
    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], std::ops::Range<usize>) {
        let start = i * self.slot;
        let range = self.offset..self.offset + self.datagram_len(i);
        (&mut self.data[start..start + self.slot], range)
    }

    /// Send the first `count` datagrams of the last receive back to where each came from (an
    /// echo, for the bench peer). Returns how many the kernel took; an error only when it took
    /// none.
    pub fn echo(&mut self, sock: impl AsFd, count: usize) -> io::Result<usize> {
        let count = count.min(self.count);
        for i in 0..count {
            self.iovs[i].iov_len = self.datagram_len(i);
        }
        let fd = sock.as_fd();
        let mut done = 0;
        let mut result = Ok(());
        while done < count {
            // SAFETY: headers done..count point at this batch's own slots (lengths set above, at
            // most `cap`) and at the addresses the last receive filled in; the kernel only reads
            // them.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(done),
                    (count - done) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                result = Err(e);
                break;
            }
            if n == 0 {
                break;
            }
            done += n as usize;
        }
        for iov in &mut self.iovs[..count] {
            iov.iov_len = self.cap;
        }
        match result {
            Err(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }
}

/// A socket address as `sendmmsg(2)` reads it: room for either family, 28 bytes rather than
/// `sockaddr_storage`'s 128 (every message of a batch carries one).
#[repr(C)]
#[derive(Clone, Copy)]
union SockAddrIn {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

const NO_ADDR: SockAddrIn = SockAddrIn {
    v6: libc::sockaddr_in6 {
        sin6_family: 0,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    },
};

#[inline]
fn std_to_sockaddr(a: &SocketAddr) -> (SockAddrIn, libc::socklen_t) {
    match a {
        SocketAddr::V4(a) => (
            SockAddrIn {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                },
            },
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ),
        SocketAddr::V6(a) => (
            SockAddrIn {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ),
    }
}

/// The address the kernel wrote into `s` (`len` bytes of it), if it is an IPv4 or IPv6 one.
#[inline]
fn sockaddr_to_std(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(s.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller than
            // sockaddr_storage and no more aligned; `s` is borrowed for the reference's life.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
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

/// Send datagrams with `sendmmsg(2)` from the non-blocking socket `sock`, [`BATCH`] per system
/// call. Whatever the socket buffer cannot take is dropped, as the network would. Returns how
/// many were sent. Allocates nothing.
pub fn send_batch(sock: impl AsFd, msgs: &[(&[u8], SocketAddr)]) -> usize {
    let fd = sock.as_fd().as_raw_fd();
    let mut sent = 0;
    for chunk in msgs.chunks(BATCH) {
        let mut names = [NO_ADDR; BATCH];
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (data, to)) in chunk.iter().enumerate() {
            let (name, len) = std_to_sockaddr(to);
            names[i] = name;
            iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut SockAddrIn).cast();
            h.msg_namelen = len;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < chunk.len() {
            // SAFETY: headers off..chunk.len() point at live iovecs and addresses on this stack
            // frame and at the caller's data, all alive until the call returns; the kernel only
            // reads them.
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
    }
    sent
}

/// How an [`Epoll`] set reports a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// While it is readable (`poll(2)`'s rule).
    Level,
    /// When it becomes readable again (`EPOLLET`): the reader must read until `EAGAIN`, or
    /// remember the socket itself.
    Edge,
}

/// An epoll set watching sockets for input, each reported with the token it was added with.
#[derive(Debug)]
pub struct Epoll(NixEpoll);

/// Where [`Epoll::wait`] puts the ready tokens.
#[derive(Debug)]
pub struct Events {
    buf: Vec<EpollEvent>,
    len: usize,
}

impl Events {
    /// Room for `cap` ready sockets per wait.
    pub fn with_capacity(cap: usize) -> Self {
        Events {
            buf: vec![EpollEvent::empty(); cap.max(1)],
            len: 0,
        }
    }

    /// The tokens of the sockets the last wait reported.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.buf[..self.len].iter().map(EpollEvent::data)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the last wait filled every entry (more sockets may be ready).
    pub fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        Ok(Epoll(NixEpoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?))
    }

    /// Watch `sock` for input; `token` comes back from [`Epoll::wait`]. A socket leaves the set
    /// when it is closed (or with [`Epoll::delete`]).
    pub fn add(&self, sock: impl AsFd, token: u64, trigger: Trigger) -> io::Result<()> {
        let flags = match trigger {
            Trigger::Level => EpollFlags::EPOLLIN,
            Trigger::Edge => EpollFlags::EPOLLIN | EpollFlags::EPOLLET,
        };
        self.0.add(sock, EpollEvent::new(flags, token))?;
        Ok(())
    }

    /// Stop watching `sock`.
    pub fn delete(&self, sock: impl AsFd) -> io::Result<()> {
        self.0.delete(sock)?;
        Ok(())
    }

    /// Wait at most `timeout_ms` (0: do not wait; negative: without limit) and fill `events`.
    /// Returns how many sockets are ready; an interrupted wait reports none.
    #[inline]
    pub fn wait(&self, events: &mut Events, timeout_ms: i32) -> io::Result<usize> {
        let timeout = EpollTimeout::try_from(timeout_ms).unwrap_or(EpollTimeout::NONE);
        match self.0.wait(&mut events.buf, timeout) {
            Ok(n) => {
                events.len = n;
                Ok(n)
            }
            Err(nix::errno::Errno::EINTR) => {
                events.len = 0;
                Ok(0)
            }
            Err(e) => {
                events.len = 0;
                Err(e.into())
            }
        }
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0 .0.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::UdpSocket {}
    impl Sealed for std::os::fd::OwnedFd {}
    impl Sealed for super::Epoll {}
}

/// The types [`register`] takes: each owns its file descriptor, closes it only when dropped and
/// answers `as_raw_fd` with that one descriptor for its whole life.
pub trait OwnsFd: AsRawFd + sealed::Sealed {}
impl OwnsFd for std::net::UdpSocket {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for Epoll {}

/// Hand `io` to the current tokio runtime's reactor (a worker's own), to be woken when it is
/// ready for `interest`. Must be called within a runtime.
pub fn register<T: OwnsFd>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: tokio needs the descriptor to stay open and the same for the AsyncFd's whole
    // life. The AsyncFd owns `io`, an [`OwnsFd`] type, which closes its descriptor only when
    // dropped (so not before the AsyncFd) and always reports the same one; nothing in this
    // crate replaces the value through `AsyncFd::get_mut`.
    let fd = unsafe { AsyncFd::register_with_interest(io, interest) }?;
    Ok(fd)
}

/// Set the DF bit on what `sock` sends (RFC 8656 §7.2 step 4, DONT-FRAGMENT): path MTU
/// discovery's "do" mode for IPv4, `IPV6_DONTFRAG` for IPv6.
pub fn set_dont_fragment(sock: impl AsFd, v6: bool) -> io::Result<()> {
    if v6 {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv6DontFrag, &true)?;
        return Ok(());
    }
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: the descriptor is borrowed open for the call; the option value is a c_int on this
    // stack frame, alive until the call returns, and its size is what we pass. `nix` and
    // `socket2` have no wrapper for IP_MTU_DISCOVER.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
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

/// The name of the driver behind network interface `iface` ("veth", "mlx5_core", ...), as
/// `ethtool -i` shows it (`SIOCETHTOOL`, `ETHTOOL_GDRVINFO`; no privilege needed), or `None` when
/// the interface does not exist or its driver does not answer. `--xdp-mode auto` asks it
/// (src/io/fastpath). Neither `nix` nor `socket2` wraps this ioctl.
pub fn interface_driver(iface: &str) -> Option<String> {
    // struct ethtool_drvinfo (linux/ethtool.h): cmd, then driver[32] and the rest of the answer.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 5 * 4],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return None;
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 5 * 4],
    };
    // SAFETY: ifreq is plain old data, valid all-zero.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: the socket is open for the call; `req` names the interface (NUL-terminated, checked
    // above) and points at `info`, a struct ethtool_drvinfo on this frame that outlives the call
    // and is as large as the kernel writes for ETHTOOL_GDRVINFO.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// The soft limit on open files (`RLIMIT_NOFILE`), if it can be read.
pub fn open_files_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raise `RLIMIT_NOFILE`'s soft limit to the hard limit (each allocation holds a relay socket, and
/// 16k of them need more than the usual 1024). Returns the limit in force (0 when unreadable).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(feature = "dtls")]
extern "C" {
    // libssl (OpenSSL >= 1.1.0); the `openssl` crate does not wrap them. BIO_ADDR stays opaque:
    // only a pointer libcrypto made passes through.
    fn DTLSv1_listen(ssl: *mut openssl_sys::SSL, client: *mut libc::c_void) -> libc::c_int;
    fn BIO_ADDR_new() -> *mut libc::c_void;
    fn BIO_ADDR_free(addr: *mut libc::c_void);
}

/// OpenSSL's stateless cookie exchange (RFC 6347 §4.2.1) over what `ssl`'s BIO holds: 1 when it
/// read a ClientHello with a valid cookie (the `SSL` then goes on with the handshake from it), 0
/// when it answered a HelloVerifyRequest or dropped what it read, negative on error.
#[cfg(feature = "dtls")]
pub fn dtls_listen(ssl: &openssl::ssl::SslRef) -> i32 {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `ssl` is a live SSL with its BIOs set (SslStream::new), borrowed for the call. The
    // BIO_ADDR, which DTLSv1_listen fills (or clears: our BIO has no peer), is made here, used
    // only during the call and freed after it.
    unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return -1;
        }
        let r = DTLSv1_listen(ssl.as_ptr(), addr);
        BIO_ADDR_free(addr);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        (a, b)
    }

    #[test]
    fn an_interface_that_does_not_exist_or_cannot_be_named_has_no_driver() {
        assert_eq!(interface_driver("vigi-nosuch0"), None);
        assert_eq!(interface_driver(""), None);
        assert_eq!(interface_driver("a-name-too-long-for-linux"), None);
        assert_eq!(interface_driver("bad\0name"), None);
    }

    /// Bounded wait for `n` datagrams on a non-blocking socket, through an epoll set.
    fn recv_n(ep: &Epoll, b: &UdpSocket, batch: &mut RecvBatch, n: usize) -> usize {
        let mut events = Events::with_capacity(4);
        let mut got = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got < n && std::time::Instant::now() < deadline {
            ep.wait(&mut events, 100).unwrap();
            loop {
                match batch.recv_at(b, got) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        got
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_with_headroom_and_sources() {
        let (a, b) = pair();
        b.set_nonblocking(true).unwrap();
        let ep = Epoll::new().unwrap();
        ep.add(&b, 42, Trigger::Level).unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let mut batch = RecvBatch::new(4, 100, 2);
        // 40 datagrams: two sendmmsg calls, two receives of at most 32.
        assert_eq!(send_batch(&a, &msgs), 40);
        let got = recv_n(&ep, &b, &mut batch, 32);
        assert_eq!(got, 32);
        assert_eq!(batch.len(), 32);
        for (i, payload) in payloads.iter().enumerate().take(32) {
            assert_eq!(batch.addr(i), Some(a.local_addr().unwrap()));
            assert_eq!(batch.datagram(i), &payload[..]);
            let base = batch.slot_start(i);
            let (slot, range) = batch.slot_mut(i);
            assert_eq!(range.start, 4);
            slot[0] = 0xEE;
            assert_eq!(batch.bytes(base..base + 1), &[0xEE]);
        }
        let rest = recv_n(&ep, &b, &mut batch, 8);
        assert_eq!(rest, 8);
        assert_eq!(batch.datagram(7), &payloads[39][..]);
    }

    #[test]
    fn recv_at_keeps_the_slots_before_start() {
        let (a, b) = pair();
        b.set_nonblocking(true).unwrap();
        let ep = Epoll::new().unwrap();
        ep.add(&b, 1, Trigger::Edge).unwrap();
        let to = b.local_addr().unwrap();
        let mut batch = RecvBatch::new(0, 16, 0);
        assert_eq!(send_batch(&a, &[(b"first", to)]), 1);
        assert_eq!(recv_n(&ep, &b, &mut batch, 1), 1);
        assert_eq!(send_batch(&a, &[(b"second", to)]), 1);
        let mut events = Events::with_capacity(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        while n == 0 && std::time::Instant::now() < deadline {
            ep.wait(&mut events, 100).unwrap();
            n = batch.recv_at(&b, 1).unwrap_or(0);
        }
        assert_eq!(n, 1);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.datagram(0), b"first");
        assert_eq!(batch.datagram(1), b"second");
        assert!(batch
            .recv_at(&b, 2)
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock));
    }

    #[test]
    fn long_datagrams_are_cut_to_the_slot() {
        let (a, b) = pair();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut batch = RecvBatch::with_slots(2, 0, 8, 0);
        send_batch(&a, &[(&[9u8; 20][..], b.local_addr().unwrap())]);
        assert_eq!(batch.recv_wait(&b).unwrap(), 1);
        assert_eq!(batch.datagram(0), &[9u8; 8]);
    }

    #[test]
    fn echo_answers_each_source() {
        let (a, b) = pair();
        let c = UdpSocket::bind("[::1]:0").ok();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut batch = RecvBatch::with_slots(4, 0, 64, 0);
        a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv_wait(&b).unwrap(), 1);
        assert_eq!(batch.echo(&b, 1).unwrap(), 1);
        let mut buf = [0u8; 16];
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], b.local_addr().unwrap()));
        // IPv6 addresses round-trip too, where the host has IPv6.
        if let (Some(c), Ok(d)) = (c, UdpSocket::bind("[::1]:0")) {
            d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let to = d.local_addr().unwrap();
            assert_eq!(send_batch(&c, &[(b"six", to)]), 1);
            assert_eq!(batch.recv_wait(&d).unwrap(), 1);
            assert_eq!(batch.addr(0), Some(c.local_addr().unwrap()));
            assert_eq!(batch.datagram(0), b"six");
        }
    }

    #[test]
    fn epoll_delete_stops_reports() {
        let (a, b) = pair();
        let ep = Epoll::new().unwrap();
        ep.add(&b, 5, Trigger::Level).unwrap();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut events = Events::with_capacity(2);
        assert_eq!(ep.wait(&mut events, 5000).unwrap(), 1);
        assert_eq!(events.tokens().collect::<Vec<_>>(), vec![5]);
        ep.delete(&b).unwrap();
        assert_eq!(ep.wait(&mut events, 0).unwrap(), 0);
        assert!(events.is_empty());
    }

    #[test]
    fn dont_fragment_sets_on_both_families() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&a, false).unwrap();
        if let Ok(b) = UdpSocket::bind("[::1]:0") {
            set_dont_fragment(&b, true).unwrap();
        }
    }
}
