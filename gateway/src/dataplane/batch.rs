//! Batched UDP I/O: one recvmmsg or sendmmsg moves up to [`BATCH`]
//! datagrams, so the per-syscall cost is shared by the whole batch.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call.
pub const BATCH: usize = 64;

/// A fixed set of packet buffers, allocated once per data-plane thread.
pub struct Buffers {
    data: Vec<u8>,
    size: usize,
}

impl Buffers {
    pub fn new(size: usize) -> Buffers {
        Buffers { data: vec![0; size * BATCH], size }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.size..(i + 1) * self.size]
    }

    fn ptr(&mut self, i: usize) -> *mut u8 {
        self.get_mut(i).as_mut_ptr()
    }
}

/// A socket address in the form the kernel takes, built once per peer.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr { storage, len: len as libc::socklen_t }
    }
}

/// One received datagram: its length; `truncated` when it did not fit the
/// buffer.
#[derive(Clone, Copy, Default)]
pub struct Received {
    pub len: usize,
    pub truncated: bool,
}

/// Scratch space for recvmmsg/sendmmsg headers, reused across calls.
pub struct BatchIo {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
}

// The raw pointers inside point only into this struct's own vectors and the
// caller's buffers, and are rebuilt on every call.
unsafe impl Send for BatchIo {}

impl Default for BatchIo {
    fn default() -> Self {
        // SAFETY: mmsghdr and iovec are plain data; zero is valid.
        BatchIo {
            msgs: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            addrs: vec![RawAddr::new(SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
        }
    }
}

impl BatchIo {
    /// Receives up to BATCH datagrams without blocking; returns how many
    /// arrived, `WouldBlock` if none.
    pub fn recv(&mut self, sock: &UdpSocket, bufs: &mut Buffers, out: &mut [Received; BATCH]) -> io::Result<usize> {
        let size = bufs.size();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec { iov_base: bufs.ptr(i).cast(), iov_len: size };
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_name = (&mut self.addrs[i].storage as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers sized as declared.
        let n = unsafe { libc::recvmmsg(sock.as_raw_fd(), self.msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let m = &self.msgs[i];
            out[i] = Received { len: m.msg_len as usize, truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 };
        }
        Ok(n)
    }

    /// Sends `items` (buffer index, length, destination) with as few calls
    /// as the kernel allows. Datagrams the kernel refuses are skipped and
    /// counted in the returned error count; the rest still go out.
    pub fn send(&mut self, sock: &UdpSocket, bufs: &mut Buffers, items: &[(usize, usize, RawAddr)]) -> usize {
        let mut failed = 0;
        for (k, (i, len, dst)) in items.iter().enumerate() {
            self.addrs[k] = *dst;
            self.iovs[k] = libc::iovec { iov_base: bufs.ptr(*i).cast(), iov_len: *len };
            let m = &mut self.msgs[k].msg_hdr;
            m.msg_name = (&mut self.addrs[k].storage as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = self.addrs[k].len;
            m.msg_iov = &mut self.iovs[k];
            m.msg_iovlen = 1;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < items.len() {
            // SAFETY: headers [sent..len) point at live buffers and addresses.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.msgs[sent..].as_mut_ptr(), (items.len() - sent) as u32, 0) };
            if n > 0 {
                sent += n as usize;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed (no route, unreachable, ...): skip it.
                failed += 1;
                sent += 1;
            }
        }
        failed
    }
}
