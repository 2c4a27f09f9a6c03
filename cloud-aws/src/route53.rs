//! A redundancy group's name in a private hosted zone: the record the
//! active appliance points at itself (UPSERT), so peers outside the mesh
//! (on premises, a third party's VPN) reach the group by name.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, HostedZoneConfig, ResourceRecord, ResourceRecordSet, RrType,
    Vpc, VpcRegion,
};

use crate::{sdk_config, AwsError, Settings};

/// A Route 53 client (a global service: `Settings.region` only signs).
#[derive(Clone, Debug)]
pub struct Route53 {
    client: aws_sdk_route53::Client,
}

/// `A` for an IPv4 address, `AAAA` for IPv6.
fn record_type(v6: bool) -> RrType {
    if v6 {
        RrType::Aaaa
    } else {
        RrType::A
    }
}

/// Names compare without their final dot and case.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

impl Route53 {
    pub async fn connect(s: &Settings) -> Route53 {
        Route53 {
            client: aws_sdk_route53::Client::new(&sdk_config(s).await),
        }
    }

    /// The values of record `name` (`A`, or `AAAA` with `v6`) in `zone`,
    /// if it exists.
    pub async fn record(
        &self,
        zone: &str,
        name: &str,
        v6: bool,
    ) -> Result<Option<Vec<String>>, AwsError> {
        const API: &str = "ListResourceRecordSets";
        let out = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(name)
            .start_record_type(record_type(v6))
            .max_items(1)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, name, e))?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|r| same_name(r.name(), name) && *r.r#type() == record_type(v6))
            .map(|r| {
                r.resource_records()
                    .iter()
                    .map(|v| v.value().to_string())
                    .collect()
            }))
    }

    /// Points record `name` at `address` (created if missing).
    pub async fn upsert(
        &self,
        zone: &str,
        name: &str,
        address: std::net::IpAddr,
        ttl: i64,
    ) -> Result<(), AwsError> {
        const API: &str = "ChangeResourceRecordSets";
        let bad =
            |e: aws_sdk_route53::error::BuildError| AwsError::refused(API, name, e.to_string());
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(record_type(address.is_ipv6()))
            .ttl(ttl)
            .resource_records(
                ResourceRecord::builder()
                    .value(address.to_string())
                    .build()
                    .map_err(bad)?,
            )
            .build()
            .map_err(bad)?;
        let batch = ChangeBatch::builder()
            .changes(
                Change::builder()
                    .action(ChangeAction::Upsert)
                    .resource_record_set(set)
                    .build()
                    .map_err(bad)?,
            )
            .comment("meshgate: the redundancy group's active appliance")
            .build()
            .map_err(bad)?;
        self.client
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, name, e))?;
        Ok(())
    }

    /// A private hosted zone for `domain` attached to `vpc` (the lab's and
    /// the tests'): its id.
    pub async fn create_private_zone(
        &self,
        domain: &str,
        vpc: &str,
        vpc_region: &str,
    ) -> Result<String, AwsError> {
        const API: &str = "CreateHostedZone";
        let out = self
            .client
            .create_hosted_zone()
            .name(domain)
            .caller_reference(format!("meshgate-{domain}-{vpc}"))
            .vpc(
                Vpc::builder()
                    .vpc_id(vpc)
                    .vpc_region(VpcRegion::from(vpc_region))
                    .build(),
            )
            .hosted_zone_config(HostedZoneConfig::builder().private_zone(true).build())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, domain, e))?;
        out.hosted_zone()
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_string())
            .ok_or_else(|| AwsError::missing(API, domain, "HostedZone"))
    }
}
