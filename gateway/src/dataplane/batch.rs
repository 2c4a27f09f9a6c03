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
        Buffers {
            data: vec![0; size * BATCH],
            size,
        }
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
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub fn socklen(&self) -> libc::socklen_t {
        self.len
    }

    /// recvfrom into `buf`, storing the sender here; returns what recvfrom does.
    pub fn recv_from(&mut self, fd: std::os::fd::RawFd, buf: &mut [u8]) -> isize {
        self.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: buf and the storage are valid for the lengths given.
        unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut self.storage as *mut libc::sockaddr_storage).cast(),
                &mut self.len,
            )
        }
    }

    /// The IP address held, if any.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match i32::from(self.storage.ss_family) {
            // SAFETY: the family says which sockaddr the storage holds.
            libc::AF_INET => Some(
                u32::from_be(unsafe {
                    (*self.as_ptr().cast::<libc::sockaddr_in>()).sin_addr.s_addr
                })
                .to_be_bytes()
                .into(),
            ),
            libc::AF_INET6 => Some(
                unsafe {
                    (*self.as_ptr().cast::<libc::sockaddr_in6>())
                        .sin6_addr
                        .s6_addr
                }
                .into(),
            ),
            _ => None,
        }
    }
}

/// One received buffer: its length, whether it was cut short, and with
/// UDP GRO the size of the datagrams coalesced into it (0: one datagram).
#[derive(Clone, Copy, Default)]
pub struct Received {
    pub len: usize,
    pub truncated: bool,
    pub segment: usize,
}

/// Datagrams to send: `len` bytes at `offset` of the send buffer; with
/// `segment > 0` a run of datagrams of that size (the last may be shorter)
/// sent as one UDP GSO message.
#[derive(Clone, Copy)]
pub struct Train {
    pub offset: usize,
    pub len: usize,
    pub segment: u16,
    pub dst: RawAddr,
    /// Which peer `dst` belongs to: runs only ever join within one peer.
    pub peer: usize,
}

/// The most one UDP GSO message may carry: datagrams, and payload bytes.
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_000;

/// Queues one datagram of `len` bytes at `offset` for `peer`. With `gso`,
/// it joins the previous run when the kernel can send both as one GSO
/// message: same peer, contiguous in the buffer, and no longer than the
/// run's datagrams (a shorter one ends the run). Same-size packets of a
/// flow — TCP segments, or a stream of small UDP packets — thus cost one
/// send per run rather than one per datagram.
pub fn push_datagram(
    trains: &mut Vec<Train>,
    offset: usize,
    len: usize,
    peer: usize,
    dst: RawAddr,
    gso: bool,
) {
    if gso {
        if let Some(t) = trains.last_mut() {
            let size = if t.segment > 0 {
                usize::from(t.segment)
            } else {
                t.len
            };
            let open = t.len % size == 0;
            if t.peer == peer
                && t.offset + t.len == offset
                && open
                && len <= size
                && t.len / size < MAX_GSO_SEGMENTS
                && t.len + len <= MAX_GSO_BYTES
            {
                t.segment = size as u16;
                t.len += len;
                return;
            }
        }
    }
    trains.push(Train {
        offset,
        len,
        segment: 0,
        dst,
        peer,
    });
}

/// Room for one cmsg carrying an int, aligned as the kernel wants.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// Scratch space for recvmmsg/sendmmsg headers, reused across calls.
pub struct BatchIo {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
    controls: Vec<Control>,
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
            controls: vec![Control([0; 32]); BATCH],
        }
    }
}

