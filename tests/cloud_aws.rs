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

/// KMS epoch keys through the SDK against moto, with the key states and
/// permissions moto does not enforce injected in front of it: a key the
/// user disabled or scheduled for deletion, or a role that may no longer
/// decrypt, withdraws the epoch's key (no new SA; the reason said), an
/// outage or throttling of KMS does not, and a key decrypts again when
/// KMS does. A data key decrypts only under its own mesh and epoch.
#[test]
fn kms_epoch_keys_fail_closed_on_refusal_and_ride_out_outages() {
    use meshgate::keys::kms::{encryption_context, KeyState, KmsKeys};
    use meshgate::keys::KeyProvider;

    let moto = common::moto();
    let proxy = FaultProxy::start(moto.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let direct = meshgate_aws::Kms::connect(&settings(&format!("http://{}", moto.addr))).await;
        let key = direct.create_key("meshgate test").await.expect("a KMS key");
        let made = direct
            .generate_data_key(&key, &encryption_context("prod", 2))
            .await
            .expect("a data key");
        // The ciphertext is bound to its mesh and epoch.
        for (mesh, epoch) in [("prod", 3), ("other", 2)] {
            let e = direct
                .decrypt(&key, &made.ciphertext, &encryption_context(mesh, epoch))
                .await
                .expect_err("another context");
            assert!(e.to_string().contains("Decrypt"), "{e}");
        }

        // The gateway's KMS task, through the proxy, rechecking every 5 s.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        let config = meshgate::config::KmsConfig {
            key: key.clone(),
            mesh: "prod".into(),
            wrapped_key: "unused".into(),
            region: REGION.into(),
            endpoint_url: Some(proxy.url.clone()),
            recheck: Duration::from_secs(5),
        };
        let kms = meshgate_aws::Kms::connect(&meshgate::cloud::kms::settings(&config)).await;
        let keys = Arc::new(KmsKeys::default());
        let metrics = Arc::new(meshgate::metrics::Metrics::new("kms-test"));
        let (held_tx, held_rx) = tokio::sync::mpsc::unbounded_channel();
        let readies = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = readies.clone();
        tokio::spawn(meshgate::cloud::kms::run(
            config,
            kms,
            keys.clone(),
            held_rx,
            move || {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
            metrics.clone(),
        ));
        let state = |k: &KmsKeys| {
            k.states()
                .into_iter()
                .find(|(e, _)| *e == 2)
                .map(|(_, s)| s)
        };
        let until = |what: &'static str, want: fn(&Option<KeyState>) -> bool| {
            let keys = keys.clone();
            async move {
                let start = Instant::now();
                while !want(&state(&keys)) {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "{what}: {:?}",
                        state(&keys)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                start.elapsed()
            }
        };
        held_tx.send(vec![(2, made.ciphertext.clone())]).unwrap();
        until("decrypted", |s| *s == Some(KeyState::Ready)).await;
        assert_eq!(keys.epoch_key(2).expect("the key").epoch, 2);
        assert_eq!(readies.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Throttling, a KMS outage and a hung call keep the key in use.
        proxy.always("Decrypt", Some(Fault::Code(400, "ThrottlingException")));
        tokio::time::sleep(Duration::from_secs(6)).await;
        proxy.always("Decrypt", Some(Fault::Code(500, "KMSInternalException")));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            state(&keys),
            Some(KeyState::Ready),
            "an outage withdraws nothing"
        );
        assert!(proxy.injected("Decrypt", Fault::Code(400, "ThrottlingException")) >= 1);
        assert!(proxy.injected("Decrypt", Fault::Code(500, "KMSInternalException")) >= 1);

        // Each refusal withdraws the key within the recheck, saying why;
        // KMS decrypting again brings it back.
        for code in [
            "DisabledException",
            "KMSInvalidStateException",
            "AccessDeniedException",
            "NotFoundException",
        ] {
            proxy.always("Decrypt", Some(Fault::Code(400, code)));
            let took = until("refused", |s| matches!(s, Some(KeyState::Refused(_)))).await;
            let why = keys.epoch_key(2).expect_err("fail closed").to_string();
            assert!(why.contains(code) && why.contains("Decrypt"), "{why}");
            eprintln!("{code}: the key withdrawn {took:?} after KMS began refusing (recheck 5 s)");
            proxy.always("Decrypt", None);
            until("decrypted again", |s| *s == Some(KeyState::Ready)).await;
        }
        let text = metrics.render();
        for (outcome, at_least) in [
            ("ok", 5),
            ("throttled", 1),
            ("server_error", 1),
            ("refused", 4),
        ] {
            let line =
                format!("meshgate_cloud_calls_total{{api=\"Decrypt\",outcome=\"{outcome}\"}}");
            let n: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            assert!(n >= at_least as f64, "{line} {n}\n{text}");
        }
        // An epoch the member no longer holds is forgotten.
        held_tx.send(Vec::new()).unwrap();
        until("forgotten", |s| s.is_none()).await;
    });
}

