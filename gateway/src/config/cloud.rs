//! Validation of `[cloud]`, where an active appliance claims its
//! redundancy group's routes, and of `gateway.endpoints`, the underlays
//! it is reached over.

use super::*;

impl Validator<'_> {
    /// `cloud.dns_zone` and `dns_name`: the group's record in a private
    /// hosted zone, pointed at this appliance's address while it is active.
    fn dns(
        &self,
        c: &RawCloud,
        backend: &CloudBackendKind,
        advertise: SocketAddr,
    ) -> Result<Option<DnsRecord>, ConfigError> {
        let (zone, name) = match (&c.dns_zone, &c.dns_name) {
            (None, None) => return Ok(None),
            (Some(z), Some(n)) => (z, n),
            (Some(z), None) => {
                return self.err(
                    z.span(),
                    "cloud.dns_name",
                    "a record needs its name too (for example \"region-1.mesh.internal\")",
                )
            }
            (None, Some(n)) => {
                return self.err(
                    n.span(),
                    "cloud.dns_zone",
                    "a record needs its private hosted zone's id too (Z...)",
                )
            }
        };
        if !matches!(backend, CloudBackendKind::Aws { .. }) {
            return self.err(
                zone.span(),
                "cloud.dns_zone",
                "a Route 53 record needs the aws backend",
            );
        }
        let zone_id = zone.get_ref().trim();
        if zone_id.is_empty() || !zone_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return self.err(
                zone.span(),
                "cloud.dns_zone",
                format!("'{zone_id}' is not a hosted zone id (Z followed by letters and digits)"),
            );
        }
        let record = name.get_ref().trim().trim_end_matches('.');
        let valid = !record.is_empty()
            && record.len() <= 253
            && record.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return self.err(
                name.span(),
                "cloud.dns_name",
                format!("'{record}' is not a DNS name"),
            );
        }
        let ttl = match &c.dns_ttl {
            None => 10,
            Some(t) if (1..=86_400).contains(t.get_ref()) => *t.get_ref(),
            Some(t) => {
                return self.err(
                    t.span(),
                    "cloud.dns_ttl",
                    format!("{} is outside 1 to 86400 seconds", t.get_ref()),
                )
            }
        };
        if advertise.ip().is_unspecified() {
            return self.err(
                name.span(),
                "gateway.advertise",
                "the record points at gateway.advertise: set it to this appliance's address",
            );
        }
        Ok(Some(DnsRecord {
            zone: zone_id.to_string(),
            name: record.to_string(),
            ttl,
            address: advertise.ip(),
        }))
    }

    pub(super) fn cloud(
        &self,
        raw: &RawConfig,
        placement: &Placement,
        advertise: SocketAddr,
    ) -> Result<Option<CloudConfig>, ConfigError> {
        let Some(c) = &raw.cloud else {
            return Ok(None);
        };
        if placement.group.is_none() {
            return self.err(
                c.span(),
                "cloud",
                "[cloud] claims a redundancy group's routes for its active member: set gateway.group",
            );
        }
        let c = c.get_ref();
        let interface = c.interface.get_ref().trim();
        if interface.is_empty() {
            return self.err(
                c.interface.span(),
                "cloud.interface",
                "empty: name this appliance's network interface",
            );
        }
        let mesh = match &c.mesh {
            Some(m) if m.get_ref().trim().is_empty() => {
                return self.err(
                    m.span(),
                    "cloud.mesh",
                    "empty: name the mesh whose route tables carry the tag meshgate:mesh",
                );
            }
            Some(m) => Some(m.get_ref().trim().to_string()),
            None => None,
        };
        if c.route_tables.is_empty() && (mesh.is_none() || c.backend.get_ref() != "aws") {
            return self.err(
                c.backend.span(),
                "cloud.route_tables",
                "no route table to claim: list the group's VPC route tables (or, on aws, set cloud.mesh to find them by tags)",
            );
        }
        let mut tables = Vec::new();
        for (i, t) in c.route_tables.iter().enumerate() {
            let id = t.get_ref().trim();
            if id.is_empty() || tables.iter().any(|k| k == id) {
                return self.err(
                    t.span(),
                    &format!("cloud.route_tables[{i}]"),
                    format!("'{id}' is empty or listed twice"),
                );
            }
            tables.push(id.to_string());
        }
        let backend = match c.backend.get_ref().as_str() {
            "lab" => {
                let mut routers = std::collections::BTreeMap::new();
                for t in &tables {
                    let Some(ns) = c.routers.get(t) else {
                        return self.err(
                            c.backend.span(),
                            "cloud.routers",
                            format!(
                                "the lab backend needs the router namespace of route table {t}"
                            ),
                        );
                    };
                    routers.insert(t.clone(), ns.get_ref().clone());
                }
                let mut addresses = Vec::new();
                for (i, a) in c.addresses.iter().enumerate() {
                    match a.get_ref().trim().parse::<std::net::IpAddr>() {
                        Ok(ip)
                            if !addresses
                                .iter()
                                .any(|x: &std::net::IpAddr| x.is_ipv6() == ip.is_ipv6()) =>
                        {
                            addresses.push(ip)
                        }
                        Ok(_) => return self.err(
                            a.span(),
                            &format!("cloud.addresses[{i}]"),
                            "one address per family: the router's next hop for IPv4 or IPv6 routes",
                        ),
                        Err(e) => {
                            return self.err(
                                a.span(),
                                &format!("cloud.addresses[{i}]"),
                                format!("'{}' is not an IP address: {e}", a.get_ref()),
                            )
                        }
                    }
                }
                CloudBackendKind::Lab { routers, addresses }
            }
            "aws" if cfg!(feature = "aws") => {
                let Some(region) = c.region.as_ref().filter(|r| !r.get_ref().trim().is_empty())
                else {
                    return self.err(c.backend.span(), "cloud.region", "the aws backend needs the region the appliance runs in (for example \"eu-west-1\")");
                };
                let endpoint_url = self.http_url(c.endpoint_url.as_ref(), "cloud.endpoint_url")?;
                if !interface.starts_with("eni-") {
                    return self.err(
                        c.interface.span(),
                        "cloud.interface",
                        format!("'{interface}' is not a network interface id (eni-...)"),
                    );
                }
                CloudBackendKind::Aws {
                    region: region.get_ref().trim().to_string(),
                    endpoint_url,
                }
            }
            "aws" => {
                return self.err(
                    c.backend.span(),
                    "cloud.backend",
                    "this build has no AWS backend (built without the aws feature); it has lab",
                )
            }
            other => {
                return self.err(
                    c.backend.span(),
                    "cloud.backend",
                    format!("unknown cloud backend '{other}'; the backends are aws and lab"),
                )
            }
        };
        let dns = self.dns(c, &backend, advertise)?;
        Ok(Some(CloudConfig {
            dns,
            backend,
            interface: interface.to_string(),
            route_tables: tables,
            mesh,
        }))
    }

    pub(super) fn endpoints(
        &self,
        raw: &RawConfig,
        listen: SocketAddr,
    ) -> Result<Vec<(String, SocketAddr)>, ConfigError> {
        let mut out = Vec::new();
        for (label, addr) in &raw.gateway.endpoints {
            let field = format!("gateway.endpoints.{label}");
            let valid = !label.is_empty()
                && label.len() <= 32
                && label.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return self.err(
                    addr.span(),
                    &field,
                    "a label is 1-32 of [a-z0-9_-], such as dx",
                );
            }
            if label == "internet" {
                return self.err(
                    addr.span(),
                    &field,
                    "the internet endpoint is gateway.advertise (else gateway.listen)",
                );
            }
            let a = self.socket_addr(addr, &field, Some(listen.port()))?;
            if a.ip().is_unspecified() || a.port() == 0 {
                return self.err(
                    addr.span(),
                    &field,
                    format!("{a} is not an address peers can send to"),
                );
            }
            if !listen.ip().is_unspecified() && listen.ip() != a.ip() {
                return self.err(addr.span(), &field, format!(
                    "the ESP socket listens on {} only, so nothing sent to {a} would reach it: listen on {}:{} to receive on every underlay",
                    listen.ip(),
                    if listen.is_ipv4() { "0.0.0.0" } else { "[::]" },
                    listen.port()
                ));
            }
            out.push((label.clone(), a));
        }
        // A record carries at most 8 endpoints, internet among them.
        if out.len() > crate::membership::info::MAX_ENDPOINTS - 1 {
            let span = raw
                .gateway
                .endpoints
                .values()
                .last()
                .map_or(0..0, |a| a.span());
            return self.err(
                span,
                "gateway.endpoints",
                format!(
                    "{} endpoints; at most {}",
                    out.len(),
                    crate::membership::info::MAX_ENDPOINTS - 1
                ),
            );
        }
        Ok(out)
    }
}
