//! Shared helpers of the integration tests: a lab with running gateways,
//! packet capture on an underlay interface, pcap output and metric reads.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate::lab::Lab;

pub mod faults;
use meshgate::netns::{check_privileges, Netns};

/// A started lab of `regions` regions, unique per test. Fails (never skips)
/// when the machine lacks root or /dev/net/tun.
pub fn lab(regions: usize) -> Lab {
    lab_with(regions, "cipher = \"aes128gcm16\"")
}

/// A started lab whose gateways' `[sa]` sections read `sa_settings`.
pub fn lab_with(regions: usize, sa_settings: &str) -> Lab {
    lab_configured(regions, sa_settings, meshgate::config::DEFAULT_POLICY)
}

/// A started lab whose gateways run the built-in `policy`.
pub fn lab_policy(regions: usize, policy: &str) -> Lab {
    lab_configured(regions, "cipher = \"aes128gcm16\"", policy)
}

/// A lab with configs written but no gateway started, to edit them first.
pub fn lab_unstarted(regions: usize) -> Lab {
    let policy = meshgate::config::DEFAULT_POLICY;
    lab_unstarted_placed(regions, policy, policy)
}

/// As [`lab_unstarted`], the gateways running `policy` with the members
/// placed (roles, groups) for the topology `placement`.
pub fn lab_unstarted_placed(regions: usize, policy: &str, placement: &str) -> Lab {
    check();
    let mut lab = Lab::build(regions, &tag()).expect("building the lab");
    lab.policy = policy.to_string();
    lab.placement = Some(placement.to_string());
    lab.write_configs().expect("writing configs");
    lab
}

/// A started lab whose gateway 1 runs its policy from a file,
/// `policy.wasm` in the lab's folder, holding `bytes` (the others run the
/// default built-in); returns the lab and the file's path.
pub fn lab_with_policy_file(regions: usize, bytes: &[u8]) -> (Lab, std::path::PathBuf) {
    let mut lab = lab_unstarted(regions);
    let policy = lab.dir.join("policy.wasm");
    std::fs::write(&policy, bytes).expect("writing the policy file");
    let cfg = lab.config_path(0);
    let text = std::fs::read_to_string(&cfg)
        .expect("reading a config")
        .replace(
            "module = \"full-mesh\"",
            &format!("module = \"{}\"", policy.display()),
        );
    std::fs::write(&cfg, text).expect("writing a config");
    lab.start_gateways(Path::new(env!("CARGO_BIN_EXE_meshgate")))
        .expect("starting gateways");
    (lab, policy)
}

/// A lab of mesh members (configs from [`Lab::write_mesh_configs`]), not
/// started, whose `[sa]` sections read `sa_settings`.
pub fn mesh_lab_unstarted(regions: usize, policy: &str, sa_settings: &str) -> Lab {
    check();
    let mut lab = Lab::build(regions, &tag()).expect("building the lab");
    lab.policy = policy.to_string();
    lab.sa_settings = sa_settings.to_string();
    lab.write_mesh_configs().expect("writing configs");
    lab
}

/// A started lab of mesh members, every pair keyed.
pub fn mesh_lab(regions: usize, policy: &str, sa_settings: &str) -> Lab {
    let mut lab = mesh_lab_unstarted(regions, policy, sa_settings);
    lab.start_gateways(Path::new(env!("CARGO_BIN_EXE_meshgate")))
        .expect("starting gateways");
    let all: Vec<usize> = (0..regions).collect();
    let took = wait_meshed(&lab, &all, Duration::from_secs(20));
    eprintln!("{regions} gateways up: all members alive and every pair keyed {took:?} after their health checks answered");
    lab
}

