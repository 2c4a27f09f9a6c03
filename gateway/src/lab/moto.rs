//! `meshgate lab --cloud moto`: a local moto server plays AWS. The lab
//! creates each region's VPC, subnet, route table (tagged for the mesh
//! and the region's redundancy group) and the appliances' network
//! interfaces in it; the gateways claim routes through the official SDK;
//! and each VPC router follows its route table in moto (polling
//! `DescribeRouteTables`, as AWS's data plane follows its control plane),
//! so a failover through the SDK moves the lab's traffic.
//!
//! moto runs in the underlay namespace, where every appliance reaches it;
//! the lab's own calls run on a thread inside that namespace.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Lab;

/// moto's address on the underlay bridge, and its port.
pub const MOTO_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
pub const MOTO_PORT: u16 = 5000;
/// The keys every lab caller signs with (moto takes any).
pub const LAB_CREDENTIALS: (&str, &str) = ("testing", "testing");
/// How often each VPC router reads its route table.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(50);
/// The AWS region each lab region stands for (moto keeps them apart).
const AWS_REGIONS: &[&str] = &[
    "us-east-1",
    "eu-west-1",
    "ap-southeast-1",
    "us-west-2",
    "eu-central-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
];

/// The lab's AWS: the moto server, the VPCs made in it, and the routers'
/// followers; dropped, it stops them all.
pub struct MotoCloud {
    server: Child,
    pub url: String,
    /// Per lab region: its AWS region, route table id, and the interface
    /// id of each appliance (zone a, zone b).
    pub regions: Vec<MotoRegion>,
    /// The private hosted zone of the groups' names (`<mesh>.internal`).
    pub dns_zone: String,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

#[derive(Clone, Debug)]
pub struct MotoRegion {
    pub aws_region: String,
    pub route_table: String,
    pub interfaces: Vec<String>,
    pub vpc: String,
}

/// The lab's private DNS domain, in which each region's group has a name
/// (`region-1.<domain>`) that follows its active appliance.
pub fn dns_domain(lab: &Lab) -> String {
    format!("{}.internal", mesh_name(lab))
}

impl Drop for MotoCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(f) = self.follower.take() {
            let _ = f.join();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The AWS region lab region `index` (0-based) stands for.
pub fn aws_region(index: usize) -> String {
    AWS_REGIONS[index % AWS_REGIONS.len()].to_string()
}

/// The moto server program: `MESHGATE_MOTO_SERVER`, else `moto_server`
/// on the PATH.
fn moto_program() -> Result<String> {
    if let Ok(p) = std::env::var("MESHGATE_MOTO_SERVER") {
        if !std::path::Path::new(&p).is_file() {
            bail!("MESHGATE_MOTO_SERVER={p}: no such file (the moto_server of a venv with moto installed)");
        }
        return Ok(p);
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("moto_server").is_file()))
        .unwrap_or(false);
    if !found {
        bail!("moto_server not found: install it (python3 -m venv V && V/bin/pip install 'moto[autoscaling,ec2,iam,kms,route53,secretsmanager,sts]==5.2.5' flask flask-cors) and put V/bin on the PATH, or set MESHGATE_MOTO_SERVER");
    }
    Ok("moto_server".into())
}

/// The lab's mesh name in moto's tags.
pub fn mesh_name(lab: &Lab) -> String {
    format!("lab-{}", lab.tag)
}

impl Lab {
    /// Starts moto in the underlay namespace and creates every region's
    /// VPC in it (call after [`Lab::build_with`] with zones, before the
    /// configs are written).
    pub fn start_moto(&mut self) -> Result<()> {
        if self.zones < 2 {
            bail!("the lab's AWS serves labs with zones (two appliances per region)");
        }
        let program = moto_program()?;
        self.underlay
            .ip(&["addr", "add", &format!("{MOTO_IP}/24"), "dev", "br0"])?;
        let log = std::fs::File::create(self.dir.join("moto.log"))?;
        let server = self
            .underlay
            .command(&program)
            .args(["-H", &MOTO_IP.to_string(), "-p", &MOTO_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let url = format!("http://{MOTO_IP}:{MOTO_PORT}");
        let mut cloud = MotoCloud {
            server,
            url: url.clone(),
            regions: Vec::new(),
            dns_zone: String::new(),
            stop: Arc::new(AtomicBool::new(false)),
            follower: None,
        };
        let mesh = mesh_name(self);
        let plans: Vec<(String, String, String, Vec<String>, String)> = self
            .regions
            .iter()
            .map(|r| {
                let n = r.number();
                let addrs = (0..2)
                    .map(|z| super::zone_lan_ips(n, z).0.to_string())
                    .collect();
                (
                    aws_region(r.index),
                    format!("10.{n}.0.0/16"),
                    format!("10.{n}.1.0/24"),
                    addrs,
                    r.gateway_id(),
                )
            })
            .collect();
        let domain = dns_domain(self);
        let made = self
            .underlay
            .run(move || -> Result<(Vec<MotoRegion>, String)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    wait_listening(&url).await?;
                    let mut out = Vec::new();
                    for (aws_region, cidr, subnet, addrs, group) in plans {
                        let ec2 = client(&url, &aws_region).await;
                        let vpc = ec2
                            .create_lab_vpc(
                                &cidr,
                                &subnet,
                                &format!("{aws_region}a"),
                                &addrs,
                                &[("meshgate:mesh", &mesh), ("meshgate:group", &group)],
                            )
                            .await?;
                        out.push(MotoRegion {
                            aws_region,
                            route_table: vpc.route_table,
                            interfaces: vpc.interfaces,
                            vpc: vpc.vpc,
                        });
                    }
                    // The groups' names, in a private zone of the first VPC.
                    let route53 = meshgate_aws::Route53::connect(&meshgate_aws::Settings {
                        region: "us-east-1".into(),
                        endpoint_url: Some(url.clone()),
                        call_timeout: Duration::from_secs(5),
                        static_credentials: Some(LAB_CREDENTIALS),
                        assume_role: None,
                    })
                    .await;
                    let first = out.first().context("the lab has a region")?;
                    let zone = route53
                        .create_private_zone(&domain, &first.vpc, &first.aws_region)
                        .await?;
                    Ok((out, zone))
                })
            })??;
        (cloud.regions, cloud.dns_zone) = made;
        self.start_following(&mut cloud)?;
        self.moto = Some(cloud);
        Ok(())
    }

