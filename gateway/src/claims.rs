//! The shell between the policy's failover decisions and the cloud:
//! while the policy elects this appliance the active member of its
//! redundancy group, its group's routes are claimed (each route table and
//! prefix it routes into the tunnel, pointed at its network interface).
//! Claims follow the decisions in force, never a packet; the cloud driver
//! closes the gap. At start the interface is prepared (on AWS, its
//! source/destination check off) and, if not listed, the route tables are
//! found by their tags, both retried with backoff until they succeed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cloud::backend::CloudBackend;
use crate::cloud::reconcile::Status;
use crate::cloud::RouteKey;
use crate::config::{CloudBackendKind, CloudConfig};
use crate::metrics::Metrics;
use crate::policy::runtime::Claim;

/// How long a starting gateway waits before it claims routes: a new
/// member knows every member and its record within about a second
/// (BENCHMARKS.md, membership), twice that to be safe; only a start
/// waits, never a failover.
pub const CLAIM_SETTLE: Duration = Duration::from_secs(2);

/// Starts claiming for `group` as `claim` says; the status tells how the
/// claims stand (admin API, `meshgate status`).
pub fn start(
    c: CloudConfig,
    group: String,
    claim: watch::Receiver<Claim>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Status> {
    let (status_tx, status_rx) = watch::channel(Status::default());
    tokio::spawn(run(c, group, claim, metrics, status_tx));
    status_rx
}

async fn run(
    c: CloudConfig,
    group: String,
    mut claim: watch::Receiver<Claim>,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
) {
    // The group's DNS record follows the same decisions, after the same
    // settling at start.
    #[cfg(feature = "aws")]
    if let (Some(record), CloudBackendKind::Aws { endpoint_url, .. }) = (c.dns.clone(), &c.backend)
    {
        let (claim, metrics, url) = (claim.clone(), metrics.clone(), endpoint_url.clone());
        tokio::spawn(async move {
            tokio::time::sleep(CLAIM_SETTLE).await;
            crate::cloud::dns::run(record, url, claim, metrics).await
        });
    }
    let backend: Arc<dyn CloudBackend> = match c.backend {
        CloudBackendKind::Lab { routers, addresses } => Arc::new(
            crate::cloud::lab::LabCloud::new(routers).with_interface(&c.interface, addresses),
        ),
        #[cfg(feature = "aws")]
        CloudBackendKind::Aws {
            region,
            endpoint_url,
        } => Arc::new(crate::cloud::aws::AwsCloud::connect(&region, endpoint_url).await),
        #[cfg(not(feature = "aws"))]
        CloudBackendKind::Aws { .. } => {
            tracing::error!("cloud: this build has no AWS backend; no route is claimed");
            return;
        }
    };
    {
        let (b, interface) = (backend.clone(), c.interface.clone());
        tokio::spawn(async move {
            retry("preparing the network interface", || b.prepare(&interface)).await;
            tracing::info!(
                interface,
                "cloud: the network interface forwards (source/destination check off)"
            );
        });
    }
    let tables = match (&c.mesh, c.route_tables.is_empty()) {
        (Some(mesh), true) => {
            let found = retry("finding the group's route tables by tags", || {
                backend.find_route_tables(mesh, &group)
            })
            .await;
            tracing::info!(mesh, group, tables = ?found, "cloud: route tables found by tags");
            found
        }
        _ => c.route_tables.clone(),
    };
    let routes = move |claim: &Claim| -> Vec<RouteKey> {
        if claim.groups.is_empty() {
            return Vec::new();
        }
        tables
            .iter()
            .flat_map(|t| {
                claim.prefixes.iter().map(|p| RouteKey {
                    table: t.clone(),
                    destination: *p,
                })
            })
            .collect()
    };
    let (claims_tx, claims_rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        // A gateway that has just started knows only part of the mesh:
        // its partner may be missing from its view, and it would claim
        // routes the partner holds. Its claims wait until membership has
        // had time to tell it who else is there.
        tokio::time::sleep(CLAIM_SETTLE).await;
        claim.mark_changed();
        while claim.changed().await.is_ok() {
            let wanted = routes(&claim.borrow_and_update());
            claims_tx.send_if_modified(|cur| {
                let changed = *cur != wanted;
                if changed {
                    tracing::info!(routes = wanted.len(), "cloud: claims changed");
                    *cur = wanted;
                }
                changed
            });
        }
    });
    crate::cloud::driver::run(
        backend,
        c.interface,
        claims_rx,
        status,
        metrics,
        crate::cloud::reconcile::Settings::default(),
    )
    .await;
}

/// Calls `f` until it succeeds, backing off from 1 s to 60 s and saying
/// each failure.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::cloud::CloudError>>,
{
    let mut wait = Duration::from_secs(1);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!("cloud: {what}: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}
