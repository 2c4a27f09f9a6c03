//! A management network for the lab, and a real Prometheus on it: a
//! namespace `{tag}-mon` with a bridge, every appliance on it with a
//! private address (10.254.0.(g+1)), where its admin listener then
//! listens, as an appliance's would on its VPC address; Prometheus (the
//! Debian package's server) runs in that namespace, scrapes every
//! gateway each second and loads the project's alerting rules.

use std::process::{Child, Stdio};

use super::*;

/// The management network's Prometheus, stopped on drop.
pub struct Monitoring {
    pub ns: Netns,
    prometheus: Option<Child>,
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        if let Some(mut p) = self.prometheus.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Prometheus's address on the management network.
pub const PROMETHEUS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 254, 0, 254)), 9090);

impl Lab {
    /// Puts every gateway on the management network (call after the
    /// regions and leaves are built, before the configs are written).
    pub fn add_monitoring(&mut self) -> Result<()> {
        if self.gateway_count() > 250 {
            bail!("the lab's management network holds 250 gateways");
        }
        let ns = Netns::create(&format!("{}-mon", self.tag))?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", PROMETHEUS.ip()),
            "dev",
            "br0",
        ])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        for g in 0..self.gateway_count() {
            let port = format!("m{}", g + 1);
            veth(self.gateway_ns(g), "mon0", &ns, &port)?;
            ns.ip(&["link", "set", &port, "master", "br0"])?;
            self.gateway_ns(g).ip(&[
                "addr",
                "add",
                &format!("{}/24", self.admin_addr_on_mon(g).ip()),
                "dev",
                "mon0",
            ])?;
        }
        self.monitoring = Some(Monitoring {
            ns,
            prometheus: None,
        });
        Ok(())
    }

    fn admin_addr_on_mon(&self, g: usize) -> SocketAddr {
        SocketAddr::new(
            std::net::IpAddr::V4(Ipv4Addr::new(10, 254, 0, g as u8 + 1)),
            ADMIN.port(),
        )
    }

    /// Where gateway `g`'s admin listener is: on the management network
    /// if the lab has one, else on the appliance's loopback.
    pub fn admin_addr(&self, g: usize) -> SocketAddr {
        if self.monitoring.is_some() {
            self.admin_addr_on_mon(g)
        } else {
            ADMIN
        }
    }

    /// Starts Prometheus on the management network, scraping every
    /// gateway each second (job `meshgate`) with `rules` loaded.
    pub fn start_prometheus(&mut self, rules: &Path) -> Result<()> {
        let targets: Vec<String> = (0..self.gateway_count())
            .map(|g| format!("\"{}\"", self.admin_addr(g)))
            .collect();
        let dir = self.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: meshgate\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let m = self
            .monitoring
            .as_mut()
            .context("Prometheus runs on the management network: add_monitoring first")?;
        let child =
            m.ns.command("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={PROMETHEUS}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting prometheus (Debian package prometheus)")?;
        m.prometheus = Some(child);
        Ok(())
    }

    /// A GET of Prometheus's HTTP API (for example `/api/v1/targets`).
    pub fn prometheus_get(&self, path: &str) -> Result<String> {
        let m = self.monitoring.as_ref().context("no management network")?;
        probe::http_get(&m.ns, PROMETHEUS, path)
    }
}
