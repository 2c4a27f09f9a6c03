//! The redundancy group's name in a private hosted zone (Route 53): while
//! the policy elects this appliance active, its record points here. The
//! record is read first and written (UPSERT) only when it points
//! elsewhere, again a minute later while active (someone may have moved
//! it), with backoff and jitter on throttling, 5xx and timeouts. A member
//! that loses the election leaves the record to the new active member,
//! which overwrites it: there is never a moment with no record.

use std::sync::Arc;
use std::time::Duration;

use meshgate_aws::{Route53, Settings};
use tokio::sync::watch;

use crate::config::DnsRecord;
use crate::metrics::Metrics;
use crate::policy::runtime::Claim;

use super::aws::cloud_error;

const RESYNC: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Keeps `record` pointed here while `claim` names a group; until `claim`
/// closes.
pub async fn run(
    record: DnsRecord,
    endpoint_url: Option<String>,
    mut claim: watch::Receiver<Claim>,
    metrics: Arc<Metrics>,
) {
    let route53 = Route53::connect(&Settings {
        region: "us-east-1".into(),
        endpoint_url,
        call_timeout: Duration::from_secs(5),
        static_credentials: None,
        assume_role: None,
    })
    .await;
    let name = record.name.clone();
    let mut retry = FIRST_RETRY;
    loop {
        let active = !claim.borrow_and_update().groups.is_empty();
        let wait = if !active {
            None
        } else {
            match point_here(&route53, &record, &metrics).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(record = name, address = %record.address, "cloud: the group's DNS record points here");
                    }
                    retry = FIRST_RETRY;
                    Some(RESYNC)
                }
                Err(e) => {
                    let wait = retry.mul_f64(0.5 + rand::random::<f64>());
                    tracing::warn!(
                        record = name,
                        "cloud: pointing the group's DNS record here: {e}; retrying in {wait:?}"
                    );
                    retry = (retry * 2).min(MAX_RETRY);
                    Some(wait)
                }
            }
        };
        let sleep = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = claim.changed() => if changed.is_err() { return },
            _ = sleep => {}
        }
    }
}

/// Reads the record and writes it only if it points elsewhere: whether
/// it wrote.
async fn point_here(
    r53: &Route53,
    record: &DnsRecord,
    metrics: &Metrics,
) -> Result<bool, super::CloudError> {
    let want = record.address.to_string();
    let current = call(
        metrics,
        "ListResourceRecordSets",
        r53.record(&record.zone, &record.name, record.address.is_ipv6()),
    )
    .await?;
    if current.as_deref() == Some(std::slice::from_ref(&want)) {
        return Ok(false);
    }
    let ttl = i64::try_from(record.ttl).unwrap_or(60);
    call(
        metrics,
        "ChangeResourceRecordSets",
        r53.upsert(&record.zone, &record.name, record.address, ttl),
    )
    .await?;
    Ok(true)
}

async fn call<T>(
    metrics: &Metrics,
    api: &str,
    f: impl std::future::Future<Output = Result<T, meshgate_aws::AwsError>>,
) -> Result<T, super::CloudError> {
    let started = std::time::Instant::now();
    let result = f.await;
    metrics
        .cloud
        .call_seconds
        .with_label_values(&[api])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(v) => {
            metrics.cloud.calls.with_label_values(&[api, "ok"]).inc();
            Ok(v)
        }
        Err(e) => {
            let e = cloud_error(e);
            metrics
                .cloud
                .calls
                .with_label_values(&[api, e.label()])
                .inc();
            Err(e)
        }
    }
}
