//! Reachability and throughput probes run from inside lab namespaces:
//! ICMP echo over a raw socket and a bulk TCP transfer, so the lab needs no
//! tools beyond the meshgate binary and iproute2.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::dataplane::RawAddr;
use crate::netns::Netns;

/// The outcome of a series of pings.
#[derive(Clone, Debug, Default)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub rtts: Vec<Duration>,
    /// Per echo request, by sequence number: whether its reply came.
    pub answered: Vec<bool>,
}

impl PingStats {
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 100.0;
        }
        100.0 * f64::from(self.sent - self.received) / f64::from(self.sent)
    }

    pub fn avg_rtt(&self) -> Option<Duration> {
        (!self.rtts.is_empty()).then(|| self.rtts.iter().sum::<Duration>() / self.rtts.len() as u32)
    }

    pub fn max_rtt(&self) -> Option<Duration> {
        self.rtts.iter().max().copied()
    }
}

/// A flow of echo requests from one namespace in a thread of its own, so
/// the lab can break something while it runs (`--failover`, `--cut-dx`).
pub struct Flow {
    thread: std::thread::JoinHandle<Result<PingStats>>,
    /// When its first request left (roughly: the thread's start).
    pub started: Instant,
}

impl Flow {
    /// `packets` echo requests from namespace `from` to `dst`, one every
    /// `interval`.
    pub fn start(from: &str, dst: IpAddr, packets: u32, interval: Duration) -> Flow {
        let host = Netns::attach(from);
        let started = Instant::now();
        Flow {
            thread: std::thread::spawn(move || ping(&host, dst, packets, interval)),
            started,
        }
    }

    /// Waits for the flow's end: what was answered.
    pub fn finish(self) -> Result<PingStats> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the flow's thread panicked"))?
            .context("the flow")
    }
}

/// Sends `count` ICMP (or ICMPv6) echo requests from inside `ns` to
/// `dst`, one every `interval`, and waits up to one second for the last reply.
pub fn ping(ns: &Netns, dst: IpAddr, count: u32, interval: Duration) -> Result<PingStats> {
    ns.run(move || ping_here(dst, count, interval))?
}

fn ping_here(dst: IpAddr, count: u32, interval: Duration) -> Result<PingStats> {
    let (family, proto) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain socket creation; the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let to = RawAddr::new(SocketAddr::new(dst, 0));
    let id = (std::process::id() as u16) ^ 0x4d47;
    let mut stats = PingStats {
        answered: vec![false; count as usize],
        ..PingStats::default()
    };
    let mut sent_at = vec![None; count as usize];
    let mut next_send = Instant::now();
    let mut last_sent = next_send;
    let mut seq = 0u32;
    loop {
        let now = Instant::now();
        if seq < count && now >= next_send {
            let pkt = echo_request(dst.is_ipv6(), id, seq as u16);
            // SAFETY: pkt and the address are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    to.as_ptr(),
                    to.socklen(),
                )
            };
            stats.sent += 1;
            if rc >= 0 {
                sent_at[seq as usize] = Some(now);
            }
            seq += 1;
            last_sent = now;
            next_send += interval;
        }
        let wait_until = if seq < count {
            next_send
        } else {
            last_sent + Duration::from_secs(1)
        };
        if seq >= count && (now >= wait_until || stats.received == count) {
            break;
        }
        let timeout_ms = wait_until.saturating_duration_since(now).as_millis().max(1) as i32;
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 1500];
        let mut from = RawAddr::new(SocketAddr::new(dst, 0));
        let n = from.recv_from(sock.as_raw_fd(), &mut buf);
        if n <= 0 || from.ip() != Some(dst) {
            continue;
        }
        // IPv4 raw sockets include the IP header; IPv6 ones do not.
        let icmp = match dst {
            IpAddr::V4(_) => &buf[usize::from(buf[0] & 0x0f) * 4..n as usize],
            IpAddr::V6(_) => &buf[..n as usize],
        };
        let reply_type = if dst.is_ipv6() { 129 } else { 0 };
        if icmp.len() < 8 || icmp[0] != reply_type || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
            continue;
        }
        let rseq = u16::from_be_bytes([icmp[6], icmp[7]]);
        if let Some(Some(t)) = sent_at.get_mut(usize::from(rseq)).map(Option::take) {
            stats.received += 1;
            stats.rtts.push(t.elapsed());
            stats.answered[usize::from(rseq)] = true;
        }
    }
    Ok(stats)
}

