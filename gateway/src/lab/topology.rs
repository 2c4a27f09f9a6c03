//! The lab's topology: per region an appliance namespace and a VPC host
//! namespace behind it, the appliances on one underlay bridge, addresses
//! and routes. With zones, two appliances per region and the VPC's
//! router (a namespace whose routing table is the VPC's route table)
//! between them and the host:
//!
//! ```text
//!   host-N 10.N.1.10 ── vpcN router 10.N.1.1 (route table rtb-N) ──┬── appNa 10.N.1.2
//!                                                                  └── appNb 10.N.1.3
//!   appNa 198.18.0.N, appNb 198.18.0.(100+N) on the underlay bridge
//! ```

use super::*;

impl Lab {
    /// Builds the namespaces and links of an `n`-region lab. `tag` keeps
    /// the names of concurrent labs apart (at most 6 characters).
    pub fn build(n: usize, tag: &str) -> Result<Lab> {
        Lab::build_with(n, tag, 1)
    }

    /// Builds an `n`-region lab with `zones` appliances per region (1, or
    /// 2: an active/passive pair behind the VPC's router).
    pub fn build_with(n: usize, tag: &str, zones: usize) -> Result<Lab> {
        if !(1..=2).contains(&zones) {
            bail!("a lab region has 1 or 2 availability zones, not {zones}");
        }
        if !(2..=50).contains(&n) {
            bail!("a lab has 2 to 50 regions, not {n}");
        }
        // A fresh, unguessable directory created by us alone (mode 0700,
        // failing if the name exists): it holds keys, and we run as root.
        let suffix: String = (0..8)
            .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
            .collect();
        let dir = std::env::temp_dir().join(format!("meshgate-lab-{tag}-{suffix}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let underlay = Netns::create(&format!("{tag}-ul"))?;
        underlay.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let mut lab = Lab {
            tag: tag.to_string(),
            dir,
            zones,
            #[cfg(feature = "aws")]
            moto: None,
            #[cfg(feature = "aws")]
            kms: None,
            leaves: Vec::new(),
            gateways: Vec::new(),
            regions: Vec::new(),
            underlay,
            sa_settings: "cipher = \"aes128gcm16\"".into(),
            policy: crate::config::DEFAULT_POLICY.into(),
            placement: None,
            policy_params: Vec::new(),
            dx: false,
            discovery: false,
            monitoring: None,
            keep_on_failure: false,
            finished: false,
        };
        for index in 0..n {
            let r = if zones == 1 {
                lab.single_region(index)?
            } else {
                lab.zoned_region(index)?
            };
            lab.regions.push(r);
        }
        Ok(lab)
    }

    /// A region of one appliance with the host behind it.
    fn single_region(&self, index: usize) -> Result<Region> {
        let tag = &self.tag;
        let appliance = Netns::create(&format!("{tag}-app{}", index + 1))?;
        let host = Netns::create(&format!("{tag}-host{}", index + 1))?;
        // No duplicate address detection in the lab: nothing else is on
        // these links, and a tentative link-local address turns the
        // first neighbour solicitation into a DAD probe that nobody
        // answers, holding traffic back for a second.
        for ns in [&appliance, &host] {
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        let r = Region {
            index,
            appliance,
            host,
            standby: None,
            router: None,
        };
        veth(
            &r.appliance,
            "ul0",
            &self.underlay,
            &format!("port{}", r.number()),
        )?;
        self.underlay.ip(&[
            "link",
            "set",
            &format!("port{}", r.number()),
            "master",
            "br0",
        ])?;
        r.appliance.ip(&[
            "addr",
            "add",
            &format!("{}/24", r.underlay_ip()),
            "dev",
            "ul0",
        ])?;
        veth(&r.appliance, "lan0", &r.host, "eth0")?;
        r.appliance
            .ip(&["addr", "add", &format!("{}/24", r.lan_ip()), "dev", "lan0"])?;
        r.host
            .ip(&["addr", "add", &format!("{}/24", r.host_ip()), "dev", "eth0"])?;
        r.host
            .ip(&["route", "add", "default", "via", &r.lan_ip().to_string()])?;
        r.appliance.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", r.lan_ip6()),
            "dev",
            "lan0",
            "nodad",
        ])?;
        r.host.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", r.host_ip6()),
            "dev",
            "eth0",
            "nodad",
        ])?;
        r.host.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &r.lan_ip6().to_string(),
        ])?;
        r.appliance.sysctl("net.ipv4.ip_forward", "1")?;
        r.appliance.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // A hub sends transit traffic back out the TUN it came in on;
        // that is routing, not a reason for ICMP redirects.
        r.appliance
            .sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        r.appliance
            .sysctl("net.ipv4.conf.default.send_redirects", "0")?;
        Ok(r)
    }

    /// A region of two appliances (zones a and b) and the VPC's router
    /// between them and the host. The router's table starts without
    /// routes to other regions: the active appliance claims them.
    fn zoned_region(&self, index: usize) -> Result<Region> {
        let tag = &self.tag;
        let num = index + 1;
        let router = Netns::create(&format!("{tag}-vpc{num}"))?;
        let host = Netns::create(&format!("{tag}-host{num}"))?;
        let a = Netns::create(&format!("{tag}-app{num}a"))?;
        let b = Netns::create(&format!("{tag}-app{num}b"))?;
        for ns in [&router, &host, &a, &b] {
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        router.ip(&["link", "add", "br0", "type", "bridge"])?;
        router.ip(&["link", "set", "br0", "up"])?;
        let r = Region {
            index,
            appliance: a,
            host,
            standby: None,
            router: None,
        };
        let (lan4, lan6) = (r.lan_ip(), r.lan_ip6());
        router.ip(&["addr", "add", &format!("{lan4}/24"), "dev", "br0"])?;
        router.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{lan6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The router sends the hosts' packets back out the bridge to the
        // active appliance; a redirect would teach the host to skip the
        // route table, and failover would no longer move its traffic.
        router.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        router.sysctl("net.ipv4.conf.br0.send_redirects", "0")?;
        attach_to_vpc(&router, &r.host, "host", r.host_ip(), r.host_ip6())?;
        r.host
            .ip(&["route", "add", "default", "via", &lan4.to_string()])?;
        r.host
            .ip(&["-6", "route", "add", "default", "via", &lan6.to_string()])?;
        for key in [
            "net.ipv4.conf.all.accept_redirects",
            "net.ipv6.conf.all.accept_redirects",
        ] {
            r.host.sysctl(key, "0")?;
        }
        for (zone, ns) in [(0, &r.appliance), (1, &b)] {
            let letter = (b'a' + zone as u8) as char;
            let (v4, v6) = zone_lan_ips(num, zone);
            attach_to_vpc(&router, ns, &format!("app{letter}"), v4, v6)?;
            let port = format!("port{num}{letter}");
            veth(ns, "ul0", &self.underlay, &port)?;
            self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
            let ul = underlay_ip(num, zone);
            ns.ip(&["addr", "add", &format!("{ul}/24"), "dev", "ul0"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            ns.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
        }
        Ok(Region {
            standby: Some(b),
            router: Some(router),
            ..r
        })
    }
}

/// Links `ns` (as `lan0`) to the VPC router's bridge (as `port`) with
/// addresses `v4`/24 and `v6`/64.
fn attach_to_vpc(
    router: &Netns,
    ns: &Netns,
    port: &str,
    v4: std::net::Ipv4Addr,
    v6: std::net::Ipv6Addr,
) -> Result<()> {
    veth(ns, "lan0", router, port)?;
    router.ip(&["link", "set", port, "master", "br0"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "lan0"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "lan0",
        "nodad",
    ])?;
    Ok(())
}
