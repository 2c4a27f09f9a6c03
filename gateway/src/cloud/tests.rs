//! The reconciler against a cloud kept in memory: route tables that
//! answer its calls, with faults injected per call.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::reconcile::{Reconciler, Settings};
use super::{Call, CloudError, Reply, RouteKey, RouteTable, Target};

/// Route tables, and faults to answer the next calls of an API with.
#[derive(Default)]
struct Cloud {
    tables: BTreeMap<String, BTreeMap<String, Target>>,
    faults: Vec<(&'static str, CloudError)>,
    calls: Vec<&'static str>,
}

impl Cloud {
    fn answer(&mut self, call: &Call) -> Result<Reply, CloudError> {
        self.calls.push(call.api());
        if let Some(i) = self.faults.iter().position(|(api, _)| *api == call.api()) {
            return Err(self.faults.remove(i).1);
        }
        match call {
            Call::Describe { tables } => Ok(Reply::Described(
                tables
                    .iter()
                    .filter_map(|t| {
                        let routes = self.tables.get(t)?;
                        Some(RouteTable {
                            id: t.clone(),
                            routes: routes
                                .iter()
                                .map(|(d, target)| (d.parse().unwrap(), target.clone()))
                                .collect(),
                        })
                    })
                    .collect(),
            )),
            Call::Replace { route, interface } | Call::Create { route, interface } => {
                let table = self.tables.get_mut(&route.table).ok_or_else(|| {
                    CloudError::Refused(format!("no route table {}", route.table))
                })?;
                let d = route.destination.to_string();
                match (call, table.contains_key(&d)) {
                    (Call::Replace { .. }, false) => Err(CloudError::Stale("no such route".into())),
                    (Call::Create { .. }, true) => {
                        Err(CloudError::Stale("the route exists".into()))
                    }
                    _ => {
                        table.insert(d, Target::Interface(interface.clone()));
                        Ok(Reply::Done)
                    }
                }
            }
        }
    }

