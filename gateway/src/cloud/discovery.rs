//! Discovery by EC2 tags: the running instances tagged `meshgate:mesh =
//! <mesh>` in each region of the mesh, in this account and in each other
//! account whose role the config names (STS AssumeRole), are the seeds.
//! An instance's `meshgate:id` tag names its member; its private address
//! and `meshgate:signal-port` (else 4433) are where to reach it. A tag is
//! a claim, not a grant: the member's certificate must name the same id,
//! or the handshake refuses it.
//!
//! A member asks at start and, while it knows no other member alive,
//! every 2 s (the member core's rejoin): one `DescribeInstances` per
//! region and account each time, and none while the mesh holds it.

use std::net::SocketAddr;
use std::time::Duration;

use meshgate_aws::{Ec2, Instance, Settings};
use tokio::sync::OnceCell;

use crate::config::TagDiscovery;
use crate::signal::discovery::{Discovered, Discovery, Seed};

/// The tags discovery reads.
pub const MESH_TAG: &str = "meshgate:mesh";
pub const ID_TAG: &str = "meshgate:id";
pub const PORT_TAG: &str = "meshgate:signal-port";
/// A region or account that has not answered by then is left out of
/// this round (and said).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One region of one account.
struct Source {
    /// For messages: `eu-west-1`, or `eu-west-1 as arn:...`.
    label: String,
    ec2: Ec2,
}

/// Seeds from EC2 tags.
pub struct Ec2Tags {
    config: TagDiscovery,
    /// This member's id: its own instance is not a seed.
    me: String,
    /// The config's seeds, joined through as well.
    seeds: Vec<Seed>,
    default_port: u16,
    /// The clients, made at the first call (loading credentials is async).
    sources: OnceCell<Vec<Source>>,
    /// Its calls and the instances it skipped are counted here.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Ec2Tags {
    pub fn new(config: TagDiscovery, me: &str, seeds: Vec<Seed>, default_port: u16) -> Ec2Tags {
        Ec2Tags {
            config,
            me: me.to_string(),
            seeds,
            default_port,
            sources: OnceCell::new(),
            metrics: None,
        }
    }

    /// Counts its calls (`meshgate_cloud_calls_total{api="DescribeInstances"}`)
    /// and the tagged instances it skips.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Ec2Tags {
        self.metrics = Some(metrics);
        self
    }

    async fn sources(&self) -> &[Source] {
        self.sources
            .get_or_init(|| async {
                let mut out = Vec::new();
                for region in &self.config.regions {
                    let accounts = std::iter::once(None).chain(self.config.roles.iter().map(Some));
                    for role in accounts {
                        let settings = Settings {
                            region: region.clone(),
                            endpoint_url: self.config.endpoint_url.clone(),
                            call_timeout: CALL_TIMEOUT,
                            static_credentials: None,
                            assume_role: role.cloned(),
                        };
                        out.push(Source {
                            label: match role {
                                None => region.clone(),
                                Some(r) => format!("{region} as {r}"),
                            },
                            ec2: Ec2::connect(&settings).await,
                        });
                    }
                }
                out
            })
            .await
    }
}

/// The seed an instance stands for, or why it is skipped.
pub fn seed_of(i: &Instance, default_port: u16) -> Result<Seed, String> {
    let id = i
        .tag(ID_TAG)
        .filter(|id| crate::membership::valid_id(id))
        .ok_or_else(|| format!("instance {} has no valid {ID_TAG} tag", i.id))?;
    let ip = i
        .private_ip
        .ok_or_else(|| format!("instance {} has no private address", i.id))?;
    let port = match i.tag(PORT_TAG) {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("instance {}: {PORT_TAG} '{p}' is not a port", i.id)),
        },
    };
    Ok((id.to_string(), SocketAddr::new(ip, port)))
}

impl Discovery for Ec2Tags {
    fn discover(&self) -> Discovered<'_> {
        Box::pin(async move {
            let sources = self.sources().await;
            let mut calls = tokio::task::JoinSet::new();
            for (n, s) in sources.iter().enumerate() {
                let (ec2, mesh) = (s.ec2.clone(), self.config.mesh.clone());
                calls.spawn(async move { (n, ec2.find_instances(&[(MESH_TAG, &mesh)]).await) });
            }
            let mut seeds = self.seeds.clone();
            let mut failed = Vec::new();
            while let Some(joined) = calls.join_next().await {
                let Ok((n, answer)) = joined else {
                    failed.push("a discovery call panicked".to_string());
                    continue;
                };
                let label = &sources[n].label;
                if let Some(m) = &self.metrics {
                    let outcome = match &answer {
                        Ok(_) => "ok",
                        Err(e) => super::aws::cloud_error(e.clone()).label(),
                    };
                    m.cloud
                        .calls
                        .with_label_values(&["DescribeInstances", outcome])
                        .inc();
                }
                match answer {
                    Ok(instances) => {
                        for i in &instances {
                            match seed_of(i, self.default_port) {
                                Ok(seed) if seed.0 == self.me => {}
                                Ok(seed) => seeds.push(seed),
                                Err(why) => {
                                    tracing::warn!("discovery in {label}: {why}; skipped");
                                    if let Some(m) = &self.metrics {
                                        m.cloud.discovery_skipped.inc();
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => failed.push(format!("{label}: {e}")),
                }
            }
            // A region or account that fails does not hide the others.
            if seeds.len() == self.seeds.len() && !failed.is_empty() {
                failed.sort();
                return Err(failed.join("; "));
            }
            for f in &failed {
                tracing::warn!("discovery: {f}");
            }
            seeds.sort();
            seeds.dedup();
            Ok(seeds)
        })
    }

    fn name(&self) -> &'static str {
        "ec2-tags"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(tags: &[(&str, &str)], ip: Option<&str>) -> Instance {
        Instance {
            id: "i-0123".into(),
            zone: "eu-west-1a".into(),
            private_ip: ip.map(|a| a.parse().unwrap()),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_instance_is_a_seed_by_its_tags_and_a_bad_tag_is_said() {
        let ok = instance(
            &[(ID_TAG, "region-2a"), (PORT_TAG, "4434")],
            Some("10.0.0.7"),
        );
        assert_eq!(
            seed_of(&ok, 4433).unwrap(),
            ("region-2a".to_string(), "10.0.0.7:4434".parse().unwrap())
        );
        let default = instance(&[(ID_TAG, "region-2a")], Some("10.0.0.7"));
        assert_eq!(seed_of(&default, 4433).unwrap().1.port(), 4433);
        for (bad, says) in [
            (instance(&[], Some("10.0.0.7")), "no valid meshgate:id"),
            (
                instance(&[(ID_TAG, "has space")], Some("10.0.0.7")),
                "no valid meshgate:id",
            ),
            (instance(&[(ID_TAG, "a")], None), "no private address"),
            (
                instance(&[(ID_TAG, "a"), (PORT_TAG, "0")], Some("10.0.0.7")),
                "is not a port",
            ),
            (
                instance(&[(ID_TAG, "a"), (PORT_TAG, "x")], Some("10.0.0.7")),
                "is not a port",
            ),
        ] {
            let e = seed_of(&bad, 4433).unwrap_err();
            assert!(e.contains(says) && e.contains("i-0123"), "{e}");
        }
    }
}
