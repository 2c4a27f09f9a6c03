//! Validation of the file as a whole: the `[gateway]` section, the
//! configured peers, and what holds across sections (no overlapping
//! prefixes, no endpoint routed into the tunnel), with the helpers every
//! section uses.

use super::*;

/// RFC 1918, shared (RFC 6598) and unique-local (RFC 4193) addresses:
/// where a Prometheus server in the VPC can scrape the admin listener.
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            a.is_private() || (a.octets()[0] == 100 && a.octets()[1] & 0xc0 == 64)
        }
        std::net::IpAddr::V6(a) => a.segments()[0] & 0xfe00 == 0xfc00,
    }
}

impl Validator<'_> {
    pub(super) fn err<T>(
        &self,
        span: Range<usize>,
        field: &str,
        msg: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        let span = if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(span)
        };
        Err(ConfigError::at(self.file, self.text, span, field, msg))
    }

    /// Notes where `field` is, for the errors of later checks.
    pub(super) fn note(&self, field: &str, span: Range<usize>) {
        let place = super::error::line_col(self.text, span.start);
        self.places.borrow_mut().insert(field.to_string(), place);
    }

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        self.note("gateway.id", raw.gateway.id.span());
        let id = raw.gateway.id.get_ref().trim().to_string();
        if id.is_empty() {
            return self.err(raw.gateway.id.span(), "gateway.id", "must not be empty");
        }
        let listen = self.socket_addr(
            &raw.gateway.listen,
            "gateway.listen",
            Some(DEFAULT_ESP_PORT),
        )?;
        let admin = self.socket_addr(&raw.gateway.admin, "gateway.admin", None)?;
        if !(admin.ip().is_loopback() || is_private(admin.ip())) {
            return self.err(
                raw.gateway.admin.span(),
                "gateway.admin",
                format!("{admin} is neither a loopback nor a private address; the admin listener (metrics and health, read-only) has no authentication and must not face the internet"),
            );
        }
        let control = self.control(&raw.gateway)?;
        let tun = self.tun(&raw.tun)?;
        let defaults = self.sa_defaults(&raw.sa)?;

        let mut peers = Vec::with_capacity(raw.peers.len());
        let mut ids = HashSet::new();
        let mut inbound_spis = HashSet::new();
        for (i, p) in raw.peers.iter().enumerate() {
            let at = |f: &str| format!("peers[{i}].{f}");
            let pid = p.id.get_ref().trim().to_string();
            if pid.is_empty() {
                return self.err(p.id.span(), &at("id"), "must not be empty");
            }
            if pid == id {
                return self.err(
                    p.id.span(),
                    &at("id"),
                    format!("'{pid}' is this gateway's own id"),
                );
            }
            if !ids.insert(pid.clone()) {
                return self.err(p.id.span(), &at("id"), format!("duplicate peer id '{pid}'"));
            }
            let endpoint =
                self.socket_addr(&p.endpoint, &at("endpoint"), Some(DEFAULT_ESP_PORT))?;
            if p.prefixes.get_ref().is_empty() {
                return self.err(
                    p.prefixes.span(),
                    &at("prefixes"),
                    "a peer needs at least one prefix to route to it",
                );
            }
            let mut prefixes = Vec::new();
            for (j, s) in p.prefixes.get_ref().iter().enumerate() {
                prefixes.push(self.prefix(s, &format!("peers[{i}].prefixes[{j}]"))?);
            }
            let outbound = self.sa(&p.outbound, &at("outbound"), &defaults)?;
            let inbound = self.sa(&p.inbound, &at("inbound"), &defaults)?;
            if !inbound_spis.insert(inbound.spi) {
                return self.err(
                    p.inbound.get_ref().spi.span(),
                    &at("inbound.spi"),
                    format!("inbound SPI {:#010x} is already used by another peer; inbound SPIs must be unique", inbound.spi),
                );
            }
            let placement =
                self.placement(&at(""), &p.region, &p.zone, &p.account, &p.role, &p.group)?;
            peers.push(PeerConfig {
                id: pid,
                placement,
                endpoint,
                prefixes,
                outbound,
                inbound,
            });
        }
        // The socket is of the listen address's family; a peer of the
        // other family could never be sent to.
        for (i, p) in peers.iter().enumerate() {
            if p.endpoint.is_ipv4() != listen.is_ipv4() {
                return self.err(
                    raw.peers[i].endpoint.span(),
                    &format!("peers[{i}].endpoint"),
                    format!(
                        "{} is not of the same address family as gateway.listen ({listen})",
                        p.endpoint
                    ),
                );
            }
        }
        // A prefix routed into the tunnel that holds a tunnel endpoint would
        // send the ESP packets themselves into the tunnel: a routing loop.
        for (i, p) in peers.iter().enumerate() {
            let endpoints = peers
                .iter()
                .map(|q| (q.endpoint.ip(), format!("the endpoint of peer '{}'", q.id)));
            for (ip, what) in endpoints.chain([(listen.ip(), "gateway.listen".to_string())]) {
                if let Some(prefix) = p.prefixes.iter().find(|pr| pr.contains(ip)) {
                    return self.err(
                        raw.peers[i].prefixes.span(),
                        &format!("peers[{i}].prefixes"),
                        format!("{prefix} contains {ip}, {what}: its ESP packets would be routed into the tunnel itself"),
                    );
                }
            }
        }
        // Two SAs with the same key start from the same sequence numbers,
        // so AES-GCM would see the same nonces twice: refuse.
        let sas: Vec<(usize, &str, &SaParams)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| [(i, "outbound", &p.outbound), (i, "inbound", &p.inbound)])
            .collect();
        for (n, (i, dir, sa)) in sas.iter().enumerate() {
            if let Some((j, other, _)) = sas[..n].iter().find(|(_, _, o)| o.key.same_as(&sa.key)) {
                let raw_sa = if *dir == "outbound" {
                    &raw.peers[*i].outbound
                } else {
                    &raw.peers[*i].inbound
                };
                return self.err(
                    raw_sa.span(),
                    &format!("peers[{i}].{dir}"),
                    format!("uses the same key as peers[{j}].{other}; every SA needs its own key (AES-GCM nonces would repeat)"),
                );
            }
        }
        // Overlapping prefixes between peers would make routing ambiguous and
        // anti-spoofing unsound; refuse them.
        for (i, a) in peers.iter().enumerate() {
            for b in &peers[i + 1..] {
                for pa in &a.prefixes {
                    if let Some(pb) = b.prefixes.iter().find(|pb| pa.overlaps(pb)) {
                        return self.err(
                            raw.peers[i].prefixes.span(),
                            &format!("peers[{i}].prefixes"),
                            format!("{pa} of peer '{}' overlaps {pb} of peer '{}'", a.id, b.id),
                        );
                    }
                }
            }
        }
        let state_dir = match &raw.gateway.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(d) => self.relative_path(d.get_ref()),
        };
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return self.err(raw.gateway.id.span(), "gateway.id", format!("'{id}' may hold only letters, digits, '-', '_' and '.' (it names the state file)"));
        }
        let g = &raw.gateway;
        for (field, value) in [("gateway.region", &g.region), ("gateway.role", &g.role)] {
            if let Some(v) = value {
                self.note(field, v.span());
            }
        }
        let placement = self.placement(
            "gateway.", &g.region, &g.zone, &g.account, &g.role, &g.group,
        )?;
        let policy = self.policy(&raw.policy)?;
        let mut prefixes = Vec::new();
        if let Some(first) = g.prefixes.first() {
            self.note("gateway.prefixes", first.span());
        }
        for (j, p) in g.prefixes.iter().enumerate() {
            let prefix = self.prefix(p, &format!("gateway.prefixes[{j}]"))?;
            if prefix.contains(listen.ip()) {
                return self.err(p.span(), &format!("gateway.prefixes[{j}]"), format!("{prefix} contains gateway.listen ({}): the mesh would route its ESP packets into the tunnel itself", listen.ip()));
            }
            prefixes.push(prefix);
        }
        let advertise = match &g.advertise {
            Some(a) => {
                let a = self.socket_addr(a, "gateway.advertise", Some(listen.port()))?;
                if a.ip().is_unspecified() || a.port() == 0 {
                    return self.err(
                        g.advertise.as_ref().map_or(0..0, |a| a.span()),
                        "gateway.advertise",
                        format!("{a} is not an address peers can send to"),
                    );
                }
                a
            }
            None => listen,
        };
        let endpoints = self.endpoints(&raw, listen)?;
        let signal = self.signal(&raw, &id, listen, advertise)?;
        let cloud = self.cloud(&raw, &placement, advertise)?;
        let config = Config {
            origin: super::Origin {
                file: self.file.to_path_buf(),
                places: self.places.take(),
            },
            id,
            listen,
            admin,
            control,
            state_dir,
            placement,
            policy,
            tun,
            sa: defaults,
            prefixes,
            advertise,
            endpoints,
            peers,
            signal,
            cloud,
        };
        Ok(config)
    }

    /// A path from the config, relative to the config file's folder.
    pub(super) fn relative_path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p
        }
    }

    pub(super) fn socket_addr(
        &self,
        s: &Spanned<String>,
        field: &str,
        default_port: Option<u16>,
    ) -> Result<SocketAddr, ConfigError> {
        let v = s.get_ref().trim();
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Ok(a);
        }
        if let (Some(port), Ok(ip)) = (default_port, v.parse::<std::net::IpAddr>()) {
            return Ok(SocketAddr::new(ip, port));
        }
        self.err(
            s.span(),
            field,
            format!(
                "'{v}' is not an address:port (for example 192.0.2.1:4500 or [2001:db8::1]:4500)"
            ),
        )
    }

    /// The control socket: a path, and a group that must exist.
    fn control(&self, g: &RawGateway) -> Result<ControlConfig, ConfigError> {
        let path = match &g.control {
            None => PathBuf::from(DEFAULT_CONTROL),
            Some(p) if p.get_ref().trim().is_empty() => {
                return self.err(
                    p.span(),
                    "gateway.control",
                    "must be the path of a Unix socket",
                )
            }
            Some(p) => self.relative_path(p.get_ref()),
        };
        let group = match &g.control_group {
            None => None,
            Some(name) => {
                if crate::control::group_id(name.get_ref()).is_none() {
                    return self.err(
                        name.span(),
                        "gateway.control_group",
                        format!("there is no group '{}' on this host", name.get_ref()),
                    );
                }
                Some(name.get_ref().clone())
            }
        };
        Ok(ControlConfig { path, group })
    }

    pub(super) fn prefix(&self, s: &Spanned<String>, field: &str) -> Result<Prefix, ConfigError> {
        match s.get_ref().parse::<Prefix>() {
            Ok(p) => Ok(p),
            Err(e) => self.err(s.span(), field, e),
        }
    }

    /// Interface addresses keep their host bits (10.1.255.1/24).
    pub(super) fn prefix_host(
        &self,
        s: &Spanned<String>,
        field: &str,
    ) -> Result<Prefix, ConfigError> {
        match Prefix::parse_host(s.get_ref()) {
            Ok(p) => Ok(p),
            Err(e) => self.err(s.span(), field, e),
        }
    }
}
