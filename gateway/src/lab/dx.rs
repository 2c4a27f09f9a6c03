//! A second underlay labelled `dx` (a Direct Connect stand-in): a bridge
//! of its own in the underlay namespace, 198.19.0.0/24, every appliance on
//! it at the last octet it has on the internet underlay. Gateways then
//! listen on every address and advertise `dx` beside `internet`; cutting
//! an appliance's port on the bridge is a dx outage.

use super::*;

/// The dx bridge in the underlay namespace.
const BRIDGE: &str = "br1";

impl Lab {
    /// Puts every gateway on the `dx` underlay as well. Call after the
    /// regions (and leaves) are built and before the configs are written.
    pub fn add_dx_underlay(&mut self) -> Result<()> {
        self.underlay
            .ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        self.underlay.ip(&["link", "set", BRIDGE, "up"])?;
        for g in 0..self.gateway_count() {
            let port = dx_port(g);
            veth(self.gateway_ns(g), "dx0", &self.underlay, &port)?;
            self.underlay
                .ip(&["link", "set", &port, "master", BRIDGE])?;
            self.gateway_ns(g).ip(&[
                "addr",
                "add",
                &format!("{}/24", self.gateway_dx_ip(g)),
                "dev",
                "dx0",
            ])?;
        }
        self.dx = true;
        Ok(())
    }

    /// Gateway `g`'s address on the dx underlay.
    pub fn gateway_dx_ip(&self, g: usize) -> Ipv4Addr {
        let [_, _, _, last] = self.gateway_underlay_ip(g).octets();
        Ipv4Addr::new(198, 19, 0, last)
    }

    /// Cuts gateway `g`'s dx link (its port on the dx bridge goes down),
    /// or heals it.
    pub fn set_dx(&self, g: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.underlay.ip(&["link", "set", &dx_port(g), state])
    }

    /// Packets gateway `g` has sent on each underlay so far (internet,
    /// dx): what its underlay interfaces counted, so a test sees which
    /// one the traffic takes.
    pub fn underlay_tx_packets(&self, g: usize) -> Result<(u64, u64)> {
        let count = |dev: &str| -> Result<u64> {
            let out = self
                .gateway_ns(g)
                .command("cat")
                .arg(format!("/sys/class/net/{dev}/statistics/tx_packets"))
                .output()
                .context("reading an interface counter")?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .with_context(|| {
                    format!("the tx_packets of {dev} in {}", self.gateway_ns(g).name())
                })
        };
        Ok((count("ul0")?, count("dx0")?))
    }

    /// The `[gateway]` lines that put gateway `g` on both underlays: the
    /// ESP socket on every address, `internet` advertised, `dx` beside it.
    pub(super) fn dx_gateway_lines(&self, g: usize) -> String {
        format!(
            "advertise = \"{ul}:{port}\"\nendpoints = {{ dx = \"{dx}:{port}\" }}\n",
            ul = self.gateway_underlay_ip(g),
            dx = self.gateway_dx_ip(g),
            port = ESP_PORT,
        )
    }
}

fn dx_port(g: usize) -> String {
    format!("dx{}", g + 1)
}
