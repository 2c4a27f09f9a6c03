//! The lab's topology: per region an appliance namespace and a VPC host
//! namespace behind it, the appliances on one underlay bridge, addresses
//! and routes.

use super::*;

impl Lab {
    /// Builds the namespaces and links of an `n`-region lab. `tag` keeps
    /// the names of concurrent labs apart (at most 6 characters).
    pub fn build(n: usize, tag: &str) -> Result<Lab> {
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
            gateways: Vec::new(),
            regions: Vec::new(),
            underlay,
            sa_settings: "cipher = \"aes128gcm16\"".into(),
            policy: crate::config::DEFAULT_POLICY.into(),
            placement: None,
        };
        for index in 0..n {
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
            };
            veth(
                &r.appliance,
                "ul0",
                &lab.underlay,
                &format!("port{}", r.number()),
            )?;
            lab.underlay.ip(&[
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
            lab.regions.push(r);
        }
        Ok(lab)
    }
}
