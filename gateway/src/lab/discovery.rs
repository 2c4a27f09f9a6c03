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