/// Turns on UDP GRO (the kernel may hand us runs of same-size datagrams of
/// one flow as one buffer); false if the kernel does not offer it.
pub fn enable_udp_gro(sock: &UdpSocket) -> bool {
    setsockopt_int(sock, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Whether this kernel accepts UDP GSO on `sock`.
pub fn probe_udp_gso(sock: &UdpSocket) -> bool {
    // Setting the socket-wide segment size to 0 changes nothing but fails
    // where UDP_SEGMENT is unknown.
    setsockopt_int(sock, libc::SOL_UDP, libc::UDP_SEGMENT, 0)
}

fn setsockopt_int(
    sock: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: an int option on our own socket.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

impl BatchIo {
    /// Receives up to BATCH buffers without blocking; returns how many
    /// arrived, `WouldBlock` if none.
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        bufs: &mut Buffers,
        out: &mut [Received; BATCH],
    ) -> io::Result<usize> {
        let size = bufs.size();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: bufs.ptr(i).cast(),
                iov_len: size,
            };
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_name = (&mut self.addrs[i].storage as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = self.controls[i].0.as_mut_ptr().cast();
            m.msg_controllen = self.controls[i].0.len();
            m.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, slot) in out.iter_mut().enumerate().take(n) {
            let m = &self.msgs[i].msg_hdr;
            *slot = Received {
                len: self.msgs[i].msg_len as usize,
                truncated: m.msg_flags & libc::MSG_TRUNC != 0,
                segment: gro_segment(m),
            };
        }
        Ok(n)
    }

    /// Sends `trains` from `buf` with as few calls as the kernel allows;
    /// returns how many datagrams the kernel refused (the rest still go
    /// out). A GSO message refused with EIO or EINVAL (an egress device
    /// without checksum offload, a segment the path cannot carry) turns
    /// `gso` off for good and is resent one datagram at a time, as
    /// quinn-udp does.
    pub fn send(
        &mut self,
        sock: &UdpSocket,
        buf: &mut [u8],
        trains: &[Train],
        gso: &mut bool,
    ) -> usize {
        let mut failed = 0;
        for chunk in trains.chunks(BATCH) {
            for (k, t) in chunk.iter().enumerate() {
                // A train outside the buffer is a bug; send nothing of it.
                let bytes = buf.get_mut(t.offset..t.offset + t.len).unwrap_or_default();
                self.addrs[k] = t.dst;
                self.iovs[k] = libc::iovec {
                    iov_base: bytes.as_mut_ptr().cast(),
                    iov_len: bytes.len(),
                };
                let m = &mut self.msgs[k].msg_hdr;
                m.msg_name = (&mut self.addrs[k].storage as *mut libc::sockaddr_storage).cast();
                m.msg_namelen = self.addrs[k].len;
                m.msg_iov = &mut self.iovs[k];
                m.msg_iovlen = 1;
                m.msg_flags = 0;
                if t.segment > 0 {
                    let c = &mut self.controls[k];
                    m.msg_control = c.0.as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
                    m.msg_controllen =
                        unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                    // SAFETY: the control buffer holds one cmsg of a u16.
                    unsafe {
                        let cm = libc::CMSG_FIRSTHDR(m);
                        (*cm).cmsg_level = libc::SOL_UDP;
                        (*cm).cmsg_type = libc::UDP_SEGMENT;
                        (*cm).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), t.segment);
                    }
                } else {
                    m.msg_control = std::ptr::null_mut();
                    m.msg_controllen = 0;
                }
            }
            let mut sent = 0;
            while sent < chunk.len() {
                // SAFETY: headers [sent..len) point at live buffers and addresses.
                let n = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        self.msgs[sent..].as_mut_ptr(),
                        (chunk.len() - sent) as u32,
                        0,
                    )
                };
                if n > 0 {
                    sent += n as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining message failed: skip it, or resend it
                // datagram by datagram if GSO was the problem.
                let t = &chunk[sent];
                if t.segment > 0 && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                    if *gso {
                        tracing::warn!("UDP GSO refused by the kernel ({err}); sending one datagram per call from now on");
                    }
                    *gso = false;
                    failed += send_one_by_one(sock, buf, t);
                } else {
                    tracing::debug!("sendmmsg: {err}");
                    failed += if t.segment > 0 {
                        t.len.div_ceil(usize::from(t.segment))
                    } else {
                        1
                    };
                }
                sent += 1;
            }
        }
        failed
    }
}

/// Sends each datagram of a GSO run on its own; returns how many failed.
fn send_one_by_one(sock: &UdpSocket, buf: &[u8], t: &Train) -> usize {
    let Some(bytes) = buf.get(t.offset..t.offset + t.len) else {
        return 1;
    };
    let mut failed = 0;
    for d in bytes.chunks(usize::from(t.segment).max(1)) {
        // SAFETY: d and the address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                d.as_ptr().cast(),
                d.len(),
                0,
                t.dst.as_ptr(),
                t.dst.socklen(),
            )
        };
        if n < 0 {
            failed += 1;
        }
    }
    failed
}

/// The UDP_GRO segment size in a received message's control data.
fn gro_segment(m: &libc::msghdr) -> usize {
    // SAFETY: walking the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(m);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == libc::UDP_GRO {
                return std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>()).max(0)
                    as usize;
            }
            cm = libc::CMSG_NXTHDR(m, cm);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(items: &[(usize, usize, usize)], gso: bool) -> Vec<(usize, usize, u16)> {
        let dst = RawAddr::new(SocketAddr::from(([192, 0, 2, 1], 4500)));
        let mut trains = Vec::new();
        for &(offset, len, peer) in items {
            push_datagram(&mut trains, offset, len, peer, dst, gso);
        }
        trains
            .iter()
            .map(|t| (t.offset, t.len, t.segment))
            .collect()
    }

    #[test]
    fn same_size_datagrams_join_into_gso_runs() {
        // Four of 100 bytes, then a short one ends the run; the next starts anew.
        let items = [
            (0, 100, 0),
            (100, 100, 0),
            (200, 100, 0),
            (300, 100, 0),
            (400, 60, 0),
            (460, 100, 0),
        ];
        assert_eq!(runs(&items, true), vec![(0, 460, 100), (460, 100, 0)]);
        assert_eq!(
            runs(&items, false).len(),
            6,
            "without GSO every datagram is its own message"
        );
        // Another peer, a gap, or a longer datagram start a new run.
        assert_eq!(runs(&[(0, 100, 0), (100, 100, 1)], true).len(), 2);
        assert_eq!(runs(&[(0, 100, 0), (104, 100, 0)], true).len(), 2);
        assert_eq!(runs(&[(0, 100, 0), (100, 120, 0)], true).len(), 2);
    }

    #[test]
    fn runs_respect_the_kernels_limits() {
        let many: Vec<_> = (0..200).map(|i| (i * 100, 100, 0)).collect();
        let r = runs(&many, true);
        assert!(r
            .iter()
            .all(|&(_, len, seg)| len / usize::from(seg.max(1)) <= MAX_GSO_SEGMENTS));
        assert_eq!(r.iter().map(|t| t.1).sum::<usize>(), 200 * 100);
        let big: Vec<_> = (0..60).map(|i| (i * 1436, 1436, 0)).collect();
        assert!(runs(&big, true)
            .iter()
            .all(|&(_, len, _)| len <= MAX_GSO_BYTES));
    }
}
