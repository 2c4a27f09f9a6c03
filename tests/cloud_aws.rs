//! The AWS backend through the official SDK against a local moto server,
//! with the faults moto never produces (throttling, 5xx, a hung call, a
//! permission refused) injected in front of it: the claims converge, the
//! route table is never left half-claimed without the status saying so,
//! repeated claims make no call, and each error names the API and route.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultProxy};
use meshgate::cloud::reconcile::{Settings, Status};
use meshgate::cloud::RouteKey;

const REGION: &str = "eu-west-1";

fn settings(url: &str) -> meshgate_aws::Settings {
    meshgate_aws::Settings {
        region: REGION.into(),
        endpoint_url: Some(url.into()),
        call_timeout: Duration::from_secs(5),
        static_credentials: Some(("testing", "testing")),
        assume_role: None,
    }
}

/// Where each route of `table` points, as EC2 describes it.
async fn routes(ec2: &meshgate_aws::Ec2, table: &str) -> Vec<(String, Option<String>)> {
    let t = ec2
        .describe_route_tables(&[table.to_string()])
        .await
        .expect("describing");
    let mut r: Vec<_> = t[0]
        .routes
        .iter()
        .map(|r| (r.destination.clone(), r.interface.clone()))
        .collect();
    r.sort();
    r
}

#[test]
fn claims_converge_through_throttling_5xx_timeouts_and_refusals() {
    let moto = common::moto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let direct = meshgate_aws::Ec2::connect(&settings(&format!("http://{}", moto.addr))).await;
        let vpc = direct
            .create_lab_vpc(
                "10.1.0.0/16",
                "10.1.1.0/24",
                "eu-west-1a",
                &["10.1.1.2".into(), "10.1.1.3".into()],
                &[("meshgate:mesh", "test"), ("meshgate:group", "pair")],
            )
            .await
            .expect("creating the VPC in moto");
        let (ours, theirs) = (vpc.interfaces[0].clone(), vpc.interfaces[1].clone());
        let table = vpc.route_table.clone();
        // The partner held 10.8.0.0/16; 10.9.0.0/16 and fd00:8::/48 are new.
        direct
            .point_route(true, &table, "10.8.0.0/16", &theirs)
            .await
            .expect("a route to the partner");
        assert!(
            direct.source_dest_check(&ours).await.unwrap(),
            "EC2 creates interfaces checked"
        );

        let proxy = FaultProxy::start(moto.addr);
        let cloud =
            Arc::new(meshgate::cloud::aws::AwsCloud::with_settings(&settings(&proxy.url)).await);
        // Found by tags, through the SDK.
        use meshgate::cloud::backend::CloudBackend;
        assert_eq!(
            cloud.find_route_tables("test", "pair").await.unwrap(),
            std::slice::from_ref(&table)
        );
        cloud
            .prepare(&ours)
            .await
            .expect("source/destination check off");
        assert!(!direct.source_dest_check(&ours).await.unwrap());

        proxy.inject("DescribeRouteTables", Fault::Throttle);
        proxy.inject("DescribeRouteTables", Fault::Hang);
        proxy.inject("ReplaceRoute", Fault::ServerError);
        proxy.inject("ReplaceRoute", Fault::Throttle);
        proxy.inject("CreateRoute", Fault::ServerError);
        let metrics = Arc::new(meshgate::metrics::Metrics::new("gw-test"));
        let claims: Vec<RouteKey> = ["10.8.0.0/16", "10.9.0.0/16", "fd00:8::/48"]
            .iter()
            .map(|d| RouteKey {
                table: table.clone(),
                destination: d.parse().unwrap(),
            })
            .collect();
        let (claims_tx, claims_rx) = tokio::sync::watch::channel(claims.clone());
        let (status_tx, mut status) = tokio::sync::watch::channel(Status::default());
        let quick = Settings {
            backoff_cap: Duration::from_secs(2),
            ..Settings::default()
        };
        let driver = tokio::spawn(meshgate::cloud::driver::run(
            cloud.clone(),
            ours.clone(),
            claims_rx,
            status_tx,
            metrics.clone(),
            quick,
        ));
        // Every status on the way: a partly claimed table is always said.
        let mut said_errors = Vec::new();
        let start = Instant::now();
        loop {
            let s = status.borrow_and_update().clone();
            said_errors.extend(s.errors.iter().map(|(r, e)| format!("{r}: {e}")));
            if s.claimed == 3 && s.converged == 3 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not converged: {s:?}"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
        }
        eprintln!(
            "converged after {:?}; said on the way: {said_errors:#?}",
            start.elapsed()
        );
        for (dest, target) in routes(&direct, &table).await {
            if dest != "10.1.0.0/16" {
                assert_eq!(target.as_deref(), Some(ours.as_str()), "{dest} points here");
            }
        }
        for (api, fault) in [
            ("DescribeRouteTables", Fault::Throttle),
            ("DescribeRouteTables", Fault::Hang),
            ("ReplaceRoute", Fault::ServerError),
            ("ReplaceRoute", Fault::Throttle),
            ("CreateRoute", Fault::ServerError),
        ] {
            assert_eq!(
                proxy.injected(api, fault),
                1,
                "{api} {fault:?} was injected"
            );
        }
        let text = metrics.render();
        let calls = |filter: &str| {
            meshgate::metrics::sum_samples(&text, "meshgate_cloud_calls_total", filter)
        };
        assert!(calls("outcome=\"throttled\"") >= 2.0, "{text}");
        assert!(calls("outcome=\"server_error\"") >= 2.0, "{text}");
        assert!(calls("outcome=\"timeout\"") >= 1.0, "{text}");
        assert!(
            said_errors
                .iter()
                .any(|e| e.contains("ReplaceRoute") && e.contains("10.8.0.0/16")),
            "a failed route was said with its API: {said_errors:?}"
        );

        // Claimed again, unchanged: no call.
        let before = proxy.seen.lock().unwrap().len();
        claims_tx.send(claims.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            proxy.seen.lock().unwrap().len(),
            before,
            "repeated claims make no call"
        );

        // 10.9.0.0/16 released, and taken by the partner; claimed again,
        // a permission refused on the way is said (API, route, EC2's code)
        // and retried until it converges.
        claims_tx.send(claims[..2].to_vec()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.claimed == 2))
            .await
            .expect("released")
            .unwrap();
        direct
            .point_route(false, &table, "10.9.0.0/16", &theirs)
            .await
            .unwrap();
        proxy.inject("ReplaceRoute", Fault::Forbidden);
        claims_tx.send(claims.clone()).unwrap();
        let refusal = tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| {
                s.errors
                    .iter()
                    .any(|(_, e)| e.contains("UnauthorizedOperation"))
            }),
        )
        .await
        .expect("the refusal is said")
        .unwrap()
        .clone();
        let said = format!("{:?}", refusal.errors);
        assert!(
            said.contains("ReplaceRoute") && said.contains("10.9.0.0/16"),
            "{said}"
        );
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.claimed == 3 && s.converged == 3),
        )
        .await
        .expect("converges after the refusal")
        .unwrap();
        assert_eq!(
            routes(&direct, &table)
                .await
                .iter()
                .find(|(d, _)| d == "10.9.0.0/16")
                .and_then(|(_, t)| t.clone()),
            Some(ours.clone())
        );
        drop(claims_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    });
}