/// The group's Route 53 record follows the active member through the SDK
/// against moto, with throttling and 5xx injected in front of it: while
/// active, the member reads the record and writes it only when it points
/// elsewhere, retrying until it does; a standby leaves it alone.
#[test]
fn the_groups_dns_record_follows_the_active_member_through_faults() {
    use meshgate::policy::runtime::Claim;

    let moto = common::moto();
    let proxy = FaultProxy::start(moto.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("http://{}", moto.addr);
        let ec2 = meshgate_aws::Ec2::connect(&settings(&url)).await;
        let vpc = ec2
            .create_lab_vpc("10.1.0.0/16", "10.1.1.0/24", "eu-west-1a", &[], &[])
            .await
            .expect("a VPC in moto");
        let direct = meshgate_aws::Route53::connect(&settings(&url)).await;
        let zone = direct
            .create_private_zone("mesh.internal", &vpc.vpc, REGION)
            .await
            .expect("a private hosted zone");
        let name = "pair.mesh.internal";
        let (ours, theirs): (std::net::IpAddr, std::net::IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());

        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        let record = meshgate::config::DnsRecord {
            zone: zone.clone(),
            name: name.into(),
            ttl: 10,
            address: ours,
        };
        let metrics = Arc::new(meshgate::metrics::Metrics::new("dns-test"));
        let active = Claim {
            groups: vec!["pair".into()],
            prefixes: Vec::new(),
        };
        let standby = Claim {
            groups: Vec::new(),
            prefixes: Vec::new(),
        };
        let (claim_tx, claim_rx) = tokio::sync::watch::channel(active.clone());
        for fault in [Fault::Throttle, Fault::ServerError, Fault::Throttle] {
            proxy.inject("ChangeResourceRecordSets", fault);
        }
        tokio::spawn(meshgate::cloud::dns::run(
            record,
            Some(proxy.url.clone()),
            claim_rx,
            metrics.clone(),
        ));
        let points = |at: std::net::IpAddr| {
            let direct = direct.clone();
            let zone = zone.clone();
            async move {
                let start = Instant::now();
                loop {
                    let now = direct
                        .record(&zone, name, false)
                        .await
                        .expect("reading the record");
                    if now == Some(vec![at.to_string()]) {
                        return start.elapsed();
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "{now:?}, not {at}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let took = points(ours).await;
        eprintln!("the record written through 2 throttles and a 500 in {took:?}");
        assert_eq!(
            proxy.injected("ChangeResourceRecordSets", Fault::Throttle),
            2
        );
        assert_eq!(
            proxy.injected("ChangeResourceRecordSets", Fault::ServerError),
            1
        );
        let changes = proxy.calls("ChangeResourceRecordSets");
        assert_eq!(changes, 4, "three failures, then one write");

        // Standby: the new active member's write stands.
        claim_tx.send(standby).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        direct
            .upsert(&zone, name, theirs, 10)
            .await
            .expect("the partner's write");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            direct.record(&zone, name, false).await.unwrap(),
            Some(vec![theirs.to_string()])
        );
        assert_eq!(
            proxy.calls("ChangeResourceRecordSets"),
            changes,
            "a standby writes nothing"
        );

        // Active again: it reads, finds the record elsewhere, and writes once.
        claim_tx.send(active.clone()).unwrap();
        let took = points(ours).await;
        eprintln!("active again: the record back here in {took:?}");
        assert_eq!(proxy.calls("ChangeResourceRecordSets"), changes + 1);
        // A repeated decision changes nothing: a read, no write.
        claim_tx.send(active).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(proxy.calls("ChangeResourceRecordSets"), changes + 1);
    });
}