    /// Each VPC router follows its route table in moto: every
    /// [`FOLLOW_EVERY`], the routes that point at an appliance's interface
    /// are set in the router namespace.
    fn start_following(&self, cloud: &mut MotoCloud) -> Result<()> {
        let stop = cloud.stop.clone();
        let url = cloud.url.clone();
        let mut plan = Vec::new();
        for (r, m) in self.regions.iter().zip(&cloud.regions) {
            let router = r
                .router
                .as_ref()
                .context("a lab region with zones has a router")?
                .name()
                .to_string();
            let mut hops: HashMap<String, (Ipv4Addr, Ipv6Addr)> = HashMap::new();
            for (z, eni) in m.interfaces.iter().enumerate() {
                hops.insert(eni.clone(), super::zone_lan_ips(r.number(), z));
            }
            plan.push((m.aws_region.clone(), m.route_table.clone(), router, hops));
        }
        let handle = self.underlay.spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(follow(url, plan, stop));
        })?;
        cloud.follower = Some(handle);
        Ok(())
    }
}

type Plan = Vec<(
    String,
    String,
    String,
    HashMap<String, (Ipv4Addr, Ipv6Addr)>,
)>;

async fn follow(url: String, plan: Plan, stop: Arc<AtomicBool>) {
    let mut clients = Vec::new();
    for (aws_region, ..) in &plan {
        clients.push(client(&url, aws_region).await);
    }
    // What each router has, as last set: (router, destination) -> next hop.
    let mut applied: HashMap<(String, String), String> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        for ((_, table, router, hops), ec2) in plan.iter().zip(&clients) {
            let Ok(tables) = ec2.describe_route_tables(std::slice::from_ref(table)).await else {
                continue;
            };
            for route in tables.iter().flat_map(|t| &t.routes) {
                let Some((v4, v6)) = route.interface.as_ref().and_then(|e| hops.get(e)) else {
                    continue;
                };
                let via = if route.destination.contains(':') {
                    v6.to_string()
                } else {
                    v4.to_string()
                };
                let key = (router.clone(), route.destination.clone());
                if applied.get(&key) == Some(&via) {
                    continue;
                }
                let ok = std::process::Command::new("ip")
                    .args([
                        "-n",
                        router,
                        "route",
                        "replace",
                        &route.destination,
                        "via",
                        &via,
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    applied.insert(key, via);
                }
            }
        }
        tokio::time::sleep(FOLLOW_EVERY.saturating_sub(started.elapsed())).await;
    }
}

async fn client(url: &str, aws_region: &str) -> meshgate_aws::Ec2 {
    meshgate_aws::Ec2::connect(&meshgate_aws::Settings {
        region: aws_region.to_string(),
        endpoint_url: Some(url.to_string()),
        call_timeout: Duration::from_secs(5),
        static_credentials: Some(LAB_CREDENTIALS),
        assume_role: None,
    })
    .await
}

/// Waits until moto accepts connections (about a second to start).
async fn wait_listening(url: &str) -> Result<()> {
    let addr = url.trim_start_matches("http://").to_string();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("moto did not listen on {addr} within 20 s (see moto.log in the lab's folder)")
}
