//! `meshgate lab --cloud moto --discovery`: the gateways find each other
//! by EC2 tags, as on AWS. The lab registers each appliance in moto as a
//! running instance of its region at its underlay address, tagged
//! `meshgate:mesh`, `meshgate:id` and `meshgate:signal-port`; the
//! regions of even number are in a second account, which the gateways
//! reach through STS AssumeRole. The configs then list no seeds, only
//! `[signal.discovery]`.

use anyhow::{Context, Result};

use super::moto::{aws_region, mesh_name, LAB_CREDENTIALS};
use super::{Lab, SIGNAL_PORT};

/// The second account of the lab's AWS, and the role the gateways take
/// in it to list its instances.
pub const SECOND_ACCOUNT: &str = "222222222222";

pub fn discovery_role() -> String {
    format!("arn:aws:iam::{SECOND_ACCOUNT}:role/meshgate-discovery")
}

/// The account a lab region's instances are in: the role to reach it
/// through, if not the first.
fn role_of(region_index: usize) -> Option<String> {
    (region_index % 2 == 1).then(discovery_role)
}

impl Lab {
    /// Registers every gateway as a tagged instance in the lab's AWS and
    /// has the configs find seeds by tags (call after
    /// [`Lab::start_moto`] and before the configs are written).
    pub fn register_instances(&mut self) -> Result<()> {
        let url = self
            .moto
            .as_ref()
            .context("discovery by tags needs the lab's AWS (--cloud moto)")?
            .url
            .clone();
        let mesh = mesh_name(self);
        // Per region: its AWS region, the role of its account, and each
        // appliance's address and tags.
        type Instances = Vec<(String, Vec<(String, String)>)>;
        let mut plan: Vec<(String, Option<String>, Instances)> = self
            .regions
            .iter()
            .map(|r| (aws_region(r.index), role_of(r.index), Vec::new()))
            .collect();
        for g in 0..self.gateway_count() {
            let tags = vec![
                ("meshgate:mesh".to_string(), mesh.clone()),
                ("meshgate:id".to_string(), self.gateway_id(g)),
                ("meshgate:signal-port".to_string(), SIGNAL_PORT.to_string()),
            ];
            plan[self.region_of(g).index]
                .2
                .push((self.gateway_underlay_ip(g).to_string(), tags));
        }
        self.underlay.run(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                for (region, role, instances) in plan {
                    let ec2 = meshgate_aws::Ec2::connect(&meshgate_aws::Settings {
                        region: region.clone(),
                        endpoint_url: Some(url.clone()),
                        call_timeout: std::time::Duration::from_secs(5),
                        static_credentials: Some(LAB_CREDENTIALS),
                        assume_role: role,
                    })
                    .await;
                    ec2.run_lab_instances(
                        "198.18.0.0/16",
                        "198.18.0.0/24",
                        &format!("{region}a"),
                        &instances,
                    )
                    .await
                    .with_context(|| format!("registering the appliances of {region}"))?;
                }
                Ok(())
            })
        })??;
        self.discovery = true;
        Ok(())
    }

    /// The `[signal.discovery]` section of the configs, when the lab's
    /// gateways find seeds by tags.
    pub(super) fn discovery_section(&self) -> String {
        let Some(m) = self.moto.as_ref().filter(|_| self.discovery) else {
            return String::new();
        };
        let regions: Vec<String> = (0..self.regions.len())
            .map(|i| format!("\"{}\"", aws_region(i)))
            .collect();
        let roles = if self.regions.len() > 1 {
            format!("\"{}\"", discovery_role())
        } else {
            String::new()
        };
        format!(
            "\n[signal.discovery]\nmesh = \"{mesh}\"\nregions = [{regions}]\nroles = [{roles}]\nendpoint_url = \"{url}\"\n",
            mesh = mesh_name(self),
            regions = regions.join(", "),
            url = m.url,
        )
    }
}

/// What `meshgate lab --discovery` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoveryRun {
    /// From the last appliance's start to every member seeing it alive.
    pub newcomer_known_ms: f64,
    /// Requests each gateway made to the lab's AWS over a minute of
    /// steady state, by gateway id (discovery and route claims together).
    pub calls_per_minute: Vec<(String, usize)>,
}

impl Lab {
    /// Starts every gateway but the last, waits for their mesh, then
    /// starts the last and times until every member sees it alive; then
    /// counts each gateway's requests to moto over `window`.
    pub fn discovery_run(
        &mut self,
        binary: &std::path::Path,
        window: std::time::Duration,
    ) -> Result<DiscoveryRun> {
        use std::time::{Duration, Instant};
        let n = self.gateway_count();
        for g in 0..n - 1 {
            self.start_gateway(binary, g)?;
        }
        let alive = |lab: &Lab, g: usize, want: usize| {
            lab.metrics(g).is_ok_and(|t| {
                crate::metrics::sum_samples(&t, "meshgate_members", "state=\"alive\"") as usize
                    == want
            })
        };
        let start = Instant::now();
        while !(0..n - 1).all(|g| alive(self, g, n - 2)) {
            if start.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "the first {} gateways did not find each other by tags within 30 s",
                    n - 1
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.start_gateway(binary, n - 1)?;
        let started = Instant::now();
        while !(0..n).all(|g| alive(self, g, n - 1)) {
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "{} was not known to all within 30 s",
                    self.gateway_id(n - 1)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let newcomer_known_ms = started.elapsed().as_secs_f64() * 1e3;
        // Steady state: let the mesh settle, then count a window.
        std::thread::sleep(Duration::from_secs(5));
        let before = self.moto_requests_by_ip()?;
        std::thread::sleep(window);
        let after = self.moto_requests_by_ip()?;
        let per_minute = 60.0 / window.as_secs_f64();
        let calls_per_minute = (0..n)
            .map(|g| {
                let ip = self.gateway_underlay_ip(g).to_string();
                let d = after.get(&ip).unwrap_or(&0) - before.get(&ip).unwrap_or(&0);
                (self.gateway_id(g), (d as f64 * per_minute).round() as usize)
            })
            .collect();
        Ok(DiscoveryRun {
            newcomer_known_ms,
            calls_per_minute,
        })
    }

    /// Requests moto has logged so far, by client address (its log has a
    /// line per request, the client's address first).
    fn moto_requests_by_ip(&self) -> Result<std::collections::HashMap<String, usize>> {
        let log = std::fs::read_to_string(self.dir.join("moto.log")).context("reading moto.log")?;
        let mut out = std::collections::HashMap::new();
        for line in log
            .lines()
            .filter(|l| l.contains("\"POST ") || l.contains("\"GET "))
        {
            if let Some(ip) = line.split_whitespace().next() {
                *out.entry(ip.to_string()).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}