    fn points_at(&self, table: &str, d: &str) -> Option<&Target> {
        self.tables.get(table)?.get(d)
    }
}

fn route(table: &str, d: &str) -> RouteKey {
    RouteKey {
        table: table.into(),
        destination: d.parse().unwrap(),
    }
}

fn eni(id: &str) -> Target {
    Target::Interface(id.into())
}

/// Runs calls and timers for `secs` of virtual time (10 ms steps).
fn run(r: &mut Reconciler, cloud: &mut Cloud, now: &mut Instant, secs: u64) {
    let end = *now + Duration::from_secs(secs);
    while *now < end {
        while let Some((id, call)) = r.poll_call() {
            let reply = cloud.answer(&call);
            r.handle_reply(id, reply, *now);
        }
        *now += Duration::from_millis(10);
        if r.poll_timeout().is_some_and(|t| t <= *now) {
            r.handle_timeout(*now);
        }
    }
}

fn two_tables() -> Cloud {
    let mut cloud = Cloud::default();
    cloud.tables.insert(
        "rtb-a".into(),
        [("10.9.0.0/16".to_string(), eni("eni-standby"))].into(),
    );
    cloud.tables.insert("rtb-b".into(), BTreeMap::new());
    cloud
}

#[test]
fn claims_cost_one_describe_and_a_write_per_route_that_differs_and_then_nothing() {
    let mut now = Instant::now();
    let mut cloud = two_tables();
    let mut r = Reconciler::new("eni-me", Settings::default(), 7);
    let claims = [route("rtb-a", "10.9.0.0/16"), route("rtb-b", "10.9.0.0/16")];
    r.set_claims(claims.clone(), now);
    run(&mut r, &mut cloud, &mut now, 1);
    assert_eq!(
        cloud.calls,
        ["DescribeRouteTables", "ReplaceRoute", "CreateRoute"]
    );
    assert!(r.converged() && r.status().errors.is_empty());
    assert_eq!(
        cloud.points_at("rtb-b", "10.9.0.0/16"),
        Some(&eni("eni-me"))
    );
    // The same claims again: nothing. A minute later: one describe.
    r.set_claims(claims.clone(), now);
    run(&mut r, &mut cloud, &mut now, 59);
    assert_eq!(cloud.calls.len(), 3);
    run(&mut r, &mut cloud, &mut now, 2);
    assert_eq!(cloud.calls[3..], ["DescribeRouteTables"]);

    // A fresh appliance claiming routes already its own: a describe only.
    let mut cloud2 = Cloud::default();
    cloud2.tables.insert(
        "rtb-a".into(),
        [("10.9.0.0/16".to_string(), eni("eni-me"))].into(),
    );
    let mut r2 = Reconciler::new("eni-me", Settings::default(), 7);
    r2.set_claims([route("rtb-a", "10.9.0.0/16")], now);
    run(&mut r2, &mut cloud2, &mut now, 1);
    assert_eq!(cloud2.calls, ["DescribeRouteTables"]);
    assert!(r2.converged());

    // Released: no call at all, ever.
    r.set_claims([], now);
    let before = cloud.calls.len();
    run(&mut r, &mut cloud, &mut now, 300);
    assert_eq!(cloud.calls.len(), before);
    assert_eq!(r.status().claimed, 0);
}

/// Throttling and a server error on one route, a refusal on another: the
/// first converges after backing off, the second is said and retried
/// slowly, and neither holds the other up.
#[test]
fn faults_are_retried_per_route_with_backoff_and_said_until_converged() {
    let mut now = Instant::now();
    let mut cloud = two_tables();
    cloud.faults = vec![
        (
            "DescribeRouteTables",
            CloudError::Throttled("RequestLimitExceeded".into()),
        ),
        (
            "ReplaceRoute",
            CloudError::Throttled("RequestLimitExceeded".into()),
        ),
        (
            "ReplaceRoute",
            CloudError::Server {
                status: 503,
                message: "Unavailable".into(),
            },
        ),
        (
            "ReplaceRoute",
            CloudError::Timeout("no answer in 5 s".into()),
        ),
    ];
    let mut r = Reconciler::new("eni-me", Settings::default(), 7);
    let claims = [
        route("rtb-a", "10.9.0.0/16"),
        route("rtb-b", "10.9.0.0/16"),
        route("rtb-gone", "10.9.0.0/16"),
    ];
    r.set_claims(claims, now);
    let start = now;
    run(&mut r, &mut cloud, &mut now, 3);
    assert_eq!(
        cloud.points_at("rtb-a", "10.9.0.0/16"),
        Some(&eni("eni-me"))
    );
    assert_eq!(
        cloud.points_at("rtb-b", "10.9.0.0/16"),
        Some(&eni("eni-me"))
    );
    let s = r.status();
    assert_eq!((s.claimed, s.converged), (3, 2));
    let text = s.to_string();
    assert!(
        text.starts_with("3 routes claimed, 2 pointing here: converging\n  10.9.0.0/16 in rtb-gone: CreateRoute of 10.9.0.0/16 in rtb-gone: refused: no route table rtb-gone (retrying)"),
        "{text}"
    );
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].1.contains("rtb-gone"), "{:?}", s.errors);
    // Backoff: the describe retried after 50-100 ms, the replace after
    // 50-100, 100-200 and 200-400 ms: all within 3 s, in 1 + 1 + 4 + 1 +
    // 1 calls (the refused create once so far, or twice).
    let describes = cloud
        .calls
        .iter()
        .filter(|c| **c == "DescribeRouteTables")
        .count();
    let replaces = cloud.calls.iter().filter(|c| **c == "ReplaceRoute").count();
    assert_eq!((describes, replaces), (2, 4), "{:?}", cloud.calls);
    // The refusal is retried at the cap (5-10 s), not in a storm.
    let creates_before = cloud.calls.iter().filter(|c| **c == "CreateRoute").count();
    run(&mut r, &mut cloud, &mut now, 60);
    let creates = cloud.calls.iter().filter(|c| **c == "CreateRoute").count() - creates_before;
    assert!((5..=12).contains(&creates), "{creates} creates in a minute");
    // The table appears: it converges.
    cloud.tables.insert("rtb-gone".into(), BTreeMap::new());
    run(&mut r, &mut cloud, &mut now, 11);
    assert!(r.converged(), "{:?}", r.status());
    assert!(r.status().errors.is_empty());
    assert!(now.duration_since(start) < Duration::from_secs(80));
}

/// Someone points a claimed route elsewhere, or deletes it between the
/// describe and the write: the next describe finds it and the route is
/// claimed back.
#[test]
fn drift_and_stale_descriptions_are_claimed_back() {
    let mut now = Instant::now();
    let mut cloud = two_tables();
    let mut r = Reconciler::new("eni-me", Settings::default(), 7);
    r.set_claims([route("rtb-a", "10.9.0.0/16")], now);
    run(&mut r, &mut cloud, &mut now, 1);
    assert!(r.converged());
    // Repointed by hand.
    cloud
        .tables
        .get_mut("rtb-a")
        .unwrap()
        .insert("10.9.0.0/16".into(), eni("eni-other"));
    run(&mut r, &mut cloud, &mut now, 61);
    assert_eq!(
        cloud.points_at("rtb-a", "10.9.0.0/16"),
        Some(&eni("eni-me"))
    );
    // Deleted after the describe: the replace finds no route, the table
    // is described again, and the route created.
    let mut r = Reconciler::new("eni-me2", Settings::default(), 9);
    r.set_claims([route("rtb-a", "10.9.0.0/16")], now);
    let (id, describe) = r.poll_call().unwrap();
    let reply = cloud.answer(&describe);
    cloud.tables.get_mut("rtb-a").unwrap().clear();
    r.handle_reply(id, reply, now);
    run(&mut r, &mut cloud, &mut now, 2);
    assert_eq!(
        cloud.points_at("rtb-a", "10.9.0.0/16"),
        Some(&eni("eni-me2"))
    );
    assert!(r.converged());
}
