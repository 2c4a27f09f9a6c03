//! `meshgate lab`: a multi-region deployment on one machine.
//!
//! Per region an appliance namespace runs a real `meshgate` process and a
//! VPC host namespace sits behind it with its own prefix; the appliances
//! share an underlay bridge. The integration tests build the same lab.
//!
//! ```text
//!   host-1 10.1.1.10         host-2 10.2.1.10         host-3 10.3.1.10
//!          fd00:1:0:1::10           fd00:2:0:1::10           fd00:3:0:1::10
//!        |  lan                   |  lan                   |  lan
//!   app-1 10.1.1.1            app-2 10.2.1.1           app-3 10.3.1.1
//!   [meshgate, mg0]           [meshgate, mg0]          [meshgate, mg0]
//!        |  198.18.0.1            |  198.18.0.2            |  198.18.0.3
//!   =============== underlay bridge (ESP-in-UDP, port 4500) ===========
//! ```

pub mod impair;
pub mod probe;
mod report;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::RngCore;

use crate::netns::{veth, Netns};
pub use report::{run_lab, LabOptions};

/// The admin listener of every lab gateway, inside its own namespace.
pub const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
/// The ESP-in-UDP port the lab gateways use.
pub const ESP_PORT: u16 = 4500;
/// The signalling (QUIC) port of the lab gateways.
pub const SIGNAL_PORT: u16 = 4433;
/// How many of the first regions serve as seeds for the others.
pub const SEEDS: usize = 2;

/// One region: an appliance and the VPC host behind it.
pub struct Region {
    pub index: usize,
    pub appliance: Netns,
    pub host: Netns,
}

impl Region {
    /// 1-based region number used in names and addresses.
    pub fn number(&self) -> usize {
        self.index + 1
    }
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.number() as u8)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 10)
    }
    pub fn lan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 1)
    }
    pub fn host_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, self.number() as u16, 0, 1, 0, 0, 0, 0x10)
    }
    pub fn lan_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, self.number() as u16, 0, 1, 0, 0, 0, 1)
    }
    /// The region's VPC prefixes, IPv4 and IPv6.
    pub fn prefixes(&self) -> [String; 2] {
        [
            format!("10.{}.0.0/16", self.number()),
            format!("fd00:{}::/48", self.number()),
        ]
    }
    pub fn gateway_id(&self) -> String {
        format!("region-{}", self.number())
    }
}

/// A running lab; dropping it stops the gateways and removes every
/// namespace and file it made.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    gateways: Vec<Option<Child>>,
    pub regions: Vec<Region>,
    pub underlay: Netns,
    /// The body of every gateway's `[sa]` section.
    pub sa_settings: String,
    /// The policy every gateway runs (a built-in name).
    pub policy: String,
    /// The topology whose roles and groups the members get (see
    /// [`placement`]); `None`: the one `policy` builds. Differing lets a
    /// lab start on one policy and be reloaded into another.
    pub placement: Option<String>,
}

/// A region's place in a topology: its role and redundancy group. With
/// `hub-spoke`, region 1 (and region 2 in labs of four or more, as its
/// passive partner) is a hub and the others are spokes; otherwise every
/// region is an edge.
pub fn placement(
    policy: &str,
    regions: usize,
    index: usize,
) -> (&'static str, Option<&'static str>) {
    match policy {
        "hub-spoke" if index == 0 || (index == 1 && regions >= 4) => ("hub", Some("hubs")),
        "hub-spoke" => ("leaf", None),
        _ => ("edge", None),
    }
}

/// The SPI of the SA from region `from` to region `to` (0-based): unique
/// per receiver, and readable in captures.
pub fn spi(from: usize, to: usize) -> u32 {
    0x0100_0000 | ((from as u32 + 1) << 12) | (to as u32 + 1)
}

