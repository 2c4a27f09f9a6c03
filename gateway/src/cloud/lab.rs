//! The lab's cloud: each VPC's route table is the main routing table of a
//! router namespace, and an appliance's "network interface" is its
//! address on the VPC's subnet (the next hop the router sends to). The
//! same calls as on AWS, carried out with `ip -n ROUTER route`, so the
//! reconciler and the failover above it run unchanged without a cloud.

use std::collections::BTreeMap;
use std::process::Command;

use super::backend::{BoxFuture, CloudBackend};
use super::{Call, CloudError, Reply, RouteTable, Target};
use crate::prefix::Prefix;

/// Route table ids and the router namespaces that hold them.
#[derive(Clone, Debug, Default)]
pub struct LabCloud {
    routers: BTreeMap<String, String>,
    /// Interface ids and their addresses on the VPC subnet, one per
    /// family: a router's IPv6 route needs an IPv6 next hop. An interface
    /// not listed is its own (only) address.
    interfaces: BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl LabCloud {
    /// `routers`: (route table id, router namespace).
    pub fn new(routers: impl IntoIterator<Item = (String, String)>) -> LabCloud {
        LabCloud {
            routers: routers.into_iter().collect(),
            interfaces: BTreeMap::new(),
        }
    }

    /// Names interface `id` and its addresses, so routes point at the
    /// address of their own family and read back as `id`.
    pub fn with_interface(mut self, id: &str, addresses: Vec<std::net::IpAddr>) -> LabCloud {
        self.interfaces.insert(id.to_string(), addresses);
        self
    }

    /// The next hop for `destination` through `interface`.
    fn next_hop(&self, interface: &str, destination: &Prefix) -> Result<String, CloudError> {
        let Some(addrs) = self.interfaces.get(interface) else {
            return Ok(interface.to_string());
        };
        addrs
            .iter()
            .find(|a| a.is_ipv6() == destination.addr().is_ipv6())
            .map(|a| a.to_string())
            .ok_or_else(|| {
                CloudError::Refused(format!(
                    "interface {interface} has no address of the family of {destination}"
                ))
            })
    }

    /// The interface a next hop address belongs to, as Describe names it.
    fn interface_of(&self, target: Target) -> Target {
        match target {
            Target::Interface(addr) => Target::Interface(
                self.interfaces
                    .iter()
                    .find(|(_, addrs)| addrs.iter().any(|a| a.to_string() == addr))
                    .map_or(addr, |(id, _)| id.clone()),
            ),
            other => other,
        }
    }

    fn namespace(&self, table: &str) -> Result<&str, CloudError> {
        self.routers
            .get(table)
            .map(String::as_str)
            .ok_or_else(|| CloudError::Refused(format!("no route table {table} in the lab")))
    }

    fn run(&self, call: &Call) -> Result<Reply, CloudError> {
        match call {
            Call::Describe { tables } => {
                let mut out = Vec::new();
                for t in tables {
                    // A table that does not exist is left out, as EC2 does
                    // with a filter that matches nothing.
                    let Ok(ns) = self.namespace(t) else { continue };
                    let mut routes = Vec::new();
                    for family in ["-4", "-6"] {
                        let text = ip(ns, &[family, "route", "show"])?;
                        routes.extend(
                            text.lines()
                                .filter_map(parse_route)
                                .map(|(p, t)| (p, self.interface_of(t))),
                        );
                    }
                    out.push(RouteTable {
                        id: t.clone(),
                        routes,
                    });
                }
                Ok(Reply::Described(out))
            }
            Call::Replace { route, interface } | Call::Create { route, interface } => {
                let ns = self.namespace(&route.table)?;
                let verb = if matches!(call, Call::Replace { .. }) {
                    "replace"
                } else {
                    "add"
                };
                let family = if route.destination.addr().is_ipv6() {
                    "-6"
                } else {
                    "-4"
                };
                let exists = ip(
                    ns,
                    &[
                        family,
                        "route",
                        "show",
                        "exact",
                        &route.destination.to_string(),
                    ],
                )?;
                match (verb, exists.trim().is_empty()) {
                    ("replace", true) => {
                        return Err(CloudError::Stale(format!("no route {route}")));
                    }
                    ("add", false) => {
                        return Err(CloudError::Stale(format!("{route} exists")));
                    }
                    _ => {}
                }
                let via = self.next_hop(interface, &route.destination)?;
                ip(
                    ns,
                    &["route", verb, &route.destination.to_string(), "via", &via],
                )?;
                Ok(Reply::Done)
            }
        }
    }
}

impl CloudBackend for LabCloud {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CloudError>> {
        Box::pin(async move {
            let lab = self.clone();
            tokio::task::spawn_blocking(move || lab.run(&call))
                .await
                .map_err(|e| {
                    CloudError::Timeout(format!("the lab's route call did not finish: {e}"))
                })?
        })
    }
}

/// One line of `ip route show`: its destination and where it points (the
/// next hop's address, as the lab names interfaces, or the rest).
fn parse_route(line: &str) -> Option<(Prefix, Target)> {
    let mut words = line.split_whitespace();
    let dest = words.next()?;
    let prefix: Prefix = match dest {
        "default" => return None,
        d if d.contains('/') => d.parse().ok()?,
        d => format!("{d}/{}", if d.contains(':') { 128 } else { 32 })
            .parse()
            .ok()?,
    };
    let rest: Vec<&str> = words.collect();
    let target = match rest.iter().position(|w| *w == "via") {
        Some(i) => Target::Interface(rest.get(i + 1)?.to_string()),
        None => Target::Other(rest.join(" ")),
    };
    Some((prefix, target))
}

/// `ip -n NS ARGS`, its output, or the error it printed.
fn ip(ns: &str, args: &[&str]) -> Result<String, CloudError> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .map_err(|e| CloudError::Refused(format!("running ip: {e}")))?;
    if !out.status.success() {
        return Err(CloudError::Refused(format!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::reconcile::{Reconciler, Settings};
    use crate::cloud::RouteKey;
    use crate::netns::Netns;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A router namespace with a VPC subnet (10.1.0.0/24) and a route to
    /// 10.9.0.0/16 via 10.1.0.6 (another appliance); `None` without root.
    fn router(name: &str) -> Option<Netns> {
        if crate::netns::check_privileges().is_err() {
            eprintln!("skipped: needs root (network namespaces)");
            return None;
        }
        let tag = format!("mgc{}{name}", std::process::id() % 10000);
        let router = Netns::create(&tag).unwrap();
        // (This kernel has no dummy devices: a veth pair, both ends here.)
        router
            .ip(&[
                "link", "add", "vpc0", "type", "veth", "peer", "name", "vpc1",
            ])
            .unwrap();
        router
            .ip(&["addr", "add", "10.1.0.1/24", "dev", "vpc0"])
            .unwrap();
        router.ip(&["link", "set", "vpc1", "up"]).unwrap();
        router.ip(&["link", "set", "vpc0", "up"]).unwrap();
        router
            .ip(&["route", "add", "10.9.0.0/16", "via", "10.1.0.6"])
            .unwrap();
        Some(router)
    }

    /// The shell around the reconciler: claims through a channel, the lab
    /// backend's calls counted by API and outcome, the status published;
    /// a release makes no call.
    #[test]
    fn the_driver_claims_counts_its_calls_and_says_how_the_routes_stand() {
        let Some(router) = router("b") else { return };
        let cloud = Arc::new(LabCloud::new([(
            "rtb-lab".to_string(),
            router.name().to_string(),
        )]));
        let metrics = Arc::new(crate::metrics::Metrics::new("gw-test"));
        let (claims_tx, claims) = tokio::sync::watch::channel(Vec::new());
        let (status_tx, mut status) = tokio::sync::watch::channel(Default::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let driver = tokio::spawn(crate::cloud::driver::run(
                cloud,
                "10.1.0.5".into(),
                claims,
                status_tx,
                metrics.clone(),
                Settings::default(),
            ));
            claims_tx
                .send(vec![RouteKey {
                    table: "rtb-lab".into(),
                    destination: "10.9.0.0/16".parse().unwrap(),
                }])
                .unwrap();
            let converged = tokio::time::timeout(
                Duration::from_secs(5),
                status.wait_for(|s: &crate::cloud::reconcile::Status| {
                    s.claimed == 1 && s.converged == 1
                }),
            )
            .await
            .is_ok();
            assert!(converged, "not converged: {:?}", *status.borrow());
            claims_tx.send(Vec::new()).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(claims_tx);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        });
        let text = metrics.render();
        let calls = |api: &str| {
            crate::metrics::sum_samples(
                &text,
                "meshgate_cloud_calls_total",
                &format!("api=\"{api}\",outcome=\"ok\""),
            )
        };
        assert_eq!(
            (calls("DescribeRouteTables"), calls("ReplaceRoute")),
            (1.0, 1.0),
            "{text}"
        );
        assert_eq!(
            crate::metrics::sum_samples(&text, "meshgate_cloud_routes", "state=\"claimed\""),
            0.0
        );
        let shown = ip(router.name(), &["route", "show"]).unwrap();
        assert!(
            shown.contains("10.9.0.0/16 via 10.1.0.5"),
            "released routes stay: {shown}"
        );
    }

    #[test]
    fn ip_route_lines_read_as_routes() {
        assert_eq!(
            parse_route("10.9.0.0/16 via 10.1.0.5 dev eth0 proto static"),
            Some((
                "10.9.0.0/16".parse().unwrap(),
                Target::Interface("10.1.0.5".into())
            ))
        );
        assert_eq!(
            parse_route("10.1.0.0/24 dev eth0 proto kernel scope link src 10.1.0.1"),
            Some((
                "10.1.0.0/24".parse().unwrap(),
                Target::Other("dev eth0 proto kernel scope link src 10.1.0.1".into())
            ))
        );
        assert_eq!(parse_route("default via 10.1.0.254 dev eth0"), None);
    }

    /// The reconciler claims a route in a real router namespace through
    /// the lab backend, and claims it back after someone repoints it.
    #[test]
    fn the_lab_backend_claims_routes_in_a_router_namespace() {
        let Some(router) = router("a") else { return };
        let cloud = LabCloud::new([("rtb-lab".to_string(), router.name().to_string())]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut r = Reconciler::new("10.1.0.5", Settings::default(), 1);
        let claims = [
            RouteKey {
                table: "rtb-lab".into(),
                destination: "10.9.0.0/16".parse().unwrap(),
            },
            RouteKey {
                table: "rtb-lab".into(),
                destination: "10.8.0.0/16".parse().unwrap(),
            },
        ];
        let mut now = Instant::now();
        r.set_claims(claims, now);
        let mut calls = Vec::new();
        for _ in 0..10 {
            while let Some((id, call)) = r.poll_call() {
                calls.push(call.api());
                let reply = rt.block_on(cloud.call(call));
                r.handle_reply(id, reply, now);
            }
            now += Duration::from_millis(500);
            r.handle_timeout(now);
        }
        assert!(r.converged(), "{:?}", r.status());
        // A describe, then 10.8.0.0/16 created and 10.9.0.0/16 replaced.
        assert_eq!(
            calls,
            ["DescribeRouteTables", "CreateRoute", "ReplaceRoute"]
        );
        let shown = ip(router.name(), &["route", "show"]).unwrap();
        assert!(shown.contains("10.9.0.0/16 via 10.1.0.5"), "{shown}");
        assert!(shown.contains("10.8.0.0/16 via 10.1.0.5"), "{shown}");
        // A table the lab does not have is refused with its name.
        let bad = Call::Create {
            route: RouteKey {
                table: "rtb-none".into(),
                destination: "10.7.0.0/16".parse().unwrap(),
            },
            interface: "10.1.0.5".into(),
        };
        let e = rt.block_on(cloud.call(bad)).unwrap_err();
        assert!(e.to_string().contains("rtb-none"), "{e}");
    }

    /// A named interface: each route points at the address of its own
    /// family, and Describe names the interface, not the address.
    #[test]
    fn a_named_interface_routes_each_family_through_its_own_address() {
        let Some(router) = router("c") else { return };
        router
            .ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "vpc0", "nodad"])
            .unwrap();
        let cloud = LabCloud::new([("rtb-lab".to_string(), router.name().to_string())])
            .with_interface(
                "eni-a",
                vec!["10.1.0.5".parse().unwrap(), "fd00:1::5".parse().unwrap()],
            );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for dest in ["10.8.0.0/16", "fd00:8::/48"] {
            let call = Call::Create {
                route: RouteKey {
                    table: "rtb-lab".into(),
                    destination: dest.parse().unwrap(),
                },
                interface: "eni-a".into(),
            };
            rt.block_on(cloud.call(call)).unwrap();
        }
        let shown = ip(router.name(), &["-6", "route", "show"]).unwrap();
        assert!(shown.contains("fd00:8::/48 via fd00:1::5"), "{shown}");
        let Reply::Described(tables) = rt
            .block_on(cloud.call(Call::Describe {
                tables: vec!["rtb-lab".into()],
            }))
            .unwrap()
        else {
            panic!("not a description")
        };
        let to = |dest: &str| {
            tables[0]
                .routes
                .iter()
                .find(|(p, _)| p.to_string() == dest)
                .map(|(_, t)| t.clone())
        };
        assert_eq!(to("10.8.0.0/16"), Some(Target::Interface("eni-a".into())));
        assert_eq!(to("fd00:8::/48"), Some(Target::Interface("eni-a".into())));
        assert_eq!(
            to("10.9.0.0/16"),
            Some(Target::Interface("10.1.0.6".into())),
            "another's next hop stays an address"
        );
        // An interface without an address of the route's family.
        let e = LabCloud::new([("rtb-lab".to_string(), router.name().to_string())])
            .with_interface("eni-b", vec!["10.1.0.7".parse().unwrap()])
            .next_hop("eni-b", &"fd00:9::/48".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("eni-b"), "{e}");
    }
}