/// An ICMP or ICMPv6 echo request (the kernel fills in the ICMPv6 checksum).
fn echo_request(v6: bool, id: u16, seq: u16) -> [u8; 64] {
    let mut p = [0u8; 64];
    p[0] = if v6 { 128 } else { 8 };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    if !v6 {
        let sum = crate::dataplane::checksum::internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The outcome of one TCP transfer.
#[derive(Clone, Copy, Debug)]
pub struct TransferStats {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl TransferStats {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Sends data over one TCP connection from `src` to `dst_ip:port` in `dst`
/// for `duration`; the receiver's count and time are the result.
pub fn tcp_transfer(
    src: &Netns,
    dst: &Netns,
    dst_ip: IpAddr,
    port: u16,
    duration: Duration,
) -> Result<TransferStats> {
    let (ready_tx, ready_rx) = mpsc::channel();
    // Set when the sender gives up, so the sink stops waiting and frees
    // its port for the next transfer.
    let cancel = Arc::new(AtomicBool::new(false));
    let sink_cancel = cancel.clone();
    let server = dst.spawn(move || -> Result<TransferStats> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .context("binding the TCP sink")?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if sink_cancel.load(Ordering::Relaxed) || Instant::now() > deadline {
                        bail!("no connection arrived");
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(anyhow!("accepting: {e}")),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(duration + Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let mut first = None;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    bytes += n as u64;
                }
                Err(e) => return Err(anyhow!("receiving: {e}")),
            }
        }
        let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(TransferStats { bytes, elapsed })
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the TCP sink in {} did not start", dst.name()))?;
    let sent = src
        .run(move || -> Result<u64> {
            let mut conn =
                TcpStream::connect_timeout(&SocketAddr::new(dst_ip, port), Duration::from_secs(5))
                    .with_context(|| format!("connecting to {}", SocketAddr::new(dst_ip, port)))?;
            conn.set_write_timeout(Some(Duration::from_secs(10)))?;
            let chunk = vec![0x5au8; 128 * 1024];
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < duration {
                conn.write_all(&chunk).context("sending")?;
                sent += chunk.len() as u64;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            // Wait for the receiver to close, so the count is complete.
            let mut sink = [0u8; 16];
            let _ = conn.read(&mut sink);
            Ok(sent)
        })
        .and_then(|r| r);
    if sent.is_err() {
        cancel.store(true, Ordering::Relaxed);
    }
    let received = server
        .join()
        .map_err(|_| anyhow!("the TCP sink panicked"))?
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
    let sent = sent?;
    let stats = received?;
    if stats.bytes != sent {
        bail!("sent {sent} bytes but {} arrived", stats.bytes);
    }
    Ok(stats)
}

/// A plain HTTP/1.0 GET to `addr` from inside `ns`; returns the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<String> {
    http(ns, addr, "GET", path)
}

/// An HTTP request from inside `ns`; fails unless the answer is 200.
pub fn http(ns: &Netns, addr: SocketAddr, method: &str, path: &str) -> Result<String> {
    http_with_body(ns, addr, method, path, "")
}

/// A POST to a gateway's control socket (a file: no namespace needed);
/// the body of a 200 answer, else an error with the status and the answer.
pub fn control(socket: &std::path::Path, path: &str, body: &str) -> Result<String> {
    let (status, body) = crate::control::request(socket, "POST", path, body)?;
    if status != 200 {
        bail!("{status}: {}", body.trim());
    }
    Ok(body)
}

/// As [`http`], sending `body`.
pub fn http_with_body(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String> {
    let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
    let (status, body) =
        ns.run(move || crate::admin::request_any(addr, &method, &path, &body))??;
    if status != 200 {
        bail!("{status}: {}", body.trim());
    }
    Ok(body)
}