impl Lab {
    /// Builds the namespaces and links of an `n`-region lab. `tag` keeps
    /// the names of concurrent labs apart (at most 6 characters).
    pub fn build(n: usize, tag: &str) -> Result<Lab> {
        if !(2..=50).contains(&n) {
            bail!("a lab has 2 to 50 regions, not {n}");
        }
        // A fresh, unguessable directory created by us alone (mode 0700,
        // failing if the name exists): it holds keys, and we run as root.
        let suffix: String = (0..8)
            .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
            .collect();
        let dir = std::env::temp_dir().join(format!("meshgate-lab-{tag}-{suffix}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let underlay = Netns::create(&format!("{tag}-ul"))?;
        underlay.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let mut lab = Lab {
            tag: tag.to_string(),
            dir,
            gateways: Vec::new(),
            regions: Vec::new(),
            underlay,
            sa_settings: "cipher = \"aes128gcm16\"".into(),
            policy: crate::config::DEFAULT_POLICY.into(),
            placement: None,
        };
        for index in 0..n {
            let appliance = Netns::create(&format!("{tag}-app{}", index + 1))?;
            let host = Netns::create(&format!("{tag}-host{}", index + 1))?;
            // No duplicate address detection in the lab: nothing else is on
            // these links, and a tentative link-local address turns the
            // first neighbour solicitation into a DAD probe that nobody
            // answers, holding traffic back for a second.
            for ns in [&appliance, &host] {
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            }
            let r = Region {
                index,
                appliance,
                host,
            };
            veth(
                &r.appliance,
                "ul0",
                &lab.underlay,
                &format!("port{}", r.number()),
            )?;
            lab.underlay.ip(&[
                "link",
                "set",
                &format!("port{}", r.number()),
                "master",
                "br0",
            ])?;
            r.appliance.ip(&[
                "addr",
                "add",
                &format!("{}/24", r.underlay_ip()),
                "dev",
                "ul0",
            ])?;
            veth(&r.appliance, "lan0", &r.host, "eth0")?;
            r.appliance
                .ip(&["addr", "add", &format!("{}/24", r.lan_ip()), "dev", "lan0"])?;
            r.host
                .ip(&["addr", "add", &format!("{}/24", r.host_ip()), "dev", "eth0"])?;
            r.host
                .ip(&["route", "add", "default", "via", &r.lan_ip().to_string()])?;
            r.appliance.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", r.lan_ip6()),
                "dev",
                "lan0",
                "nodad",
            ])?;
            r.host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", r.host_ip6()),
                "dev",
                "eth0",
                "nodad",
            ])?;
            r.host.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &r.lan_ip6().to_string(),
            ])?;
            r.appliance.sysctl("net.ipv4.ip_forward", "1")?;
            r.appliance.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            // A hub sends transit traffic back out the TUN it came in on;
            // that is routing, not a reason for ICMP redirects.
            r.appliance
                .sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            r.appliance
                .sysctl("net.ipv4.conf.default.send_redirects", "0")?;
            lab.regions.push(r);
        }
        Ok(lab)
    }

    /// Writes a full-mesh, manually keyed config per gateway with fresh
    /// random keys (one per direction per pair, files of mode 0600).
    pub fn write_configs(&self) -> Result<Vec<PathBuf>> {
        let n = self.regions.len();
        let mut rng = rand::rng();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    let mut key = [0u8; 20];
                    rng.fill_bytes(&mut key);
                    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                    let path = self.key_path(from, to);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .and_then(|mut f| {
                            std::io::Write::write_all(&mut f, (hex + "\n").as_bytes())
                        })
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
        }
        let mut paths = Vec::new();
        for r in &self.regions {
            let mut cfg = String::new();
            let _ = write!(
                cfg,
                "# Generated by meshgate lab: region {num} of {n}.\n[gateway]\nid = \"{id}\"\nlisten = \"{ul}:{ESP_PORT}\"\nadmin = \"{ADMIN}\"\nstate_dir = \"{state}\"\nregion = \"{region}\"\nrole = \"{role}\"\n{group}\n[tun]\nname = \"mg0\"\nmtu = 1400\n\n[sa]\n{sa}\n\n[policy]\nmodule = \"{policy}\"\n",
                num = r.number(),
                id = r.gateway_id(),
                ul = r.underlay_ip(),
                state = self.dir.display(),
                region = r.gateway_id(),
                role = placement(self.placed_as(), n, r.index).0,
                group = placement(self.placed_as(), n, r.index).1.map_or(String::new(), |g| format!("group = \"{g}\"\n")),
                policy = self.policy,
                sa = self.sa_settings
            );
            for p in self.regions.iter().filter(|p| p.index != r.index) {
                let _ = write!(
                    cfg,
                    "\n[[peers]]\nid = \"{id}\"\nendpoint = \"{ul}:{ESP_PORT}\"\nregion = \"{id}\"\nrole = \"{role}\"\n{group}prefixes = [\"{v4}\", \"{v6}\"]\noutbound = {{ spi = {out:#010x}, key_file = \"{outk}\" }}\ninbound = {{ spi = {inb:#010x}, key_file = \"{ink}\" }}\n",
                    id = p.gateway_id(),
                    ul = p.underlay_ip(),
                    role = placement(self.placed_as(), n, p.index).0,
                    group = placement(self.placed_as(), n, p.index).1.map_or(String::new(), |g| format!("group = \"{g}\"\n")),
                    v4 = p.prefixes()[0],
                    v6 = p.prefixes()[1],
                    out = spi(r.index, p.index),
                    outk = self.key_path(r.index, p.index).display(),
                    inb = spi(p.index, r.index),
                    ink = self.key_path(p.index, r.index).display(),
                );
            }
            let path = self.config_path(r.index);
            std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// Writes a config per gateway that joins the mesh: a fresh mesh CA,
    /// a certificate per gateway, one master key, and the first regions as
    /// seeds. No keys or peer lists: members find each other and negotiate
    /// their SAs.
    pub fn write_mesh_configs(&self) -> Result<Vec<PathBuf>> {
        let n = self.regions.len();
        let ca_dir = self.dir.join("ca");
        let ca = crate::identity::init_ca(&ca_dir, 30).context("creating the lab's mesh CA")?;
        let master = self.master_key_path();
        crate::keys::LocalKeys::generate(&master)
            .with_context(|| format!("writing {}", master.display()))?;
        let seeds: Vec<String> = self
            .regions
            .iter()
            .take(SEEDS)
            .map(|r| format!("\"{}@{}:{SIGNAL_PORT}\"", r.gateway_id(), r.underlay_ip()))
            .collect();
        let mut paths = Vec::new();
        for r in &self.regions {
            let (role, group) = placement(self.placed_as(), n, r.index);
            let (cert, key) = crate::identity::issue(
                &ca_dir,
                &crate::identity::Claims {
                    id: r.gateway_id(),
                    region: r.gateway_id(),
                    role: role.into(),
                },
                &self.dir.join("certs"),
                30,
            )
            .with_context(|| format!("issuing the certificate of {}", r.gateway_id()))?;
            let mut cfg = String::new();
            let _ = write!(
                cfg,
                "# Generated by meshgate lab: region {num} of {n}, a member of the mesh.\n[gateway]\nid = \"{id}\"\nlisten = \"{ul}:{ESP_PORT}\"\nadmin = \"{ADMIN}\"\nstate_dir = \"{state}\"\nregion = \"{id}\"\nrole = \"{role}\"\n{group}prefixes = [\"{v4}\", \"{v6}\"]\n\n[tun]\nname = \"mg0\"\nmtu = 1400\n\n[sa]\n{sa}\n\n[policy]\nmodule = \"{policy}\"\n\n[signal]\nlisten = \"{ul}:{SIGNAL_PORT}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nseeds = [{seeds}]\n\n[keys]\nprovider = \"local\"\nmaster_key = \"{master}\"\nepoch = 1\n",
                num = r.number(),
                id = r.gateway_id(),
                ul = r.underlay_ip(),
                state = self.dir.display(),
                group = group.map_or(String::new(), |g| format!("group = \"{g}\"\n")),
                v4 = r.prefixes()[0],
                v6 = r.prefixes()[1],
                sa = self.sa_settings,
                policy = self.policy,
                ca = ca.display(),
                cert = cert.display(),
                key = key.display(),
                seeds = seeds.join(", "),
                master = master.display(),
            );
            let path = self.config_path(r.index);
            std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// The mesh's master key file (of a lab from [`Lab::write_mesh_configs`]).
    pub fn master_key_path(&self) -> PathBuf {
        self.dir.join("master.key")
    }

    /// The topology the members are placed for.
    pub fn placed_as(&self) -> &str {
        self.placement.as_deref().unwrap_or(&self.policy)
    }

    pub fn key_path(&self, from: usize, to: usize) -> PathBuf {
        self.dir.join(format!("key-{}-to-{}.hex", from + 1, to + 1))
    }
    pub fn config_path(&self, region: usize) -> PathBuf {
        self.dir.join(format!("gateway-{}.toml", region + 1))
    }
    pub fn log_path(&self, region: usize) -> PathBuf {
        self.dir.join(format!("gateway-{}.log", region + 1))
    }

    /// The key material (hex of key and salt) of the SA `from` -> `to`.
    pub fn key_hex(&self, from: usize, to: usize) -> Result<String> {
        Ok(std::fs::read_to_string(self.key_path(from, to))?
            .trim()
            .to_string())
    }

    /// Starts `binary run` in every appliance and waits until each serves
    /// its health check.
    pub fn start_gateways(&mut self, binary: &Path) -> Result<()> {
        for i in 0..self.regions.len() {
            self.start_gateway(binary, i)?;
        }
        for i in 0..self.regions.len() {
            self.wait_ready(i, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts the gateway of region `i` (without waiting for it).
    pub fn start_gateway(&mut self, binary: &Path, i: usize) -> Result<()> {
        let log = std::fs::File::create(self.log_path(i))?;
        let child = self.regions[i]
            .appliance
            .command(&binary.to_string_lossy())
            .args(["run", "--config"])
            .arg(self.config_path(i))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        if self.gateways.len() <= i {
            self.gateways.resize_with(i + 1, || None);
        }
        self.gateways[i] = Some(child);
        Ok(())
    }

    /// Waits until gateway `i` answers its health check.
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(Some(child)) = self.gateways.get_mut(i) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "gateway {} exited ({status}) at start:\n{}",
                        i + 1,
                        self.log_tail(i)
                    );
                }
            }
            if probe::http_get(&self.regions[i].appliance, ADMIN, "/healthz").is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "gateway {} not ready after {timeout:?}:\n{}",
                    i + 1,
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of gateway `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The Prometheus text of gateway `i`.
    pub fn metrics(&self, i: usize) -> Result<String> {
        probe::http_get(&self.regions[i].appliance, ADMIN, "/metrics")
    }

    /// Waits until every gateway (mesh members) sees all the others alive
    /// and its SAs have settled (the same for half a second: the policy
    /// decides how many there are); returns how long it took.
    pub fn wait_mesh(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let others = self.regions.len() as f64 - 1.0;
        let (mut last, mut since) = (Vec::new(), Instant::now());
        loop {
            let mut now_sas = Vec::new();
            let mut all_alive = true;
            for i in 0..self.regions.len() {
                let text = self.metrics(i).unwrap_or_default();
                let sum = |name, filter| crate::metrics::sum_samples(&text, name, filter);
                all_alive &= sum("meshgate_members", "state=\"alive\"") == others;
                now_sas.push(sum("meshgate_sa_info", "direction=\"out\"") as u64);
            }
            let keyed = all_alive && now_sas.iter().all(|&n| n > 0);
            if !keyed || now_sas != last {
                (last, since) = (now_sas, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(500) {
                return Ok(start.elapsed().saturating_sub(Duration::from_millis(500)));
            }
            if start.elapsed() > timeout {
                bail!(
                    "the mesh did not form within {timeout:?}:\n{}",
                    (0..self.regions.len())
                        .map(|i| format!("--- gateway {}:\n{}", i + 1, self.log_tail(i)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills gateway `i` with SIGKILL: no goodbye, no clean-up, as a
    /// crashed or powered-off appliance.
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(Some(mut child)) = self.gateways.get_mut(i).map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gateway `i`: SIGTERM, then SIGKILL after two seconds.
    pub fn stop_gateway(&mut self, i: usize) {
        if let Some(Some(mut child)) = self.gateways.get_mut(i).map(Option::take) {
            stop_child(&mut child);
        }
    }
}

fn stop_child(child: &mut Child) {
    // SAFETY: kill on a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.gateways.len() {
            self.stop_gateway(i);
        }
        // Regions and the underlay delete their namespaces as they drop.
        if std::env::var_os("MESHGATE_LAB_KEEP_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Set by SIGINT/SIGTERM while a lab runs; checked between steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`interrupted`] so the lab can clean up.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Fails if the lab was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A short tag for names, unique per process.
pub fn default_tag() -> String {
    format!("mg{}", std::process::id() % 10000)
}
