//! `meshgate status` for a person: this gateway, a block per peer (as
//! `wg show` does), the drops, the redundancy groups.

use std::fmt::{self, Display, Formatter};

use super::{PeerStatus, Status};

/// `1.2 MB`, `340 B`: sizes a person reads at a glance.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `45 s`, `12 min 3 s`, `2 h 5 min`.
fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Display for Status {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let g = &self.gateway;
        let i = &g.identity;
        let zone = i
            .zone
            .as_deref()
            .map_or(String::new(), |z| format!(", zone {z}"));
        let mode = match i.mode {
            "mesh" => "mesh member",
            _ => "configured peers",
        };
        writeln!(
            f,
            "gateway {} (region {}{zone}, role {}), {mode}, up {}",
            i.id,
            i.region,
            i.role,
            span(g.up_secs)
        )?;
        let p = &g.policy;
        if p.differs {
            writeln!(
                f,
                "  policy: {} (hash {}) running, loaded by a reload; the config names {}, which a restart loads (or now: meshgate policy reload --module {})",
                p.running, p.hash, p.configured, p.configured
            )?;
        } else {
            writeln!(
                f,
                "  policy: {} (hash {}), as configured",
                p.running, p.hash
            )?;
        }
        if let Some(e) = g.key_epoch {
            writeln!(f, "  key epoch: {e}")?;
        }
        let endpoints: Vec<String> = i
            .endpoints
            .iter()
            .map(|e| format!("{} {}", e.label, e.address))
            .collect();
        writeln!(
            f,
            "  underlays: {} (ESP-in-UDP socket {})",
            endpoints.join(", "),
            i.listen
        )?;
        let on = |b: bool| if b { "on" } else { "off" };
        writeln!(
            f,
            "  tun {}, mtu {}; offloads: tso {}, udp gso {}, udp gro {}",
            i.tun,
            i.mtu,
            on(i.offloads.tso),
            on(i.offloads.gso),
            on(i.offloads.gro)
        )?;
        if self.peers.is_empty() {
            writeln!(f, "\nno peers")?;
        }
        for peer in &self.peers {
            write!(f, "\n{peer}")?;
        }
        let dropped: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        if dropped.is_empty() {
            writeln!(f, "\ndrops: none")?;
        } else {
            writeln!(f, "\ndrops: {}", dropped.join(", "))?;
        }
        if self.groups.is_empty() {
            writeln!(f, "redundancy groups: none in this gateway's view")?;
        } else {
            writeln!(f, "redundancy groups (as this gateway's policy decides):")?;
            for group in &self.groups {
                writeln!(
                    f,
                    "  {:<20} active: {}",
                    group.group,
                    group
                        .active
                        .as_deref()
                        .unwrap_or("none (no member present)")
                )?;
            }
        }
        match &self.cloud_routes {
            Some(c) => write!(f, "cloud routes: {c}"),
            None => writeln!(f, "cloud routes: none ([cloud] is not configured)"),
        }
    }
}

impl Display for PeerStatus {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let keyed = match (self.keyed, self.last_keyed_secs) {
            (true, Some(s)) => format!("keyed {} ago", span(s)),
            (false, Some(_)) => "keyed one way only".into(),
            (_, None) => "no SA".into(),
        };
        let path = match (&self.underlay, &self.endpoint) {
            (Some(u), Some(e)) => format!(", over {u} to {e}"),
            (None, Some(e)) => format!(", to {e}"),
            _ => String::new(),
        };
        writeln!(f, "peer {}: {}, {keyed}{path}", self.id, self.state)?;
        writeln!(
            f,
            "  sent {} ({}), received {} ({})",
            count(self.packets_out, "packet", "packets"),
            bytes(self.bytes_out),
            count(self.packets_in, "packet", "packets"),
            bytes(self.bytes_in)
        )?;
        if !self.drops.is_empty() {
            let drops: Vec<String> = self.drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
            writeln!(f, "  dropped on its SAs: {}", drops.join(", "))?;
        }
        for sa in &self.sas {
            let rekey = match sa.rekey_in_secs {
                Some(0) => ", rekey due".to_string(),
                Some(s) => format!(", rekey in {}", span(s)),
                None => String::new(),
            };
            writeln!(
                f,
                "  SA {:<3} {} {}, age {}{rekey}; {}, {}",
                sa.direction,
                sa.spi,
                sa.cipher,
                span(sa.age_secs),
                count(sa.packets, "packet", "packets"),
                bytes(sa.bytes)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_spans_read_as_words() {
        assert_eq!(bytes(340), "340 B");
        assert_eq!(bytes(1_234_567), "1.2 MB");
        assert_eq!(span(45), "45 s");
        assert_eq!(span(723), "12 min 3 s");
        assert_eq!(span(7500), "2 h 5 min");
        assert_eq!(count(1, "packet", "packets"), "1 packet");
        assert_eq!(count(2, "packet", "packets"), "2 packets");
    }
}
