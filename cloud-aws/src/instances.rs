//! The mesh's instances as EC2 lists them: discovery by tags.

use std::net::IpAddr;

use aws_sdk_ec2::types::Filter;

use crate::{AwsError, Ec2};

/// Pages of DescribeInstances read at most (1,000 instances each).
const MAX_PAGES: usize = 20;

/// A running instance, as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub zone: String,
    pub private_ip: Option<IpAddr>,
    pub tags: Vec<(String, String)>,
}

impl Instance {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn tag_filters(tags: &[(&str, &str)]) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            Filter::builder()
                .name(format!("tag:{k}"))
                .values(*v)
                .build()
        })
        .collect()
}

impl Ec2 {
    /// The running instances that carry every tag of `tags`, all pages.
    pub async fn find_instances(&self, tags: &[(&str, &str)]) -> Result<Vec<Instance>, AwsError> {
        const API: &str = "DescribeInstances";
        let mut filters = tag_filters(tags);
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        );
        let mut out = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(API, "instances by tag", e))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                out.push(Instance {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
                    tags: i
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect(),
                });
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }
}