/// Waits until each of `gateways` sees the others alive and has an SA to
/// send to each; panics with the gateways' logs if not within `within`.
/// Returns how long it took.
pub fn wait_meshed(lab: &Lab, gateways: &[usize], within: Duration) -> Duration {
    let start = std::time::Instant::now();
    let others = gateways.len() as u64 - 1;
    let meshed = |g: usize| {
        let text = lab.metrics(g).unwrap_or_default();
        let alive = meshgate::metrics::sum_samples(&text, "meshgate_members", "state=\"alive\"");
        let out = meshgate::metrics::sum_samples(&text, "meshgate_sa_info", "direction=\"out\"");
        alive as u64 == others && out as u64 == others
    };
    let until = std::time::Instant::now() + within;
    while !gateways.iter().all(|&g| meshed(g)) {
        if std::time::Instant::now() > until {
            let logs: Vec<String> = gateways
                .iter()
                .map(|&g| {
                    let text = lab.metrics(g).unwrap_or_default();
                    let sum = |name, filter| meshgate::metrics::sum_samples(&text, name, filter);
                    format!(
                        "--- gateway {}: {} alive, {} SAs out\n{}",
                        g + 1,
                        sum("meshgate_members", "state=\"alive\""),
                        sum("meshgate_sa_info", "direction=\"out\""),
                        lab.log_tail(g)
                    )
                })
                .collect();
            panic!("not meshed after {within:?}:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A flow of `count` echoes every 5 ms from region `from`'s host to
/// region `to`'s, on a thread of its own: what a test checks loses
/// nothing while something else happens in the mesh.
pub fn echo_flow(
    lab: &Lab,
    from: usize,
    to: usize,
    count: u32,
) -> JoinHandle<meshgate::lab::probe::PingStats> {
    let (src, dst) = (
        lab.regions[from].host.name().to_string(),
        lab.regions[to].host_ip(),
    );
    std::thread::spawn(move || {
        meshgate::lab::probe::ping(
            &Netns::attach(&src),
            dst.into(),
            count,
            Duration::from_millis(5),
        )
        .expect("pinging")
    })
}

/// Polls `cond` every 50 ms for up to `within`; says `what` if it never
/// holds. Returns how long it took.
pub fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Prometheus' own linter accepts `text`.
pub fn promtool_ok(text: &str) {
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool must be installed (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn check() {
    if let Err(e) = check_privileges() {
        panic!("this test needs the real network stack: {e:#}");
    }
}

/// Namespace names unique to this process and lab ("t<pid>x<n>", the `x`
/// keeping pid 17's lab 0 apart from pid 1's lab 70).
pub fn tag() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}",
        std::process::id() % 1000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn lab_configured(regions: usize, sa_settings: &str, policy: &str) -> Lab {
    check();
    let mut lab = Lab::build(regions, &tag()).expect("building the lab");
    lab.sa_settings = sa_settings.to_string();
    lab.policy = policy.to_string();
    lab.write_configs().expect("writing configs");
    lab.start_gateways(Path::new(env!("CARGO_BIN_EXE_meshgate")))
        .expect("starting gateways");
    lab
}

/// Pings `dst` from `src` `count` times at 10 ms; every echo must return.
pub fn ping_ok(src: &Netns, dst: std::net::IpAddr, count: u32, what: &str) {
    let p =
        meshgate::lab::probe::ping(src, dst, count, Duration::from_millis(10)).expect("pinging");
    assert_eq!(p.received, count, "{what}");
}

/// A TCP transfer from `src` to `dst_ip` in `dst` for `duration` that must
/// move at least a megabyte, every byte arriving.
pub fn tcp_ok(
    src: &Netns,
    dst: &Netns,
    dst_ip: std::net::IpAddr,
    duration: Duration,
) -> meshgate::lab::probe::TransferStats {
    let t = meshgate::lab::probe::tcp_transfer(src, dst, dst_ip, 5001, duration)
        .expect("the TCP transfer");
    assert!(t.bytes > 1_000_000, "TCP moved only {} bytes", t.bytes);
    t
}

/// Sum of every sample of `name` whose labels contain `filter`.
pub fn metric(lab: &Lab, gateway: usize, name: &str, filter: &str) -> u64 {
    let text = lab.metrics(gateway).expect("scraping metrics");
    meshgate::metrics::sum_samples(&text, name, filter) as u64
}

pub fn drops(lab: &Lab, gateway: usize, reason: &str) -> u64 {
    metric(
        lab,
        gateway,
        "meshgate_drops_total",
        &format!("reason=\"{reason}\""),
    )
}

/// One captured IPv4 packet.
#[derive(Clone)]
pub struct Frame {
    pub time: Duration,
    pub ip: Vec<u8>,
}

impl Frame {
    /// The UDP payload if this is IPv4/UDP with `port` at either end.
    pub fn udp_payload(&self, port: u16) -> Option<&[u8]> {
        let p = &self.ip;
        if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            return None;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let udp = p.get(ihl..)?;
        let (sport, dport) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        (sport == port || dport == port).then(|| &udp[8..])
    }
}

/// Captures every IPv4 packet sent or received on the Ethernet interface
/// `ifname` inside a namespace, with an AF_PACKET socket, until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<Vec<Frame>>>>,
}

impl Capture {
    pub fn start(ns: &Netns, ifname: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ifname = std::ffi::CString::new(ifname).unwrap();
        let flag = stop.clone();
        let handle = ns
            .spawn(move || -> Vec<Frame> {
                // SAFETY: socket + bind with a valid sockaddr_ll; the fd is owned at once.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW,
                        (libc::ETH_P_ALL as u16).to_be() as i32,
                    )
                };
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let sock = unsafe { OwnedFd::from_raw_fd(fd) };
                let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
                assert!(index > 0, "no interface {ifname:?}");
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                sll.sll_ifindex = index as i32;
                let rc = unsafe {
                    libc::bind(
                        sock.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                // The gateways send UDP GSO runs, which a tap sees as one
                // large frame; the virtio header tells us how to cut it
                // back into the datagrams that are on the wire.
                let on: libc::c_int = 1;
                let rc = unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::SOL_PACKET,
                        libc::PACKET_VNET_HDR,
                        (&on as *const libc::c_int).cast(),
                        4,
                    )
                };
                assert_eq!(
                    rc,
                    0,
                    "PACKET_VNET_HDR: {}",
                    std::io::Error::last_os_error()
                );
                let _ = tx.send(());
                let mut frames = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: sock.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                        continue;
                    }
                    let n = unsafe {
                        libc::recv(
                            sock.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    // Only ETH_P_ALL sees outgoing packets too; keep IPv4 ones.
                    const V: usize = 10;
                    if n as usize > V + 14 && buf[V + 12..V + 14] == [0x08, 0x00] {
                        let time = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default();
                        let gso_type = buf[1];
                        let gso_size = usize::from(u16::from_ne_bytes([buf[4], buf[5]]));
                        let ip = &buf[V + 14..n as usize];
                        if gso_type == 5 && gso_size > 0 {
                            for d in split_udp_gso(ip, gso_size) {
                                frames.push(Frame { time, ip: d });
                            }
                        } else {
                            frames.push(Frame {
                                time,
                                ip: ip.to_vec(),
                            });
                        }
                    }
                }
                frames
            })
            .expect("starting the capture");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("capture did not start");
        Capture {
            stop,
            thread: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<Frame> {
        // Let packets in flight arrive.
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("capture thread")
            .expect("capture")
    }
}

/// Cuts an IPv4/UDP GSO frame into the datagrams the kernel will send.
fn split_udp_gso(ip: &[u8], size: usize) -> Vec<Vec<u8>> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let (hdr, payload) = ip.split_at(ihl + 8);
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut d = hdr.to_vec();
            d.extend_from_slice(chunk);
            let total = d.len() as u16;
            d[2..4].copy_from_slice(&total.to_be_bytes());
            let id = u16::from_be_bytes([d[4], d[5]]).wrapping_add(i as u16);
            d[4..6].copy_from_slice(&id.to_be_bytes());
            d[10..12].copy_from_slice(&[0, 0]);
            let mut sum: u32 = d[..ihl]
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            d[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            d[ihl + 4..ihl + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            d[ihl + 6..ihl + 8].copy_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
            d
        })
        .collect()
}

/// Writes `frames` as a pcap file of raw IPv4 packets (LINKTYPE_RAW).
pub fn write_pcap(path: &Path, frames: &[Frame]) {
    let mut f = std::fs::File::create(path).expect("creating pcap");
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&0i32.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&101u32.to_le_bytes());
    f.write_all(&hdr).unwrap();
    for fr in frames {
        let mut rec = Vec::new();
        rec.extend_from_slice(&(fr.time.as_secs() as u32).to_le_bytes());
        rec.extend_from_slice(&fr.time.subsec_micros().to_le_bytes());
        rec.extend_from_slice(&(fr.ip.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(fr.ip.len() as u32).to_le_bytes());
        rec.extend_from_slice(&fr.ip);
        f.write_all(&rec).unwrap();
    }
}

/// A scratch file path unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("meshgate-test-{}-{name}", std::process::id()))
}

/// Sends each payload as one UDP datagram from inside `ns` to `dst`.
pub fn inject(ns: &Netns, dst: std::net::SocketAddr, payloads: Vec<Vec<u8>>) {
    ns.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("binding the injector");
        for p in payloads {
            s.send_to(&p, dst).expect("injecting");
        }
    })
    .expect("injecting");
}

/// A moto server on 127.0.0.1 (the AWS of the tests), stopped on drop.
pub struct Moto {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto (`MESHGATE_MOTO_SERVER`, else `moto_server` on the PATH;
/// tests/run.sh installs it) and waits until it listens. Fails, never
/// skips, without it.
pub fn moto() -> Moto {
    let program = std::env::var("MESHGATE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {program}: {e} (tests/run.sh installs moto in a venv; or pip install 'moto[autoscaling,ec2,iam,kms,route53,secretsmanager,sts]==5.2.5' flask flask-cors)")
        });
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let moto = Moto { child, addr };
    eventually(Duration::from_secs(20), "moto listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    moto
}
